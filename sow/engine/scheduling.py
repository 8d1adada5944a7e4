"""Cyclic one-way diffusion (COW, Algorithm 1): the schedule from the inverted canvas to the image."""

from __future__ import annotations

import torch

from sow.engine import diffusion_math as dm
from sow.engine.context import RunContext
from sow.hookspecs import hookimpl
from sow.schemas import GenerationConfig
from sow.stages import RunInputs


class CyclicOneWayScheduler:
    """N cycles of (inject noise t1 -> t2, denoise back to t1 resetting the condition at every level),
    then denoising to the image with the condition reset once more at the levels t3.

    ``config.readings`` chooses the injection's alphas (``injection_levels``) and whether the
    first cycle injects at all (``canvas_inversion`` "t2": the canvas already sits at t2)."""

    name = "cyclic"
    description = "Cyclic one-way diffusion: N noise-inject / denoise cycles, then the final denoise."

    def run(self, ctx: RunContext) -> torch.Tensor:
        cfg, denoiser = ctx.config, ctx.denoiser
        low, high = dm.injection_levels(cfg.t1, cfg.t2, cfg.readings.injection_levels)
        x = ctx.canvas_latents
        for cycle in range(cfg.cycles):
            if not (cycle == 0 and cfg.readings.canvas_inversion == "t2"):  # Algorithm 1: the canvas starts at t2
                x = denoiser.schedule.inject(x, low, high, ctx.noise_like(x))
            for level in range(cfg.t2, cfg.t1, -1):
                x = ctx.preserve(x, level)
                noise = ctx.noise_like(x) if cfg.cycle_eta > 0 else None
                x = denoiser.denoise(x, level, "cycle", eta=cfg.cycle_eta, cycle=cycle, noise=noise)
            x = ctx.preserve(x, cfg.t1)
        for level in range(cfg.t1, 0, -1):
            if level in cfg.t3:
                x = ctx.preserve(x, level)
            noise = ctx.noise_like(x) if cfg.final_eta > 0 else None
            x = denoiser.denoise(x, level, "final", eta=cfg.final_eta, noise=noise)
        return x

    def unet_evaluations(self, config: GenerationConfig, inputs: RunInputs) -> int:
        """N cycles of t2 - t1 denoising steps, then t1 steps to the image (``inputs`` change nothing)."""
        return config.cycles * (config.t2 - config.t1) + config.t1


@hookimpl
def register_schedulers(register):
    register(CyclicOneWayScheduler)
