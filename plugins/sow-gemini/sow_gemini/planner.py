"""``GeminiPlanner``: the paper's three planner stages as three Gemini requests.

1. Recognition and prompt intensification (:data:`~sow_gemini.prompts.RECOGNITION_PROMPT`).
2. Adaptive position: box_v (:data:`~sow_gemini.prompts.POSITION_PROMPT`).
3. Contextual refinement: box_r (:data:`~sow_gemini.prompts.REFINEMENT_PROMPT`).

Every answer is parsed against its pydantic model; boxes are then repaired by
:mod:`sow.planners.policy` (clipped, side limits, moved inside the canvas) with each change in
``plan.repairs``. Every failure becomes one :class:`sow.errors.PlannerError` line, and the API
key is scrubbed from every message: it never reaches a log, an error, a plan or a record.
"""

from __future__ import annotations

import io
import os
import time
from dataclasses import dataclass, field
from typing import Any, Callable
from urllib.parse import urlparse

from PIL import Image
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from sow.errors import InputError, PlannerError, PlannerSetupError
from sow.schemas import Box, Plan, first_error
from sow.stages import PlanRequest
from sow_gemini.prompts import (
    POSITION_PROMPT,
    POSITIONS_PROMPT,
    PREAMBLE,
    RECOGNITION_PROMPT,
    REFINEMENT_PROMPT,
    REFINEMENTS_PROMPT,
    Position,
    Positions,
    Recognition,
    Refinement,
    Refinements,
)

KEY_VARIABLES = ("GEMINI_API_KEY", "GOOGLE_API_KEY")
"""Where the API key is read from, in this order. There is deliberately no option for it."""
RETRY_STATUS = frozenset({408, 429, 500, 502, 503, 504})
"""HTTP statuses retried with exponential backoff."""
ASPECT_TOLERANCE = 0.02
"""box_v is reshaped to the condition's aspect when they differ by more than this (relative)."""


class GeminiOptions(BaseModel):
    """The planner's settings (``--planner-option KEY=VALUE``)."""

    model_config = ConfigDict(extra="forbid")

    model: str = Field("gemini-2.5-flash", min_length=1, description="Gemini model name.")
    timeout: float = Field(60.0, gt=0, le=600, description="Seconds to wait for one answer.")
    retries: int = Field(3, ge=0, le=10, description="Retries of a request answered 408, 429 or 5xx.")
    backoff: float = Field(2.0, ge=0, le=60, description="Seconds before the first retry; doubles each time.")
    max_backoff: float = Field(30.0, ge=0, le=300, description="Longest wait between retries.")
    base_url: str | None = Field(None, description="Another endpoint (a proxy; the tests' fake server).")
    temperature: float = Field(0.0, ge=0, le=2, description="Sampling temperature (0: most repeatable).")
    max_image_side: int = Field(768, ge=64, le=3072, description="The image is sent scaled to this long side.")
    thinking_budget: int | None = Field(None, ge=0, description="Thinking tokens allowed (0: none, on models that allow it; unset: the model's default).")


@dataclass
class _Usage:
    requests: int = 0
    retries: list[int] = field(default_factory=list)
    tokens: int = 0


def api_key() -> str:
    """The key from :data:`KEY_VARIABLES`, or a PlannerSetupError (a configuration error, exit 2) saying where to put it."""
    for name in KEY_VARIABLES:
        value = os.environ.get(name, "").strip()
        if value:
            return value
    raise PlannerSetupError("no Gemini API key: set GEMINI_API_KEY (or GOOGLE_API_KEY)")


def _is_a(exc: BaseException, *names: str) -> bool:
    """Whether ``exc`` derives from a class of one of ``names`` (httpx or its httpx2 fork alike)."""
    return any(cls.__name__ in names for cls in type(exc).__mro__)


def _image_part(image: Image.Image, max_side: int):
    from google.genai import types

    scale = min(1.0, max_side / max(image.size))
    sent = image.convert("RGB")
    if scale < 1:
        sent = sent.resize((max(1, round(image.width * scale)), max(1, round(image.height * scale))), Image.Resampling.LANCZOS)
    buffer = io.BytesIO()
    sent.save(buffer, format="JPEG", quality=90)
    return types.Part.from_bytes(data=buffer.getvalue(), mime_type="image/jpeg"), sent.size


class GeminiPlanner:
    """Plans with Google's Gemini (three requests with the image; key from GEMINI_API_KEY)."""

    name = "gemini"
    description = "Google Gemini: prompt intensification, box_v and box_r as three structured requests (needs GEMINI_API_KEY)."

    def __init__(self, **options: Any) -> None:
        try:
            self.options = GeminiOptions.model_validate(options)
        except ValidationError as exc:
            raise InputError(f"gemini planner option {first_error(exc)}") from None
        self.model = self.options.model
        self.sleep: Callable[[float], None] = time.sleep
        """How the planner waits between retries (tests replace it)."""

    def preflight(self) -> None:
        """Refuse a missing API key before any model loads (a configuration error, exit 2)."""
        api_key()

    # -- one request ----------------------------------------------------------------------

    def _client(self, key: str):
        from google import genai
        from google.genai import types

        http = types.HttpOptions(timeout=round(self.options.timeout * 1000))
        if self.options.base_url:
            http.base_url = self.options.base_url
        return genai.Client(api_key=key, http_options=http)

    def _where(self) -> str:
        return urlparse(self.options.base_url).netloc if self.options.base_url else "the Gemini API"

    def _ask(self, client, schema: type[BaseModel], text: str, image_part, stage: str, usage: _Usage) -> Any:
        from google.genai import errors, types

        config = types.GenerateContentConfig(
            response_mime_type="application/json",
            response_schema=schema,
            temperature=self.options.temperature,
        )
        if self.options.thinking_budget is not None:
            config.thinking_config = types.ThinkingConfig(thinking_budget=self.options.thinking_budget)
        attempts = self.options.retries + 1
        for attempt in range(1, attempts + 1):
            usage.requests += 1
            try:
                parts = list(image_part) if isinstance(image_part, list) else [image_part]
                response = client.models.generate_content(model=self.model, contents=[*parts, text], config=config)
                break
            except errors.APIError as exc:
                if exc.code in RETRY_STATUS and attempt < attempts:
                    usage.retries.append(exc.code)
                    wait = max(self.options.backoff * 2 ** (attempt - 1), _retry_delay(exc))
                    self.sleep(min(self.options.max_backoff, wait))
                    continue
                raise PlannerError(self._api_message(exc, stage, attempt)) from None
            except Exception as exc:
                if _is_a(exc, "TimeoutException", "TimeoutError"):
                    raise PlannerError(
                        f"gemini did not answer the {stage} request within {self.options.timeout:g} s; "
                        "raise it with --planner-option timeout=SECONDS"
                    ) from None
                if _is_a(exc, "TransportError", "ConnectionError"):
                    raise PlannerError(f"cannot reach {self._where()} ({type(exc).__name__}); check the network") from None
                raise PlannerError(f"gemini {stage} request failed: {type(exc).__name__}: {exc}") from None
        metadata = getattr(response, "usage_metadata", None)
        usage.tokens += getattr(metadata, "total_token_count", None) or 0
        return self._parse(response, schema, stage)

    def _api_message(self, exc, stage: str, attempts: int) -> str:
        code, status = exc.code, exc.status or ""
        detail = (exc.message or "").splitlines()[0] if exc.message else ""
        if code in (401, 403) or (code == 400 and "api key" in detail.lower()):
            return f"gemini rejected the API key ({code} {status}); check GEMINI_API_KEY / GOOGLE_API_KEY"
        if code == 404:
            return f"gemini model {self.model!r} not found ({code}); choose another with --planner-option model=NAME"
        if code == 429:
            return f"gemini rate limit or quota exceeded (429) on the {stage} request after {attempts} attempt(s); try later"
        if code >= 500:
            return f"gemini server error {code} {status} on the {stage} request after {attempts} attempt(s)"
        return f"gemini refused the {stage} request ({code} {status}): {detail}"

    def _parse(self, response, schema: type[BaseModel], stage: str) -> Any:
        text = None
        try:
            text = response.text
        except (ValueError, AttributeError):
            pass
        if not text:
            reason = "unknown"
            candidates = getattr(response, "candidates", None) or []
            feedback = getattr(response, "prompt_feedback", None)
            if candidates and getattr(candidates[0], "finish_reason", None):
                reason = str(candidates[0].finish_reason).rsplit(".", 1)[-1]
            elif feedback is not None and getattr(feedback, "block_reason", None):
                reason = f"blocked: {str(feedback.block_reason).rsplit('.', 1)[-1]}"
            raise PlannerError(f"gemini gave no answer to the {stage} request (finish reason: {reason})")
        try:
            return schema.model_validate_json(text)
        except ValidationError as exc:
            raise PlannerError(f"gemini's {stage} answer does not match {schema.__name__}: {first_error(exc)}") from None

    # -- the plan -------------------------------------------------------------------------

    def plan(self, request: PlanRequest) -> Plan:
        key = api_key()
        try:
            return self._plan(request, key)
        except PlannerError as exc:
            raise PlannerError(str(exc).replace(key, "***")) from None

    def _plan(self, request: PlanRequest, key: str) -> Plan:
        from sow.planners.repair import fit_box_v, repair_plan

        if len(request.conditions) > 1:
            return self._plan_several(request, key)
        config, image = request.config, request.condition
        canvas = config.canvas
        lo, hi = config.side_limits()
        client = self._client(key)
        usage = _Usage()
        part, (sent_w, sent_h) = _image_part(image, self.options.max_image_side)
        common = {"preamble": PREAMBLE, "canvas_width": canvas.width, "canvas_height": canvas.height}

        seen: Recognition = self._ask(
            client, Recognition,
            RECOGNITION_PROMPT.format(preamble=PREAMBLE, width=sent_w, height=sent_h, prompt=request.prompt),
            part, "prompt intensification", usage,
        )
        scene = seen.intensified_prompt.strip() or request.prompt
        notes: list[str] = []
        crop = self._crop(seen, image.size, (sent_w, sent_h), notes)
        aspect_w, aspect_h = (crop.w, crop.h) if crop else image.size

        placed: Position = self._ask(
            client, Position,
            POSITION_PROMPT.format(**common, aspect_width=aspect_w, aspect_height=aspect_h, scene=scene, min_side=lo, max_side=hi),
            part, "adaptive position", usage,
        )
        repairs: list[str] = []
        raw_v = _with_aspect(placed.box_v.as_list(), aspect_w / aspect_h, repairs)
        box_v = fit_box_v(raw_v, canvas, (lo, hi), repairs)

        refined: Refinement = self._ask(
            client, Refinement,
            REFINEMENT_PROMPT.format(**common, x=box_v.x, y=box_v.y, w=box_v.w, h=box_v.h, scene=scene),
            part, "contextual refinement", usage,
        )
        retried = f", {len(usage.retries)} retried ({', '.join(map(str, usage.retries))})" if usage.retries else ""
        notes.append(f"gemini {self.model}: {usage.requests} requests{retried}, {usage.tokens} tokens")
        if placed.reason:
            notes.append(f"box_v: {placed.reason}")
        if refined.reason:
            notes.append(f"box_r: {refined.reason}")
        return repair_plan(
            {
                "canvas": canvas,
                "box_v": box_v,
                "box_r": refined.box_r.as_list(),
                "crop": crop,
                "prompt": scene,
                "user_prompt": request.prompt,
                "description": seen.description,
                "planner": self.name,
                "repairs": repairs,
                "notes": notes,
            },
            config,
        )

    def _plan_several(self, request: PlanRequest, key: str) -> Plan:
        """Several photos: recognition per photo, then box_v of all in one answer, box_r of all in one.

        A box the answer leaves out falls back alone to that photo's side-by-side slot
        (:func:`sow.planners.layout.side_by_side`), recorded in ``plan.repairs``; overlapping boxes
        are repaired by :func:`sow.planners.repair.repair_plan`.
        """
        from sow.planners.fixed import body_box
        from sow.planners.layout import side_by_side, side_limits
        from sow.planners.repair import repair_plan

        config, images = request.config, request.conditions
        canvas, n = config.canvas, len(images)
        lo, hi = side_limits(config, n)
        client = self._client(key)
        usage = _Usage()
        common = {"preamble": PREAMBLE, "canvas_width": canvas.width, "canvas_height": canvas.height, "count": n}
        parts, crops, seen_all, notes = [], [], [], []
        for i, image in enumerate(images):
            part, (sent_w, sent_h) = _image_part(image, self.options.max_image_side)
            seen: Recognition = self._ask(
                client, Recognition,
                RECOGNITION_PROMPT.format(preamble=PREAMBLE, width=sent_w, height=sent_h, prompt=request.prompt),
                part, f"prompt intensification (photo {i + 1})", usage,
            )
            mine: list[str] = []
            crops.append(self._crop(seen, image.size, (sent_w, sent_h), mine))
            notes += [f"condition {i + 1}: {line}" for line in mine]
            parts.append(part)
            seen_all.append(seen)
        scene = f"{request.prompt.strip().rstrip('.,')}, with " + "; ".join(s.description.strip().rstrip(".") for s in seen_all)
        aspects = [(c.w, c.h) if c else im.size for c, im in zip(crops, images)]
        slots = side_by_side(aspects, canvas, config, 0.06)
        placed: Positions = self._ask(
            client, Positions,
            POSITIONS_PROMPT.format(**common, aspects=", ".join(f"{w}:{h}" for w, h in aspects), scene=scene, min_side=lo, max_side=hi),
            parts, "adaptive position", usage,
        )
        repairs: list[str] = []
        boxes_v = []
        for i, slot in enumerate(slots):
            if i < len(placed.boxes):
                mine = []
                boxes_v.append(_with_aspect(placed.boxes[i].as_list(), aspects[i][0] / aspects[i][1], mine))
                repairs += [f"condition {i + 1}: {line}" for line in mine]
            else:
                boxes_v.append([float(v) for v in slot.as_list()])
                repairs.append(f"condition {i + 1}: gemini gave no box_v; the side-by-side layout's [{slot}] is used")
        shown = "; ".join(f"photo {i + 1}: [" + ", ".join(str(round(v)) for v in b) + "]" for i, b in enumerate(boxes_v))
        refined: Refinements = self._ask(
            client, Refinements, REFINEMENTS_PROMPT.format(**common, boxes=shown, scene=scene), parts, "contextual refinement", usage,
        )
        boxes_r = []
        for i, slot in enumerate(slots):
            if i < len(refined.boxes):
                boxes_r.append(refined.boxes[i].as_list())
            else:
                body = body_box(slot, canvas)
                boxes_r.append(body.as_list())
                repairs.append(f"condition {i + 1}: gemini gave no box_r; the body under its slot [{body}] is used")
        retried = f", {len(usage.retries)} retried ({', '.join(map(str, usage.retries))})" if usage.retries else ""
        notes.append(f"gemini {self.model}: {usage.requests} requests{retried}, {usage.tokens} tokens")
        conditions = [{"image": i, "box_v": v, "box_r": r, "crop": c} for i, (v, r, c) in enumerate(zip(boxes_v, boxes_r, crops))]
        return repair_plan(
            {
                "canvas": canvas, "conditions": conditions, "prompt": scene, "user_prompt": request.prompt,
                "description": "; ".join(s.description for s in seen_all), "planner": self.name,
                "repairs": repairs, "notes": notes,
            },
            config,
            n,
        )

    @staticmethod
    def _crop(seen: Recognition, size: tuple[int, int], sent: tuple[int, int], notes: list[str]) -> Box | None:
        """A square around the face Gemini found (as the heuristic planner crops), or None."""
        if not seen.is_face or seen.subject_box is None:
            notes.append("gemini found no face; the whole condition is used")
            return None
        from sow.planners.heuristic import face_crop

        sx, sy = size[0] / sent[0], size[1] / sent[1]
        b = seen.subject_box
        left, top = max(0.0, b.x * sx), max(0.0, b.y * sy)
        right, bottom = min(size[0], (b.x + b.w) * sx), min(size[1], (b.y + b.h) * sy)
        if right - left < 4 or bottom - top < 4:
            notes.append(f"gemini's face box {b.as_list()} lies outside the photo; the whole condition is used")
            return None
        face = Box(x=round(left), y=round(top), w=round(right - left), h=round(bottom - top))
        notes.append(f"gemini's face box [{face}] in condition pixels")
        return face_crop(face, size)


def _retry_delay(exc) -> float:
    """The wait the server asked for (``RetryInfo.retryDelay``, e.g. ``"17s"``) in seconds, or 0."""
    details = exc.details.get("error", {}).get("details", []) if isinstance(exc.details, dict) else []
    for item in details if isinstance(details, list) else []:
        if isinstance(item, dict) and str(item.get("@type", "")).endswith("RetryInfo"):
            try:
                return max(0.0, float(str(item.get("retryDelay", "0")).rstrip("s")))
            except ValueError:
                return 0.0
    return 0.0


def _with_aspect(raw: list[int], aspect: float, repairs: list[str]) -> list[float]:
    """``raw`` reshaped about its centre to width/height ``aspect``, keeping its longer side."""
    x, y, w, h = (float(v) for v in raw)
    if w <= 0 or h <= 0 or abs((w / h) / aspect - 1) <= ASPECT_TOLERANCE:
        return [x, y, w, h]
    longer = max(w, h)
    nw, nh = (longer, longer / aspect) if aspect >= 1 else (longer * aspect, longer)
    cx, cy = x + w / 2, y + h / 2
    repairs.append(f"box_v {raw} reshaped to the condition's aspect {aspect:.3g} (longer side {longer:g} kept)")
    return [cx - nw / 2, cy - nh / 2, nw, nh]
