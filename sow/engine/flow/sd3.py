"""Stable Diffusion 3 / 3.5 (MM-DiT): three text encoders, real CFG, image tokens first."""

from __future__ import annotations

import torch

from sow.engine.flow.backbone import FlowBackbone, TextRows


class SD3Backbone(FlowBackbone):
    """``SD3Transformer2DModel`` with CLIP-L, CLIP-G (both with projection) and T5, as ``StableDiffusion3Pipeline`` uses them.

    Text: each CLIP's penultimate hidden state, concatenated along features and zero-padded to
    T5's width, then T5's tokens appended (77 + ``text_length`` tokens); pooled: the two CLIP
    projections concatenated. Latents: (z − shift) × scale, unpacked; the transformer patchifies
    2×2 itself and puts the image tokens *before* the text in its joint attention.
    """

    family = "sd3"
    pipeline_class = "StableDiffusion3Pipeline"
    schedule_rule = "sd3"
    image_position = "first"
    patch_size = 2

    @property
    def latent_channels(self) -> int:
        return int(self.transformer.config.in_channels)

    def is_image_only(self, processor_key: str) -> bool:
        """SD3.5's dual-attention blocks (MMDiT-X) add an image-only ``attn2`` beside the joint ``attn``."""
        return processor_key.endswith("attn2.processor")

    def _clip(self, index: int, texts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        suffix = "" if index == 0 else "_2"
        tokenizer, encoder = self.components[f"tokenizer{suffix}"], self.components[f"text_encoder{suffix}"]
        ids = tokenizer(texts, padding="max_length", max_length=tokenizer.model_max_length, truncation=True, return_tensors="pt").input_ids
        out = encoder(ids.to(self.device), output_hidden_states=True)
        return out.hidden_states[-2], out[0]

    def _t5(self, texts: list[str]) -> torch.Tensor:
        tokenizer, encoder = self.components["tokenizer_3"], self.components["text_encoder_3"]
        ids = tokenizer(
            texts, padding="max_length", max_length=self.text_length, truncation=True, add_special_tokens=True, return_tensors="pt"
        ).input_ids
        return encoder(ids.to(self.device))[0]

    @torch.no_grad()
    def encode_texts(self, texts: list[str]) -> TextRows:
        first, pooled_first = self._clip(0, texts)
        second, pooled_second = self._clip(1, texts)
        t5 = self._t5(texts)
        clip = torch.cat([first, second], dim=-1)
        clip = torch.nn.functional.pad(clip, (0, t5.shape[-1] - clip.shape[-1]))
        hidden = torch.cat([clip.to(t5.dtype), t5], dim=-2).to(self.dtype)
        return TextRows(hidden, torch.cat([pooled_first, pooled_second], dim=-1).to(self.dtype))

    def velocity(self, latents: torch.Tensor, timestep: torch.Tensor | float, text: TextRows) -> torch.Tensor:
        x = self._repeat(latents, text.hidden.shape[0])
        t = torch.as_tensor(timestep, dtype=torch.float32, device=x.device).expand(x.shape[0])
        return self.transformer(
            hidden_states=x.to(self.dtype), timestep=t, encoder_hidden_states=text.hidden, pooled_projections=text.pooled, return_dict=False
        )[0]
