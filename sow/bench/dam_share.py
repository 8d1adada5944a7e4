"""DAM's measured share of a cycle-phase UNet call, for ``sow bench``.

A FLOP count undersells DAM on a CPU and oversells nothing on a GPU, so the benchmark also
times it: one UNet evaluation of the cycle phase (the batch of background guidance: 4 branches
per image) with the ``dam`` modulator attached and without it, interleaved round by round so
that a busy machine slows both alike, on the run's own plan and settings. Process CPU time on
a CPU (other jobs' load does not count), wall time with a device sync on a GPU.
"""

from __future__ import annotations

import statistics
import time
from types import SimpleNamespace
from typing import Any

import torch

from sow.engine.context import LatentRegion, Step
from sow.schemas import GenerationConfig, Plan

BRANCHES = 4
"""UNet branches of a cycle-phase call with background guidance (negative, text, suppress, diverse)."""


def cycle_context(config: GenerationConfig, plan: Plan, scale: int, images: int, device: torch.device) -> SimpleNamespace:
    """What the modulator reads from a RunContext at the first cycle step, for ``plan``."""
    box_v = plan.box_v.aligned(scale)
    if not box_v.fits(config.canvas):
        box_v = box_v.model_copy(update={"x": config.canvas.width - box_v.w})
    mask = torch.ones(1, 1, box_v.h // scale, box_v.w // scale, device=device)
    region = LatentRegion.from_box(box_v, config.canvas, scale, mask)
    return SimpleNamespace(
        config=config, plan=plan, region=region, step=Step("cycle", config.t2, 0), trace=[], artifacts={}, num_images=images
    )


def dam_unet_call(pipe, config: GenerationConfig, plan: Plan, images: int, repeats: int) -> dict[str, Any]:
    """Median seconds of one cycle-phase UNet call with and without DAM, and the ratio."""
    comp = pipe.components
    unet, device, dtype, scale = comp.unet, comp.device, comp.dtype, comp.vae_scale_factor
    height, width = config.canvas.height // scale, config.canvas.width // scale
    generator = torch.Generator(device="cpu").manual_seed(0)
    batch = BRANCHES * images
    latents = torch.randn(batch, unet.config.in_channels, height, width, generator=generator).to(device, dtype)
    text = torch.randn(batch, 77, unet.config.cross_attention_dim, generator=generator).to(device, dtype)
    t = torch.tensor(500, device=device)
    ctx = cycle_context(config, plan, scale, images, device)
    modulator = pipe.stage("modulator", "dam")
    on_cpu = device.type == "cpu"
    clock = time.process_time if on_cpu else time.perf_counter

    def once(with_dam: bool) -> float:
        if with_dam:
            modulator.attach(unet, ctx)
        try:
            if not on_cpu:
                torch.cuda.synchronize(device)
            start = clock()
            with torch.no_grad():
                unet(latents, t, encoder_hidden_states=text)
            if not on_cpu:
                torch.cuda.synchronize(device)
            return clock() - start
        finally:
            if with_dam:
                modulator.detach(unet)

    once(False), once(True)  # warm-up
    times: dict[str, list[float]] = {"none": [], "dam": []}
    for _ in range(repeats):
        times["none"].append(once(False))
        times["dam"].append(once(True))
    none, dam = statistics.median(times["none"]), statistics.median(times["dam"])
    grid = ctx.region.canvas_height * ctx.region.canvas_width
    from sow.attention.dam import DAMState

    regions = DAMState(ctx).regions(ctx.region.canvas_height, ctx.region.canvas_width, device)
    return {
        "unet_call_seconds": {"none": none, "dam": dam},
        "ratio": dam / none,
        "dam_share_of_call": 1 - none / dam,
        "modulated_rows": len(regions.modulated) / grid,
        "attention_batch": batch,
        "gate": "on" if config.modulation.use_gate else "forced open",
        "clock": "process CPU time" if on_cpu else "wall time (synchronized)",
        "seconds": times,
    }
