"""FLUX.1 [schnell] and [dev]: CLIP (pooled) + T5, 2×2-packed latents, text tokens first, rotary positions."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

from sow.engine.backbone import PromptConditioning
from sow.engine.flow.backbone import FlowBackbone, GuidanceKind, TextRows


def pack_2x2(latents: torch.Tensor) -> torch.Tensor:
    """(B, C, h, w) -> (B, h/2 · w/2, 4C): each 2×2 block of cells one token, row-major (FluxPipeline's packing)."""
    b, c, h, w = latents.shape
    return latents.view(b, c, h // 2, 2, w // 2, 2).permute(0, 2, 4, 1, 3, 5).reshape(b, (h // 2) * (w // 2), c * 4)


def unpack_2x2(tokens: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """The inverse of :func:`pack_2x2` for a (height, width) latent grid."""
    b, _, channels = tokens.shape
    x = tokens.view(b, height // 2, width // 2, channels // 4, 2, 2).permute(0, 3, 1, 4, 2, 5)
    return x.reshape(b, channels // 4, height, width)


def grid_ids(height: int, width: int, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """(h·w, 3) rotary coordinates (0, row, column) of a token grid, row-major."""
    ids = torch.zeros(height, width, 3)
    ids[..., 1] += torch.arange(height)[:, None]
    ids[..., 2] += torch.arange(width)[None, :]
    return ids.reshape(height * width, 3).to(device=device, dtype=dtype)


class Flux1Backbone(FlowBackbone):
    """``FluxTransformer2DModel`` as ``FluxPipeline`` calls it.

    Text: T5's tokens (``text_length``) for attention, CLIP's pooled output for the modulation;
    text position ids all zero. Latents: (z − shift) × scale; packed 2×2 into tokens for the
    call (64 channels), *after* the text tokens in the joint sequence. Timestep: s (= t/1000).
    Guidance: [dev] has a guidance embedding (the scale is an input, one call); [schnell] none.
    """

    family = "flux1"
    pipeline_class = "FluxPipeline"
    schedule_rule = "flux1"
    image_position = "last"
    patch_size = 2

    @property
    def guidance(self) -> GuidanceKind:
        return "embedded" if self.transformer.config.guidance_embeds else "none"

    @property
    def latent_channels(self) -> int:
        return int(self.transformer.config.in_channels) // 4

    def run_conditioning(self, settings: Mapping[str, Any]) -> PromptConditioning:
        """[dev]: the guidance input of this run (``embedded_guidance``; None: the loaded default, 3.5)."""
        if self.guidance != "embedded":
            return {}
        value = settings.get("embedded_guidance")
        value = self.embedded_guidance if value is None else float(value)
        return {"guidance": torch.full((1,), value, dtype=torch.float32, device=self.device)}

    @torch.no_grad()
    def encode_texts(self, texts: list[str]) -> TextRows:
        clip_tok, clip = self.components["tokenizer"], self.components["text_encoder"]
        ids = clip_tok(texts, padding="max_length", max_length=clip_tok.model_max_length, truncation=True, return_tensors="pt").input_ids
        pooled = clip(ids.to(self.device), output_hidden_states=False).pooler_output
        t5_tok, t5 = self.components["tokenizer_2"], self.components["text_encoder_2"]
        ids = t5_tok(texts, padding="max_length", max_length=self.text_length, truncation=True, return_tensors="pt").input_ids
        hidden = t5(ids.to(self.device), output_hidden_states=False)[0]
        return TextRows(hidden.to(self.dtype), pooled.to(self.dtype))

    def pack(self, latents: torch.Tensor) -> torch.Tensor:
        return pack_2x2(latents)

    def velocity(self, latents: torch.Tensor, timestep: torch.Tensor | float, text: TextRows) -> torch.Tensor:
        _, _, height, width = latents.shape
        rows = text.hidden.shape[0]
        tokens = self._repeat(pack_2x2(latents), rows)
        t = torch.as_tensor(timestep, dtype=torch.float32, device=tokens.device).expand(rows).to(latents.dtype)
        embedded = None
        if self.transformer.config.guidance_embeds:
            if text.guidance is not None:  # the run's value (run_conditioning), one per row
                embedded = text.guidance.to(device=tokens.device, dtype=torch.float32)
            else:
                embedded = torch.full([1], self.embedded_guidance, device=tokens.device, dtype=torch.float32).expand(rows)
        out = self.transformer(
            hidden_states=tokens.to(self.dtype),
            timestep=t / 1000,
            guidance=embedded,
            pooled_projections=text.pooled,
            encoder_hidden_states=text.hidden,
            txt_ids=torch.zeros(text.hidden.shape[1], 3, device=tokens.device, dtype=text.hidden.dtype),
            img_ids=grid_ids(height // 2, width // 2, tokens.device, text.hidden.dtype),
            return_dict=False,
        )[0]
        return unpack_2x2(out, height, width)
