"""Making a planner's answer safe to run.

Planners — above all multimodal LLMs — answer with boxes that reach off the canvas, sides
outside the paper's 180..256 (on a 512 canvas) or an empty prompt. :func:`repair_plan` fixes
what can be fixed safely and writes one line per change into ``plan.repairs``, so a repaired
plan never looks like the planner's own answer. What cannot be fixed raises
:class:`~sow.errors.PlannerError` naming the field. Running a planner (cache, fallback) is
:mod:`sow.planners.policy`'s job.

A plan the user passes in (``--plan plan.json``, ``pipe(..., plan=...)``) is the user's:
it is validated, never repaired.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from sow.errors import InputError, PlannerError
from sow.geometry import ceil_to_grid, clip_to_canvas, floor_to_grid, move_inside, nearest_grid_line, overlapping
from sow.schemas import Box, Canvas, GenerationConfig, Plan, first_error

MIN_BOX_SIDE = 8
"""The smallest side a box may have after repair: one latent cell of the VAE."""


# -- repair ------------------------------------------------------------------------------


def box_numbers(value: Any, name: str) -> tuple[float, float, float, float]:
    """``[x, y, w, h]`` (a Box, a list or a mapping) as four finite floats, or a PlannerError naming ``name``."""
    if isinstance(value, Box):
        return (value.x, value.y, value.w, value.h)
    if isinstance(value, Mapping):
        try:
            value = [value[k] for k in "xywh"]
        except KeyError as exc:
            raise PlannerError(f"planner answer: {name} has no {exc.args[0]!r}") from None
    if not isinstance(value, (list, tuple)) or len(value) != 4:
        raise PlannerError(f"planner answer: {name} must be [x, y, w, h], got {value!r}")
    try:
        numbers = tuple(float(v) for v in value)
    except (TypeError, ValueError):
        raise PlannerError(f"planner answer: {name} must hold four numbers, got {value!r}") from None
    if not all(math.isfinite(v) for v in numbers):
        raise PlannerError(f"planner answer: {name} holds a non-finite number: {value!r}")
    return numbers  # type: ignore[return-value]


def _fmt(box: tuple[float, ...]) -> str:
    return "[" + ", ".join(f"{v:g}" for v in box) + "]"


def fit_box_v(raw: tuple[float, float, float, float], canvas: Canvas, limits: tuple[int, int], repairs: list[str]) -> Box:
    """box_v with its longer side in ``limits`` (aspect kept), moved (not cut) inside the canvas.

    ``raw`` is ``[x, y, w, h]`` of any numbers (see :func:`box_numbers`); each change is appended
    to ``repairs``. Planners that need a valid box_v before they plan box_r use this directly.
    """
    x, y, w, h = raw
    lo, hi = limits
    before = len(repairs)
    if w <= 0 or h <= 0:
        side = hi
        repairs.append(f"box_v {_fmt(raw)} had no area; replaced by a {side}x{side} box at the same centre")
        x, y, w, h = x + w / 2 - side / 2, y + h / 2 - side / 2, side, side
    longer = max(w, h)
    target = min(max(longer, lo), hi, canvas.width * longer / w, canvas.height * longer / h)
    if abs(target - longer) > 0.5:
        cx, cy = x + w / 2, y + h / 2
        w, h = target * (w / longer), target * (h / longer)  # not w * (target / longer): overflows for tiny sides
        x, y = cx - w / 2, cy - h / 2
        repairs.append(
            f"box_v {_fmt(raw)}: longer side {longer:g} outside {lo}..{hi} (or the canvas); "
            f"scaled about its centre to {round(target)}"
        )
    rounded = (min(round(w), canvas.width), min(round(h), canvas.height))
    w, h = max(MIN_BOX_SIDE, rounded[0]), max(MIN_BOX_SIDE, rounded[1])
    if (w, h) != rounded:
        repairs.append(f"box_v {_fmt(raw)}: a side under {MIN_BOX_SIDE} px (one latent cell) widened to {w}x{h}")
    nx, ny = move_inside(round(x), round(y), w, h, canvas)
    if (nx, ny) != (round(x), round(y)):
        repairs.append(f"box_v moved inside the {canvas.width}x{canvas.height} canvas: {_fmt((round(x), round(y), w, h))} -> [{nx}, {ny}, {w}, {h}]")
    if any(v != int(v) for v in raw) and len(repairs) == before:
        repairs.append(f"box_v {_fmt(raw)} rounded to whole pixels")
    return Box(x=nx, y=ny, w=w, h=h)


def on_latent_grid(box: Box, canvas: Canvas, limits: tuple[int, int], grid: int = 8) -> Box:
    """``box`` (a box_v) as the pipeline pastes it: its corner on the nearest grid line, each side
    a whole number of latent cells (the nearest; the longer side kept in ``limits``), on the canvas.

    A plan that holds this box is what the image uses: the run snaps nothing more, so the plan
    file, the plan picture and the app's fields all show the pasted box.
    """
    lo, hi = limits

    def cells(value: float) -> int:
        return max(grid, nearest_grid_line(value, grid))

    lowest, highest = ceil_to_grid(lo, grid), floor_to_grid(min(hi, canvas.width, canvas.height), grid)
    if lowest <= highest:  # some whole number of cells lies in the limits: sides snapped too, aspect kept
        longer = max(box.w, box.h)
        target = min(max(cells(longer), lowest), highest)  # the longer side in whole cells, in the limits
        w, h = (target, min(cells(box.h * target / longer), target)) if box.w >= box.h else (min(cells(box.w * target / longer), target), target)
    else:  # a canvas too small for a whole-cell side in the limits: the size stays, the run rounds it
        w, h = box.w, box.h
    x = min(nearest_grid_line(box.x, grid), floor_to_grid(canvas.width - w, grid))
    y = min(nearest_grid_line(box.y, grid), floor_to_grid(canvas.height - h, grid))
    return Box(x=max(0, x), y=max(0, y), w=w, h=h)


def snapped_to_grid(plan: Plan, config: GenerationConfig) -> Plan:
    """``plan`` with every box_v :func:`on_latent_grid` (a normal form, not a repair: nothing is
    recorded); unchanged when snapping would make two conditions' boxes overlap."""
    from sow.planners.layout import GRID, side_limits

    limits = side_limits(config, len(plan.conditions))
    snapped = plan
    for i, cond in enumerate(plan.conditions):
        snapped = snapped.with_condition(i, box_v=on_latent_grid(cond.box_v, plan.canvas, limits, GRID))
    return plan if snapped.overlaps(GRID) else snapped


def _fit_box_r(raw: tuple[float, float, float, float], box_v: Box, canvas: Canvas, repairs: list[str]) -> Box:
    """box_r clipped to the canvas; an empty or off-canvas box_r becomes the body box under box_v."""
    from sow.planners.fixed import body_box

    x, y, w, h = raw
    left, top = max(0.0, x), max(0.0, y)
    right, bottom = min(float(canvas.width), x + w), min(float(canvas.height), y + h)
    if right - left < 1 or bottom - top < 1:
        box = body_box(box_v, canvas)
        repairs.append(f"box_r {_fmt(raw)} is empty on the {canvas.width}x{canvas.height} canvas; replaced by the body box under box_v [{box}]")
        return box
    nx, ny = round(left), round(top)
    box = Box(x=nx, y=ny, w=max(1, round(right) - nx), h=max(1, round(bottom) - ny))
    if (left, top, right, bottom) != (x, y, x + w, y + h):
        repairs.append(f"box_r {_fmt(raw)} clipped to the {canvas.width}x{canvas.height} canvas: [{box}]")
    elif any(v != int(v) for v in raw):
        repairs.append(f"box_r {_fmt(raw)} rounded to whole pixels")
    return box


def _answer_conditions(data: dict[str, Any]) -> list[dict[str, Any]]:
    """The conditions of a planner's answer: its ``conditions`` list, or the one-condition fields."""
    if data.get("conditions") is not None:
        raw = data["conditions"]
        if not isinstance(raw, (list, tuple)) or not raw:
            raise PlannerError(f"planner answer: conditions must be a non-empty list, got {raw!r}")
        return [dict(c) if isinstance(c, Mapping) else c.model_dump() if hasattr(c, "model_dump") else c for c in raw]
    return [{k: data.get(k) for k in ("box_v", "box_r", "crop")}]


def repair_plan(plan: Plan | Mapping[str, Any], config: GenerationConfig, images: int = 1) -> Plan:
    """A valid plan on ``config``'s canvas with each box_v's side in the side limits.

    ``plan`` is a :class:`Plan` or a mapping of its fields as a planner answered them
    (boxes as ``[x, y, w, h]`` lists or ``{"x":..}`` objects of any numbers, even negative
    or beyond the canvas; one condition at the top level or a ``conditions`` list).
    Repairs, each appended to ``plan.repairs`` as one line, per condition:

    - a plan made for another canvas: boxes scaled to ``config.canvas``;
    - box_v: longer side brought into the side limits (aspect kept, about its centre),
      then moved inside the canvas (moved, not cut, so the condition is not squeezed);
      with several conditions the lower limit is :func:`sow.planners.layout.side_limits`'s;
    - box_r: clipped to the canvas; empty after clipping -> the body box under box_v;
    - box_v overlapping an earlier condition's (on the latent grid): every condition placed
      side by side instead (:func:`sow.planners.layout.side_by_side`), the crops kept;
    - an empty prompt -> the user's prompt.

    ``images`` is how many condition images the run has: a condition naming another raises.
    Raises :class:`PlannerError` naming the field when the answer cannot be read at all.
    """
    from sow.planners.layout import GRID, side_by_side, side_limits

    data: dict[str, Any] = dict(plan) if isinstance(plan, Mapping) else {
        name: getattr(plan, name) for name in Plan.model_fields
    }
    conditions = _answer_conditions(data)
    several = len(conditions) > 1
    repairs: list[str] = list(data.get("repairs") or [])
    canvas = config.canvas
    raw_canvas = data.get("canvas")
    source = canvas
    if raw_canvas is not None:
        try:
            source = raw_canvas if isinstance(raw_canvas, Canvas) else Canvas.model_validate(raw_canvas)
        except ValueError as exc:
            raise PlannerError(f"planner answer: canvas: {first_error(exc)}") from None
    if source != canvas:
        repairs.append(
            f"plan was made for a {source.width}x{source.height} canvas; boxes scaled to {canvas.width}x{canvas.height}"
        )
    limits = side_limits(config, len(conditions))
    fixed: list[dict[str, Any]] = []
    for i, cond in enumerate(conditions):
        if not isinstance(cond, Mapping):
            raise PlannerError(f"planner answer: conditions[{i}] must be an object, got {cond!r}")
        label = f"conditions[{i}]." if several else ""
        boxes = {name: box_numbers(cond.get(name), label + name) for name in ("box_v", "box_r")}
        if source != canvas:
            sx, sy = canvas.width / source.width, canvas.height / source.height
            boxes = {n: (b[0] * sx, b[1] * sy, b[2] * sx, b[3] * sy) for n, b in boxes.items()}
        mine: list[str] = []
        box_v = fit_box_v(boxes["box_v"], canvas, limits, mine)
        box_r = _fit_box_r(boxes["box_r"], box_v, canvas, mine)
        repairs += [f"condition {i + 1}: {line}" for line in mine] if several else mine
        image = cond.get("image", 0) or 0
        if not isinstance(image, int) or not 0 <= image < images:
            raise PlannerError(f"planner answer: {label}image {image!r} is not one of the {images} condition image(s)")
        fixed.append({**{k: v for k, v in cond.items() if v is not None or k == "crop"}, "box_v": box_v, "box_r": box_r, "image": image})
    clash = _first_overlap([c["box_v"] for c in fixed], GRID)
    if clash is not None:
        i, j = clash
        sizes = [(c["box_v"].w, c["box_v"].h) for c in fixed]
        top = min(c["box_v"].y for c in fixed) / canvas.height
        try:
            placed = side_by_side(sizes, canvas, config, top)
        except InputError as exc:
            raise PlannerError(f"planner answer: condition {i + 1} and {j + 1} box_v overlap, and {exc}") from None
        from sow.planners.fixed import body_box

        order = sorted(range(len(fixed)), key=lambda k: fixed[k]["box_v"].center[0])  # keep the left-to-right order
        for slot, k in enumerate(order):
            fixed[k]["box_v"] = placed[slot]
            fixed[k]["box_r"] = body_box(placed[slot], canvas)
        repairs.append(
            f"condition {i + 1} and {j + 1} box_v overlap on the latent grid; all {len(fixed)} placed side by side "
            "in their left-to-right order (box_r: the body under each)"
        )

    prompt = str(data.get("prompt") or "").strip()
    user_prompt = str(data.get("user_prompt") or "")
    if not prompt:
        if not user_prompt.strip():
            raise PlannerError("planner answer: prompt is empty and there is no user prompt to fall back on")
        prompt = user_prompt
        repairs.append("prompt was empty; the user's prompt is used")
    from sow.safety.prompt_checks import MAX_PROMPT_CHARS, PLANNER_PROMPT_ROOM

    if len(prompt) > MAX_PROMPT_CHARS + PLANNER_PROMPT_ROOM:  # a model that rambled: cut to the plan's limit
        repairs.append(f"prompt of {len(prompt):,} characters cut to the plan limit of {MAX_PROMPT_CHARS + PLANNER_PROMPT_ROOM:,}")
        prompt = prompt[: MAX_PROMPT_CHARS + PLANNER_PROMPT_ROOM]

    rest = {k: v for k, v in data.items() if k not in ("box_v", "box_r", "crop", "conditions") and v is not None}
    fields = {**rest, "canvas": canvas, "conditions": fixed, "prompt": prompt, "repairs": repairs}
    try:
        return Plan.model_validate(fields)
    except ValueError as exc:
        raise PlannerError(f"planner answer: {first_error(exc)}") from None


def _first_overlap(boxes: list[Box], grid: int) -> tuple[int, int] | None:
    snapped = [b.aligned(grid) for b in boxes]
    for j in range(len(snapped)):
        for i in range(j):
            if overlapping(snapped[i], snapped[j]):
                return i, j
    return None


# -- the condition crop ----------------------------------------------------------


def repair_crop(plan: Plan, size: tuple[int, int] | list[tuple[int, int]]) -> Plan:
    """``plan`` with each crop clipped to its condition image (``size``: (width, height), or one per image)."""
    sizes = size if isinstance(size, list) else [size]
    several = len(plan.conditions) > 1
    for i, cond in enumerate(plan.conditions):
        crop, (width, height) = cond.crop, sizes[cond.image]
        if crop is None or (crop.right <= width and crop.bottom <= height):
            continue
        fixed = Box.model_validate(clip_to_canvas(crop, (width, height)))
        line = f"crop [{crop}] clipped to the {width}x{height} condition: [{fixed}]"
        plan = plan.with_condition(i, crop=fixed)
        plan.repairs = [*plan.repairs, f"condition {i + 1}: {line}" if several else line]
    return plan
