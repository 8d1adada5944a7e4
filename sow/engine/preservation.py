"""Visual-condition preservation: reset the condition region to the condition's own latent."""

from __future__ import annotations

import torch

from sow.engine.context import LatentRegion
from sow.hookspecs import hookimpl


class RegionReplacePreserver:
    """Copies the condition latent into its region, only on the cells its mask keeps."""

    name = "replace"
    description = "Replace the condition region with the condition's inverted latent (masked cells only)."

    def preserve(self, latents: torch.Tensor, condition: torch.Tensor, region: LatentRegion) -> torch.Tensor:
        rows, cols = region.slices
        out = latents.clone()
        keep = region.mask.to(dtype=torch.bool, device=latents.device)
        out[:, :, rows, cols] = torch.where(keep, condition.to(latents.dtype), latents[:, :, rows, cols])
        return out


@hookimpl
def register_preservers(register):
    register(RegionReplacePreserver)
