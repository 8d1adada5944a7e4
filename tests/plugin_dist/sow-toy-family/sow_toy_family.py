"""A model family from outside sow, written the way a third party would: family ``toy``.

Its backbone wraps the embedded tiny model but is its own class, written against the public
seams only (:mod:`sow.engine.backbone`): it encodes prompts itself and its network predicts the
clean image x0 (``sample``), converted from the UNet's noise at the call's timestep. Read back
through the engine's parameterization seam it gives the same run as the built-in ``tiny``.
"""

from __future__ import annotations

import torch

from sow import hookimpl
from sow.engine.backbone import AttentionLayer, AttentionLayout, ModelOutput
from sow.models.loading import build_tiny
from sow.engine.noise_schedule import NoiseSchedule


class ToyBackbone:
    family = "toy"
    parameterization = "sample"
    shared_conditioning = frozenset()
    source = "tiny-toy"
    native_resolution = 512

    def __init__(self, device: torch.device, dtype: torch.dtype) -> None:
        parts = build_tiny()
        self.unet = parts.unet.to(device=device, dtype=dtype)
        self.vae = parts.vae.to(device=device, dtype=dtype)
        self.text_encoder = parts.text_encoder.to(device=device, dtype=dtype)
        self.tokenizer = parts.tokenizer
        self.scheduler = parts.scheduler
        self.calls = 0

    network = property(lambda self: self.unet)
    latent_channels = 4
    vae_scale_factor = 8

    @property
    def attention(self) -> AttentionLayout:
        keys = [k for k in self.unet.attn_processors if k.endswith("attn1.processor")]
        return AttentionLayout(tuple(AttentionLayer(k) for k in keys))

    def config_defaults(self, given=None):
        """The presets' settings (S = 10, t1 = 5, t2 = 7, CFG 7.5) suit this SD-shaped model: nothing to add."""
        return {}

    def noise_schedule(self, num_inference_steps, latent_size=None):
        return NoiseSchedule.from_ddim_scheduler(self.scheduler, num_inference_steps)

    @torch.no_grad()
    def encode_prompts(self, texts):
        tokens = self.tokenizer(list(texts.values()), padding="max_length", max_length=77, truncation=True,
                                return_tensors="pt").input_ids.to(self.text_encoder.device)
        hidden = self.text_encoder(tokens)[0]
        return {name: {"encoder_hidden_states": hidden[i : i + 1]} for i, name in enumerate(texts)}

    def predict(self, latents, timestep, conditioning):
        eps = self.unet(latents, timestep, encoder_hidden_states=conditioning["encoder_hidden_states"]).sample
        alpha_bar = self.scheduler.alphas_cumprod.to(latents.device, torch.float64)[int(timestep)]
        x0 = (latents - (1 - alpha_bar) ** 0.5 * eps) / alpha_bar**0.5
        self.calls += 1
        return ModelOutput(x0.to(latents.dtype), "sample")

    def encode_image(self, pixels, generator=None):
        posterior = self.vae.encode(pixels.to(self.vae.dtype)).latent_dist
        return (posterior.mode() if generator is None else posterior.sample(generator)) * self.vae.config.scaling_factor

    def decode_latents(self, latents, nan_guard=False):
        return self.vae.decode(latents / self.vae.config.scaling_factor).sample


class ToyFamily:
    name = "toy"
    description = "A third-party test family: the tiny UNet read as an x0 predictor."

    def claims(self, request) -> bool:
        return request.spec == "tiny-toy"

    def load(self, request) -> ToyBackbone:
        return ToyBackbone(request.device, request.dtype)

    def detect(self, configs) -> bool:
        return False


@hookimpl
def register_model_families(register):
    register(ToyFamily)
