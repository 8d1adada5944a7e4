"""``SOWPipeline``: Selective / Cyclic One-Way Diffusion, in the order of the paper's Algorithm 1.

    pipe = SOWPipeline.from_pretrained("tiny")
    result = pipe("face.jpg", "a chef in a busy kitchen", seed=7)
    result.image.save("chef.png")

Several people (docs/several-people.md): pass a list of conditions, each kept pixel-exact::

    result = pipe(["a.jpg", "b.jpg"], "two friends at a cafe", canvas={"width": 768, "height": 512})
"""

from __future__ import annotations

import dataclasses
import platform
import time
from collections.abc import Callable, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from PIL import Image

from sow.version import __version__
from sow import diffusers_style
from sow.engine import pixels, seeding
from sow.engine.backbone import Backbone, LoadRequest
from sow.engine.conditions import (
    ConditionInput,
    ConditionSource,
    PreparedCondition,
    masks_for,
    numbered,
    prepare_conditions,
    read_condition,
    read_conditions,
    seeded_images,
)
from sow.engine.context import RunContext, union_mask
from sow.engine.denoiser import Denoiser, PromptEmbeddings, run_texts
from sow.errors import InputError, SowError
from sow.models.loading import EMBEDDED_DEFAULT_SIDES, Components, load_components, resolve_device, resolve_dtype
from sow.models.performance import PerformanceSettings, ReencodingEmbeddings
from sow.models.performance import apply as apply_performance
from sow.engine.unet_family import UNetBackbone, UNetFamily
from sow.planners.fixed import random_placement
from sow.engine.numerics import require_finite
from sow.engine.fingerprint import weights_fingerprint
from sow.io.masks import used_mask
from sow.io.paste import KeptCondition, decode_type, paste_decoded
from sow.plugins import Registry, get_registry, plugin_exits_fail, validate_options
from sow.safety.prompt_checks import prompt_warnings, require_prompt
from sow.schemas import PRESETS, ConditionRecord, GenerationConfig, Plan, RunRecord, StageNames, StageTiming
from sow.request import check_plan
from sow.stage_kinds import canonical_kind, label as kind_label
from sow.stages import STAGE_FIELDS, Planner, PlanRequest, RunInputs, stage_options_by_kind



@dataclass
class SOWOutput:
    """What one generation returns."""

    image: Image.Image
    """The first image (with ``output_type`` "np"/"pt"/"latent": the first row of ``images``)."""
    plan: Plan
    record: RunRecord
    seeded_canvas: Image.Image
    latents: torch.Tensor = field(repr=False)
    """The final level-0 latents (before decoding), (num_images, 4, h, w)."""
    images: list[Image.Image] = field(default_factory=list)
    """All images of the run (``num_images``); ``image`` is the first. Image i used seed + i.
    With ``output_type="np"`` an array (n, h, w, 3), ``"pt"`` a tensor (n, 3, h, w), both in [0, 1];
    ``"latent"`` the final latents, undecoded."""
    artifacts: dict[str, Any] = field(default_factory=dict, repr=False)
    """What stages handed back (e.g. ``"attention"``: :class:`sow.attention.dam.AttentionCapture`)."""


class _Timer:
    """Wall time per stage; ``sync`` (the device's synchronize) runs before each clock read."""

    def __init__(self, sync: Callable[[], None] | None = None) -> None:
        self.timings: list[StageTiming] = []
        self.sync = sync or (lambda: None)
        self._open: tuple[str, float] | None = None

    def _now(self) -> float:
        self.sync()
        return time.perf_counter()

    @contextmanager
    def stage(self, name: str):
        self._open = (name, self._now())
        try:
            yield
        finally:
            self.switch(None)

    def switch(self, name: str | None) -> None:
        """Close the open stage and (if ``name``) open ``name`` in its place."""
        if self._open is None:
            return
        now = self._now()
        self.timings.append(StageTiming(name=self._open[0], seconds=round(now - self._open[1], 4)))
        self._open = (name, now) if name else None


@dataclass(frozen=True)
class PipelineSpec:
    """The recipe that builds a pipeline: everything :meth:`SOWPipeline.from_pretrained` needs, as a
    picklable value (``SOWPipeline.from_spec(spec)`` or ``spec.load()``).

    A distributed batch sends this to every worker (a Ray actor, a torchrun rank), which
    loads the model once and reuses it for all its items; the CLI builds one from its options.
    """

    model: str = "tiny"
    device: str = "auto"
    dtype: str = "auto"
    random_weights: bool = False
    allow_pickle: bool = False
    family: str | None = None
    """The model family, only where its configs cannot tell it (``--family``)."""
    vae: str | None = None
    loras: tuple[str, ...] = ()
    """``PATH[:SCALE]`` LoRA specs (``--lora``), applied in every worker."""
    stages: tuple[tuple[str, str], ...] = ()
    """(stage field, plugin name) pairs chosen on the command line."""
    planner_options: tuple[tuple[str, object], ...] = ()
    on_planner_error: str = "fail"
    plan_cache: bool = True
    threads: int | None = None
    """Torch's intra-op threads in this worker (None: leave torch's default)."""
    performance: tuple[tuple[str, object], ...] = ()
    """:class:`~sow.models.performance.PerformanceSettings` fields (e.g. ``(("offload", True), ("weight_format", "fp8"))``)
    applied in every worker after the load (empty: the defaults, nothing applied)."""

    def load(self) -> SOWPipeline:
        """Build the pipeline (in the calling process): :meth:`SOWPipeline.from_spec`."""
        from sow.planners.cache import PlanCache
        from sow.planners.policy import check_policy

        if self.threads is not None:
            import torch

            torch.set_num_threads(self.threads)
        pipe = SOWPipeline.from_pretrained(
            self.model,
            device=self.device,
            dtype=self.dtype,
            random_weights=self.random_weights,
            allow_pickle=self.allow_pickle,
            family=self.family,
            vae=self.vae,
            loras=list(self.loras) or None,
            stage_options={"planner": dict(self.planner_options)} if self.planner_options else None,
            **dict(self.stages),
        )
        pipe.on_planner_error = check_policy(self.on_planner_error)
        pipe.plan_cache = PlanCache() if self.plan_cache else None
        if self.performance:
            pipe.optimize(PerformanceSettings(**dict(self.performance)))
        return pipe


class SOWPipeline:
    """A frozen diffusion model (a family's :class:`~sow.engine.backbone.Backbone`) plus the stages of a SOW run, chosen by name."""

    def __init__(
        self,
        components: Components | Backbone,
        stages: StageNames | dict[str, str] | None = None,
        stage_options: dict[str, dict[str, Any]] | None = None,
        registry: Registry | None = None,
        performance: PerformanceSettings | None = None,
    ) -> None:
        if isinstance(components, Components):
            components, backbone = components, UNetBackbone(components)
        elif isinstance(components, UNetBackbone):
            components, backbone = components.components, components
        else:
            components, backbone = None, components
        self.components: Components | None = components
        """The SD 1.x / 2.x / SDXL modules (None for other families: :attr:`backbone` has them)."""
        self.backbone: Backbone = backbone
        """The model as the engine calls it (:mod:`sow.engine.backbone`)."""
        self.performance = performance or PerformanceSettings()
        self.registry = registry or get_registry()
        self.stages = stages if isinstance(stages, StageNames) else StageNames(**(stages or {}))
        self.stage_options = stage_options_by_kind(stage_options)
        """Options per stage kind (keyed by kind or by :class:`StageNames` field: :data:`sow.stages.STAGE_FIELDS`)."""
        self._instances: dict[tuple[str, str], object] = {}
        self.on_planner_error: str = "fail"
        """What a failing planner does: ``"fail"`` (raise, with a hint) or ``"heuristic"`` (plan offline)."""
        self.plan_cache = None
        """A :class:`sow.planners.cache.PlanCache` to reuse plans across runs (None: always plan)."""
        for kind, attr in STAGE_FIELDS.items():  # fail early on unknown names
            self.registry.get(kind, getattr(self.stages, attr))

    @classmethod
    def from_pretrained(
        cls,
        model: str = "tiny",
        *,
        device: str | None = "cpu",
        dtype: str = "auto",
        random_weights: bool = False,
        allow_pickle: bool = False,
        family: str | None = None,
        vae: str | None = None,
        loras: list[str] | None = None,
        stage_options: dict[str, dict[str, Any]] | None = None,
        registry: Registry | None = None,
        performance: PerformanceSettings | None = None,
        **stages: str | None,
    ) -> SOWPipeline:
        """Load a model (``"tiny"``, ``"tiny-sdxl"``, a hub id, a diffusers folder or a ``.safetensors`` file) and pick stages.

        The registered model families (``register_model_families``) are asked who loads ``model``
        (:meth:`Registry.family_for`); for the built-in UNet families the family comes from the
        configs (``family`` only where they cannot tell; a registered family's name loads it with
        that family). ``vae`` replaces the VAE; ``loras`` are ``PATH[:SCALE]`` LoRA specs (see
        :mod:`sow.models.lora`). :class:`PipelineSpec` is the same recipe as a picklable value.

        ``planner=``, ``inverter=``, ``scheduler=``, ``modulator=``, ``preserver=`` (one keyword per kind of
        :data:`sow.stage_kinds.RUN_STAGES`) choose the stages by registered name; None keeps the default.
        """
        stages = chosen_stages(stages, "from_pretrained")
        stage_options = stage_options_by_kind(stage_options)
        registry = registry or get_registry()
        for kind, attr in STAGE_FIELDS.items():  # check names and option keys before the (slow) model load
            entry = registry.get(kind, getattr(stages, attr))
            label = f"{kind_label(kind)} {entry.name!r} ({entry.distribution})"
            validate_options(entry.factory, dict((stage_options or {}).get(kind, {})), label)
        backbone = load_model(registry, model, device=device, dtype=dtype, random_weights=random_weights,
                              allow_pickle=allow_pickle, family=family, vae=vae, loras=loras)
        pipe = cls(backbone, stages, stage_options, registry)
        return pipe.optimize(performance) if performance is not None else pipe

    @classmethod
    def from_spec(cls, spec: PipelineSpec) -> SOWPipeline:
        """The pipeline a :class:`PipelineSpec` describes (the recipe a batch sends to its workers)."""
        return spec.load()

    def optimize(self, performance: PerformanceSettings | None = None, canvas_pixels: int | None = None) -> SOWPipeline:
        """Apply fast-path settings (attention kernel, layout, compile, VAE slicing/tiling, offload) in place."""
        self.performance = performance or PerformanceSettings()
        if self.components is None:
            from sow.models.backbone_performance import apply_to_backbone

            self.applied_performance = apply_to_backbone(self.backbone, self.performance, canvas_pixels)
            return self
        self.applied_performance = apply_performance(self.components, self.performance, canvas_pixels)
        if self.performance.sequential_offload and self.components.device.type == "cuda":
            self.enable_sequential_cpu_offload(device=self.components.device)
            self.applied_performance["sequential_offload"] = True
        return self

    def to(self, device: str | torch.device | None = None, dtype: torch.dtype | None = None) -> SOWPipeline:
        if self.components is not None:
            self.components.to(device, dtype)
        elif hasattr(self.backbone, "to"):
            self.backbone.to(device, dtype)
        else:
            raise InputError(f"the {self.backbone.family} family's backbone cannot be moved (it has no to())")
        return self

    @property
    def device(self) -> torch.device:
        if self.components is not None:
            return self.components.device
        return getattr(self.backbone, "device", None) or next(self.backbone.network.parameters()).device

    # -- the diffusers face -------------------------------------------------------------

    @classmethod
    def from_pipe(cls, pipe: Any, **stages: Any) -> SOWPipeline:
        """A SOW pipeline over a loaded diffusers Stable Diffusion pipeline's modules (shared, not copied).

        ``stages``: ``planner=``, ``modulator=`` ... and ``stage_options=``, as for :meth:`from_pretrained`.
        """
        options = stages.pop("stage_options", None)
        return cls(diffusers_style.components_of(pipe), chosen_stages(stages, "from_pipe"), options)

    def enable_model_cpu_offload(self, gpu_id: int | None = None, device: str | torch.device = "cuda") -> SOWPipeline:
        """Weights on the CPU; each model moves to ``device`` while it runs (diffusers' method of that name)."""
        from sow.models.performance import enable_offload

        target = _execution_device(gpu_id, device, "enable_model_cpu_offload")
        if self.components is None:
            from sow.models.backbone_performance import offload_backbone

            self._offload = offload_backbone(self.backbone, target)
        else:
            self._offload = enable_offload(self.components, target)
        self.performance = self.performance.model_copy(update={"offload": True})
        return self

    def enable_sequential_cpu_offload(self, gpu_id: int | None = None, device: str | torch.device = "cuda") -> SOWPipeline:
        """Weights on the CPU; each layer moves to ``device`` only for its own forward (least memory, slowest)."""
        from sow.models.sequential_offload import enable_sequential_offload

        target = _execution_device(gpu_id, device, "enable_sequential_cpu_offload")
        if self.components is None:
            from sow.models.backbone_performance import sequential_offload_backbone

            self._offload = sequential_offload_backbone(self.backbone, target)
        else:
            self._offload = enable_sequential_offload(self.components, target)
        self.performance = self.performance.model_copy(update={"sequential_offload": True})
        return self

    def _vae(self) -> torch.nn.Module:
        """The VAE, of a UNet family's components or of a backbone's (the flow families)."""
        if self.components is not None:
            return self.components.vae
        vae = getattr(self.backbone, "vae", None)
        if vae is None:
            raise InputError(f"the {self.backbone.family} family's backbone has no vae to tile or slice")
        return vae

    def enable_vae_tiling(self) -> SOWPipeline:
        """Decode in overlapping tiles (large canvases in little memory)."""
        self._vae().enable_tiling()
        self.performance = self.performance.model_copy(update={"vae_tiling": True})
        return self

    def disable_vae_tiling(self) -> SOWPipeline:
        self._vae().disable_tiling()
        self.performance = self.performance.model_copy(update={"vae_tiling": False})
        return self

    def enable_vae_slicing(self) -> SOWPipeline:
        """Decode a batch of images one at a time."""
        self._vae().enable_slicing()
        self.performance = self.performance.model_copy(update={"vae_slicing": True})
        return self

    # -- stages ------------------------------------------------------------------------

    def stage(self, kind: str, name: str | None = None) -> Any:
        """The stage object of ``kind`` named ``name`` (default: the pipeline's choice), created once."""
        kind = canonical_kind(kind, "stage kind")
        name = name or getattr(self.stages, STAGE_FIELDS[kind])
        key = (kind, name)
        if key not in self._instances:
            self._instances[key] = self.registry.create(kind, name, **self.stage_options.get(kind, {}))
        return self._instances[key]

    def make_config(self, config: GenerationConfig | None = None, preset: str = "normal", **overrides: Any) -> GenerationConfig:
        """The run's config: ``config`` (or the preset's defaults) with ``overrides``; stages default to the pipeline's.

        Without a config or a ``canvas`` override, the canvas is the model's native square
        (512 for SD 1.x / 2.1-base, 1024 for SDXL: :attr:`Components.native_resolution`).
        """
        if config is None:
            # precedence: the preset's stages (cow-reference: modulator none) over the pipeline's defaults,
            # stages chosen for the pipeline (not the defaults) over the preset, explicit overrides over all
            defaults = StageNames().model_dump()
            chosen = {k: v for k, v in self.stages.model_dump().items() if v != defaults[k]}
            preset_stages = PRESETS.get(preset, {}).get("stages", {})
            overrides["stages"] = {**self.stages.model_dump(), **preset_stages, **chosen, **overrides.get("stages", {})}
            if "canvas" not in overrides:
                side = self.components.native_resolution if self.components is not None else getattr(self.backbone, "native_resolution", 512)
                if self.components is not None:  # the embedded random-weight models: a small canvas (noise images)
                    side = EMBEDDED_DEFAULT_SIDES.get(self.components.source, side)
                overrides["canvas"] = {"width": side, "height": side}
            family_defaults = getattr(self.backbone, "config_defaults", None)  # flow models: S, t1..t3, guidance
            if family_defaults is not None:
                overrides = {**family_defaults(overrides), **overrides}
            return GenerationConfig.from_preset(preset, **overrides)
        if overrides:
            merged = config.model_dump()
            merged.update(overrides)
            return GenerationConfig.from_preset(merged.pop("preset"), **merged)
        return config

    @plugin_exits_fail
    def plan(
        self,
        condition: ConditionInput | Sequence[ConditionInput],
        prompt: str,
        config: GenerationConfig | None = None,
        seed: int = 0,
        planner: str | Planner | None = None,
    ) -> Plan:
        """Run the planner stage alone: cached, repaired, with the fallback policy (:mod:`sow.planners.policy`).

        ``condition`` is a path or a PIL image, or a list of them (several people), as for a run.
        ``planner`` is a registered name or a planner object (default: the configured one).
        """
        from sow.planners.policy import plan_with_policy

        images = [c if isinstance(c, Image.Image) else read_condition(c, i, n).image for i, n, c in numbered(condition)]
        sources = [c if isinstance(c, str) else str(c) if isinstance(c, Path) else "" for _, _, c in numbered(condition)]
        config = config or self.make_config()
        if planner is None or isinstance(planner, str):
            planner = self.stage("planner", planner or config.stages.planner)
        request = PlanRequest(condition=images[0], prompt=prompt, config=config, seed=seed, conditions=images, sources=sources)
        return plan_with_policy(
            planner,
            request,
            on_error=self.on_planner_error,
            cache=self.plan_cache,
            settings=self.stage_options.get("planner", {}),
            registry=self.registry,
        )

    def unet_evaluations(self, config: GenerationConfig | None = None, inputs: RunInputs | None = None) -> int:
        """UNet evaluations of one run of ``config``: the inversions (each condition to t2, the
        canvas to t1) plus the configured scheduler's own count (:meth:`sow.stages.Scheduler.unet_evaluations`)."""
        config = config or self.make_config()
        inputs = inputs or RunInputs()
        scheduler = self.stage("scheduler", config.stages.scheduler)
        return inversion_evaluations(config, inputs) + scheduler.unet_evaluations(config, inputs)

    # -- the run, step by step (each step a method; __call__ strings them together) -------

    def check_inputs(self, prompt: str, config: GenerationConfig, plan: Plan | None, images: int = 1) -> None:
        """Step 0: the prompt, the canvas against the latent grid and the plan against the images, before any work."""
        require_prompt(prompt)  # the one limit, checked before any work
        if plan is not None and plan.canvas != config.canvas:
            raise InputError(
                f"plan canvas {plan.canvas.width}x{plan.canvas.height} differs from the config canvas "
                f"{config.canvas.width}x{config.canvas.height}"
            )
        scale = self.backbone.vae_scale_factor
        if config.canvas.width % scale or config.canvas.height % scale:
            raise InputError(f"canvas sides must be multiples of {scale}")
        if plan is not None:  # the plan against the images, its boxes on this model's grid
            check_plan(plan, images, scale)

    def make_plan(
        self, sources: list[ConditionSource], prompt: str, config: GenerationConfig, seed: int, planner: Planner | None
    ) -> Plan:
        """Step 1 (Algorithm 1, line 1): a box_v and box_r per condition and the intensified prompt, from the
        planner (cached, repaired, with its fallback policy); seeded random placement under the AP ablation."""
        images = [s.image for s in sources]
        plan = self.plan(images if len(images) > 1 else images[0], prompt, config, seed, planner=planner)
        plan = _with_sources(plan, [s.given if isinstance(s.given, Image.Image) else s.label for s in sources])
        if not config.ablation.adaptive_position:  # AP ablation: seeded random placement
            plan = random_placement(plan, seeding.apply_crop(images[0], None, plan.crop)[0], config, seed)
        self.check_inputs(prompt, config, plan, len(images))
        return plan

    def encode_prompts(self, text: str, config: GenerationConfig) -> PromptEmbeddings:
        """Step 3a: the run's five prompts (the prompt, the negative, the empty one and the two background
        prompts), encoded once in one batch by the backbone (:meth:`Backbone.encode_prompts`)."""
        comp = self.components
        if not self.performance.cache_text_embeddings and comp is not None:
            return ReencodingEmbeddings(comp.text_encoder, comp.tokenizer, config, text, comp.prompt_encoder())
        encoded = self.backbone.encode_prompts(run_texts(config, text))
        run_inputs = getattr(self.backbone, "run_conditioning", None)  # per-run model inputs (FLUX.1 dev's guidance)
        extra = run_inputs(config.model_dump()) if run_inputs is not None else {}
        if extra:
            encoded = {name: {**cond, **extra} for name, cond in encoded.items()}
        return PromptEmbeddings.from_conditioning(encoded)

    def prepare_latents(
        self, prepared: list[PreparedCondition], config: GenerationConfig, seed: int, generators: list[torch.Generator]
    ) -> PreparedLatents:
        """Steps 2 and 3b (Algorithm 1's seed initialization): each condition pasted at its box_v on the
        gray canvas (or the background of ``readings.seed_background``), made once or per image when it
        depends on the seed, then every condition (at its own size) and the canvas VAE-encoded."""
        readings = config.readings
        per_image = seeded_images(prepared, config, seed, len(generators))
        condition_parts: list[list[torch.Tensor]] = [[] for _ in prepared]
        canvas_parts = []
        for i, (own_images, canvas_image) in enumerate(per_image):
            sampler = generators[min(i, len(generators) - 1)] if readings.vae_encoding == "sample" else None
            for k, own in enumerate(own_images):  # conditions first, as the reference
                condition_parts[k].append(self.encode_image(own, sampler))
            if readings.seed_background != "none":
                canvas_parts.append(self.encode_image(canvas_image, sampler))
        conditions = [torch.cat(parts) for parts in condition_parts]
        for k, latent in enumerate(conditions):
            require_finite(latent, "the encoded condition (VAE)" if len(prepared) == 1 else f"the encoded condition {k + 1} (VAE)")
        canvas = torch.cat(canvas_parts) if canvas_parts else None
        if canvas is not None:
            require_finite(canvas, "the encoded canvas (VAE)")
        return PreparedLatents(conditions=conditions, canvas=canvas, seeded=per_image[0][1])

    def invert(self, ctx: RunContext, latents: PreparedLatents) -> None:
        """Step 4 (Algorithm 1's inversion): each condition alone up to t2, its own trajectory kept; the canvas to
        t1 (or t2). All deterministic, so a batch of images shares them (inverted once, at batch 1) unless the
        canvas depends on the seed (then each image's, batched). Without a canvas (seed_background "none")
        the cycles start from Gaussian noise."""
        config, denoiser, images = ctx.config, ctx.denoiser, ctx.num_images
        ctx.condition_trajectories = [
            ctx.inverter.invert(denoiser, latent, 0, config.t2, "invert_condition") for latent in latents.conditions
        ]
        if latents.canvas is None:
            scale = self.backbone.vae_scale_factor
            first = latents.conditions[0]
            shape_of = first.new_empty(images, first.shape[1], config.canvas.height // scale, config.canvas.width // scale)
            ctx.canvas_latents = ctx.noise_like(shape_of)
            return
        inverted = ctx.inverter.invert(denoiser, latents.canvas, 0, config.canvas_start_level(), "invert_canvas")[-1]
        ctx.canvas_latents = inverted if inverted.shape[0] == images else inverted.repeat(images, 1, 1, 1)

    def decode(self, latents: torch.Tensor, output_type: str) -> Any:
        """Step 6: the VAE decode (NaN-checked), in the caller's ``output_type``; ``"latent"``: undecoded."""
        if output_type == "latent":
            return latents
        decoded = self.backbone.decode_latents(latents, nan_guard=self.performance.nan_guard)
        require_finite(decoded, "the decoded image (VAE)")
        return diffusers_style.to_output(decoded, output_type)

    def encode_image(self, image: Image.Image, generator: torch.Generator | None = None) -> torch.Tensor:
        """The model's latents of ``image``: the VAE posterior's mode, or (with ``generator``) a sample."""
        return self.backbone.encode_image(pixels.to_tensor(image).to(device=self.device), generator)

    _encode = encode_image  # the name before the named steps

    @plugin_exits_fail
    @torch.no_grad()
    def __call__(
        self,
        condition: ConditionInput | Sequence[ConditionInput],
        prompt: str,
        *,
        plan: Plan | None = None,
        planner: str | Planner | None = None,
        seed: int | None = None,
        config: GenerationConfig | None = None,
        preset: str = "normal",
        mask: Image.Image | Sequence[Image.Image | None] | None = None,
        callback: Callable[[dict[str, Any]], None] | None = None,
        num_images: int | None = None,
        generator: torch.Generator | list[torch.Generator] | None = None,
        num_images_per_prompt: int | None = None,
        output_type: str = "pil",
        callback_on_step_end: diffusers_style.StepEndFn | None = None,
        callback_on_step_end_tensor_inputs: list[str] | None = None,
        **overrides: Any,
    ) -> SOWOutput:
        """Generate an image of ``prompt`` that keeps ``condition``'s pixels.

        ``condition`` is a path or an image (an alpha channel becomes the condition mask
        unless ``mask`` is given), or a list of them: several conditions, each kept pixel-exact
        in its own box (``mask`` then a list too, one per image; a plan's ``conditions[i].mask``
        file wins). ``plan`` skips the planner; ``planner`` (a registered name
        or a planner object) replaces the configured one for this call. ``config`` or ``preset`` plus
        keyword ``overrides`` (fields of :class:`GenerationConfig`) set the method's values.
        ``callback`` receives a dict after every UNet evaluation. ``num_images`` variations
        run batched through every UNet call; image i equals a single run with ``seed + i``
        and the same plan (the plan is made once, with ``seed``).

        The diffusers spellings work too (:mod:`sow.diffusers_style`, docs/api.md): ``generator``
        (one, or one per image) instead of ``seed``, ``num_images_per_prompt`` for ``num_images``,
        ``output_type`` ("pil", "np", "pt", "latent": ``images`` holds that type) and
        ``callback_on_step_end(pipe, i, t, kwargs)`` after each denoising step, which may return
        changed latents.
        """
        call = diffusers_style.normalize_call(
            seed, generator, num_images, num_images_per_prompt, output_type,
            callback_on_step_end, callback_on_step_end_tensor_inputs,
        )
        if isinstance(planner, str):
            overrides["stages"] = {**overrides.get("stages", {}), "planner": planner}
        config = self.make_config(config, preset, **overrides)
        self.check_inputs(prompt, config, plan, len(numbered(condition)))
        sources = read_conditions(condition)
        run = _Run(self, config, call, sources, callback)

        # Algorithm 1, in the paper's order (each step below is a method with its own docstring).
        with run.timer.stage("plan"):
            plan = plan or self.make_plan(sources, prompt, config, call.seed, None if isinstance(planner, str) else planner)
            text = run.prompt_of(plan, prompt)
        prepared = prepare_conditions(plan, sources, masks_for(mask, sources), config, self.backbone.vae_scale_factor,
                                      self.device, explicit_mask=mask is not None)
        generators = run.generators()
        with run.timer.stage("encode"):
            embeddings = self.encode_prompts(text, config)
            latents = self.prepare_latents(prepared, config, call.seed, generators)
        ctx = run.context(plan, prepared, embeddings, generators)
        modulator = self.stage("modulator", config.stages.modulator)
        modulator.attach(self.backbone.network, ctx)
        try:
            with run.timer.stage("inversion"):
                self.invert(ctx, latents)
            with run.timer.stage("cycles"):  # the cycles, then the final denoise (the timer switches at its first step)
                final = self.stage("scheduler", config.stages.scheduler).run(ctx)
            run.finish(ctx)
        finally:
            modulator.detach(self.backbone.network)
        with run.timer.stage("decode"):
            images = self.decode(final, decode_type(config.paste, call.output_type))
        # 7. Paste: every condition's kept pixels back over the decoded images, exactly (sow.io.paste).
        kept = [KeptCondition(p.box_v, p.picture, p.keep) for p in prepared]
        with run.timer.stage("paste"):
            pasted = paste_decoded(images, kept, config.canvas, config.paste, config.paste_band, call.output_type)
        images, run.notes = pasted.images, run.notes + pasted.notes
        ctx.artifacts.update(kept=kept, unpasted=pasted.unpasted, masks=used_masks(plan, prepared, sources, config, mask is not None))
        return SOWOutput(
            image=images[0], plan=plan, record=run.record(ctx, plan, prepared, text), seeded_canvas=latents.seeded,
            latents=final, images=images, artifacts=ctx.artifacts,
        )

    # -- what the run needs to know about the model, for any backbone ------------------------

    @property
    def tokenizer(self) -> Any:
        """The (first) tokenizer, for the prompt-length warnings; None when the backbone has none to show."""
        if self.components is not None:
            return self.components.tokenizer
        return getattr(self.backbone, "tokenizer", None)

    @property
    def model_source(self) -> str:
        return self.components.source if self.components is not None else str(getattr(self.backbone, "source", None) or self.backbone.family)


@dataclass
class PreparedLatents:
    """Step 3b's result: the encoded conditions and canvas, and the seeded canvas picture."""

    conditions: list[torch.Tensor]
    """Each condition's latent at its own size (batch 1, or one per image when seed-dependent)."""
    canvas: torch.Tensor | None
    """The seeded canvas's latent; None with ``readings.seed_background`` "none" (the cycles start from noise)."""
    seeded: Image.Image
    """The (first image's) seeded canvas, for the caller to look at."""


class _Run:
    """The bookkeeping of one call that the steps share: config, timer, notes, counts, the record.

    Keeps :meth:`SOWPipeline.__call__` to the algorithm; everything here is plumbing around it.
    """

    def __init__(self, pipe: SOWPipeline, config: GenerationConfig, call: Any, sources: list[ConditionSource], callback) -> None:
        self.pipe, self.config, self.call, self.sources, self.callback = pipe, config, call, sources, callback
        settings = pipe.performance
        sync = torch.cuda.synchronize if settings.stage_sync and pipe.device.type == "cuda" else None
        self.timer = _Timer(sync)
        self.notes = [note for s in sources for note in s.notes] + call.notes
        self.denoiser: Denoiser | None = None

    def prompt_of(self, plan: Plan, prompt: str) -> str:
        """The text the run encodes: the plan's intensified prompt (or the user's under the PI ablation)."""
        config = self.config
        text = plan.prompt if config.ablation.prompt_intensification else (plan.user_prompt or prompt)
        text = require_prompt(text, "the plan's prompt", max_chars=None)  # the user's prompt was checked; a planner may add words
        if self.pipe.tokenizer is not None:
            self.notes = self.notes + prompt_warnings(self.pipe.tokenizer, text)
        return text

    def generators(self) -> list[torch.Generator]:
        """One generator per image (image i seeded with seed + i), or the caller's; they exist before encoding
        because a sampled VAE encoding draws from them."""
        call, device = self.call, self.pipe.device
        diffusers_style.check_generator_device(call.generators, device)
        return call.generators or [torch.Generator(device=device).manual_seed(call.seed + i) for i in range(call.num_images)]

    def context(self, plan: Plan, prepared: list[PreparedCondition], embeddings: PromptEmbeddings, generators) -> RunContext:
        """The run's schedule, guided model (:class:`Denoiser`) and the :class:`RunContext` the stages share."""
        pipe, config, call = self.pipe, self.config, self.call
        regions = [p.region for p in prepared]
        scale = pipe.backbone.vae_scale_factor
        schedule = pipe.backbone.noise_schedule(config.num_inference_steps, (config.canvas.height // scale, config.canvas.width // scale))
        self.total = pipe.unet_evaluations(config, RunInputs(conditions=len(regions)))
        denoiser = Denoiser(pipe.backbone, schedule, embeddings, config, union_mask(regions), self.callback, total_evaluations=self.total)
        if call.step_end is not None:
            denoiser.on_step_end = diffusers_style.StepEndCallback(pipe, call.step_end, call.tensor_inputs, embeddings)
        ctx = RunContext(
            config=config,
            plan=plan,
            seed=call.seed,
            regions=regions,
            generator=generators[0],
            generators=generators,
            num_images=call.num_images,
            denoiser=denoiser,
            inverter=pipe.stage("inverter", config.stages.inverter),
            preserver=pipe.stage("preserver", config.stages.preserver),
        )

        def on_step(step) -> None:
            if step.phase == "final" and (ctx.step is None or ctx.step.phase != "final"):
                self.timer.switch("final")
            ctx.step = step

        denoiser.on_step = on_step
        self.denoiser = denoiser
        return ctx

    def finish(self, ctx: RunContext) -> None:
        """After the scheduler: the deferred NaN check, and the scheduler's own count of model calls held to account."""
        denoiser = ctx.denoiser
        denoiser.finish()
        if denoiser.evaluations != self.total:
            raise SowError(
                f"scheduler {self.config.stages.scheduler!r} counted {self.total} UNet evaluations for this run "
                f"(with the inversions) but {denoiser.evaluations} were made: its unet_evaluations() is wrong"
            )

    def record(self, ctx: RunContext, plan: Plan, prepared: list[PreparedCondition], text: str) -> RunRecord:
        """Step 7: the run record written beside each image."""
        pipe, config, sources = self.pipe, self.config, self.sources
        comp = pipe.components
        boxes = [p.box_v for p in prepared]
        dtype = comp.dtype if comp is not None else next(pipe.backbone.network.parameters()).dtype
        return RunRecord(
            sow_version=__version__,
            model=pipe.model_source,
            family=pipe.backbone.family,
            loras=list(comp.loras) if comp is not None else list(getattr(pipe.backbone, "loras", [])),
            model_fingerprint=weights_fingerprint(comp if comp is not None else pipe.backbone),
            device=str(pipe.device),
            dtype=str(dtype).removeprefix("torch."),
            seed=self.call.seed,
            condition=sources[0].label,
            condition_sha256=sources[0].sha256,
            conditions=[
                ConditionRecord(source=sources[cond.image].label, sha256=sources[cond.image].sha256, aligned_box_v=box)
                for cond, box in zip(plan.conditions, boxes)
            ],
            config=config,
            plan=plan,
            aligned_box_v=boxes[0],
            timings=self.timer.timings,
            unet_evaluations=ctx.denoiser.evaluations,
            num_images=self.call.num_images,
            versions=_versions(),
            prompt_used=text,
            trace=ctx.trace if config.trace_attention else None,
            warnings=self.notes,
        )


def load_model(
    registry: Registry,
    model: str,
    *,
    device: str | torch.device | None = "cpu",
    dtype: str | torch.dtype = "auto",
    random_weights: bool = False,
    allow_pickle: bool = False,
    family: str | None = None,
    vae: str | None = None,
    loras: list[str] | None = None,
) -> Backbone:
    """The model ``model`` loaded by the registered family that claims it (a plugin's before the built-ins);
    ``family`` naming a registered non-UNet family loads it with that one. One line when nothing can load it."""
    torch_device = device if isinstance(device, torch.device) else resolve_device(device)
    request = LoadRequest(
        spec=model, device=torch_device, dtype=resolve_dtype(dtype, torch_device), random_weights=random_weights,
        allow_pickle=allow_pickle, options={"family": family, "vae": vae, "loras": loras},
    )
    named = registry.families.get(family) if family is not None else None
    if named is not None and not isinstance(named.family, UNetFamily):
        entry = named
        request = dataclasses.replace(request, options={"vae": vae, "loras": loras})
    else:
        entry = registry.family_for(request)
        if entry is not None and not isinstance(entry.family, UNetFamily) and any(v for v in (family, vae, loras)):
            request = dataclasses.replace(request, options={"vae": vae, "loras": loras})
    if entry is None or isinstance(entry.family, UNetFamily):
        # the built-in UNet families share one loader, which tells the family from the configs
        # (and whose messages say what was looked for when nothing claims the model)
        components = load_components(model, device=torch_device, dtype=request.dtype, random_weights=random_weights,
                                     allow_pickle=allow_pickle, family=family, vae=vae, loras=loras)
        return UNetBackbone(components)
    return entry.family.load(request)


def used_masks(plan: Plan, prepared: list[PreparedCondition], sources: list[Any], config: GenerationConfig, explicit_mask: bool) -> list[Image.Image]:
    """Each condition's mask as the run used it, white keeps, before the crop (:mod:`sow.io.masks`): saved beside the image."""
    polarity = config.readings.mask_polarity if explicit_mask else "white-keeps"
    return [used_mask(p.mask, polarity, sources[cond.image].image.size) for cond, p in zip(plan.conditions, prepared)]


def chosen_stages(stages: dict[str, Any], caller: str) -> StageNames:
    """The stage names of ``from_pretrained(planner=..., modulator=...)``: one keyword per stage kind
    (:data:`sow.stage_kinds.RUN_STAGES`), None for the default; any other keyword is refused naming the kinds."""
    fields = list(StageNames.model_fields)
    unknown = sorted(set(stages) - set(fields))
    if unknown:
        raise InputError(f"{caller}: unknown arguments {unknown}; stages are {', '.join(fields)}")
    return StageNames(**{k: v for k, v in stages.items() if v is not None})


def inversion_evaluations(config: GenerationConfig, inputs: RunInputs) -> int:
    """UNet evaluations of step 4: every condition inverted to t2, the canvas to t1 (or to t2, or not at all:
    ``readings.canvas_inversion`` and ``readings.seed_background``)."""
    canvas = 0 if config.readings.seed_background == "none" else config.canvas_start_level()
    return inputs.conditions * config.t2 + canvas


def check_plan_images(plan: Plan, count: int) -> None:
    """Every condition of ``plan`` refers to one of ``count`` images, and every image is used (:func:`sow.request.check_plan`)."""
    check_plan(plan, count, None)


def _with_sources(plan: Plan, sources: list[Any]) -> Plan:
    """The planner's plan with each condition's ``source`` filled from the paths the run was given."""
    labels = [s if isinstance(s, str) else "" for s in sources]
    if all(c.source or not labels[c.image] for c in plan.conditions if c.image < len(labels)):
        return plan
    conditions = [
        c.model_copy(update={"source": c.source or labels[c.image]}) if c.image < len(labels) else c for c in plan.conditions
    ]
    return plan.model_copy(update={"conditions": conditions})


def _execution_device(gpu_id: int | None, device: str | torch.device, method: str) -> torch.device:
    target = torch.device(device)
    if gpu_id is not None:
        target = torch.device(target.type, gpu_id)
    if target.type == "cuda" and not torch.cuda.is_available():
        raise InputError(f"{method}: no CUDA device here to run on (pass device='cpu' to test it on the CPU)")
    return target


def _versions() -> dict[str, str]:
    import diffusers
    import transformers

    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "diffusers": diffusers.__version__,
        "transformers": transformers.__version__,
    }
