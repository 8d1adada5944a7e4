"""A model family's network behind one seam: the :class:`Backbone` Protocol and the family door.

Seam 4 of the engine (with :mod:`sow.engine.noise_schedule`, :mod:`sow.engine.parameterization`
and :mod:`sow.engine.transitions`). The engine works on the *spatial latent grid* (B, C, h, w)
and knows nothing of text encoders, UNets or transformers; a backbone adapts one family:

- **prompts**: :meth:`Backbone.encode_prompts` encodes all the prompts of a run at once (any
  number of encoders) into one :class:`PromptConditioning` per prompt name;
- **the model call**: :meth:`Backbone.predict` takes latents on the grid, the level's timestep
  (as :meth:`NoiseSchedule.timestep` gives it) and a batch of conditionings, adds the family's
  extra inputs (SDXL's time_ids, FLUX's guidance and position ids...), packs and unpacks patches
  if the network wants tokens, and returns the raw output on the grid with its
  :data:`~sow.engine.parameterization.Parameterization`;
- **the VAE**: :meth:`Backbone.encode_image` / :meth:`Backbone.decode_latents` apply the VAE's
  scale and shift (SD: × ``scaling_factor``; SD 3 / FLUX: (z − ``shift_factor``) × ``scaling_factor``;
  FLUX.2: its batch-norm statistics), so the engine's latents are the model's;
- **the attention layout**: :attr:`Backbone.attention` lists the image self-/joint-attention
  layers and where the image tokens sit in each layer's sequence, so DAM biases only the
  image-query × image-key logits.

Optional attributes the pipeline reads when present: ``source`` (what was loaded, for the run
record), ``native_resolution`` (the default canvas side), ``tokenizer`` (prompt-length warnings),
``device`` and ``to(device, dtype)``; ``run_conditioning(settings)``: model inputs that are run
settings rather than prompts (FLUX.1 dev's ``guidance`` from ``GenerationConfig.embedded_guidance``),
added to every prompt's conditioning; ``components`` (a dict of its networks), ``attention_kernel``,
``execution_device`` and ``compute_dtype``, which :mod:`sow.models.backbone_performance` sets for
``SOWPipeline.optimize`` (attention kernel, compile, offload, fp8 / int8 weights); ``loras`` and
``diffusers_pipeline()`` for ``--lora`` (:mod:`sow.models.lora`); and ``dam_processor(layer, state, previous)`` for backbones
with joint attention layers: the processor that applies DAM (:class:`sow.attention.dam.DAMState`)
to that :class:`AttentionLayer`, biasing only image-query x image-key logits (the ``dam`` modulator
installs it on every joint layer of :attr:`Backbone.attention`, and refuses a joint layout without it).

Families register through the pluggy hook ``register_model_families`` (:mod:`sow.hookspecs`):
``register(family)`` with an object satisfying :class:`ModelFamilyAdapter`. The built-in SD 1.x,
2.x and SDXL families (:mod:`sow.engine.unet_family`) come through the same door.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal, Protocol, runtime_checkable

import torch

from sow.engine.noise_schedule import NoiseSchedule
from sow.engine.parameterization import Parameterization


PromptConditioning = dict[str, torch.Tensor]
"""One prompt's conditioning as the backbone's network takes it, each tensor with a leading batch
axis of 1: e.g. ``{"encoder_hidden_states": (1, 77, D)}`` (SD), plus ``"text_embeds"`` (SDXL's
pooled), ``"pooled_projections"`` (SD 3, FLUX) or ``"txt_ids"`` (FLUX; no batch axis there:
keys listed in :attr:`Backbone.shared_conditioning` are passed as they are, not batched)."""


@dataclass(frozen=True)
class ModelOutput:
    """The raw output of one model call, on the latent grid, and what it predicts."""

    output: torch.Tensor
    """(B, C, h, w), the batch of the call in the order it was given."""
    parameterization: Parameterization


ImagePosition = Literal["alone", "first", "last"]
"""Where a layer's image tokens sit in its attention sequence: ``alone`` (self-attention over the
image only: the UNets' ``attn1``), ``first`` (joint attention, image then text: SD 3) or ``last``
(text then image: FLUX)."""


@dataclass(frozen=True)
class AttentionLayer:
    """One attention layer DAM may modulate."""

    processor: str
    """The key of its processor in the network's ``attn_processors`` (e.g. ``...attn1.processor``)."""
    image_position: ImagePosition = "alone"
    patch_size: int = 1
    """Latent cells per token side: 1 for UNets, 2 for packed 2×2 patches (SD 3, FLUX)."""

    def image_tokens(self, sequence: int, image_tokens: int) -> slice:
        """The image tokens' positions in a sequence of ``sequence`` tokens holding ``image_tokens`` of them."""
        if self.image_position == "alone":
            if sequence != image_tokens:
                raise ValueError(f"self-attention layer {self.processor}: {sequence} tokens, {image_tokens} image tokens")
            return slice(0, sequence)
        if self.image_position == "first":
            return slice(0, image_tokens)
        return slice(sequence - image_tokens, sequence)


@dataclass(frozen=True)
class AttentionLayout:
    """The layers of a network whose image-to-image attention DAM modulates."""

    layers: tuple[AttentionLayer, ...]

    def names(self) -> list[str]:
        return [layer.processor for layer in self.layers]

    def get(self, processor: str) -> AttentionLayer | None:
        return next((layer for layer in self.layers if layer.processor == processor), None)


@runtime_checkable
class Backbone(Protocol):
    """A loaded model of one family, as the engine calls it.

    Implementations hold the family's modules (network, VAE, text encoders, scheduler) and may
    keep per-size caches; they keep no per-run state. See :mod:`sow.engine.unet_family` for the
    SD 1.x / 2.x / SDXL implementation.
    """

    family: str
    """The family's registered name (``sd1``, ``sd2``, ``sdxl``, ...)."""
    parameterization: Parameterization
    """What :meth:`predict` returns (VP models: the scheduler config's ``prediction_type``)."""
    latent_channels: int
    """C of the latent grid the engine works on (4 for SD/SDXL, 16 for SD 3 / FLUX.1: unpacked)."""
    vae_scale_factor: int
    """Pixels per latent cell (8 for all of them)."""
    network: torch.nn.Module
    """The denoising network (UNet or transformer): where attention processors are installed."""
    attention: AttentionLayout
    shared_conditioning: ClassVar[frozenset[str]]
    """Conditioning keys passed unbatched to every call (FLUX's ``txt_ids``); usually empty."""

    def noise_schedule(self, num_inference_steps: int, latent_size: tuple[int, int]) -> NoiseSchedule:
        """The run's (α, σ) levels; ``latent_size`` (h, w) for families whose shift depends on resolution."""
        ...

    def config_defaults(self, given: Mapping[str, Any] | None = None) -> dict[str, Any]:
        """The :class:`~sow.schemas.GenerationConfig` fields a run on this model starts from, over the preset's:
        S (``num_inference_steps``), ``t1``, ``t2``, ``t3``, ``guidance_scale``, ``inversion_guidance_scale``,
        ``background_guidance`` and per-run model inputs such as ``embedded_guidance`` (FLUX.1 dev). ``given``
        are the user's settings (levels follow an S they chose); the user's own values win over these. An
        empty mapping keeps the presets (the UNet families: the paper's values). The flow families' readings
        are in :mod:`sow.engine.flow.readings`; their timestep shift is a load option (``backbone.shift``)."""
        ...

    def encode_prompts(self, texts: Mapping[str, str]) -> dict[str, PromptConditioning]:
        """Every prompt of a run (name -> text), encoded in one go, by name. An empty text is the
        unconditional prompt (families that zero it, like SDXL base, do so here)."""
        ...

    def predict(
        self, latents: torch.Tensor, timestep: torch.Tensor, conditioning: Mapping[str, torch.Tensor]
    ) -> ModelOutput:
        """One network call on ``latents`` (B, C, h, w) at ``timestep`` with ``conditioning``
        batched to B (each key of :data:`PromptConditioning` concatenated over the batch)."""
        ...

    def encode_image(self, pixels: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """(B, 3, H, W) in [-1, 1] -> the model's latents (B, C, H/f, W/f), scale and shift applied;
        the posterior's mode, or a sample drawn with ``generator``."""
        ...

    def decode_latents(self, latents: torch.Tensor, nan_guard: bool = False) -> torch.Tensor:
        """The model's latents -> (B, 3, H, W) in [-1, 1] (scale and shift undone). ``nan_guard``: an fp16
        VAE whose output is not finite decodes again in fp32 (where the family's VAE can)."""
        ...


@dataclass(frozen=True)
class LoadRequest:
    """What the user asked to load (``--model`` and its companions), as a family sees it."""

    spec: str
    """``tiny``, a folder, a single file or a hub id."""
    device: torch.device
    dtype: torch.dtype
    random_weights: bool = False
    allow_pickle: bool = False
    options: dict[str, Any] = field(default_factory=dict)
    """Further loader choices (``vae``, ``loras``, ``family`` override)."""


@runtime_checkable
class ModelFamilyAdapter(Protocol):
    """A model family as registered through ``register_model_families``.

    ``claims`` is asked in registration order (built-ins first); the first family that claims a
    request loads it. ``detect`` tells a loaded diffusers model's family from its component
    configs, never from its name.
    """

    name: ClassVar[str]
    description: ClassVar[str]

    def claims(self, request: LoadRequest) -> bool:
        """Whether this family loads ``request`` (its own tiny names, a folder or file of its kind)."""
        ...

    def load(self, request: LoadRequest) -> Backbone:
        """Load the model on ``request.device`` in ``request.dtype`` and adapt it (raise
        :class:`sow.errors.ModelLoadError` with one line when it cannot be loaded)."""
        ...

    def detect(self, configs: Mapping[str, Any]) -> bool:
        """Whether components with these configs (by component name: ``unet``/``transformer``,
        ``text_encoder``, ``text_encoder_2``, ``vae``, ``scheduler``) belong to this family."""
        ...


def batch_conditioning(
    prompts: Mapping[str, PromptConditioning], names: Sequence[str], batch: int, shared: frozenset[str] = frozenset()
) -> dict[str, torch.Tensor]:
    """The conditioning of a call over ``len(names)`` branches of ``batch`` latents each, branch-major:
    every key's tensors expanded to ``batch`` rows and concatenated in the order of ``names``."""
    first = prompts[names[0]]
    out: dict[str, torch.Tensor] = {}
    for key, value in first.items():
        if key in shared:
            out[key] = value
            continue
        out[key] = torch.cat([prompts[n][key].expand(batch, *prompts[n][key].shape[1:]) for n in names])
    return out


def run_device(module: torch.nn.Module) -> torch.device:
    """Where ``module`` computes: the execution device of accelerate's offload hook when it has one
    (sequentially offloaded weights are meta tensors until their layer runs), else its first parameter's device."""
    for part in module.modules():  # the top module's hook only moves outputs back: its layers' hooks say where they run
        hook = getattr(part, "_hf_hook", None)
        for each in (hook, *getattr(hook, "hooks", ())):
            device = getattr(each, "execution_device", None)
            if device is not None:
                return torch.device(device)
    return next(module.parameters()).device
