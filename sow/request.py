"""One generation as a caller asks for it: the request the CLI, the web app and the batch all build.

    request = GenerationRequest(["face.jpg"], "a chef in a busy kitchen", seed=7)
    checked = request.check()          # every input refused now, before any model loads
    pipe = SOWPipeline.from_pretrained("tiny")
    result = checked.run(pipe)         # the pipeline's SOWOutput

A request holds what varies per run (the conditions, the prompt, the seed, a plan or hand-made
boxes, the preset and the config fields over it, whether to trace attention); the model and the
stages' options belong to the pipeline that runs it (:class:`sow.pipeline.PipelineSpec`). The
request also carries the stage names chosen for that pipeline (``--planner``, ``--modulator``...),
because some checks depend on them (``--save-attention`` needs a modulator that modulates).

:meth:`GenerationRequest.check` runs every check that needs no model, in one place: the prompt,
the seed, the conditions (each read, as the run will read it), the plan against the conditions and
its boxes against the latent grid, the config fields, the attention trace against the modulator,
whether several people fit side by side, and whether the planner can start. Each front end names
the request's fields its own way in the messages (:attr:`GenerationRequest.labels`: the CLI says
``--seed``, the web page "the seed"). The pipeline checks the model-dependent rest (the canvas against
the model's grid) when it runs.

Why a module of its own, not :mod:`sow.schemas`: the schemas are the pydantic models of files
(plans, configs, run records) and import nothing heavy; a request holds in-memory images and the
behaviour around a run (checking, building the config, calling the pipeline), which is API, not a
file format. It imports neither torch nor the pipeline: the CLI builds and checks it before any of
that loads.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sow.errors import InputError
from sow.schemas import PRESETS, Box, GenerationConfig, Plan, StageNames

if TYPE_CHECKING:  # the pipeline is not imported here, not even for types: it imports this module
    from PIL import Image

MAX_SEED = 2**63
"""Seeds lie in 0 .. 2**63-1 (what torch's generator takes)."""

PEOPLE_OPTIONS = ("max_people", "pick")
"""Heuristic-planner options that choose faces in one group photo (``--max-people``, ``--pick``)."""

PYTHON_LABELS: Mapping[str, str] = {
    "seed": "seed",
    "boxes": "box_v/box_r",
    "plan": "plan",
    "attention": "trace_attention",
    "modulator": "modulator=",
    "max_people": "max_people",
    "pick": "pick",
}
"""How messages name the request's fields by default (a Python caller's names)."""


@dataclass(frozen=True)
class GenerationRequest:
    """One generation, as asked for: built by the CLI, the web app and the batch alike."""

    conditions: Sequence[str | Path | Image.Image]
    """The condition images (paths, or images for a Python caller), in order: one per person."""
    prompt: str
    """What the scene should show."""
    seed: int = 0
    """Image i of the run uses ``seed + i``."""
    num_images: int = 1
    """Variations made in one batched run, sharing the plan."""
    preset: str = "normal"
    """The preset the config starts from (``normal``, ``attribute``, ``style``, ``cow-reference``)."""
    overrides: Mapping[str, Any] = field(default_factory=dict)
    """:class:`GenerationConfig` fields over the preset (a ``--config`` file, ``--width``...)."""
    config: GenerationConfig | None = None
    """A finished config (the web page makes its own); None: the pipeline makes it from ``preset`` and ``overrides``."""
    plan: Plan | None = None
    """A saved or inline plan: skips the planner."""
    boxes: tuple[str, str] | None = None
    """Hand-made ``(box_v, box_r)`` as ``"x,y,w,h"`` text in canvas pixels: a plan fitted to the condition."""
    stages: Mapping[str, str] = field(default_factory=dict)
    """Stage names chosen for the pipeline that runs this (kind -> name); unset kinds keep the defaults."""
    planner_options: Mapping[str, Any] = field(default_factory=dict)
    """The planner's options (``max_people`` / ``pick`` for the heuristic planner's group photos)."""
    attention: bool = False
    """Trace the attention (the gate in the record, one layer's picture): needs a modulator that modulates."""
    on_planner_error: str = "fail"
    """``fail`` or ``heuristic``: a planner that cannot start is refused now only under ``fail``."""
    labels: Mapping[str, str] = field(default_factory=lambda: dict(PYTHON_LABELS))
    """How the caller names the fields in messages (the CLI: ``--seed``, ``--save-attention``...)."""

    def label(self, name: str) -> str:
        return self.labels.get(name) or PYTHON_LABELS.get(name, name)

    # -- what the request implies ------------------------------------------------------------

    @property
    def people_options(self) -> dict[str, Any]:
        return {k: v for k, v in self.planner_options.items() if k in PEOPLE_OPTIONS and v is not None}

    @property
    def condition_count(self) -> int:
        """How many conditions the run will keep: the plan's, else one per photo, else the faces
        ``max_people`` / ``pick`` ask for in one group photo (the planner may find fewer; the
        pipeline's callback reports the exact count of model calls as the run goes)."""
        if self.plan is not None:
            return len(self.plan.conditions)
        if len(self.conditions) > 1:
            return len(self.conditions)
        people = self.people_options
        if "pick" in people:
            return len(people["pick"])
        return int(people.get("max_people") or 1)

    def early_config(self) -> GenerationConfig:
        """The config as far as it is known without the model: ``config``, or the preset with the
        overrides (the model's native canvas and a family's own defaults come when it loads).
        Its stages are those the pipeline will run (:func:`run_stages`)."""
        if self.config is not None:
            return self.config
        overrides = dict(self.overrides)
        overrides["stages"] = run_stages(self.stages, self.preset, overrides.get("stages"))
        return GenerationConfig.from_preset(self.preset, **overrides)

    # -- checking, before any model loads ----------------------------------------------------

    def check(
        self, grid: int | Callable[[], int | None] | None = None, *, read_images: bool = True, preflight: bool = True,
        registry: Any = None,
    ) -> GenerationRequest:
        """Every check that needs no model; returns the request to run (hand-made boxes made into a plan
        fitted to the condition, its changes in :attr:`Plan.repairs`). Raises :class:`InputError` (exit 2).

        ``grid``: the model's pixels per latent cell when known before loading, or a function that tells it
        (:func:`latent_grid_of`; asked only when a plan has several boxes); no two box_v of a plan may overlap
        on it (None: the pipeline checks once the model is loaded). ``read_images``: read each condition as
        the run will (a missing, corrupt or hostile file refused naming which). ``preflight``: make the
        planner, when one will run, with its options and run its ``preflight()`` (:func:`check_planner`), looked
        up in ``registry`` (default: the process-wide one).
        """
        from sow.safety.prompt_checks import require_prompt

        if not self.conditions:
            raise InputError("give a condition image (a face photo)")
        require_prompt(self.prompt)
        check_seed(self.seed, self.label("seed"))
        if self.preset not in PRESETS:
            raise InputError(f"preset {self.preset!r}: choose one of {', '.join(PRESETS)}")
        self._check_people()
        config = self.early_config()
        self._check_attention(config)
        if read_images:
            self._read_conditions()
        if self.plan is None and self.boxes is None and len(self.conditions) > 1:
            from sow.planners.layout import check_fits  # more people than fit side by side

            check_fits(len(self.conditions), config)
        if preflight and self.plan is None and self.boxes is None:
            check_planner(self.stages.get("planner") or config.stages.planner, dict(self.planner_options), self.on_planner_error, registry)
        request = self
        if self.boxes is not None:
            image = self._first_image() if read_images and len(self.conditions) == 1 else None
            request = replace(self, plan=hand_made_plan(self.boxes, self.prompt, config, image, self.label("boxes")))
        if request.plan is not None:
            if callable(grid):
                grid = grid() if len(request.plan.conditions) > 1 else None
            check_plan(request.plan, len(self.conditions), grid)
        return request

    def _check_people(self) -> None:
        people = self.people_options
        if not people:
            return
        which = self.label("max_people") if "max_people" in people else self.label("pick")
        if self.plan is not None or self.boxes is not None:
            given = self.label("plan") if self.plan is not None else self.label("boxes")
            raise InputError(f"{given} places the faces itself: drop {which} (it chooses faces for the planner)")
        if len(self.conditions) > 1:
            raise InputError(f"{which} chooses faces in one group photo; this run has {len(self.conditions)} photos (one person each): drop {which}")

    def _check_attention(self, config: GenerationConfig) -> None:
        if not self.attention:
            return
        if config.stages.modulator == "none" or not config.ablation.dynamic_attention:
            raise InputError(
                f"{self.label('attention')} needs attention modulation; the modulator is off (use {self.label('modulator')} dam)"
            )
        if self.condition_count > 1 or len(self.conditions) > 1 or self.people_options:
            raise InputError(f"{self.label('attention')} draws one condition's attention; this run has several conditions")

    def _read_conditions(self) -> None:
        from sow.io.images import load_condition

        paths = [c for c in self.conditions if isinstance(c, (str, Path))]
        for i, path in enumerate(self.conditions):
            if not isinstance(path, (str, Path)):
                continue
            try:
                load_condition(Path(path))
            except InputError as exc:
                if len(paths) == 1:
                    raise
                raise type(exc)(f"condition {i + 1} of {len(self.conditions)}: {exc}") from None

    def _first_image(self) -> Image.Image:
        first = self.conditions[0]
        if isinstance(first, (str, Path)):
            from sow.io.images import load_condition

            return load_condition(Path(first)).image
        return first

    # -- running ----------------------------------------------------------------------------

    def config_for(self, pipe: Any) -> GenerationConfig:
        """The run's config on ``pipe``: ``config``, or the pipeline's (its model's native canvas, its family's
        defaults) from the preset and the overrides; with ``attention``, the gate traced."""
        if self.config is not None:
            config = self.config
        else:
            config = pipe.make_config(None, self.preset, **dict(self.overrides))
        if self.attention and not config.trace_attention:
            config = config.model_copy(update={"trace_attention": True})
        return config

    def run(
        self, pipe: Any, callback: Callable[[dict[str, Any]], None] | None = None, config: GenerationConfig | None = None
    ) -> Any:
        """Run the (checked) request on ``pipe`` (a :class:`sow.pipeline.SOWPipeline`); returns its ``SOWOutput``. ``callback`` gets the pipeline's dict after every model call
        (``evaluations`` and the exact ``total``). ``config``: :meth:`config_for` already made."""
        config = config or self.config_for(pipe)
        plan = self.plan
        if self.boxes is not None and (plan is None or plan.canvas != config.canvas):
            # hand-made boxes are read on the run's canvas (the model's native one, when none was given)
            image = self._first_image() if len(self.conditions) == 1 else None
            plan = hand_made_plan(self.boxes, self.prompt, config, image, self.label("boxes"))
        conditions = list(self.conditions)
        given = [str(c) if isinstance(c, Path) else c for c in conditions]
        return pipe(
            given if len(given) > 1 else given[0], self.prompt, plan=plan, seed=self.seed, config=config,
            callback=callback, num_images=self.num_images,
        )


def check_seed(seed: Any, label: str = "seed") -> int:
    """``seed`` as a whole number in 0 .. 2**63-1 (what torch's generator takes), else an :class:`InputError`."""
    if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed < MAX_SEED:
        raise InputError(f"{label} {seed}: must lie in 0 .. 2**63-1")
    return seed


def run_stages(chosen: Mapping[str, str] | None, preset: str, explicit: Mapping[str, str] | None = None) -> dict[str, str]:
    """The stages a run uses, by the pipeline's precedence (:meth:`sow.pipeline.SOWPipeline.make_config`): the
    defaults, under the preset's (``cow-reference``: modulator ``none``), under those chosen for the pipeline
    that differ from the defaults, under the config's own ``stages``."""
    defaults = StageNames().model_dump()
    picked = {k: v for k, v in (chosen or {}).items() if v is not None and v != defaults.get(k)}
    preset_stages = PRESETS.get(preset, {}).get("stages", {})
    return {**defaults, **preset_stages, **picked, **dict(explicit or {})}


def hand_made_plan(boxes: tuple[str, str], prompt: str, config: GenerationConfig, image: Image.Image | None = None,
                   label: str = "box_v/box_r") -> Plan:
    """The plan of hand-made ``(box_v, box_r)``; with the condition ``image``, fitted to its aspect
    (:mod:`sow.planners.manual`; each change noted in ``plan.repairs``)."""
    box_v, box_r = boxes
    try:
        plan = Plan(canvas=config.canvas, box_v=Box.parse(box_v), box_r=Box.parse(box_r), prompt=prompt,
                    user_prompt=prompt, planner="manual")
        if image is None:
            return plan
        from sow.planners.manual import hand_made_plan as fitted

        return fitted(image, plan.box_v, plan.box_r, prompt, config)
    except ValueError as exc:
        from sow.schemas import first_error

        raise InputError(f"invalid boxes: {first_error(exc)}") from None


def check_plan(plan: Plan, images: int, grid: int | None) -> None:
    """Every condition of ``plan`` uses one of ``images`` images and every image is used; with ``grid``
    (pixels per latent cell), no two box_v overlap once snapped to it."""
    for i, cond in enumerate(plan.conditions):
        if cond.image >= images:
            raise InputError(
                f"plan condition {i + 1} uses image {cond.image + 1}, but {images} condition image"
                f"{'s were' if images > 1 else ' was'} given"
            )
    unused = sorted(set(range(images)) - {c.image for c in plan.conditions})
    if unused:
        raise InputError(
            f"condition image{'s' if len(unused) > 1 else ''} {', '.join(str(u + 1) for u in unused)} "
            f"not used by the plan ({len(plan.conditions)} condition{'s' if len(plan.conditions) > 1 else ''})"
        )
    if grid is None:
        return
    for i, j, a, b in plan.overlaps(grid):
        raise InputError(
            f"condition {i + 1} box_v and condition {j + 1} box_v overlap once snapped to the "
            f"{grid}-pixel latent grid ([{a}] and [{b}]); leave a gap between them"
        )


def check_planner(name: str, options: dict[str, Any], on_error: str = "fail", registry: Any = None) -> None:
    """The planner made with its options (an unknown or bad option is refused), and its ``preflight()``
    run when it has one (a missing API key, a local model path that holds no model).

    With ``on_error="heuristic"`` a planner that cannot start is left to the run, where the heuristic
    plans instead and a note says why.
    """
    if registry is None:
        from sow.plugins import get_registry

        registry = get_registry()
    planner = registry.create("planner", name, **options)
    preflight = getattr(planner, "preflight", None)
    if callable(preflight) and on_error == "fail":
        from sow.errors import ModelLoadError
        from sow.planners.policy import FALLBACK_HINT

        try:
            preflight()
        except ModelLoadError as exc:  # as the run would say it: with the way to plan offline instead
            raise type(exc)(f"{exc}; or {FALLBACK_HINT}") from None


def latent_grid_of(model: str) -> int | None:
    """Pixels per latent cell of ``model``, when its configs tell it without loading anything: the
    embedded SD-shaped tiny models, or a local diffusers folder with a ``unet/`` and a ``vae/config.json``
    (2 ** (VAE blocks - 1)). None for anything else (a hub id, a single file, a transformer family that
    packs latents): the pipeline checks the boxes on its grid once the model is loaded."""
    import json

    if model in ("tiny", "tiny-sdxl"):
        from sow.models.loading import tiny_configs

        return 2 ** (len(tiny_configs()["vae"]["block_out_channels"]) - 1)
    folder = Path(model).expanduser()
    config = folder / "vae" / "config.json"
    if not ((folder / "unet").is_dir() and config.is_file()):
        return None
    try:
        blocks = json.loads(config.read_text(encoding="utf-8")).get("block_out_channels")
    except (OSError, ValueError, AttributeError):
        return None  # the loader says what is wrong with it, in its own words
    return 2 ** (len(blocks) - 1) if isinstance(blocks, list) and blocks else None
