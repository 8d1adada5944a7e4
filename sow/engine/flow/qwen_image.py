"""Qwen-Image: a 60-block double-stream MM-DiT (text tokens first), a Qwen2.5-VL text encoder,
2×2-packed latents of a per-channel-normalised video VAE, real CFG."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

from sow.engine.backbone import AttentionLayer, ModelOutput
from sow.engine.flow.backbone import FlowBackbone, TextRows
from sow.engine.flow.flux1 import pack_2x2, unpack_2x2
from sow.engine.flow.text_lengths import conditionings, velocity_by_length

QWEN_IMAGE_TEMPLATE = (
    "<|im_start|>system\nDescribe the image by detailing the color, shape, size, texture, quantity, text, spatial "
    "relationships of the objects and background:<|im_end|>\n<|im_start|>user\n{}<|im_end|>\n<|im_start|>assistant\n"
)
"""The conversation ``QwenImagePipeline`` wraps every prompt in before the text encoder reads it."""

TEMPLATE_TOKENS = 34
"""Tokens of the template's head (the system turn and ``<|im_start|>user\\n``) the pipeline drops from the
encoder's output: the prompt's own tokens and the assistant turn's opening remain."""

ENCODER_MAX_TOKENS = 1024
"""The pipeline's tokenizer limit after the dropped head (``tokenizer_max_length``)."""


class QwenImageBackbone(FlowBackbone):
    """``QwenImageTransformer2DModel`` as ``QwenImagePipeline`` calls it.

    Text: each prompt in :data:`QWEN_IMAGE_TEMPLATE`, the encoder's last hidden state at the
    real tokens, the first :data:`TEMPLATE_TOKENS` dropped, cut to ``text_length`` (the
    pipeline's ``max_sequence_length``, 512): a context of each prompt's own length
    (:mod:`sow.engine.flow.text_lengths`), no pooled text. Latents: (z − mean) / std per channel
    (``latents_mean`` / ``latents_std`` of ``AutoencoderKLQwenImage``, a video VAE: one frame);
    packed 2×2 into tokens for the call, *after* the text in every block's joint attention;
    rotary positions from ``img_shapes``. Timestep: s (= t/1000). Guidance: real CFG.
    """

    family = "qwen-image"
    schedule_rule = "flux1"  # linspace(1, 1/S) sigmas, mu linear in the packed tokens (0.5..0.9 over 256..8192), shift_terminal
    image_position = "last"
    patch_size = 2

    @property
    def latent_channels(self) -> int:
        return int(self.transformer.config.in_channels) // 4

    def dam_processor(self, layer: AttentionLayer, state: Any, previous: Any) -> Any:
        """DAM's processor for one double-stream block (:mod:`sow.attention.qwen_image_dam`): image × image logits only."""
        from sow.attention.qwen_image_dam import QwenImageDAMProcessor

        return QwenImageDAMProcessor(layer.processor, state, previous, layer.image_position, layer.patch_size)

    @property
    def vae_scale_factor(self) -> int:
        """8: the video VAE halves the image three times (one per ``temperal_downsample`` entry)."""
        return 2 ** len(self.vae.config.temperal_downsample)

    # -- prompts ------------------------------------------------------------------------

    @torch.no_grad()
    def text_rows(self, texts: list[str]) -> list[torch.Tensor]:
        """Each prompt's context (L_i, D): its real tokens after the template's head, at most ``text_length``."""
        tokenizer, encoder = self.components["tokenizer"], self.components["text_encoder"]
        rows = []
        for text in texts:  # one prompt at a time, as the pipeline encodes prompt and negative
            enc = tokenizer([QWEN_IMAGE_TEMPLATE.format(text)], max_length=ENCODER_MAX_TOKENS + TEMPLATE_TOKENS,
                            padding=True, truncation=True, return_tensors="pt")
            out = encoder(input_ids=enc.input_ids.to(encoder.device), attention_mask=enc.attention_mask.to(encoder.device),
                          output_hidden_states=True)
            real = out.hidden_states[-1][0][enc.attention_mask[0].bool().to(encoder.device)]
            rows.append(real[TEMPLATE_TOKENS:][: self.text_length])
        return rows

    @torch.no_grad()
    def encode_prompts(self, texts: Mapping[str, str]) -> dict[str, dict[str, torch.Tensor]]:
        """Each prompt (1, L, D), zero-padded to the longest of the run, with its ``text_mask`` (1, L)."""
        return conditionings(list(texts), self.text_rows(list(texts.values())), self.dtype)

    # -- the model call -----------------------------------------------------------------

    def velocity(self, latents: torch.Tensor, timestep: torch.Tensor | float, text: TextRows) -> torch.Tensor:
        _, _, height, width = latents.shape
        rows = text.hidden.shape[0]
        tokens = self._repeat(pack_2x2(latents), rows)
        t = torch.as_tensor(timestep, dtype=torch.float32, device=tokens.device).expand(rows).to(latents.dtype)
        out = self.transformer(
            hidden_states=tokens.to(self.dtype),
            timestep=t / 1000,
            encoder_hidden_states=text.hidden,
            encoder_hidden_states_mask=None,
            img_shapes=[[(1, height // 2, width // 2)]] * rows,
            return_dict=False,
        )[0]
        return unpack_2x2(out, height, width)

    def predict(self, latents: torch.Tensor, timestep: torch.Tensor | float, conditioning: Mapping[str, torch.Tensor]) -> ModelOutput:
        """The velocity for each row; rows whose prompts have equal lengths share one transformer call."""
        return ModelOutput(output=velocity_by_length(self, latents, timestep, conditioning), parameterization="flow")

    def pack(self, latents: torch.Tensor) -> torch.Tensor:
        return pack_2x2(latents)

    def classifier_free_guidance(self, uncond: torch.Tensor, text: torch.Tensor, scale: float) -> torch.Tensor:
        """``QwenImagePipeline``'s CFG: the plain combination, each token's velocity (its 16 channels × 2×2 cells)
        rescaled to the norm of the text branch's (the denoiser uses it for every CFG and background-guided call)."""
        height, width = text.shape[-2:]
        guided = pack_2x2(uncond + scale * (text - uncond))
        reference = pack_2x2(text)
        rescaled = guided * (reference.norm(dim=-1, keepdim=True) / guided.norm(dim=-1, keepdim=True))
        return unpack_2x2(rescaled, height, width)

    # -- the VAE --------------------------------------------------------------------------

    def _statistics(self, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        config = self.vae.config
        mean = torch.tensor(config.latents_mean).view(1, -1, 1, 1).to(like.device, like.dtype)
        std = torch.tensor(config.latents_std).view(1, -1, 1, 1).to(like.device, like.dtype)
        return mean, std

    def vae_latents(self, pixels: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """The posterior's mode (or a sample) of ``pixels`` as one video frame, the frame axis dropped."""
        video = pixels.to(device=self.vae.device, dtype=self.vae.dtype).unsqueeze(2)
        posterior = self.vae.encode(video).latent_dist
        return (posterior.mode() if generator is None else posterior.sample(generator))[:, :, 0]

    def encode_image(self, pixels: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """(z − latents_mean) / latents_std, per channel (the inverse of the pipeline's decode)."""
        latents = self.vae_latents(pixels, generator)
        mean, std = self._statistics(latents)
        return ((latents - mean) / std).to(self.dtype)

    def decode_latents(self, latents: torch.Tensor, nan_guard: bool = False) -> torch.Tensor:
        mean, std = self._statistics(latents)
        raw = (latents * std + mean).to(self.vae.dtype).unsqueeze(2)
        return self.vae.decode(raw, return_dict=False)[0][:, :, 0]
