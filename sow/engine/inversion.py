"""DDIM inversion: clean latents up the noise levels, keeping every level on the way."""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from sow.hookspecs import hookimpl

if TYPE_CHECKING:
    from sow.engine.denoiser import Denoiser


class DDIMInverter:
    """Deterministic DDIM inversion (eta 0), with the run's inversion guidance scale."""

    name = "ddim"
    description = "Deterministic DDIM inversion, keeping the trajectory (COW's condition path)."

    def invert(self, denoiser: Denoiser, latents: torch.Tensor, start: int, end: int, phase: str) -> list[torch.Tensor]:
        if not 0 <= start <= end:
            raise ValueError(f"inversion goes up the levels: start {start} must be <= end {end}")
        trajectory = [latents]
        for level in range(start, end):
            trajectory.append(denoiser.invert(trajectory[-1], level, phase))
        return trajectory


@hookimpl
def register_inverters(register):
    register(DDIMInverter)
