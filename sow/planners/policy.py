"""Running a planner: the plan cache, the planner, the fallback policy and the repair.

:func:`plan_with_policy` is the one place that runs a planner for the CLI and the API: plan
cache lookup, the planner, the fallback policy (``fail`` or ``heuristic``) and the repair
(:mod:`sow.planners.repair`). :func:`make_plan` is ``sow plan``: a plan and its picture
without a diffusion model.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from PIL import Image

from sow.errors import InputError, ModelLoadError, PlannerError, SowError
from sow.planners.repair import repair_crop, repair_plan, snapped_to_grid
from sow.schemas import GenerationConfig, Plan

log = logging.getLogger("sow.planners.policy")

if TYPE_CHECKING:
    from sow.planners.cache import PlanCache
    from sow.plugins import Registry
    from sow.stages import Planner, PlanRequest

OnPlannerError = Literal["fail", "heuristic"]
ON_PLANNER_ERROR_CHOICES: tuple[str, ...] = ("fail", "heuristic")
FALLBACK_PLANNER = "heuristic"
"""The planner :func:`plan_with_policy` falls back on with ``on_error="heuristic"`` (looked up in the registry)."""

FALLBACK_HINT = "pass --on-planner-error heuristic (API: on_planner_error='heuristic') to plan offline instead"


# -- the repair, for a request of one or several conditions ------------------------------


def _repaired(answer: Plan | Mapping[str, Any], request: PlanRequest, name: str) -> Plan:
    """:func:`repair_plan`, :func:`repair_crop` and :func:`snapped_to_grid` for ``request``; a plan placing fewer conditions than
    there are images gets the heuristic's side-by-side layout for all of them (recorded)."""
    images = request.conditions
    plan = repair_plan(answer, request.config, len(images))
    if len(images) > 1 and {c.image for c in plan.conditions} != set(range(len(images))):
        from sow.planners.heuristic import HeuristicPlanner

        layout = HeuristicPlanner().plan(request)
        line = (
            f"planner {name!r} placed {len(plan.conditions)} of {len(images)} conditions; "
            "the heuristic laid out all of them side by side"
        )
        plan = plan.model_copy(update={"conditions": layout.conditions, "repairs": [*plan.repairs, line]})
        plan = repair_plan(plan, request.config, len(images))
    return snapped_to_grid(repair_crop(plan, [im.size for im in images]), request.config)  # the box the run pastes


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
        plan = _repaired(answer, request, name)
    except (PlannerError, ModelLoadError) as exc:
        if on_error == "fail":
            if isinstance(exc, ModelLoadError):
                raise ModelLoadError(f"{exc}; or {FALLBACK_HINT}") from None
            raise PlannerError(f"planner {name!r} failed: {exc}; {FALLBACK_HINT}") from exc.__cause__
        if fallback is None:
            from sow.plugins import get_registry

            fallback = (registry or get_registry()).create("planner", FALLBACK_PLANNER)
        fallback_name = getattr(fallback, "name", type(fallback).__name__)
        plan = _repaired(fallback.plan(request), request, fallback_name)
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
    images = request.conditions
    for cond in plan.conditions:
        if cond.image >= len(images):
            return f"it uses condition image {cond.image + 1} of {len(images)}"
        if cond.crop is not None:
            width, height = images[cond.image].size
            if cond.crop.right > width or cond.crop.bottom > height:
                return f"its crop [{cond.crop}] reaches outside the {width}x{height} condition"
    try:
        repair_plan(plan, request.config, len(images))
    except (SowError, ValueError) as exc:
        return str(exc).splitlines()[0]
    return None


def make_plan(
    condition: str | Path | Image.Image | list[str | Path | Image.Image],
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

    ``condition`` is one image or a list (several people; a group photo with the heuristic's
    ``max_people``/``pick`` options gives several conditions from one image). ``options`` are
    the planner's keyword arguments (e.g. ``{"model": "gemini-2.5-flash"}``). The picture is
    the seeded canvas (each condition's crop pasted at its box_v on gray) with every box drawn
    and labelled, numbered when there are several (:func:`sow.viz.plan.draw_plan`).
    """
    from sow.engine.seeding import apply_crop, fit_condition, paste_all_on_gray
    from sow.viz.plan import draw_plan
    from sow.io.images import load_condition
    from sow.plugins import get_registry
    from sow.stages import PlanRequest

    from sow.safety.prompt_checks import require_prompt

    require_prompt(prompt)
    config = config or GenerationConfig()
    registry = registry or get_registry()
    given = condition if isinstance(condition, list) else [condition]
    if not given:
        raise InputError("no condition given")
    loaded = []
    for i, one in enumerate(given):
        try:
            loaded.append(load_condition(one))
        except InputError as exc:
            if len(given) == 1:
                raise
            raise type(exc)(f"condition {i + 1} of {len(given)}: {exc}") from None
    sources = [str(c) if isinstance(c, (str, Path)) else "" for c in given]
    stage = registry.create("planner", planner, **dict(options or {}))
    request = PlanRequest(
        condition=loaded[0].image, prompt=prompt, config=config, seed=seed,
        conditions=[one.image for one in loaded], sources=sources,
    )
    plan = plan_with_policy(stage, request, on_error=on_error, cache=cache, settings=options or {}, registry=registry)
    conditions = [c.model_copy(update={"source": c.source or sources[c.image]}) for c in plan.conditions]
    plan = plan.model_copy(update={"conditions": conditions})
    pasted = []
    for cond in plan.conditions:
        image, mask = apply_crop(loaded[cond.image].image, loaded[cond.image].mask, cond.crop)
        pasted.append((fit_condition(image, cond.box_v, mask)[0], cond.box_v))
    return plan, draw_plan(plan, paste_all_on_gray(pasted, config.canvas))
