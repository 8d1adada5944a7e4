"""``SOWPipeline``: Selective / Cyclic One-Way Diffusion, in the order of the paper's Algorithm 1.

    pipe = SOWPipeline.from_pretrained("tiny")
    result = pipe("face.jpg", "a chef in a busy kitchen", seed=7)
    result.image.save("chef.png")

Several people (docs/several-people.md): pass a list of conditions, each kept pixel-exact::

    result = pipe(["a.jpg", "b.jpg"], "two friends at a cafe", canvas={"width": 768, "height": 512})
"""

from __future__ import annotations

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
from sow.io import canvas as cv
from sow.engine.context import LatentRegion, RunContext, union_mask
from sow.engine.denoiser import Denoiser, PromptEmbeddings
from sow.engine.diffusion_math import LevelSchedule
from sow.engine.fingerprint import weights_fingerprint
from sow.errors import InputError, SowError
from sow.io.images import load_condition
from sow.io.masks import used_mask
from sow.io.paste import KeptCondition, decode_type, paste_decoded
from sow.engine.models import Components, load_components
from sow.engine.performance import PerformanceSettings, ReencodingEmbeddings, decode_latents
from sow.engine.performance import apply as apply_performance
from sow.planners.fixed import random_placement
from sow.engine.numerics import require_finite
from sow.plugins import Registry, check_options, get_registry, plugin_exits_fail
from sow.io.prompt_checks import prompt_warnings, require_prompt
from sow.schemas import PRESETS, ConditionRecord, GenerationConfig, Plan, RunRecord, StageNames, StageTiming
from sow.stages import Planner, PlanRequest, RunInputs

STAGE_FIELDS = {
    "planner": "planner",
    "inverter": "inverter",
    "scheduler": "scheduler",
    "attention_modulator": "modulator",
    "preserver": "preserver",
}
"""Stage kind -> its field in :class:`sow.schemas.StageNames`."""


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


class SOWPipeline:
    """A frozen Stable Diffusion model plus the stages of a SOW run, chosen by name."""

    def __init__(
        self,
        components: Components,
        stages: StageNames | dict[str, str] | None = None,
        stage_options: dict[str, dict[str, Any]] | None = None,
        registry: Registry | None = None,
        performance: PerformanceSettings | None = None,
    ) -> None:
        self.components = components
        self.performance = performance or PerformanceSettings()
        self.registry = registry or get_registry()
        self.stages = stages if isinstance(stages, StageNames) else StageNames(**(stages or {}))
        self.stage_options = stage_options or {}
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
        planner: str | None = None,
        inverter: str | None = None,
        scheduler: str | None = None,
        modulator: str | None = None,
        preserver: str | None = None,
        stage_options: dict[str, dict[str, Any]] | None = None,
        registry: Registry | None = None,
        performance: PerformanceSettings | None = None,
    ) -> SOWPipeline:
        """Load a model (``"tiny"``, ``"tiny-sdxl"``, a hub id, a diffusers folder or a ``.safetensors`` file) and pick stages.

        The model family comes from its configs (``family`` only where they cannot tell);
        ``vae`` replaces the VAE; ``loras`` are ``PATH[:SCALE]`` LoRA specs (see :mod:`sow.engine.lora`).
        """
        chosen = {
            "planner": planner,
            "inverter": inverter,
            "scheduler": scheduler,
            "modulator": modulator,
            "preserver": preserver,
        }
        stages = StageNames(**{k: v for k, v in chosen.items() if v is not None})
        registry = registry or get_registry()
        for kind, attr in STAGE_FIELDS.items():  # check names and option keys before the (slow) model load
            entry = registry.get(kind, getattr(stages, attr))
            label = f"{kind.replace('_', ' ')} {entry.name!r} ({entry.distribution})"
            check_options(entry.factory, dict((stage_options or {}).get(kind, {})), label)
        components = load_components(
            model,
            device=device,
            dtype=dtype,
            random_weights=random_weights,
            allow_pickle=allow_pickle,
            family=family,
            vae=vae,
            loras=loras,
        )
        pipe = cls(components, stages, stage_options, registry)
        return pipe.optimize(performance) if performance is not None else pipe

    def optimize(self, performance: PerformanceSettings | None = None, canvas_pixels: int | None = None) -> SOWPipeline:
        """Apply fast-path settings (attention kernel, layout, compile, VAE slicing/tiling, offload) in place."""
        self.performance = performance or PerformanceSettings()
        self.applied_performance = apply_performance(self.components, self.performance, canvas_pixels)
        return self

    def to(self, device: str | torch.device | None = None, dtype: torch.dtype | None = None) -> SOWPipeline:
        self.components.to(device, dtype)
        return self

    @property
    def device(self) -> torch.device:
        return self.components.device

    # -- the diffusers face -------------------------------------------------------------

    @classmethod
    def from_pipe(cls, pipe: Any, **stages: Any) -> SOWPipeline:
        """A SOW pipeline over a loaded diffusers Stable Diffusion pipeline's modules (shared, not copied).

        ``stages``: ``planner=``, ``modulator=`` ... and ``stage_options=``, as for :meth:`from_pretrained`.
        """
        options = stages.pop("stage_options", None)
        unknown = sorted(set(stages) - set(STAGE_FIELDS.values()))
        if unknown:
            raise InputError(f"from_pipe: unknown arguments {unknown}; stages are {', '.join(STAGE_FIELDS.values())}")
        chosen = StageNames(**{k: v for k, v in stages.items() if v is not None})
        return cls(diffusers_style.components_of(pipe), chosen, options)

    def enable_model_cpu_offload(self, gpu_id: int | None = None, device: str | torch.device = "cuda") -> SOWPipeline:
        """Weights on the CPU; each model moves to ``device`` while it runs (diffusers' method of that name)."""
        from sow.engine.performance import enable_offload

        target = _execution_device(gpu_id, device, "enable_model_cpu_offload")
        self._offload = enable_offload(self.components, target)
        self.performance = self.performance.model_copy(update={"offload": True})
        return self

    def enable_sequential_cpu_offload(self, gpu_id: int | None = None, device: str | torch.device = "cuda") -> SOWPipeline:
        """Weights on the CPU; each layer moves to ``device`` only for its own forward (least memory, slowest)."""
        from sow.engine.sequential_offload import enable_sequential_offload

        target = _execution_device(gpu_id, device, "enable_sequential_cpu_offload")
        self._offload = enable_sequential_offload(self.components, target)
        return self

    def enable_vae_tiling(self) -> SOWPipeline:
        """Decode in overlapping tiles (large canvases in little memory)."""
        self.components.vae.enable_tiling()
        self.performance = self.performance.model_copy(update={"vae_tiling": True})
        return self

    def disable_vae_tiling(self) -> SOWPipeline:
        self.components.vae.disable_tiling()
        self.performance = self.performance.model_copy(update={"vae_tiling": False})
        return self

    def enable_vae_slicing(self) -> SOWPipeline:
        """Decode a batch of images one at a time."""
        self.components.vae.enable_slicing()
        self.performance = self.performance.model_copy(update={"vae_slicing": True})
        return self

    # -- stages ------------------------------------------------------------------------

    def stage(self, kind: str, name: str | None = None) -> Any:
        """The stage object of ``kind`` named ``name`` (default: the pipeline's choice), created once."""
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
                side = self.components.native_resolution
                overrides["canvas"] = {"width": side, "height": side}
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

        images = [c if isinstance(c, Image.Image) else _read_condition(c, i, n)[1] for i, n, c in _numbered(condition)]
        sources = [c if isinstance(c, str) else str(c) if isinstance(c, Path) else "" for _, _, c in _numbered(condition)]
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

    # -- the run -----------------------------------------------------------------------

    def check_inputs(self, prompt: str, config: GenerationConfig, plan: Plan | None, images: int = 1) -> None:
        require_prompt(prompt)  # the one limit, checked before any work
        if plan is not None and plan.canvas != config.canvas:
            raise InputError(
                f"plan canvas {plan.canvas.width}x{plan.canvas.height} differs from the config canvas "
                f"{config.canvas.width}x{config.canvas.height}"
            )
        scale = self.components.vae_scale_factor
        if config.canvas.width % scale or config.canvas.height % scale:
            raise InputError(f"canvas sides must be multiples of {scale}")
        if plan is not None:
            check_plan_images(plan, images)
            for i, j, a, b in plan.overlaps(scale):
                raise InputError(
                    f"condition {i + 1} box_v and condition {j + 1} box_v overlap once snapped to the "
                    f"{scale}-pixel latent grid ([{a}] and [{b}]); leave a gap between them"
                )

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
        # 0. The diffusers-style arguments, read once into sow's own.
        call = diffusers_style.normalize_call(
            seed, generator, num_images, num_images_per_prompt, output_type,
            callback_on_step_end, callback_on_step_end_tensor_inputs,
        )
        seed, num_images = call.seed, call.num_images
        comp, settings = self.components, self.performance
        sync = torch.cuda.synchronize if settings.stage_sync and comp.device.type == "cuda" else None
        timer = _Timer(sync)
        if isinstance(planner, str):
            overrides["stages"] = {**overrides.get("stages", {}), "planner": planner}
        config = self.make_config(config, preset, **overrides)
        numbered = _numbered(condition)
        self.check_inputs(prompt, config, plan, len(numbered))
        read = [_read_condition(c, i, n) for i, n, c in numbered]
        condition_images = [r[1] for r in read]
        explicit_mask = mask is not None  # readings.mask_polarity applies to it; an alpha channel keeps its opaque pixels
        masks = _masks(mask, [r[2] for r in read])
        notes = [note for r in read for note in r[4]] + call.notes
        device, scale = comp.device, comp.vae_scale_factor

        # 1. Plan: a box_v and box_r per condition, and the (intensified) prompt.
        with timer.stage("plan"):
            if plan is None:
                planned = [c if isinstance(c, Image.Image) else r[0] for (_, _, c), r in zip(numbered, read)]
                plan = self.plan(
                    condition_images if len(condition_images) > 1 else condition_images[0],
                    prompt, config, seed, planner=None if isinstance(planner, str) else planner,
                )
                plan = _with_sources(plan, planned)
                if not config.ablation.adaptive_position:  # AP ablation: seeded random placement
                    plan = random_placement(plan, cv.apply_crop(condition_images[0], None, plan.crop)[0], config, seed)
                self.check_inputs(prompt, config, plan, len(condition_images))
            text = plan.prompt if config.ablation.prompt_intensification else (plan.user_prompt or prompt)
            text = require_prompt(text, "the plan's prompt", max_chars=None)  # the user's prompt was checked; a planner may add words
            notes = notes + prompt_warnings(comp.tokenizer, text)

        # 2. Seed initialization: each condition (its planned crop) pasted at its box_v (snapped to latent
        #    cells) on one gray canvas (or the background of readings.seed_background, one condition only);
        #    each condition's own-size image kept for its own inversion.
        readings = config.readings
        polarity = readings.mask_polarity if explicit_mask else "white-keeps"
        fitted_all, keeps, boxes, regions, used_masks = [], [], [], [], []
        for cond in plan.conditions:
            given_mask = _plan_mask(cond, masks)
            used_masks.append(used_mask(given_mask, polarity, condition_images[cond.image].size))  # saved beside the image
            picture, keep_mask = cv.apply_crop(condition_images[cond.image], given_mask, cond.crop)
            box_v = cond.box_v.aligned(scale)
            if not box_v.fits(config.canvas):
                box_v = box_v.model_copy(update={"x": config.canvas.width - box_v.w})
            fitted, keep = cv.fit_condition(picture, box_v, keep_mask, polarity)
            fitted_all.append(fitted)
            keeps.append(keep)
            boxes.append(box_v)
            regions.append(LatentRegion.from_box(
                box_v, config.canvas, scale, cv.latent_mask(keep, scale, readings.mask_cell_rule).to(device)
            ))
        if len(regions) > 1 and readings.seed_background not in ("gray", "none"):
            raise InputError(f"readings.seed_background {readings.seed_background!r} takes one condition; this plan has {len(regions)} (use gray)")
        # a seed-dependent canvas (noise background, sampled VAE latents) is made per image: image i as seed + i
        per_image = readings.seed_background == "noise" or readings.vae_encoding == "sample"
        images_in = []  # per image: (each condition's own image, the seeded canvas)
        for i in range(num_images if per_image else 1):
            if len(regions) == 1:
                one, canvas_image = cv.seed_images(fitted_all[0], keeps[0], boxes[0], config.canvas, readings.seed_background, seed + i)
                images_in.append(([one], canvas_image))
            else:
                images_in.append((fitted_all, cv.paste_all_on_gray(list(zip(fitted_all, boxes)), config.canvas)))
        seeded = images_in[0][1]
        # the run's generators (one per image) exist before encoding: a sampled VAE encoding draws from them
        diffusers_style.check_generator_device(call.generators, device)
        generators = call.generators or [torch.Generator(device=device).manual_seed(seed + i) for i in range(num_images)]

        # 3. Encode: the prompts once per run; each condition (at its own size) and the canvas.
        with timer.stage("encode"):
            if settings.cache_text_embeddings:
                embeddings = PromptEmbeddings.encode(comp.text_encoder, comp.tokenizer, config, text, comp.prompt_encoder())
            else:
                embeddings = ReencodingEmbeddings(comp.text_encoder, comp.tokenizer, config, text, comp.prompt_encoder())
            condition_parts = [[] for _ in regions]
            canvas_parts = []
            for i, (own_images, canvas_image) in enumerate(images_in):
                sampler = generators[min(i, len(generators) - 1)] if readings.vae_encoding == "sample" else None
                for k, own in enumerate(own_images):  # conditions first, as the reference
                    condition_parts[k].append(self._encode(own, sampler))
                if readings.seed_background != "none":
                    canvas_parts.append(self._encode(canvas_image, sampler))
            condition_latents = [torch.cat(parts) for parts in condition_parts]
            for k, latent in enumerate(condition_latents):
                require_finite(latent, "the encoded condition (VAE)" if len(regions) == 1 else f"the encoded condition {k + 1} (VAE)")
            canvas_latents = torch.cat(canvas_parts) if canvas_parts else None
            if canvas_latents is not None:
                require_finite(canvas_latents, "the encoded canvas (VAE)")

        schedule = LevelSchedule.from_scheduler(comp.scheduler, config.num_inference_steps)
        total = self.unet_evaluations(config, RunInputs(conditions=len(regions)))
        denoiser = Denoiser(
            comp.unet, schedule, embeddings, config, union_mask(regions), callback, comp.added_conditioning(),
            total_evaluations=total,
        )
        if call.step_end is not None:
            denoiser.on_step_end = diffusers_style.StepEndCallback(self, call.step_end, call.tensor_inputs, embeddings)
        ctx = RunContext(
            config=config,
            plan=plan,
            seed=seed,
            regions=regions,
            generator=generators[0],
            generators=generators,
            denoiser=denoiser,
            inverter=self.stage("inverter", config.stages.inverter),
            preserver=self.stage("preserver", config.stages.preserver),
        )

        def on_step(step) -> None:
            if step.phase == "final" and (ctx.step is None or ctx.step.phase != "final"):
                timer.switch("final")
            ctx.step = step

        denoiser.on_step = on_step
        modulator = self.stage("attention_modulator", config.stages.modulator)
        modulator.attach(comp.unet, ctx)
        try:
            # 4. Inversion: each condition alone up to t2 (its own trajectory kept), the canvas to t1 (or t2).
            #    All deterministic, so a batch of images shares them (inverted once, at batch 1),
            #    unless the canvas depends on the seed (then each image's is inverted, batched).
            #    Without a canvas (seed_background "none") the cycles start from Gaussian noise.
            with timer.stage("inversion"):
                start = config.canvas_start_level()
                ctx.condition_trajectories = [
                    ctx.inverter.invert(denoiser, latent, 0, config.t2, "invert_condition") for latent in condition_latents
                ]
                if canvas_latents is None:
                    h, w = config.canvas.height // scale, config.canvas.width // scale
                    first = condition_latents[0]
                    shape_of = first.new_empty(num_images, first.shape[1], h, w)
                    ctx.canvas_latents = ctx.noise_like(shape_of)
                else:
                    inverted = ctx.inverter.invert(denoiser, canvas_latents, 0, start, "invert_canvas")[-1]
                    ctx.canvas_latents = inverted if inverted.shape[0] == num_images else inverted.repeat(num_images, 1, 1, 1)
            # 5. Cyclic one-way diffusion, then the final denoise with visual condition preservation
            #    (timed as "cycles" and "final": the timer switches at the first final step).
            with timer.stage("cycles"):
                latents = self.stage("scheduler", config.stages.scheduler).run(ctx)
            denoiser.finish()
            if denoiser.evaluations != total:
                raise SowError(
                    f"scheduler {config.stages.scheduler!r} counted {total} UNet evaluations for this run "
                    f"(with the inversions) but {denoiser.evaluations} were made: its unet_evaluations() is wrong"
                )
        finally:
            modulator.detach(comp.unet)

        # 6. Decode.
        with timer.stage("decode"):
            if call.output_type == "latent":
                images = latents
            else:
                decoded = decode_latents(comp.vae, latents, nan_guard=settings.nan_guard, upcast=comp.vae_needs_fp32)
                require_finite(decoded, "the decoded image (VAE)")
                images = diffusers_style.to_output(decoded, decode_type(config.paste, call.output_type))

        # 7. Paste: every condition's kept pixels back over the decoded images, exactly (sow.io.paste).
        kept = [KeptCondition(box, fitted, keep) for fitted, keep, box in zip(fitted_all, keeps, boxes)]
        with timer.stage("paste"):
            pasted = paste_decoded(images, kept, config.canvas, config.paste, config.paste_band, call.output_type)
        images, notes = pasted.images, notes + pasted.notes
        ctx.artifacts.update(kept=kept, unpasted=pasted.unpasted, masks=used_masks)

        record = RunRecord(
            sow_version=__version__,
            model=comp.source,
            family=comp.family.name if comp.family else None,
            loras=list(comp.loras),
            model_fingerprint=weights_fingerprint(comp),
            device=str(device),
            dtype=str(comp.dtype).removeprefix("torch."),
            seed=seed,
            condition=read[0][0],
            condition_sha256=read[0][3],
            conditions=[
                ConditionRecord(source=read[cond.image][0], sha256=read[cond.image][3], aligned_box_v=box)
                for cond, box in zip(plan.conditions, boxes)
            ],
            config=config,
            plan=plan,
            aligned_box_v=boxes[0],
            timings=timer.timings,
            unet_evaluations=denoiser.evaluations,
            num_images=num_images,
            versions=_versions(),
            prompt_used=text,
            trace=ctx.trace if config.trace_attention else None,
            warnings=notes,
        )
        return SOWOutput(
            image=images[0],
            plan=plan,
            record=record,
            seeded_canvas=seeded,
            latents=latents,
            images=images,
            artifacts=ctx.artifacts,
        )

    def _encode(self, image: Image.Image, generator: torch.Generator | None = None) -> torch.Tensor:
        """VAE latents of ``image``: the posterior's mean, or (with ``generator``) a sample drawn from it."""
        vae = self.components.vae
        if vae.dtype == torch.float16 and self.components.vae_needs_fp32:  # SDXL's stock VAE overflows in fp16
            vae.to(torch.float32)
            try:
                pixels = cv.to_tensor(image).to(device=self.device, dtype=torch.float32)
                posterior = vae.encode(pixels).latent_dist
                latents = posterior.mode() if generator is None else posterior.sample(generator)
                return (latents * vae.config.scaling_factor).half()
            finally:
                vae.to(torch.float16)
        pixels = cv.to_tensor(image).to(device=self.device, dtype=vae.dtype)
        posterior = vae.encode(pixels).latent_dist
        latents = posterior.mode() if generator is None else posterior.sample(generator)
        return latents * vae.config.scaling_factor


def inversion_evaluations(config: GenerationConfig, inputs: RunInputs) -> int:
    """UNet evaluations of step 4: every condition inverted to t2, the canvas to t1 (or to t2, or not at all:
    ``readings.canvas_inversion`` and ``readings.seed_background``)."""
    canvas = 0 if config.readings.seed_background == "none" else config.canvas_start_level()
    return inputs.conditions * config.t2 + canvas


ConditionInput = str | Path | Image.Image
"""A visual condition as the API takes it: a file path or a PIL image."""


def _numbered(condition: ConditionInput | Sequence[ConditionInput]) -> list[tuple[int, int, ConditionInput]]:
    """``[(index, count, condition)]``: one condition or a non-empty list of them."""
    if isinstance(condition, (str, Path, Image.Image)):
        return [(0, 1, condition)]
    if isinstance(condition, Sequence) and condition:
        return [(i, len(condition), c) for i, c in enumerate(condition)]
    if isinstance(condition, Sequence):
        raise InputError("no condition given: pass a path or image, or a list of them")
    raise InputError(f"condition must be a path or a PIL image (or a list of them), not {type(condition).__name__}")


def _read_condition(
    condition: ConditionInput, index: int = 0, count: int = 1
) -> tuple[str, Image.Image, Image.Image | None, str, list[str]]:
    """(source label, RGB image, alpha mask or None, sha256 of the file bytes or pixels, conversion notes).

    With several conditions an error and each note say which one (``condition 2 of 3``).
    """
    which = f"condition {index + 1} of {count}" if count > 1 else ""
    try:
        if isinstance(condition, Image.Image):
            loaded = load_condition(condition)
            source = "image"
        elif isinstance(condition, (str, Path)):
            loaded = load_condition(Path(condition))
            source = str(condition)
        else:
            raise InputError(f"condition must be a path or a PIL image, not {type(condition).__name__}")
    except InputError as exc:
        if not which:
            raise
        raise type(exc)(f"{which}: {exc}") from None
    notes = [f"{which}: {n}" for n in loaded.notes] if which else loaded.notes
    return source, loaded.image, loaded.mask, loaded.sha256, notes


def _masks(mask: Image.Image | Sequence[Image.Image | None] | None, alphas: list[Image.Image | None]) -> list[Image.Image | None]:
    """One mask per condition image: the caller's (one image, or a list of one per image), else its alpha."""
    if mask is None:
        return alphas
    given = [mask] if isinstance(mask, Image.Image) else list(mask)
    if len(given) != len(alphas):
        raise InputError(f"mask: {len(given)} given for {len(alphas)} condition images; give one per image (None: its alpha)")
    return [m if m is not None else a for m, a in zip(given, alphas)]


def _plan_mask(cond, masks: list[Image.Image | None]) -> Image.Image | None:
    """A condition's mask: the plan's mask file when it names one, else its image's mask."""
    if cond.mask is None:
        return masks[cond.image]
    try:
        return load_condition(Path(cond.mask)).image.convert("L")
    except InputError as exc:
        raise InputError(f"plan mask {cond.mask!r}: {exc}") from None


def check_plan_images(plan: Plan, count: int) -> None:
    """Every condition of ``plan`` refers to one of ``count`` images, and every image is used."""
    for i, cond in enumerate(plan.conditions):
        if cond.image >= count:
            raise InputError(
                f"plan condition {i + 1} uses image {cond.image + 1}, but {count} condition image"
                f"{'s were' if count > 1 else ' was'} given"
            )
    unused = sorted(set(range(count)) - {c.image for c in plan.conditions})
    if unused:
        raise InputError(
            f"condition image{'s' if len(unused) > 1 else ''} {', '.join(str(u + 1) for u in unused)} "
            f"not used by the plan ({len(plan.conditions)} condition{'s' if len(plan.conditions) > 1 else ''})"
        )


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
