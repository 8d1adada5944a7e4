"""Reading a multimodal LLM's free-text answer as the JSON a planner stage asked for.

Local models (LLaVA, Qwen-VL) decoding freely - without llguidance, or with
``constrained=off`` (:mod:`sow.planners.mllm.constrained` otherwise holds them to the
stage's schema) - wrap JSON in code fences or prose, use Python's quotes,
leave trailing commas, stop mid-object, and give boxes in whichever convention they
were trained on. :func:`parse_answer` turns such an answer into a validated answer
model (:class:`DescriptionAnswer`, :class:`PositionAnswer`, :class:`RegionAnswer`)
plus a list of the conversions it made, one line each, for ``Plan.repairs``. When the
answer cannot be read, :class:`AnswerError` says why in one line, and
:func:`retry_message` turns that into the follow-up turn of a single retry.

The rules, in order (``docs/llava.md`` lists them for users):

1. Code fences are dropped; every balanced ``{...}`` in the text is a candidate, in
   order; an object cut off at the end (truncated output) is closed only when what
   was written is complete values, and that is recorded.
2. Each candidate is parsed as JSON, then with Python-isms repaired (single quotes,
   ``True``/``False``/``None``, trailing commas), recorded. A candidate wrapping the
   answer (``{"answer": {...}}``) is unwrapped.
3. The first candidate that validates wins; later ones are ignored (recorded).
4. Boxes: ``[x, y, w, h]`` as asked, or objects with ``x/y/w/h``, ``x1/y1/x2/y2``,
   ``xmin/ymin/xmax/ymax``, ``left/top/width/height``, two corner points, or Qwen's
   ``bbox_2d`` (corners). Every value <= 1: normalized 0..1 coordinates. Otherwise the
   readings are tried in order - canvas pixels as ``[x, y, w, h]`` (overflowing by at most
   1/8 of the canvas), canvas pixels as
   ``[x1, y1, x2, y2]``, then (when a value exceeds the canvas but none exceeds 1000)
   the 0..1000 grid as ``[x, y, w, h]`` and as corners - and the first that lies on the
   canvas wins; when none does, the box is kept as written in pixels (for the repair
   below to clip). Every reading other than ``[x, y, w, h]`` pixels is recorded.

Geometry beyond the format (sides outside the limits, boxes off the canvas) is left to
:func:`sow.planners.repair.repair_plan`, which the planners call on the assembled plan.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field
from typing import Annotated, Any

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, ValidationError, field_validator

from sow.schemas import Canvas, first_error

NORMALIZED_GRID = 1000
"""The coordinate grid some models answer on (Qwen2-VL grounding uses 0..1000)."""

OVERFLOW_SLACK = 0.125
"""A box in canvas pixels as asked, ``[x, y, w, h]``, may overflow the canvas by this share of
its side and still be read so (the repair clips it) before other readings are tried."""

MAX_ANSWER_CHARS = 400
"""How much of a bad answer an error message quotes at most."""

RawBox = tuple[float, float, float, float]


class AnswerError(ValueError):
    """An answer that cannot be read as the stage's JSON; the message is one line for the retry."""


# -- the answer of each stage --------------------------------------------------------------


class _Answer(BaseModel):
    model_config = ConfigDict(extra="ignore")

    @classmethod
    def example(cls) -> str:
        """A one-line JSON example of the answer, put in the prompt and the retry message."""
        raise NotImplementedError


def _finite_box(value: Any) -> RawBox:
    numbers = tuple(float(v) for v in value)
    if len(numbers) != 4 or not all(math.isfinite(v) for v in numbers):
        raise ValueError("a box is four finite numbers [x, y, w, h]")
    return numbers  # type: ignore[return-value]


AnswerBox = Annotated[RawBox, BeforeValidator(_finite_box)]
"""A box field of an answer model: four finite numbers ``[x, y, w, h]``."""


class DescriptionAnswer(_Answer):
    """Stage 1, prompt intensification: what the condition shows, fused with the user's prompt."""

    description: str = Field("", description="What the image shows, in a short phrase.")
    prompt: str = Field(min_length=1, description="The user's prompt rewritten to include the description.")

    @field_validator("description", "prompt", mode="before")
    @classmethod
    def _text(cls, value: Any) -> Any:
        if value is None:
            return ""
        return value.strip() if isinstance(value, str) else value

    @classmethod
    def example(cls) -> str:
        return '{"description": "a smiling woman with short dark hair", "prompt": "a smiling woman with short dark hair, a chef in a busy kitchen"}'


class PositionAnswer(_Answer):
    """Stage 2, adaptive position: where the condition goes, ``[x, y, w, h]`` in canvas pixels."""

    box_v: AnswerBox

    @classmethod
    def example(cls) -> str:
        return '{"box_v": [160, 40, 192, 192]}'


class RegionAnswer(_Answer):
    """Stage 3, contextual refinement: the region that interacts with the condition, ``[x, y, w, h]``."""

    box_r: AnswerBox

    @classmethod
    def example(cls) -> str:
        return '{"box_r": [112, 232, 288, 280]}'


class PositionsAnswer(_Answer):
    """Stage 2 with several conditions: one box_v per condition, in the conditions' order, in one answer.

    The boxes are kept as written: each is read on its own (:func:`read_box`) so that one bad
    box falls back alone (:meth:`sow.planners.mllm.base.MLLMPlanner.plan`), not the whole answer.
    """

    boxes: list[Any] = Field(min_length=1, description="box_v of condition 1, 2, ... as [x, y, w, h].")

    @classmethod
    def example(cls) -> str:
        return '{"boxes": [[40, 60, 200, 200], [300, 60, 200, 200]]}'


class RegionsAnswer(_Answer):
    """Stage 3 with several conditions: one box_r per condition, in the conditions' order, in one answer."""

    boxes: list[Any] = Field(min_length=1, description="box_r of condition 1, 2, ... as [x, y, w, h].")

    @classmethod
    def example(cls) -> str:
        return '{"boxes": [[0, 260, 260, 252], [260, 260, 260, 252]]}'


BOX_FIELDS = ("box_v", "box_r")


@dataclass
class ParsedAnswer:
    """A validated answer and the conversions made to read it (lines for ``Plan.repairs``)."""

    value: _Answer
    repairs: list[str] = field(default_factory=list)


# -- finding JSON in text -------------------------------------------------------------------

_FENCE = re.compile(r"```[a-zA-Z0-9_-]*[ \t]*\n?|```")


class _Strings:
    """Which characters of a text belong to quoted strings, read left to right.

    Double and single quotes both open a string (models write Python-ish JSON); a backslash
    escapes the next character; an apostrophe between two letters or digits is prose.
    """

    def __init__(self) -> None:
        self.quote = ""
        """The open string's quote character; empty outside strings."""
        self._escaped = False

    def take(self, text: str, j: int) -> bool:
        """Read ``text[j]``; True when it is part of a string literal (its quotes included)."""
        ch = text[j]
        if self.quote:
            if self._escaped:
                self._escaped = False
            elif ch == "\\":
                self._escaped = True
            elif ch == self.quote:
                self.quote = ""
            return True
        prose = ch == "'" and 0 < j < len(text) - 1 and text[j - 1].isalnum() and text[j + 1].isalnum()
        if ch in "\"'" and not prose:
            self.quote = ch
            return True
        return False


def _candidates(text: str) -> list[tuple[str, bool]]:
    """Every top-level ``{...}`` in ``text`` in order, as (source, truncated); quotes respected."""
    found: list[tuple[str, bool]] = []
    i, n = 0, len(text)
    while i < n:
        start = text.find("{", i)
        if start < 0:
            break
        strings, depth, j = _Strings(), 0, start
        while j < n:
            if not strings.take(text, j):
                if text[j] in "{[":
                    depth += 1
                elif text[j] in "}]":
                    depth -= 1
                    if depth == 0:
                        break
            j += 1
        if j >= n:
            found.append((text[start:], True))
            break
        found.append((text[start : j + 1], False))
        i = j + 1
    return found


def _close_truncated(source: str) -> str | None:
    """``source`` (an object cut off at the end) closed, if it stops after a complete value."""
    stack: list[str] = []
    strings = _Strings()
    for j, ch in enumerate(source):
        if strings.take(source, j):
            continue
        if ch in "{[":
            stack.append("}" if ch == "{" else "]")
        elif ch in "}]" and stack:
            stack.pop()
    if strings.quote:
        return None  # cut inside a string: the value is incomplete
    body = source.rstrip()
    if body.endswith(":") or not stack:
        return None
    body = body.rstrip(",")
    return body + "".join(reversed(stack))


_TRAILING_COMMA = re.compile(r",(\s*[}\]])")
_PY_CONSTANTS = {"True": "true", "False": "false", "None": "null"}


def _pythonish_to_json(source: str) -> str:
    """Single-quoted strings to double-quoted, Python constants to JSON ones, trailing commas dropped."""
    out: list[str] = []
    i, n = 0, len(source)
    while i < n:
        ch = source[i]
        if ch in "\"'":
            quote, j, buf = ch, i + 1, []
            while j < n and source[j] != quote:
                if source[j] == "\\" and j + 1 < n:
                    buf.append(source[j : j + 2])
                    j += 2
                    continue
                buf.append('\\"' if source[j] == '"' else source[j])
                j += 1
            text = "".join(buf)
            if quote == "'":
                text = text.replace("\\'", "'")
            out.append('"' + text + '"')
            i = j + 1
            continue
        match = re.match(r"True|False|None", source[i:])
        if match and (i == 0 or not source[i - 1].isalnum()):
            out.append(_PY_CONSTANTS[match.group(0)])
            i += len(match.group(0))
            continue
        out.append(ch)
        i += 1
    return _TRAILING_COMMA.sub(r"\1", "".join(out))


def _load(source: str, repairs: list[str]) -> Any:
    try:
        return json.loads(source)
    except json.JSONDecodeError as first:
        fixed = _pythonish_to_json(source)
        try:
            value = json.loads(fixed)
        except json.JSONDecodeError:
            raise AnswerError(f"the JSON object is not valid JSON ({first.msg} at character {first.pos})") from None
        repairs.append("answer JSON repaired (single quotes, Python constants or trailing commas)")
        return value


# -- boxes ----------------------------------------------------------------------------------

_CORNER_KEYS = (("x1", "y1", "x2", "y2"), ("xmin", "ymin", "xmax", "ymax"), ("x_min", "y_min", "x_max", "y_max"))
_SIZE_KEYS = (("x", "y", "w", "h"), ("x", "y", "width", "height"), ("left", "top", "width", "height"))


def _number(value: Any, name: str) -> float:
    if isinstance(value, bool):
        raise AnswerError(f"{name}: expected numbers, got {value!r}")
    try:
        number = float(str(value).strip().rstrip("px")) if isinstance(value, str) else float(value)
    except (TypeError, ValueError):
        raise AnswerError(f"{name}: expected four numbers [x, y, w, h], got {value!r}") from None
    if not math.isfinite(number):
        raise AnswerError(f"{name}: holds a non-finite number")
    return number


def _box_numbers(value: Any, name: str) -> tuple[list[float], bool | None, str]:
    """(four numbers, corners? (None: unknown), how they were written) of a box in any accepted form."""
    if isinstance(value, dict):
        lowered = {str(k).lower(): v for k, v in value.items()}
        for key in ("bbox_2d", "bbox", "box"):
            if key in lowered:
                numbers, _, _ = _box_numbers(lowered[key], name)
                return numbers, key == "bbox_2d" or None, key
        for keys in _CORNER_KEYS:
            if all(k in lowered for k in keys):
                return [_number(lowered[k], name) for k in keys], True, "/".join(keys)
        for keys in _SIZE_KEYS:
            if all(k in lowered for k in keys):
                return [_number(lowered[k], name) for k in keys], False, "/".join(keys)
        raise AnswerError(f"{name}: expected [x, y, w, h], got an object with keys {sorted(lowered)}")
    if isinstance(value, str):
        parts = [p for p in re.split(r"[\s,;\[\]()]+", value) if p]
        return _box_numbers(parts, name) if len(parts) == 4 else _raise(name, value)
    if isinstance(value, (list, tuple)):
        if len(value) == 1 and isinstance(value[0], (list, tuple, dict)):
            return _box_numbers(value[0], name)
        if len(value) == 2 and all(isinstance(v, (list, tuple)) and len(v) == 2 for v in value):
            (x1, y1), (x2, y2) = value
            return [_number(v, name) for v in (x1, y1, x2, y2)], True, "two corner points"
        if len(value) != 4:
            raise AnswerError(f"{name}: a box is four numbers [x, y, w, h]; got {len(value)}")
        return [_number(v, name) for v in value], None, "list"
    return _raise(name, value)


def _raise(name: str, value: Any):
    raise AnswerError(f"{name}: expected four numbers [x, y, w, h], got {value!r}"[:MAX_ANSWER_CHARS])


def _fits(box: list[float], canvas: Canvas, slack: float = 0.0) -> bool:
    x, y, w, h = box
    return (
        x >= 0 and y >= 0 and w > 0 and h > 0
        and x + w <= canvas.width * (1 + slack) + 0.5 and y + h <= canvas.height * (1 + slack) + 0.5
    )


def _corners_to_size(box: list[float]) -> list[float]:
    x1, y1, x2, y2 = box
    return [x1, y1, x2 - x1, y2 - y1]


def read_box(value: Any, name: str, canvas: Canvas, repairs: list[str]) -> RawBox:
    """A box as the model wrote it -> ``(x, y, w, h)`` in canvas pixels; conversions appended to ``repairs``.

    The numbers may still leave the canvas or break the side limits: that is
    :func:`sow.planners.repair.repair_plan`'s to fix.
    """
    numbers, corners, written = _box_numbers(value, name)
    shown = "[" + ", ".join(f"{v:g}" for v in numbers) + "]"
    top = max(abs(v) for v in numbers)
    units: list[tuple[str, float, float]] = [("canvas pixels", 1.0, 1.0)]
    if top <= 1.0 and any(v != 0 for v in numbers):
        units = [("normalized 0-1 coordinates", canvas.width, canvas.height)]
    elif max(canvas.width, canvas.height) < top <= NORMALIZED_GRID:
        step_x, step_y = canvas.width / NORMALIZED_GRID, canvas.height / NORMALIZED_GRID
        units.append((f"a 0-{NORMALIZED_GRID} grid", step_x, step_y))
    forms = [False, True] if corners is None else [corners]
    readings = [
        (unit, form, _corners_to_size(scaled) if form else scaled)
        for unit, sx, sy in units
        for scaled in [[numbers[0] * sx, numbers[1] * sy, numbers[2] * sx, numbers[3] * sy]]
        for form in forms
    ]
    # the first reading that lies on the canvas (pixels as asked: with a little overflow,
    # which the repair clips); none does: as written, in the first unit
    slacks = [OVERFLOW_SLACK if (u == "canvas pixels" and not f) else 0.0 for u, f, _ in readings]
    unit, form, box = next((r for r, slack in zip(readings, slacks) if _fits(r[2], canvas, slack)), readings[0])
    if unit != "canvas pixels" or form:
        described = "[x1, y1, x2, y2] corners" if form else "[x, y, w, h]"
        if written not in ("list", "box", "bbox"):
            described += f" ({written})"
        result = "[" + ", ".join(f"{round(b, 1):g}" for b in box) + "]"
        repairs.append(f"{name} {shown} read as {described} in {unit}; converted to [x, y, w, h] pixels {result}")
    return tuple(box)  # type: ignore[return-value]


# -- the whole answer ------------------------------------------------------------------------


def _unwrap(value: Any, model: type[_Answer], repairs: list[str]) -> Any:
    """The answer object itself: ``{"answer": {...}}`` or a one-element list unwrapped."""
    wanted = set(model.model_fields)
    for _ in range(2):
        if isinstance(value, dict) and not wanted & set(value) and len(value) == 1:
            key, inner = next(iter(value.items()))
            if isinstance(inner, dict):
                repairs.append(f"answer was wrapped in {key!r}; unwrapped")
                value = inner
                continue
        break
    return value


def _rename_single_box(value: dict, model: type[_Answer], repairs: list[str]) -> dict:
    """A stage that asks for one box answered under another key (``"box"``, ``"bbox"``...): renamed."""
    wanted = [f for f in model.model_fields if f in BOX_FIELDS]
    if len(wanted) != 1 or wanted[0] in value:
        return value
    target = wanted[0]
    for key in ("box", "bbox", "bbox_2d", "position", "region", "coordinates", "box_v" if target == "box_r" else "box_r"):
        if key in value:
            repairs.append(f"{target} was given as {key!r}; renamed")
            return {**value, target: value[key] if key != "bbox_2d" else {"bbox_2d": value[key]}}
    return value


def _validate(value: Any, model: type[_Answer], canvas: Canvas, repairs: list[str]) -> _Answer:
    value = _unwrap(value, model, repairs)
    if isinstance(value, list) and len(value) == 1 and isinstance(value[0], dict):
        value = value[0]
    if not isinstance(value, dict):
        raise AnswerError(f"expected a JSON object like {model.example()}, got {type(value).__name__}")
    value = _rename_single_box(value, model, repairs)
    data = dict(value)
    for name in BOX_FIELDS:
        if name in model.model_fields and name in data:
            data[name] = read_box(data[name], name, canvas, repairs)
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise AnswerError(first_error(exc)) from None


# Kept beside constrained decoding (sow.planners.mllm.constrained): it reads the answers decoded freely (no llguidance,
# constrained=off, API models) and holds the box-convention reader, which a constrained answer passes through unchanged.
def parse_answer(text: str, model: type[_Answer], canvas: Canvas) -> ParsedAnswer:
    """The first JSON object in ``text`` that validates as ``model``, with the conversions made.

    Raises :class:`AnswerError` (one line, fit to feed back to the model) when none does;
    the message describes the first candidate's problem.
    """
    if not isinstance(text, str) or not text.strip():
        raise AnswerError("the answer was empty")
    cleaned = _FENCE.sub("\n", text)
    candidates = _candidates(cleaned)
    if not candidates:
        quoted = " ".join("".join(c if c.isprintable() else " " for c in text).split())[:80]
        raise AnswerError(f"no JSON object found in the answer (it began {quoted!r})")
    first_error_message: str | None = None
    for index, (source, truncated) in enumerate(candidates):
        repairs: list[str] = []
        if truncated:
            closed = _close_truncated(source)
            if closed is None:
                message = "the answer was cut off before the JSON object closed"
                first_error_message = first_error_message or message
                continue
            source = closed
            repairs.append("answer was cut off; the JSON object was closed after its last complete value")
        try:
            value = _validate(_load(source, repairs), model, canvas, repairs)
        except AnswerError as exc:
            first_error_message = first_error_message or str(exc)
            continue
        if len(candidates) > 1:
            skipped = len(candidates) - 1
            repairs.append(
                f"answer held {len(candidates)} JSON objects; object {index + 1} was used, {skipped} ignored"
            )
        return ParsedAnswer(value, repairs)
    raise AnswerError(first_error_message or "no usable JSON object in the answer")


def json_object_closed(text: str) -> bool:
    """Whether ``text`` already holds one complete top-level ``{...}`` (generation may stop there)."""
    candidates = _candidates(_FENCE.sub("\n", text))
    return bool(candidates) and not candidates[0][1]


def retry_message(error: AnswerError | str, model: type[_Answer]) -> str:
    """The follow-up user turn of a retry: what was wrong, and the expected form again."""
    return (
        f"Your answer could not be used: {error}. Reply again with only one JSON object "
        f"and nothing else, exactly in this form: {model.example()}"
    )
