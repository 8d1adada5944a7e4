"""FLUX.2 [klein]: one Qwen3 text encoder (three hidden layers stacked), patchified latents normalised
by the VAE's batch-norm statistics, text tokens first, four-axis rotary positions, distilled (no CFG)."""

from __future__ import annotations

from typing import Any

import torch

from sow.engine.flow.backbone import FlowBackbone, GuidanceKind, TextRows

KLEIN_LAYERS = (9, 18, 27)
"""The Qwen3-4B hidden states ``Flux2KleinPipeline`` stacks into the 3 × 2560 = 7680-wide context."""


def patchify(latents: torch.Tensor) -> torch.Tensor:
    """(B, C, H, W) -> (B, 4C, H/2, W/2): each 2×2 block's channels side by side (FLUX.2's layout)."""
    b, c, h, w = latents.shape
    return latents.view(b, c, h // 2, 2, w // 2, 2).permute(0, 1, 3, 5, 2, 4).reshape(b, c * 4, h // 2, w // 2)


def unpatchify(latents: torch.Tensor) -> torch.Tensor:
    """The inverse of :func:`patchify`."""
    b, c, h, w = latents.shape
    return latents.reshape(b, c // 4, 2, 2, h, w).permute(0, 1, 4, 2, 5, 3).reshape(b, c // 4, h * 2, w * 2)


def latent_ids(height: int, width: int, device: torch.device) -> torch.Tensor:
    """(h·w, 4) coordinates (T=0, row, column, L=0) of the image tokens, row-major."""
    return torch.cartesian_prod(torch.arange(1), torch.arange(height), torch.arange(width), torch.arange(1)).to(device)


def text_ids(length: int, device: torch.device) -> torch.Tensor:
    """(length, 4) coordinates (0, 0, 0, position) of the text tokens."""
    return torch.cartesian_prod(torch.arange(1), torch.arange(1), torch.arange(1), torch.arange(length)).to(device)


class Flux2Backbone(FlowBackbone):
    """``Flux2Transformer2DModel`` as ``Flux2KleinPipeline`` calls it (text-to-image, no reference images)."""

    family = "flux2"
    pipeline_class = "Flux2KleinPipeline"
    schedule_rule = "flux2"
    image_position = "last"
    patch_size = 1

    def __init__(
        self, components: dict[str, Any], text_length: int, hidden_layers: tuple[int, ...] = KLEIN_LAYERS,
        distilled: bool = True, **settings: Any,
    ) -> None:
        super().__init__(components, text_length, **settings)
        self.hidden_layers = tuple(hidden_layers)
        self.distilled = distilled

    @property
    def guidance(self) -> GuidanceKind:
        return "none" if self.distilled else "cfg"

    @property
    def latent_channels(self) -> int:
        return int(self.transformer.config.in_channels)

    @property
    def vae_scale_factor(self) -> int:
        """16: the engine's grid is the patchified one (2×2 VAE cells per token), where the batch norm applies."""
        return 2 * super().vae_scale_factor

    @torch.no_grad()
    def encode_texts(self, texts: list[str]) -> TextRows:
        tokenizer, encoder = self.components["tokenizer"], self.components["text_encoder"]
        ids, masks = [], []
        for text in texts:
            chat = tokenizer.apply_chat_template(
                [{"role": "user", "content": text}], tokenize=False, add_generation_prompt=True, enable_thinking=False
            )
            enc = tokenizer(chat, return_tensors="pt", padding="max_length", truncation=True, max_length=self.text_length)
            ids.append(enc["input_ids"])
            masks.append(enc["attention_mask"])
        out = encoder(
            input_ids=torch.cat(ids).to(self.device),
            attention_mask=torch.cat(masks).to(self.device),
            output_hidden_states=True,
            use_cache=False,
        )
        stacked = torch.stack([out.hidden_states[k] for k in self.hidden_layers], dim=1)
        n, layers, length, width = stacked.shape
        return TextRows(stacked.permute(0, 2, 1, 3).reshape(n, length, layers * width).to(self.dtype))

    def pack(self, latents: torch.Tensor) -> torch.Tensor:
        b, c, h, w = latents.shape
        return latents.reshape(b, c, h * w).permute(0, 2, 1)

    def velocity(self, latents: torch.Tensor, timestep: torch.Tensor | float, text: TextRows) -> torch.Tensor:
        _, channels, height, width = latents.shape
        rows = text.hidden.shape[0]
        tokens = self._repeat(self.pack(latents), rows)
        t = torch.as_tensor(timestep, dtype=torch.float32, device=tokens.device).expand(rows).to(latents.dtype)
        out = self.transformer(
            hidden_states=tokens.to(self.dtype),
            timestep=t / 1000,
            guidance=None,
            encoder_hidden_states=text.hidden,
            txt_ids=text_ids(text.hidden.shape[1], tokens.device).unsqueeze(0).expand(rows, -1, -1),
            img_ids=latent_ids(height, width, tokens.device).unsqueeze(0).expand(rows, -1, -1),
            return_dict=False,
        )[0]
        return out.permute(0, 2, 1).reshape(rows, channels, height, width)

    def _bn(self, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        bn = self.vae.bn
        mean = bn.running_mean.view(1, -1, 1, 1).to(like.device, like.dtype)
        std = torch.sqrt(bn.running_var.view(1, -1, 1, 1) + self.vae.config.batch_norm_eps).to(like.device, like.dtype)
        return mean, std

    def encode_image(self, pixels: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        latents = patchify(self.vae_latents(pixels, generator))
        mean, std = self._bn(latents)
        return ((latents - mean) / std).to(self.dtype)

    def decode_latents(self, latents: torch.Tensor, nan_guard: bool = False) -> torch.Tensor:
        mean, std = self._bn(latents)
        raw = unpatchify(latents * std + mean)
        return self.vae.decode(raw.to(self.vae.dtype), return_dict=False)[0]
