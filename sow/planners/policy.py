"""Making a planner's answer safe to run, and what happens when a planner fails.

Planners — above all multimodal LLMs — answer with boxes that reach off the canvas, sides
outside the paper's 180..256 (on a 512 canvas) or an empty prompt. :func:`repair_plan` fixes
what can be fixed safely and writes one line per change into ``plan.repairs``, so a repaired
plan never looks like the planner's own answer. What cannot be fixed raises
:class:`~sow.errors.PlannerError` naming the field.

:func:`plan_with_policy` is the one place that runs a planner for the CLI and the API: plan
cache lookup, the planner, the fallback policy (``fail`` or ``heuristic``) and the repair.

A plan the user passes in (``--plan plan.json``, ``pipe(..., plan=...)``) is the user's:
it is validated, never repaired.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from PIL import Image

from sow.errors import InputError, ModelLoadError, PlannerError, SowError
from sow.schemas import Box, Canvas, GenerationConfig, Plan, first_error

log = logging.getLogger("sow.planners.policy")

if TYPE_CHECKING:
    from sow.planners.cache import PlanCache
    from sow.plugins import Registry
    from sow.stages import Planner, PlanRequest

OnPlannerError = Literal["fail", "heuristic"]
ON_PLANNER_ERROR_CHOICES: tuple[str, ...] = ("fail", "heuristic")
FALLBACK_PLANNER = "heuristic"
"""The planner :func:`plan_with_policy` falls back on with ``on_error="heuristic"`` (looked up in the registry)."""

MIN_BOX_SIDE = 8
"""The smallest side a box may have after repair: one latent cell of the VAE."""

FALLBACK_HINT = "pass --on-planner-error heuristic (API: on_planner_error='heuristic') to plan offline instead"


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
        scale = target / longer
        cx, cy = x + w / 2, y + h / 2
        w, h = w * scale, h * scale
        x, y = cx - w / 2, cy - h / 2
        repairs.append(
            f"box_v {_fmt(raw)}: longer side {longer:g} outside {lo}..{hi} (or the canvas); "
            f"scaled about its centre to {round(target)}"
        )
    rounded = (min(round(w), canvas.width), min(round(h), canvas.height))
    w, h = max(MIN_BOX_SIDE, rounded[0]), max(MIN_BOX_SIDE, rounded[1])
    if (w, h) != rounded:
        repairs.append(f"box_v {_fmt(raw)}: a side under {MIN_BOX_SIDE} px (one latent cell) widened to {w}x{h}")
    nx = min(max(0, round(x)), canvas.width - w)
    ny = min(max(0, round(y)), canvas.height - h)
    if (nx, ny) != (round(x), round(y)):
        repairs.append(f"box_v moved inside the {canvas.width}x{canvas.height} canvas: {_fmt((round(x), round(y), w, h))} -> [{nx}, {ny}, {w}, {h}]")
    if any(v != int(v) for v in raw) and len(repairs) == before:
        repairs.append(f"box_v {_fmt(raw)} rounded to whole pixels")
    return Box(x=nx, y=ny, w=w, h=h)


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


def repair_plan(plan: Plan | Mapping[str, Any], config: GenerationConfig) -> Plan:
    """A valid plan on ``config``'s canvas with box_v's side in ``config.side_limits()``.

    ``plan`` is a :class:`Plan` or a mapping of its fields as a planner answered them
    (boxes as ``[x, y, w, h]`` lists or ``{"x":..}`` objects of any numbers, even negative
    or beyond the canvas). Repairs, each appended to ``plan.repairs`` as one line:

    - a plan made for another canvas: boxes scaled to ``config.canvas``;
    - box_v: longer side brought into the side limits (aspect kept, about its centre),
      then moved inside the canvas (moved, not cut, so the condition is not squeezed);
    - box_r: clipped to the canvas; empty after clipping -> the body box under box_v;
    - an empty prompt -> the user's prompt.

    Raises :class:`PlannerError` naming the field when the answer cannot be read at all.
    """
    data: dict[str, Any] = dict(plan) if isinstance(plan, Mapping) else {
        name: getattr(plan, name) for name in Plan.model_fields
    }
    repairs: list[str] = list(data.get("repairs") or [])
    canvas = config.canvas
    raw_canvas = data.get("canvas")
    source = canvas
    if raw_canvas is not None:
        try:
            source = raw_canvas if isinstance(raw_canvas, Canvas) else Canvas.model_validate(raw_canvas)
        except ValueError as exc:
            raise PlannerError(f"planner answer: canvas: {first_error(exc)}") from None
    boxes = {name: box_numbers(data.get(name), name) for name in ("box_v", "box_r")}
    if source != canvas:
        sx, sy = canvas.width / source.width, canvas.height / source.height
        boxes = {n: (b[0] * sx, b[1] * sy, b[2] * sx, b[3] * sy) for n, b in boxes.items()}
        repairs.append(
            f"plan was made for a {source.width}x{source.height} canvas; boxes scaled to {canvas.width}x{canvas.height}"
        )
    box_v = fit_box_v(boxes["box_v"], canvas, config.side_limits(), repairs)
    box_r = _fit_box_r(boxes["box_r"], box_v, canvas, repairs)

    prompt = str(data.get("prompt") or "").strip()
    user_prompt = str(data.get("user_prompt") or "")
    if not prompt:
        if not user_prompt.strip():
            raise PlannerError("planner answer: prompt is empty and there is no user prompt to fall back on")
        prompt = user_prompt
        repairs.append("prompt was empty; the user's prompt is used")

    fields = {**data, "canvas": canvas, "box_v": box_v, "box_r": box_r, "prompt": prompt, "repairs": repairs}
    try:
        return Plan.model_validate({k: v for k, v in fields.items() if v is not None or k == "crop"})
    except ValueError as exc:
        raise PlannerError(f"planner answer: {first_error(exc)}") from None


# -- the condition crop ------------------------------------------------------------------


def apply_crop(image: Image.Image, mask: Image.Image | None, crop: Box | None) -> tuple[Image.Image, Image.Image | None]:
    """The part of the condition (and its mask) that ``plan.crop`` selects; unchanged without a crop."""
    if crop is None:
        return image, mask
    width, height = image.size
    if crop.right > width or crop.bottom > height:
        raise InputError(f"plan crop [{crop}] reaches outside the {width}x{height} condition image")
    area = (crop.x, crop.y, crop.right, crop.bottom)
    if mask is not None:
        # a mask covers the whole condition at any resolution (seeding resizes it): crop the same share of it
        sx, sy = mask.width / width, mask.height / height
        mask_area = (round(crop.x * sx), round(crop.y * sy), round(crop.right * sx), round(crop.bottom * sy))
        mask = mask.crop((mask_area[0], mask_area[1], max(mask_area[2], mask_area[0] + 1), max(mask_area[3], mask_area[1] + 1)))
    return image.crop(area), mask


def repair_crop(plan: Plan, size: tuple[int, int]) -> Plan:
    """``plan`` with its crop clipped to a ``size`` (width, height) condition image; the change recorded."""
    crop = plan.crop
    if crop is None or (crop.right <= size[0] and crop.bottom <= size[1]):
        return plan
    x, y = min(crop.x, size[0] - 1), min(crop.y, size[1] - 1)
    fixed = Box(x=x, y=y, w=max(1, min(crop.right, size[0]) - x), h=max(1, min(crop.bottom, size[1]) - y))
    line = f"crop [{crop}] clipped to the {size[0]}x{size[1]} condition: [{fixed}]"
    return plan.model_copy(update={"crop": fixed, "repairs": [*plan.repairs, line]})


# -- the planner, the cache and the fallback policy --------------------------------------


def check_policy(on_error: str) -> OnPlannerError:
    if on_error not in ON_PLANNER_ERROR_CHOICES:
        raise InputError(f"--on-planner-error must be one of {', '.join(ON_PLANNER_ERROR_CHOICES)}; got {on_error!r}")
    return on_error  # type: ignore[return-value]


def plan_with_policy(
    planner: Planner,
    request: PlanRequest,
    *,
    on_error: OnPlannerError = "fail",
    cache: PlanCache | None = None,
    settings: Mapping[str, Any] | None = None,
    fallback: Planner | None = None,
    registry: Registry | None = None,
) -> Plan:
    """Run ``planner`` the way the CLI and the API do.

    1. ``cache`` (optional): a plan cached for the same condition, prompt, planner,
       ``settings`` (the planner's options) and model is returned without calling the planner.
    2. The planner. A :class:`PlannerError` either propagates with a hint (``on_error="fail"``,
       the default) or the :data:`FALLBACK_PLANNER` (or ``fallback``) plans instead and a note
       says why (``on_error="heuristic"``). A planner whose model cannot load
       (:class:`~sow.errors.ModelLoadError`: not downloaded, offline) falls back the same way;
       with ``on_error="fail"`` it propagates unchanged (exit 2, the user must fix the input).
       Any other exception from the planner counts as a :class:`PlannerError` ("crashed");
       other :class:`SowError` s propagate unchanged.
    3. :func:`repair_plan`; the plan is cached (fallback plans are not: the next run retries).
    """
    check_policy(on_error)
    key = cache.key(request, planner, settings or {}) if cache is not None else None
    cache_notes: list[str] = []
    if key is not None:
        hit, problem = cache.lookup(key)
        if hit is not None:
            problem = cache_hit_problem(hit, request)
            if problem is None:
                return hit.model_copy(update={"notes": [*hit.notes, f"read from the plan cache ({key[:12]})"]})
        if problem is not None:
            cache_notes.append(f"plan cache entry {key[:12]} not used ({problem}); the planner planned again")
            log.warning("%s", cache_notes[-1])
    name = getattr(planner, "name", type(planner).__name__)
    try:
        try:
            answer = planner.plan(request)
        except (SowError, KeyboardInterrupt):
            raise
        except BaseException as exc:  # a planner's bug (even sys.exit()): one line for the user, the cause chained
            raise PlannerError(f"{type(exc).__name__}: {exc} (a bug in the planner)") from exc
        plan = repair_crop(repair_plan(answer, request.config), request.condition.size)
    except (PlannerError, ModelLoadError) as exc:
        if on_error == "fail":
            if isinstance(exc, ModelLoadError):
                raise ModelLoadError(f"{exc}; or {FALLBACK_HINT}") from None
            raise PlannerError(f"planner {name!r} failed: {exc}; {FALLBACK_HINT}") from exc.__cause__
        if fallback is None:
            from sow.plugins import get_registry

            fallback = (registry or get_registry()).create("planner", FALLBACK_PLANNER)
        plan = repair_crop(repair_plan(fallback.plan(request), request.config), request.condition.size)
        fallback_name = getattr(fallback, "name", type(fallback).__name__)
        plan.notes = [f"planner {name!r} failed ({exc}); the {fallback_name} planner planned instead", *plan.notes]
        return plan
    if key is not None:
        try:
            cache.put(key, plan)
        except OSError as exc:  # the plan is good: a cache that cannot be written is only a warning
            problem = f"plan cache not written ({exc.strerror or type(exc).__name__}: {cache.folder})"
            cache_notes.append(f"warning: {problem}")
            log.warning("%s", problem)
    if cache_notes:
        plan = plan.model_copy(update={"notes": [*plan.notes, *cache_notes]})
    return plan


def cache_hit_problem(plan: Plan, request: PlanRequest) -> str | None:
    """Why a cached plan does not fit this run (its canvas, the condition's size), or None."""
    canvas = request.config.canvas
    if plan.canvas != canvas:
        return f"made for a {plan.canvas.width}x{plan.canvas.height} canvas, not {canvas.width}x{canvas.height}"
    if plan.crop is not None:
        width, height = request.condition.size
        if plan.crop.right > width or plan.crop.bottom > height:
            return f"its crop [{plan.crop}] reaches outside the {width}x{height} condition"
    try:
        repair_plan(plan, request.config)
    except (SowError, ValueError) as exc:
        return str(exc).splitlines()[0]
    return None


def make_plan(
    condition: str | Path | Image.Image,
    prompt: str,
    *,
    planner: str = "heuristic",
    options: Mapping[str, Any] | None = None,
    config: GenerationConfig | None = None,
    seed: int = 0,
    on_error: OnPlannerError = "fail",
    cache: PlanCache | None = None,
    registry: Registry | None = None,
) -> tuple[Plan, Image.Image]:
    """Plan without loading a diffusion model: ``(plan, picture of the plan)``; what ``sow plan`` runs.

    ``options`` are the planner's keyword arguments (e.g. ``{"model": "gemini-2.5-flash"}``).
    The picture is the seeded canvas (the condition's crop pasted at box_v on gray) with
    both boxes drawn and labelled (:func:`sow.io.canvas.draw_plan`).
    """
    from sow.io.canvas import draw_plan, seed_canvas
    from sow.io.images import load_condition
    from sow.plugins import get_registry
    from sow.stages import PlanRequest

    from sow.io.prompt_checks import require_prompt

    require_prompt(prompt)
    config = config or GenerationConfig()
    registry = registry or get_registry()
    loaded = load_condition(condition)
    stage = registry.create("planner", planner, **dict(options or {}))
    request = PlanRequest(condition=loaded.image, prompt=prompt, config=config, seed=seed)
    plan = plan_with_policy(stage, request, on_error=on_error, cache=cache, settings=options or {}, registry=registry)
    image, mask = apply_crop(loaded.image, loaded.mask, plan.crop)
    return plan, draw_plan(plan, seed_canvas(image, plan.box_v, config.canvas, mask))
