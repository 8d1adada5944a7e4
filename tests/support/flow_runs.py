"""A COW run on a tiny flow model through the engine's own stages, without the pipeline's I/O.

The run context is built as the pipeline builds it (regions on the family's latent grid, the
five prompts encoded by the backbone, the seams' Denoiser over the backbone, the built-in
inverter, scheduler and preserver); the condition and the canvas are random pictures encoded
by the family's VAE. Every latent the model is asked about is recorded with its step, so a test
can check what the model saw at each level.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from sow.engine import transitions as tr
from sow.engine.backbone import batch_conditioning
from sow.engine.context import LatentRegion, RunContext, union_mask
from sow.engine.denoiser import Denoiser, PromptEmbeddings, run_texts
from sow.engine.inversion import DDIMInverter
from sow.engine.parameterization import split_prediction
from sow.engine.preservation import RegionReplacePreserver
from sow.engine.scheduling import CyclicOneWayScheduler
from sow.schemas import Box, GenerationConfig, Plan
from tests.support.flow_models import PROMPT


@dataclass
class FlowRun:
    ctx: RunContext
    latents: torch.Tensor
    seen: list[tuple[object, torch.Tensor]] = field(default_factory=list)
    """(step, latents) of every model evaluation, in order."""


def flow_config(backbone, width: int = 128, height: int = 128, **overrides) -> GenerationConfig:
    """The paper's normal preset, small and fast; CFG and background guidance off on models without CFG."""
    settings = {"cycles": 2, "canvas": {"width": width, "height": height}}
    if backbone.guidance != "cfg":
        settings.update(guidance_scale=1.0, inversion_guidance_scale=1.0, background_guidance=False)
    settings.update(overrides)
    return GenerationConfig.from_preset("normal", **settings)


def picture(height: int, width: int, seed: int) -> torch.Tensor:
    return torch.rand(1, 3, height, width, generator=torch.Generator().manual_seed(seed)) * 2 - 1


def flow_run(backbone, boxes: list[list[int]], config: GenerationConfig | None = None, seed: int = 0, dam: bool = False) -> FlowRun:
    """COW (Algorithm 1) on ``backbone`` with one condition per box of ``boxes`` ([x, y, w, h] on the canvas);
    ``dam``: with DAM's processors on every joint attention layer (:mod:`sow.attention.joint`)."""
    config = config or flow_config(backbone)
    canvas = config.canvas
    scale = backbone.vae_scale_factor
    plan = Plan(
        canvas=canvas.model_dump(),
        conditions=[{"image": i, "box_v": b, "box_r": [b[0], b[1], b[2], canvas.height - b[1]]} for i, b in enumerate(boxes)],
        prompt=PROMPT,
    )
    regions = []
    for k, b in enumerate(boxes):
        box = Box(x=b[0], y=b[1], w=b[2], h=b[3])
        mask = torch.ones(1, 1, b[3] // scale, b[2] // scale)
        regions.append(LatentRegion.from_box(box, canvas, scale, mask))
    latent_size = (canvas.height // scale, canvas.width // scale)
    schedule = backbone.noise_schedule(config.num_inference_steps, latent_size)
    embeddings = PromptEmbeddings.from_conditioning(backbone.encode_prompts(run_texts(config, PROMPT)))
    denoiser = Denoiser(backbone, schedule, embeddings, config, union_mask(regions))
    generator = torch.Generator().manual_seed(seed)
    ctx = RunContext(
        config=config, plan=plan, seed=seed, regions=regions, generator=generator, generators=[generator],
        denoiser=denoiser, inverter=DDIMInverter(), preserver=RegionReplacePreserver(),
    )
    run = FlowRun(ctx=ctx, latents=torch.empty(0))
    predict = denoiser.predict

    def recording(latents, level, step):
        run.seen.append((step, latents.clone()))
        return predict(latents, level, step)

    denoiser.predict = recording
    if dam:
        from sow.attention.dam import DAMState
        from sow.attention.joint import attach_joint_dam

        attach_joint_dam(backbone, DAMState(ctx))
        predict_step = denoiser.on_step

        def follow(step):  # the processors read the step in progress, as the pipeline sets it
            ctx.step = step
            if predict_step is not None:
                predict_step(step)

        denoiser.on_step = follow
    try:
        run.latents = _run(ctx, denoiser, backbone, boxes, canvas, config, seed)
    finally:
        if dam:
            from sow.attention.joint import detach_joint_dam

            detach_joint_dam(backbone.network)
    denoiser.finish()
    return run


def _run(ctx, denoiser, backbone, boxes, canvas, config, seed) -> torch.Tensor:
    with torch.no_grad():
        conditions = [backbone.encode_image(picture(b[3], b[2], seed=10 + k)) for k, b in enumerate(boxes)]
        canvas_latent = backbone.encode_image(picture(canvas.height, canvas.width, seed=99))
        ctx.condition_trajectories = [ctx.inverter.invert(denoiser, c, 0, config.t2, "invert_condition") for c in conditions]
        ctx.canvas_latents = ctx.inverter.invert(denoiser, canvas_latent, 0, config.canvas_start_level(), "invert_canvas")[-1]
        return CyclicOneWayScheduler().run(ctx)


def round_trip_error(backbone, shape: tuple[int, ...], steps: int, top: int, prompt: str = PROMPT) -> float:
    """Invert a random latent of ``shape`` by the reverse flow (first-order Euler, the model at the
    arrival level as in DDIM inversion) to level ``top`` of ``steps``, sample back down, and return
    the relative error."""
    schedule = backbone.noise_schedule(steps, tuple(shape[-2:]))
    text = batch_conditioning(backbone.encode_prompts({"prompt": prompt}), ["prompt"], 1)
    x0 = torch.randn(shape, generator=torch.Generator().manual_seed(1))

    def move(x, evaluated_at, frm, to):
        out = backbone.predict(x, schedule.timestep(evaluated_at), text)
        here = schedule.level(frm)
        clean, eps = split_prediction(out.output, x, here.alpha, here.sigma, out.parameterization)
        return tr.deterministic_step(clean, eps, schedule.level(to))

    x = x0
    with torch.no_grad():
        for level in range(top):
            x = move(x, level + 1, level, level + 1)
        for level in range(top, 0, -1):
            x = move(x, level, level, level - 1)
    return float((x - x0).norm() / x0.norm())
