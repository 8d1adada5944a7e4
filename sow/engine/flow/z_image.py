"""Z-Image (Turbo): a single-stream DiT over [image, caption] with two image-only (noise) and two
text-only (context) refiner blocks, a Qwen3 text encoder, the FLUX.1 VAE, an inverted time axis."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

from sow.engine.backbone import AttentionLayer, AttentionLayout, ModelOutput
from sow.engine.flow.backbone import FlowBackbone, GuidanceKind, TextRows
from sow.engine.flow.text_lengths import conditionings, velocity_by_length

Z_IMAGE_HIDDEN_LAYER = -2
"""The Qwen3 hidden state ``ZImagePipeline`` takes as the caption (the second to last)."""


class ZImageNetwork(torch.nn.Module):
    """The Z-Image transformer with diffusers' processor interface (``attn_processors`` /
    ``set_attn_processor``), which ``ZImageTransformer2DModel`` lacks: DAM installs its processors
    through it as on every other network. Calls go to the transformer unchanged."""

    def __init__(self, transformer: torch.nn.Module) -> None:
        super().__init__()
        self.transformer = transformer

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        return self.transformer(*args, **kwargs)

    @property
    def config(self):
        return self.transformer.config

    def _attention_modules(self) -> dict[str, torch.nn.Module]:
        return {f"{name}.processor": m for name, m in self.transformer.named_modules() if hasattr(m, "set_processor") and hasattr(m, "processor")}

    @property
    def attn_processors(self) -> dict[str, Any]:
        return {key: module.processor for key, module in self._attention_modules().items()}

    def set_attn_processor(self, processors: Mapping[str, Any] | Any) -> None:
        for key, module in self._attention_modules().items():
            module.set_processor(processors[key] if isinstance(processors, Mapping) else processors)


class ZImageBackbone(FlowBackbone):
    """``ZImageTransformer2DModel`` as ``ZImagePipeline`` calls it (text-to-image, no reference images).

    Text: each prompt in the Qwen3 chat template (thinking on, as the pipeline asks: no empty
    think block), the encoder's second-to-last hidden state at the real tokens: a caption of each
    prompt's own length, which matters (the transformer pads captions to a multiple of 32 with a
    learned token; :mod:`sow.engine.flow.text_lengths`). Latents: (z − shift) × scale (FLUX.1's
    VAE), passed as one-frame (C, 1, h, w) items; the transformer patchifies 2×2 and puts the
    image tokens *first*, then the caption, in its 30 main blocks; its noise refiners attend over
    the image alone (padded to a multiple of 32), its context refiners over the caption alone.
    Time runs backwards: the model sees 1 − s and predicts x0 − ε, so the velocity is its negation.
    Guidance: Turbo is distilled (no CFG); ``ZImagePipeline``'s ``guidance_scale`` g is CFG at
    scale 1 + g in the usual form (pos + g (pos − neg)).
    """

    family = "z-image"
    schedule_rule = "flux1"  # linspace(1, 1/S) sigmas, the static shift 3.0 (Turbo's scheduler is not dynamic)
    image_position = "first"
    patch_size = 2

    def __init__(self, components: dict[str, Any], text_length: int, distilled: bool = True, **settings: Any) -> None:
        super().__init__(components, text_length, **settings)
        self.distilled = distilled
        self._network = ZImageNetwork(self.transformer)

    @property
    def guidance(self) -> GuidanceKind:
        return "none" if self.distilled else "cfg"

    @property
    def network(self) -> torch.nn.Module:
        return self._network

    @property
    def latent_channels(self) -> int:
        return int(self.transformer.config.in_channels)

    @property
    def attention(self) -> AttentionLayout:
        """The noise refiners and the main blocks (image tokens first); the context refiners see no image and are left out."""
        layers = [
            AttentionLayer(processor=key, image_position="first", patch_size=self.patch_size)
            for key in self.network.attn_processors
            if not key.startswith("context_refiner.")
        ]
        return AttentionLayout(layers=tuple(layers))

    def dam_processor(self, layer: AttentionLayer, state: Any, previous: Any) -> Any:
        from sow.attention.z_image_dam import ZImageDAMProcessor

        return ZImageDAMProcessor(layer.processor, state, previous, layer.image_position, layer.patch_size)

    # -- prompts ------------------------------------------------------------------------

    @torch.no_grad()
    def text_rows(self, texts: list[str]) -> list[torch.Tensor]:
        """Each prompt's caption (L_i, D): the real tokens of its chat, at most ``text_length`` of them."""
        tokenizer, encoder = self.components["tokenizer"], self.components["text_encoder"]
        chats = [
            tokenizer.apply_chat_template([{"role": "user", "content": t}], tokenize=False, add_generation_prompt=True, enable_thinking=True)
            for t in texts
        ]
        enc = tokenizer(chats, padding="max_length", max_length=self.text_length, truncation=True, return_tensors="pt")
        mask = enc.attention_mask.to(encoder.device).bool()
        hidden = encoder(input_ids=enc.input_ids.to(encoder.device), attention_mask=mask, output_hidden_states=True).hidden_states[Z_IMAGE_HIDDEN_LAYER]
        return [hidden[i][mask[i]] for i in range(len(texts))]

    @torch.no_grad()
    def encode_prompts(self, texts: Mapping[str, str]) -> dict[str, dict[str, torch.Tensor]]:
        """Each prompt (1, L, D), zero-padded to the longest of the run, with its ``text_mask`` (1, L)."""
        return conditionings(list(texts), self.text_rows(list(texts.values())), self.dtype)

    # -- the model call -----------------------------------------------------------------

    def velocity(self, latents: torch.Tensor, timestep: torch.Tensor | float, text: TextRows) -> torch.Tensor:
        rows = text.hidden.shape[0]
        x = self._repeat(latents, rows).to(self.dtype)
        t = torch.as_tensor(timestep, dtype=torch.float32, device=x.device).expand(rows)
        out = self.transformer(
            list(x.unsqueeze(2).unbind(0)), (1000 - t) / 1000, list(text.hidden.unbind(0)), return_dict=False
        )[0]
        return -torch.stack([item.float() for item in out]).squeeze(2).to(latents.dtype)

    def predict(self, latents: torch.Tensor, timestep: torch.Tensor | float, conditioning: Mapping[str, torch.Tensor]) -> ModelOutput:
        """The velocity for each row; rows whose captions have equal lengths share one transformer call."""
        return ModelOutput(output=velocity_by_length(self, latents, timestep, conditioning), parameterization="flow")
