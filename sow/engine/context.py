"""Per-run state shared by the stages of one generation.

Nothing here outlives a call of :class:`sow.pipeline.SOWPipeline`: stages keep no state of
their own between runs, and attention processors read the current step from
:attr:`RunContext.step`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch

from sow.engine.steps import Phase, Step
from sow.geometry import to_latent_cells
from sow.schemas import Box, Canvas, GenerationConfig, Plan

if TYPE_CHECKING:
    from sow.engine.denoiser import Denoiser

__all__ = ["LatentRegion", "Phase", "RunContext", "Step", "union_mask"]


@dataclass
class LatentRegion:
    """Where the condition sits in the canvas latents, and which of its cells are kept."""

    top: int
    left: int
    height: int
    width: int
    mask: torch.Tensor
    """(1, 1, height, width), 1 where the condition's latent is kept."""
    canvas_height: int
    canvas_width: int

    @classmethod
    def from_box(cls, box: Box, canvas: Canvas, scale: int, mask: torch.Tensor) -> LatentRegion:
        """The region of a box already aligned to the ``scale``-pixel latent grid."""
        top, left, height, width = to_latent_cells(box, scale)
        return cls(
            top=top,
            left=left,
            height=height,
            width=width,
            mask=mask,
            canvas_height=canvas.height // scale,
            canvas_width=canvas.width // scale,
        )

    @property
    def slices(self) -> tuple[slice, slice]:
        return slice(self.top, self.top + self.height), slice(self.left, self.left + self.width)

    def canvas_mask(self) -> torch.Tensor:
        """(1, 1, H, W) on the canvas latent grid: 1 on the kept condition cells, 0 elsewhere."""
        full = torch.zeros(1, 1, self.canvas_height, self.canvas_width, dtype=self.mask.dtype, device=self.mask.device)
        rows, cols = self.slices
        full[:, :, rows, cols] = self.mask
        return full


@dataclass
class RunContext:
    """Everything one generation shares between its stages."""

    config: GenerationConfig
    plan: Plan
    seed: int
    regions: list[LatentRegion]
    """One region per condition, in the plan's order; they never overlap."""
    generator: torch.Generator
    """The first image's generator (seeded with the run's seed)."""
    denoiser: Denoiser
    inverter: Any
    """The run's :class:`sow.stages.Inverter` (not annotated as such: the stages' interfaces name this
    context, so this module does not import them)."""
    preserver: Any
    """The run's :class:`sow.stages.Preserver`."""
    condition_trajectories: list[list[torch.Tensor]] = field(default_factory=list)
    """Per condition, its latents at levels 0..t2 (index = level), from its own inversion; batch 1, or one
    per image when the condition depends on the seed (sampled VAE latents, a noise background)."""
    canvas_latents: torch.Tensor | None = None
    """The seeded canvas inverted to ``config.canvas_start_level()`` (t1, or t2 with
    ``readings.canvas_inversion`` "t2"; Gaussian noise with ``seed_background`` "none"): where the scheduler starts."""
    step: Step | None = None
    """The UNet evaluation in progress (set by the denoiser before every call)."""
    trace: list[dict[str, Any]] = field(default_factory=list)
    """Per-step records stages may add to (e.g. the attention gate); saved when tracing is on."""
    generators: list[torch.Generator] = field(default_factory=list)
    """One generator per image of a batched run (image i seeded with seed + i); empty: ``generator`` alone."""
    artifacts: dict[str, Any] = field(default_factory=dict)
    """Things stages hand back to the caller (e.g. ``"attention"``: the captured attention map)."""

    num_images: int = 1
    """Images denoised together (the call's ``num_images``): the attention batch is branches x images.
    Counted from the batch, never from :attr:`generators`: one generator may serve every image."""

    def noise_like(self, x: torch.Tensor) -> torch.Tensor:
        """Gaussian noise drawn from the run's seeded generator(s): row i of a batch from image i's own."""
        if len(self.generators) > 1 and x.shape[0] == len(self.generators):
            shape = (1, *x.shape[1:])
            return torch.cat([torch.randn(shape, generator=g, device=x.device, dtype=x.dtype) for g in self.generators])
        return torch.randn(x.shape, generator=self.generator, device=x.device, dtype=x.dtype)

    @property
    def region(self) -> LatentRegion:
        """The first condition's region (one-condition code)."""
        return self.regions[0]

    @property
    def condition_trajectory(self) -> list[torch.Tensor]:
        """The first condition's trajectory (one-condition code)."""
        return self.condition_trajectories[0]

    def preserve(self, latents: torch.Tensor, level: int) -> torch.Tensor:
        """Reset every condition region of ``latents`` (at ``level``) to that condition's own latent.

        One preserver call per condition, in the plan's order; the regions do not overlap, so
        the order does not matter and each region ends up equal to its own trajectory's latent.
        """
        for region, trajectory in zip(self.regions, self.condition_trajectories, strict=True):
            latents = self.preserver.preserve(latents, trajectory[level], region)
        return latents

    def condition_mask(self) -> torch.Tensor:
        """(1, 1, H, W): 1 on the kept cells of any condition, 0 elsewhere (background guidance's mask)."""
        return union_mask(self.regions)


def union_mask(regions: list[LatentRegion]) -> torch.Tensor:
    """(1, 1, H, W) on the canvas latent grid: 1 on the kept cells of any of ``regions``, 0 elsewhere."""
    masks = [r.canvas_mask() for r in regions]
    return masks[0] if len(masks) == 1 else torch.stack(masks).amax(0)
