"""The toolkit's base class: the three stages, the retry with the error fed back, fallbacks, repair.

See :mod:`sow.planners.toolkit` for what a planner writes and what this does."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, ClassVar

from PIL import Image
from pydantic import BaseModel, ConfigDict, Field

from sow.errors import InputError, PlannerError
from sow.planners.fixed import body_box
from sow.planners.layout import condition_strip, side_by_side, side_limits
from sow.planners.toolkit.answers import AnswerError, ParsedAnswer, parse_answer, read_box, retry_message
from sow.planners.toolkit.prompts import STAGES, SYSTEM, stage_messages, stage_text, with_retry
from sow.planners.repair import repair_plan
from sow.schemas import Canvas, Plan, first_error
from sow.stages import PlanRequest

SLOT_MARGIN = 0.06
"""The side-by-side layout's margin (share of the canvas) for boxes that fall back to it."""


class PlannerOptions(BaseModel):
    """The toolkit's own setting; a planner's options model subclasses it (unknown keys are refused)."""

    model_config = ConfigDict(extra="forbid")

    retries: int = Field(1, ge=0, le=3, description="Retries of a stage whose answer cannot be read (error fed back).")


@dataclass
class Question:
    """One stage's question, as :meth:`StagedPlanner.ask_model` receives it."""

    stage: str
    """``intensify``, ``position``, ``refine`` or their ``_several`` forms (:data:`STAGES`)."""
    values: dict[str, Any]
    """What fills the stage's template (prompt, canvas size, side limits, box_v ...)."""
    image: Image.Image
    """The condition (RGB), or the numbered strip of several conditions."""
    tries: list[tuple[str, str]] = field(default_factory=list)
    """Earlier answers of this stage that could not be read, each with the feedback to send."""

    @property
    def system(self) -> str:
        """The instructions common to every stage (answer one JSON object; box convention)."""
        return SYSTEM

    @property
    def text(self) -> str:
        """The stage's question, its example answer included."""
        return stage_text(self.stage, **self.values)

    @property
    def answer_model(self) -> type[BaseModel]:
        """The pydantic model the answer is read as; ``answer_model.model_json_schema()`` for structured output."""
        return STAGES[self.stage][1]

    def messages(self, system_role: bool = True) -> list[dict[str, Any]]:
        """The whole conversation in Hugging Face chat format (``{"type": "image"}`` marks the image)."""
        messages = stage_messages(self.stage, system_role=system_role, **self.values)
        for answer, feedback in self.tries:
            messages = with_retry(messages, answer, feedback)
        return messages


class StagedPlanner:
    """A planner that asks a model the paper's three questions. Subclass and write :meth:`ask_model`."""

    name: ClassVar[str] = ""
    description: ClassVar[str] = ""
    family: ClassVar[str] = ""
    """Human name of the model family, for messages (``"LLaVA"``, ``"Gemini"``)."""
    options_class: ClassVar[type[BaseModel]] = PlannerOptions
    """The options model (``--planner-option KEY=VALUE``), validated in ``__init__``."""

    def __init__(self, **options: Any) -> None:
        try:
            self.options = self.options_class(**options)
        except ValueError as exc:
            raise InputError(f"planner {self.name!r} option {first_error(exc)}") from None

    # -- what a planner writes -----------------------------------------------------------

    def ask_model(self, session: Any, question: Question) -> str:  # pragma: no cover - abstract
        """Ask the model ``question``; return its answer as text."""
        raise NotImplementedError

    def start(self) -> Any:
        """What :meth:`ask_model` needs for one plan (a loaded model, a client); called once per plan."""
        return None

    def notes(self, session: Any) -> list[str]:
        """Lines for ``plan.notes`` about how the plan was made (the model; requests, tokens ...)."""
        return [f"{self.family} model {getattr(self, 'model_id', '?')}"]

    @property
    def stage_retries(self) -> int:
        """How often a stage whose answer cannot be read is asked again (the ``retries`` option)."""
        return getattr(self.options, "retries", 1)

    # -- the stages ------------------------------------------------------------------------

    def ask_stage(self, session: Any, stage: str, image: Image.Image, timings: dict[str, float], **values: Any) -> ParsedAnswer:
        """One stage: ask, read the answer; on failure ask again with the error fed back.

        ``timings`` (the caller's, per run) receives the seconds of each try as ``"<stage>#<try>"``.
        """
        model = STAGES[stage][1]
        question = Question(stage, values, image)
        for attempt in range(self.stage_retries + 1):
            start = time.perf_counter()
            answer = self.ask_model(session, question)
            timings[f"{stage}#{attempt}"] = time.perf_counter() - start
            try:
                parsed = parse_answer(answer, model, values["canvas"])
            except AnswerError as exc:
                error = exc
                question.tries.append((answer, retry_message(exc, model)))
                continue
            if attempt:
                parsed.repairs.insert(0, f"{stage} answer read on retry {attempt} (the answer before was rejected: {error})")
            return parsed
        raise PlannerError(f"{self.family} {stage} answer unusable after {self.stage_retries + 1} tries: {error}")

    def plan(self, request: PlanRequest) -> Plan:
        return self.plan_timed(request)[0]

    def plan_timed(self, request: PlanRequest) -> tuple[Plan, dict[str, float]]:
        """:meth:`plan`, and the seconds it spent: ``"load"`` (the :meth:`start` call; about 0
        when a model was cached) and each stage's tries (``"intensify#0"``, ...;
        ``"position_several#0"``, ... with several conditions). The timings belong to this call."""
        timings: dict[str, float] = {}
        begin = time.perf_counter()
        session = self.start()
        timings["load"] = time.perf_counter() - begin
        if len(request.conditions) > 1:
            return self._plan_several(request, session, timings), timings
        return self._plan_one(request, session, timings), timings

    def _plan_one(self, request: PlanRequest, session: Any, timings: dict[str, float]) -> Plan:
        config, image = request.config, request.condition
        canvas = config.canvas
        min_side, max_side = config.side_limits()
        common = {"canvas": canvas, "width": canvas.width, "height": canvas.height}

        first = self.ask_stage(session, "intensify", image, timings, prompt=request.prompt, **common)
        intensified: Any = first.value
        second = self.ask_stage(
            session, "position", image, timings, prompt=intensified.prompt, image_width=image.width,
            image_height=image.height, min_side=min_side, max_side=max_side, **common,
        )
        box_v = second.value.box_v  # type: ignore[attr-defined]
        third = self.ask_stage(session, "refine", image, timings, prompt=intensified.prompt, box_v=_shown(box_v), **common)
        answer = {
            "canvas": canvas,
            "box_v": list(box_v),
            "box_r": list(third.value.box_r),  # type: ignore[attr-defined]
            "prompt": intensified.prompt,
            "user_prompt": request.prompt,
            "description": intensified.description,
            "planner": self.name,
            "repairs": [*first.repairs, *second.repairs, *third.repairs],
            "notes": self.notes(session),
        }
        return repair_plan(answer, config)

    def _plan_several(self, request: PlanRequest, session: Any, timings: dict[str, float]) -> Plan:
        """Several conditions: the three stages on a strip of the photos (numbered), each box stage one answer.

        A box that cannot be read, or a missing one, falls back alone to the side-by-side slot of its
        condition (:func:`side_by_side`); each fallback is a line in ``plan.repairs``. Boxes that
        overlap are then repaired by :func:`repair_plan`.
        """
        config, images = request.config, request.conditions
        canvas, n = config.canvas, len(images)
        min_side, max_side = side_limits(config, n)
        strip = condition_strip(images)
        common = {"canvas": canvas, "width": canvas.width, "height": canvas.height, "count": n}
        first = self.ask_stage(session, "intensify_several", strip, timings, prompt=request.prompt, **common)
        intensified: Any = first.value
        sizes = ", ".join(f"{i + 1}: {im.width}x{im.height}" for i, im in enumerate(images))
        second = self.ask_stage(session, "position_several", strip, timings, prompt=intensified.prompt, sizes=sizes,
                                min_side=min_side, max_side=max_side, **common)
        repairs = [*first.repairs, *second.repairs]
        slots = side_by_side([im.size for im in images], canvas, config, SLOT_MARGIN)
        boxes_v = each_box(second.value.boxes, "box_v", slots, canvas, repairs)  # type: ignore[attr-defined]
        shown = "; ".join(f"{i + 1}: {_shown(b)}" for i, b in enumerate(boxes_v))
        third = self.ask_stage(session, "refine_several", strip, timings, prompt=intensified.prompt, boxes_v=shown, **common)
        repairs += third.repairs
        bodies = [body_box(b, canvas) for b in slots]
        boxes_r = each_box(third.value.boxes, "box_r", bodies, canvas, repairs)  # type: ignore[attr-defined]
        answer = {
            "canvas": canvas,
            "conditions": [{"image": i, "box_v": list(v), "box_r": list(r)} for i, (v, r) in enumerate(zip(boxes_v, boxes_r))],
            "prompt": intensified.prompt,
            "user_prompt": request.prompt,
            "description": intensified.description,
            "planner": self.name,
            "repairs": repairs,
            "notes": [*self.notes(session), f"{n} conditions, asked on a strip of the photos"],
        }
        return repair_plan(answer, config, n)


def each_box(raw: list, name: str, fallback: list, canvas: Canvas, repairs: list[str]) -> list[tuple[float, ...]]:
    """One box per condition from an answer's list; an unreadable or missing one takes its fallback (recorded)."""
    out = []
    for i, default in enumerate(fallback):
        default = tuple(default.as_list() if hasattr(default, "as_list") else default)
        if i >= len(raw):
            repairs.append(f"condition {i + 1}: the answer gave no {name}; the side-by-side layout's {list(default)} is used")
            out.append(default)
            continue
        try:
            out.append(read_box(raw[i], f"{name} of condition {i + 1}", canvas, repairs))
        except (AnswerError, ValueError, TypeError) as exc:
            repairs.append(f"condition {i + 1}: {name} {raw[i]!r} unreadable ({exc}); the side-by-side layout's {list(default)} is used")
            out.append(default)
    if len(raw) > len(fallback):
        repairs.append(f"the answer gave {len(raw)} {name} boxes for {len(fallback)} conditions; the extra ones were ignored")
    return out


def _shown(box) -> str:
    """A box as the next stage's question shows it: ``[x, y, w, h]`` in whole pixels."""
    return "[" + ", ".join(str(round(v)) for v in box) + "]"
