"""What a flow transformer family must say about itself: the backbone adapter's common part.

The engine keeps its latents in one layout for every family: (B, C, h, w) on the *latent
grid* (one cell per ``grid_scale`` pixels), already normalised as the model expects (the
VAE's scale and shift, or FLUX.2's batch-norm statistics, applied). Region resets, noise
injection and the Euler steps act on that tensor; only :meth:`FlowBackbone.velocity` packs it
into the transformer's token layout and back. A family adapter supplies:

- :meth:`encode_texts`: every prompt of a run through all of its text encoders at once;
- :meth:`velocity`: the model call on a batch of latents for a batch of text rows;
- :meth:`encode_image` / :meth:`decode`: pixels in [−1, 1] <-> normalised latents;
- :meth:`pack`: the pipeline's own latent layout (for the oracle against diffusers);
- :class:`AttentionLayout`: where the image tokens sit in the joint sequence (DAM).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import torch


@dataclass
class TextRows:
    """Encoded texts, one row each: the joint-attention context and, where the family has one, pooled text."""

    hidden: torch.Tensor
    """(n, L, D): the text tokens the transformer attends with."""
    pooled: torch.Tensor | None = None
    """(n, P): the pooled projection some families add to the timestep embedding (SD3, FLUX.1)."""

    def select(self, index: int) -> TextRows:
        return TextRows(self.hidden[index : index + 1], None if self.pooled is None else self.pooled[index : index + 1])

    @staticmethod
    def cat(rows: list[TextRows], batch: int) -> TextRows:
        """One row per (branch, image): each branch's text repeated ``batch`` times, branches in order."""
        hidden = torch.cat([r.hidden.expand(batch, -1, -1) for r in rows])
        pooled = None if rows[0].pooled is None else torch.cat([r.pooled.expand(batch, -1) for r in rows])
        return TextRows(hidden, pooled)


@dataclass(frozen=True)
class AttentionLayout:
    """Where a family's image tokens sit in the joint attention sequence."""

    image_first: bool
    """SD3 concatenates [image, text]; FLUX.1 and FLUX.2 [text, image]."""
    patch: int
    """Latent cells per token side (SD3: 2, its patch embedding; FLUX.1: 2, the 2×2 packing; FLUX.2: 1)."""

    def image_slice(self, image_tokens: int, text_tokens: int) -> slice:
        """The image tokens' positions in a joint sequence of ``image_tokens + text_tokens``."""
        start = 0 if self.image_first else text_tokens
        return slice(start, start + image_tokens)


GuidanceKind = Literal["cfg", "embedded", "none"]


class FlowBackbone:
    """The family-independent part of an adapter; subclasses fill in the model's specifics."""

    family: str
    schedule_rule: str
    guidance: GuidanceKind
    layout: AttentionLayout
    grid_scale: int
    """Pixels per latent cell of the engine's layout (SD3 / FLUX.1: the VAE's 8; FLUX.2: 16, patchified)."""

    def __init__(self, components: dict[str, Any], text_length: int) -> None:
        self.components = components
        self.transformer = components["transformer"]
        self.vae = components["vae"]
        self.scheduler = components["scheduler"]
        self.text_length = text_length

    @property
    def device(self) -> torch.device:
        return next(self.transformer.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.transformer.parameters()).dtype

    def image_tokens(self, height: int, width: int) -> int:
        """Transformer image tokens of a (height, width) latent grid."""
        return (height // self.layout.patch) * (width // self.layout.patch)

    def encode_texts(self, texts: list[str]) -> TextRows:
        raise NotImplementedError

    def velocity(self, latents: torch.Tensor, timestep: torch.Tensor, text: TextRows, guidance: float | None = None) -> torch.Tensor:
        raise NotImplementedError

    def pack(self, latents: torch.Tensor) -> torch.Tensor:
        """The latents in the family's diffusers pipeline's own layout (identity where it keeps (B, C, h, w))."""
        return latents

    def vae_latents(self, pixels: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """The VAE posterior's mode (or a sample with ``generator``) of ``pixels`` in [−1, 1]."""
        posterior = self.vae.encode(pixels.to(self.vae.dtype)).latent_dist
        return posterior.mode() if generator is None else posterior.sample(generator)

    def encode_image(self, pixels: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        raise NotImplementedError

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError
