"""Attention modulators built into the core: ``none`` leaves the UNet's attention as it is."""

from __future__ import annotations

import torch

from sow.engine.context import RunContext
from sow.hookspecs import hookimpl


class PassThroughModulator:
    """Leaves attention unchanged: plain Cyclic One-Way Diffusion."""

    name = "none"
    description = "No attention modulation (plain COW)."

    def attach(self, unet: torch.nn.Module, ctx: RunContext) -> None:
        return None

    def detach(self, unet: torch.nn.Module) -> None:
        return None


@hookimpl
def register_modulators(register):
    register(PassThroughModulator)
