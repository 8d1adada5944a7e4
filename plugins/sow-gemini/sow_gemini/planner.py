"""``GeminiPlanner``: the planner toolkit's three stages, each asked of Gemini as one request.

The questions, the answer reading, the retry of an unreadable answer, the fallbacks and the
box repair are the toolkit's (:class:`sow.planners.toolkit.StagedPlanner`); this module asks
Gemini, with the answer's JSON Schema as structured output. HTTP retries (408, 429, 5xx,
timeouts, refused connections; exponential backoff) are google-genai's own ``HttpRetryOptions``.
Every failure becomes one :class:`sow.errors.PlannerError` line, and the API key is scrubbed
from every message: it never reaches a log, an error, a plan or a record.
"""

from __future__ import annotations

import io
import os
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlparse

from PIL import Image
from pydantic import Field

from sow.errors import PlannerError, PlannerSetupError
from sow.planners.toolkit import PlannerOptions, Question, StagedPlanner

KEY_VARIABLES = ("GEMINI_API_KEY", "GOOGLE_API_KEY")
"""Where the API key is read from, in this order. There is deliberately no option for it."""
RETRY_STATUS = [408, 429, 500, 502, 503, 504]
"""HTTP statuses the SDK retries with exponential backoff."""


class GeminiOptions(PlannerOptions):
    """The planner's settings (``--planner-option KEY=VALUE``); ``retries`` is the toolkit's (unreadable answers)."""

    model: str = Field("gemini-2.5-flash", min_length=1, description="Gemini model name.")
    timeout: float = Field(60.0, gt=0, le=600, description="Seconds to wait for one answer.")
    http_retries: int = Field(3, ge=0, le=10, description="Retries of a request answered 408, 429 or 5xx, or timed out.")
    backoff: float = Field(2.0, ge=0, le=60, description="Seconds before the first retry; doubles each time (plus up to half of it at random).")
    max_backoff: float = Field(30.0, ge=0, le=300, description="Longest wait between retries.")
    base_url: str | None = Field(None, description="Another endpoint (a proxy; the tests' fake server).")
    temperature: float = Field(0.0, ge=0, le=2, description="Sampling temperature (0: most repeatable).")
    max_image_side: int = Field(768, ge=64, le=3072, description="The image is sent scaled to this long side.")
    thinking_budget: int | None = Field(None, ge=0, description="Thinking tokens allowed (0: none, on models that allow it; unset: the model's default).")


@dataclass
class Session:
    """One plan's client and what it cost."""

    client: Any
    requests: int = 0
    tokens: int = 0


def api_key() -> str:
    """The key from :data:`KEY_VARIABLES`, or a PlannerSetupError (a configuration error, exit 2) saying where to put it."""
    for name in KEY_VARIABLES:
        value = os.environ.get(name, "").strip()
        if value:
            return value
    raise PlannerSetupError("no Gemini API key: set GEMINI_API_KEY (or GOOGLE_API_KEY)")


class GeminiPlanner(StagedPlanner):
    """Plans with Google's Gemini (three requests with the image; key from GEMINI_API_KEY)."""

    name = "gemini"
    description = "Google Gemini: prompt intensification, box_v and box_r as three structured requests (needs GEMINI_API_KEY)."
    family = "gemini"
    options_class = GeminiOptions

    @property
    def model(self) -> str:
        """The Gemini model asked (part of the plan cache's key)."""
        return self.options.model

    def preflight(self) -> None:
        """Refuse a missing API key before any model loads (a configuration error, exit 2)."""
        api_key()

    def start(self) -> Session:
        from google import genai
        from google.genai import types

        o = self.options
        retry = types.HttpRetryOptions(attempts=o.http_retries + 1, initial_delay=o.backoff, max_delay=o.max_backoff,
                                       exp_base=2, jitter=o.backoff / 2, http_status_codes=RETRY_STATUS)
        http = types.HttpOptions(timeout=round(o.timeout * 1000), base_url=o.base_url, retry_options=retry)
        return Session(genai.Client(api_key=api_key(), http_options=http))

    def notes(self, session: Session) -> list[str]:
        return [f"gemini {self.options.model}: {session.requests} requests, {session.tokens} tokens"]

    def plan_timed(self, request):
        key = api_key()
        try:
            return super().plan_timed(request)
        except PlannerError as exc:
            raise PlannerError(str(exc).replace(key, "***")) from None

    def ask_model(self, session: Session, question: Question) -> str:
        from google.genai import errors, types

        config = types.GenerateContentConfig(
            system_instruction=question.system, response_mime_type="application/json",
            response_json_schema=question.answer_model.model_json_schema(), temperature=self.options.temperature,
        )
        if self.options.thinking_budget is not None:
            config.thinking_config = types.ThinkingConfig(thinking_budget=self.options.thinking_budget)
        contents = [types.Content(role="user", parts=[_image_part(question.image, self.options.max_image_side), types.Part(text=question.text)])]
        for answer, feedback in question.tries:
            contents += [types.Content(role="model", parts=[types.Part(text=answer)]), types.Content(role="user", parts=[types.Part(text=feedback)])]
        session.requests += 1
        try:
            response = session.client.models.generate_content(model=self.options.model, contents=contents, config=config)
        except errors.APIError as exc:
            raise PlannerError(self._api_message(exc, question.stage)) from None
        except Exception as exc:
            raise PlannerError(self._transport_message(exc, question.stage)) from None
        session.tokens += getattr(response.usage_metadata, "total_token_count", None) or 0
        if not response.text:
            candidates = response.candidates or []
            reason = str(candidates[0].finish_reason).rsplit(".", 1)[-1] if candidates and candidates[0].finish_reason else "unknown"
            raise PlannerError(f"gemini gave no answer to the {question.stage} request (finish reason: {reason})")
        return response.text

    def _api_message(self, exc, stage: str) -> str:
        code, status = exc.code, exc.status or ""
        detail = (exc.message or "").splitlines()[0] if exc.message else ""
        tries = f"after {self.options.http_retries + 1} attempt(s)"
        if code in (401, 403) or (code == 400 and "api key" in detail.lower()):
            return f"gemini rejected the API key ({code} {status}); check GEMINI_API_KEY / GOOGLE_API_KEY"
        if code == 404:
            return f"gemini model {self.options.model!r} not found ({code}); choose another with --planner-option model=NAME"
        if code == 429:
            return f"gemini rate limit or quota exceeded (429) on the {stage} request {tries}; try later"
        if code >= 500:
            return f"gemini server error {code} {status} on the {stage} request {tries}"
        return f"gemini refused the {stage} request ({code} {status}): {detail}"

    def _transport_message(self, exc: Exception, stage: str) -> str:
        names = {cls.__name__ for cls in type(exc).__mro__}  # httpx and its httpx2 fork alike
        if names & {"TimeoutException", "TimeoutError"}:
            return (f"gemini did not answer the {stage} request within {self.options.timeout:g} s "
                    f"({self.options.http_retries + 1} attempt(s)); raise it with --planner-option timeout=SECONDS")
        if names & {"TransportError", "ConnectionError"}:
            where = urlparse(self.options.base_url).netloc if self.options.base_url else "the Gemini API"
            return f"cannot reach {where} ({type(exc).__name__}); check the network"
        return f"gemini {stage} request failed: {type(exc).__name__}: {exc}"


def _image_part(image: Image.Image, max_side: int):
    """The image as a JPEG part, scaled down to ``max_side`` on its longer side."""
    from google.genai import types

    sent = image.convert("RGB")
    scale = min(1.0, max_side / max(image.size))
    if scale < 1:
        sent = sent.resize((max(1, round(image.width * scale)), max(1, round(image.height * scale))), Image.Resampling.LANCZOS)
    buffer = io.BytesIO()
    sent.save(buffer, format="JPEG", quality=90)
    return types.Part.from_bytes(data=buffer.getvalue(), mime_type="image/jpeg")
