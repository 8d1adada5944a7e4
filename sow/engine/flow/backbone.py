"""The common part of the flow transformer backbones (:class:`sow.engine.backbone.Backbone`).

The engine keeps its latents in one layout for every family: (B, C, h, w) on the *latent
grid* (one cell per :attr:`FlowBackbone.vae_scale_factor` pixels), already normalised as the
model expects (the VAE's scale and shift, or FLUX.2's batch-norm statistics). Region resets,
noise injection and the steps act on that tensor; only :meth:`FlowBackbone.predict` packs it
into the transformer's tokens and back, and returns the velocity (parameterization ``flow``).
A family adapter (:mod:`sow.engine.flow.sd3`, ``flux1``, ``flux2``) supplies the text
encoding, the model call, the VAE normalisation and which of its processors are joint
attention over [image, text] or [text, image].
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar, Literal

import torch

from sow.engine.backbone import AttentionLayer, AttentionLayout, ModelOutput, PromptConditioning, run_device
from sow.engine.flow.schedule import FlowLevels
from sow.engine.noise_schedule import Level, NoiseSchedule


@dataclass
class TextRows:
    """Encoded texts, one row each: the joint-attention context and, where the family has one, pooled text."""

    hidden: torch.Tensor
    """(n, L, D): the text tokens the transformer attends with."""
    pooled: torch.Tensor | None = None
    """(n, P): the pooled projection some families add to the timestep embedding (SD3, FLUX.1)."""
    guidance: torch.Tensor | None = None
    """(n,): the guidance *input* of each row (FLUX.1 dev), a run setting (:meth:`FlowBackbone.run_conditioning`)."""

    @classmethod
    def of(cls, conditioning: Mapping[str, torch.Tensor]) -> TextRows:
        guidance = conditioning.get("guidance")
        return cls(conditioning["encoder_hidden_states"], conditioning.get("pooled_projections"),
                   None if guidance is None else guidance.reshape(-1))

    def conditioning(self, index: int) -> PromptConditioning:
        out = {"encoder_hidden_states": self.hidden[index : index + 1]}
        if self.pooled is not None:
            out["pooled_projections"] = self.pooled[index : index + 1]
        return out


GuidanceKind = Literal["cfg", "embedded", "none"]
"""How a family is guided: real classifier-free guidance (two branches), a guidance *input* the
distilled model was trained with (FLUX.1 dev: one branch), or none (schnell, klein)."""


class FlowBackbone:
    """A flow-matching transformer as the engine calls it; subclasses fill in the model's specifics."""

    family: ClassVar[str]
    schedule_rule: ClassVar[str]
    """How the family's diffusers pipeline sets its scheduler (:meth:`FlowLevels.from_scheduler`)."""
    image_position: ClassVar[Literal["first", "last"]]
    """Where the image tokens sit in a joint attention sequence: SD3 ``first``, FLUX ``last``."""
    patch_size: ClassVar[int]
    """Latent cells per image token side on the engine's grid (SD3 / FLUX.1: 2; FLUX.2: 1)."""
    parameterization: ClassVar[str] = "flow"
    shared_conditioning: ClassVar[frozenset[str]] = frozenset()
    native_resolution: ClassVar[int] = 1024
    """The usual canvas side in pixels (all three families train at 1024²)."""

    def __init__(self, components: dict[str, Any], text_length: int, shift: float | str | None = None,
                 embedded_guidance: float = 3.5) -> None:
        self.components = components
        self.transformer = components["transformer"]
        self.vae = components["vae"]
        self.scheduler = components["scheduler"]
        self.text_length = text_length
        self.shift = shift
        """None: the family pipeline's own shift (static or by resolution); a number: that fixed shift; "none"."""
        self.embedded_guidance = embedded_guidance
        """The default guidance *input* of guidance-distilled models (FLUX.1 dev; a run's
        ``GenerationConfig.embedded_guidance`` overrides it); unused by the others."""
        self.attention_kernel: Literal["sdpa", "math"] = "sdpa"
        """``math``: every attention call of :meth:`predict` on torch's explicit-softmax SDPA kernel
        (the reference's habit, to price it); ``sdpa``: the fused kernels (:mod:`sow.models.performance`)."""
        self.execution_device: torch.device | None = None
        """Where the run computes while the weights are offloaded (None: where the transformer's weights are)."""
        self.compute_dtype: torch.dtype | None = None
        """The dtype the run computes in when the weights are stored in fp8 / int8 (None: the weights' dtype)."""
        self.loras: list[Any] = []
        """The LoRAs applied (:class:`sow.schemas.LoraRecord`), for the run record."""
        self.source: str | None = None
        """What was loaded (a tiny name, a folder, a file or a hub id), for the run record."""

    # -- what the engine reads ----------------------------------------------------------

    def config_defaults(self, given: Mapping[str, Any] | None = None) -> dict[str, Any]:
        """The run settings this model kind starts from (S, t1, t2, t3, guidance; :mod:`sow.engine.flow.readings`);
        with ``given`` settings (the user's), the levels follow a ``num_inference_steps`` they chose."""
        from sow.engine.flow.readings import config_overrides

        return config_overrides(self, given)

    def to(self, device: str | torch.device | None = None, dtype: torch.dtype | None = None) -> FlowBackbone:
        """Every module to ``device`` / ``dtype`` (diffusers' cast where it keeps modules in fp32)."""
        for module in self.components.values():
            if not isinstance(module, torch.nn.Module):
                continue
            if getattr(module, "_keep_in_fp32_modules", None):
                module.to(device=device, dtype=dtype)
            else:
                torch.nn.Module.to(module, device=device, dtype=dtype)
        return self

    @property
    def guidance(self) -> GuidanceKind:
        return "cfg"

    @property
    def network(self) -> torch.nn.Module:
        return self.transformer

    @property
    def device(self) -> torch.device:
        """Where the run's tensors live: the execution device under offload, else the transformer's."""
        return self.execution_device or run_device(self.transformer)

    @property
    def dtype(self) -> torch.dtype:
        """The dtype the transformer computes in (its weights', unless they are stored in 8 bits)."""
        if self.compute_dtype is not None:
            return self.compute_dtype
        return next(p.dtype for p in self.transformer.parameters() if p.dtype.is_floating_point)

    def run_conditioning(self, settings: Mapping[str, Any]) -> PromptConditioning:
        """Model inputs that are run settings, not prompts: added to every prompt's conditioning by the
        pipeline (each with a batch axis of 1). FLUX.1 dev: its guidance input
        (``settings["embedded_guidance"]``, None for the model's default); none for the other families."""
        return {}

    def diffusers_pipeline(self) -> Any:
        """The family's diffusers pipeline around these very modules (for its LoRA loader)."""
        import diffusers

        cls = getattr(diffusers, self.pipeline_class)
        return cls(**{k: v for k, v in self.components.items() if k in self.pipeline_components()})

    pipeline_class: ClassVar[str]
    """The family's diffusers pipeline class (``StableDiffusion3Pipeline``, ``FluxPipeline``, ``Flux2KleinPipeline``)."""

    def pipeline_components(self) -> set[str]:
        import inspect

        import diffusers

        return set(inspect.signature(getattr(diffusers, self.pipeline_class).__init__).parameters) - {"self"}

    @property
    def attention(self) -> AttentionLayout:
        """Every attention processor of the transformer; image-only ones (SD3.5's dual attention) as ``alone``."""
        layers = []
        for key in self.transformer.attn_processors:
            position = "alone" if self.is_image_only(key) else self.image_position
            layers.append(AttentionLayer(processor=key, image_position=position, patch_size=self.patch_size))
        return AttentionLayout(layers=tuple(layers))

    def is_image_only(self, processor_key: str) -> bool:
        return False

    def dam_processor(self, layer: AttentionLayer, state: Any, previous: Any) -> Any:
        """DAM's processor for one joint attention layer (:mod:`sow.attention.joint`): it biases only the
        image-query × image-key logits, at this family's image offset; ``state`` is the run's DAMState."""
        from sow.attention.joint import joint_processor

        return joint_processor(layer.processor, state, previous, layer.image_position, layer.patch_size)

    def image_tokens(self, height: int, width: int) -> int:
        """Transformer image tokens of a (height, width) latent grid."""
        return (height // self.patch_size) * (width // self.patch_size)

    def levels(self, num_inference_steps: int, latent_size: tuple[int, int]) -> FlowLevels:
        return FlowLevels.from_scheduler(self.scheduler, num_inference_steps, self.schedule_rule, self.image_tokens(*latent_size), self.shift)

    def noise_schedule(self, num_inference_steps: int, latent_size: tuple[int, int] | None = None) -> NoiseSchedule:
        """The run's levels (α = 1 − s, σ = s), shifted as the family's pipeline shifts them at this size."""
        if latent_size is None:
            raise ValueError(f"{self.family}: the flow schedule depends on the latent size; pass latent_size")
        flow = self.levels(num_inference_steps, latent_size)
        levels = tuple(Level(alpha=1.0 - s, sigma=s) for s in flow.sigmas.to(torch.float64).tolist())
        return NoiseSchedule(kind="flow", levels=levels, timesteps=torch.cat([torch.zeros(1), flow.timesteps[1:]]))

    # -- prompts ------------------------------------------------------------------------

    def encode_texts(self, texts: list[str]) -> TextRows:
        raise NotImplementedError

    @torch.no_grad()
    def encode_prompts(self, texts: Mapping[str, str]) -> dict[str, PromptConditioning]:
        """All prompts at once through every text encoder; by name, each row (1, L, D) (+ pooled (1, P))."""
        rows = self.encode_texts(list(texts.values()))
        return {name: rows.conditioning(i) for i, name in enumerate(texts)}

    # -- the model call -----------------------------------------------------------------

    def velocity(self, latents: torch.Tensor, timestep: torch.Tensor | float, text: TextRows) -> torch.Tensor:
        raise NotImplementedError

    def predict(self, latents: torch.Tensor, timestep: torch.Tensor | float, conditioning: Mapping[str, torch.Tensor]) -> ModelOutput:
        """The velocity v = ε − x0 on the latent grid, for each row of ``latents`` and ``conditioning``."""
        if self.attention_kernel == "math":
            from torch.nn.attention import SDPBackend, sdpa_kernel

            with sdpa_kernel(SDPBackend.MATH):
                return ModelOutput(output=self.velocity(latents, timestep, TextRows.of(conditioning)), parameterization="flow")
        return ModelOutput(output=self.velocity(latents, timestep, TextRows.of(conditioning)), parameterization="flow")

    def pack(self, latents: torch.Tensor) -> torch.Tensor:
        """The latents in the family's diffusers pipeline's own layout (identity where it keeps (B, C, h, w))."""
        return latents

    def _repeat(self, tokens: torch.Tensor, rows: int) -> torch.Tensor:
        """``tokens`` repeated to ``rows`` (a batch of latents shared by several prompt branches)."""
        return torch.cat([tokens] * (rows // tokens.shape[0])) if rows > tokens.shape[0] else tokens

    # -- the VAE --------------------------------------------------------------------------

    def vae_latents(self, pixels: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """The VAE posterior's mode (or a sample with ``generator``) of ``pixels`` in [−1, 1]."""
        posterior = self.vae.encode(pixels.to(device=self.device, dtype=self.vae.dtype)).latent_dist
        return posterior.mode() if generator is None else posterior.sample(generator)

    def encode_image(self, pixels: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """(z − shift) × scale: SD3 and FLUX.1's normalisation (FLUX.2 overrides it)."""
        config = self.vae.config
        return ((self.vae_latents(pixels, generator) - config.shift_factor) * config.scaling_factor).to(self.dtype)

    def decode_latents(self, latents: torch.Tensor, nan_guard: bool = False) -> torch.Tensor:
        config = self.vae.config
        raw = latents.to(self.vae.dtype) / config.scaling_factor + config.shift_factor
        return self.vae.decode(raw, return_dict=False)[0]

    @property
    def latent_channels(self) -> int:
        raise NotImplementedError

    @property
    def vae_scale_factor(self) -> int:
        """Pixels per cell of the engine's latent grid."""
        return 2 ** (len(self.vae.config.block_out_channels) - 1)
