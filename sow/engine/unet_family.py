"""The built-in families SD 1.x, SD 2.x and SDXL as one :class:`~sow.engine.backbone.Backbone`.

:class:`UNetBackbone` adapts loaded :class:`~sow.models.loading.Components` (a
``UNet2DConditionModel``, an ``AutoencoderKL``, one or two CLIP text encoders and a DDIM-style
scheduler) to the engine's seams: prompts through :class:`~sow.models.families.PromptEncoder`,
SDXL's pooled text and ``time_ids`` as the UNet's added conditioning, the VAE's
``scaling_factor`` (no shift), the parameterization from the scheduler's ``prediction_type``
(SD 2.x at 768 px is ``v_prediction``), and every ``attn1`` layer as image self-attention.

The three families register through ``register_model_families`` like any plugin's
(:class:`UNetFamily`); which of them a loaded model is comes from its configs
(:func:`sow.models.families.detect_family`).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any, ClassVar

import torch

from sow.engine.diffusion_math import LevelSchedule
from sow.engine.backbone import AttentionLayer, AttentionLayout, LoadRequest, ModelOutput, PromptConditioning, run_device
from sow.models.families import FAMILIES, FamilyError, detect_family
from sow.models.loading import Components, load_components
from sow.engine.parameterization import prediction_type_of
from sow.models.performance import decode_latents
from sow.hookspecs import hookimpl

SELF_ATTENTION_SUFFIX = "attn1.processor"
"""UNet processor keys of the image self-attention layers (``attn2`` is cross-attention to the text)."""


class UNetBackbone:
    """SD 1.x / 2.x / SDXL components as the engine calls them (see the module docstring)."""

    shared_conditioning: ClassVar[frozenset[str]] = frozenset()

    def __init__(self, components: Components) -> None:
        self.components = components
        self.family = components.family.name if components.family is not None else None
        """``sd1``, ``sd2`` or ``sdxl``; None for components whose configs do not tell (a toy's widths) and
        for which no family was named: they run as a one-encoder model, as they always did."""
        self.parameterization = prediction_type_of(components.scheduler)
        self._added = components.added_conditioning()

    # -- what the engine reads ----------------------------------------------------------

    @property
    def network(self) -> torch.nn.Module:
        return self.components.unet

    @property
    def latent_channels(self) -> int:
        return int(self.components.unet.config.in_channels)

    @property
    def vae_scale_factor(self) -> int:
        return self.components.vae_scale_factor

    @property
    def attention(self) -> AttentionLayout:
        keys = [k for k in self.components.unet.attn_processors if k.endswith(SELF_ATTENTION_SUFFIX)]
        return AttentionLayout(layers=tuple(AttentionLayer(processor=k) for k in keys))

    def config_defaults(self, given: Mapping[str, Any] | None = None) -> dict[str, Any]:
        """Nothing over the presets: the paper's settings (S = 10, t1 = 5, t2 = 7, CFG 7.5) were made for these models."""
        return {}

    def noise_schedule(self, num_inference_steps: int, latent_size: tuple[int, int] | None = None) -> LevelSchedule:
        """VP levels of the model's DDIM scheduler (the latent size changes nothing), moving in ᾱ
        coordinates (:class:`~sow.engine.diffusion_math.LevelSchedule`, the VP reading of the (α, σ) steps)."""
        return LevelSchedule.from_scheduler(self.components.scheduler, num_inference_steps)

    # -- prompts ------------------------------------------------------------------------

    @torch.no_grad()
    def encode_prompts(self, texts: Mapping[str, str]) -> dict[str, PromptConditioning]:
        """All prompts in one batch per encoder: ``encoder_hidden_states`` (1, 77, D) each, plus the
        pooled ``text_embeds`` (1, P) for SDXL."""
        comp = self.components
        names, values = list(texts), list(texts.values())
        encoder = comp.prompt_encoder()
        if encoder is None:
            tokenizer, text_encoder = comp.tokenizer, comp.text_encoder
            tokens = tokenizer(
                values, padding="max_length", max_length=tokenizer.model_max_length, truncation=True, return_tensors="pt"
            ).input_ids.to(run_device(text_encoder))
            hidden, pooled = text_encoder(tokens)[0], None
        else:
            hidden, pooled = encoder.encode(values)
        out: dict[str, PromptConditioning] = {}
        for i, name in enumerate(names):
            out[name] = {"encoder_hidden_states": hidden[i : i + 1]}
            if pooled is not None:
                out[name]["text_embeds"] = pooled[i : i + 1]
        return out

    # -- the model call -----------------------------------------------------------------

    def predict(self, latents: torch.Tensor, timestep: torch.Tensor, conditioning: Mapping[str, torch.Tensor]) -> ModelOutput:
        """``unet(latents, t, encoder_hidden_states, added_cond_kwargs)``; SDXL's time_ids from the latents' size."""
        context = conditioning["encoder_hidden_states"]
        extra: dict[str, Any] = {}
        if self._added is not None:
            text_embeds = conditioning["text_embeds"].to(context.dtype)
            time_ids = self._added.time_ids(latents, context.dtype).expand(text_embeds.shape[0], -1)
            extra["added_cond_kwargs"] = {"text_embeds": text_embeds, "time_ids": time_ids}
        output = self.components.unet(latents, timestep, encoder_hidden_states=context, **extra).sample
        return ModelOutput(output=output, parameterization=self.parameterization)

    # -- the VAE --------------------------------------------------------------------------

    def encode_image(self, pixels: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """VAE latents × ``scaling_factor`` (SD has no shift); fp32 for VAEs that overflow in fp16."""
        vae = self.components.vae
        if vae.dtype == torch.float16 and self.components.vae_needs_fp32:
            vae.to(torch.float32)
            try:
                posterior = vae.encode(pixels.to(dtype=torch.float32)).latent_dist
                latents = posterior.mode() if generator is None else posterior.sample(generator)
                return (latents * vae.config.scaling_factor).half()
            finally:
                vae.to(torch.float16)
        posterior = vae.encode(pixels.to(dtype=vae.dtype)).latent_dist
        latents = posterior.mode() if generator is None else posterior.sample(generator)
        return latents * vae.config.scaling_factor

    def decode_latents(self, latents: torch.Tensor, nan_guard: bool = False) -> torch.Tensor:
        return decode_latents(self.components.vae, latents, nan_guard=nan_guard, upcast=self.components.vae_needs_fp32)


class UNetFamily:
    """One of the built-in UNet families as the families hook sees it.

    The three share one loader (:func:`sow.models.loading.load_components`): whichever of them
    claims a request, the loaded model's family is told from its configs.
    """

    tiny_names: ClassVar[tuple[str, ...]] = ()

    def __init__(self, name: str, tiny_names: tuple[str, ...] = ()) -> None:
        self.name = name
        self.description = FAMILIES[name].description
        self.tiny_names = tiny_names

    def claims(self, request: LoadRequest) -> bool:
        """Its tiny models by name; any diffusers folder with a ``unet/``, single checkpoint or hub id."""
        spec = request.spec
        if spec in self.tiny_names:
            return True
        if spec.startswith("tiny"):
            return False
        path = Path(spec).expanduser()
        if path.is_dir():
            return (path / "unet").is_dir() or (path / "model_index.json").is_file() and not (path / "transformer").is_dir()
        return path.suffix in (".safetensors", ".ckpt", ".pt", ".bin") or ("/" in spec and not spec.startswith((".", "/")))

    def load(self, request: LoadRequest) -> UNetBackbone:
        components = load_components(
            request.spec,
            device=request.device,
            dtype=request.dtype,
            random_weights=request.random_weights,
            allow_pickle=request.allow_pickle,
            **request.options,
        )
        return UNetBackbone(components)

    def detect(self, configs: Mapping[str, Any]) -> bool:
        unet = configs.get("unet")
        if unet is None:
            return False
        encoders = [configs[k] for k in ("text_encoder", "text_encoder_2") if configs.get(k) is not None]
        try:
            return detect_family(unet, encoders).name == self.name
        except FamilyError:
            return False


@hookimpl
def register_model_families(register):
    register(UNetFamily("sd1"))
    register(UNetFamily("sd2", tiny_names=("tiny",)))
    register(UNetFamily("sdxl", tiny_names=("tiny-sdxl",)))
