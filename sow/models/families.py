"""Model families as data: what differs between SD 1.x, SD 2.x and SDXL, told from their configs.

A :class:`ModelFamily` is a small description: how many text encoders, how their outputs
become the UNet's context, whether a pooled embedding and SDXL's ``time_ids`` feed the
UNet's added conditioning, whether the VAE must decode in fp32, the usual native
resolution. :func:`detect_family` picks one from the *loaded components' configs*, never
from a model's name or path:

- UNet ``addition_embed_type == "text_time"`` and two text encoders whose widths add up
  to the UNet's cross-attention width: ``sdxl``;
- no added conditioning, one text encoder, cross-attention 768: ``sd1`` (CLIP ViT-L);
- the same with cross-attention 1024: ``sd2`` (OpenCLIP ViT-H).

Anything else cannot be told apart; the caller then names the family (``--family``), and
the override is checked against the structure (an ``sdxl`` override on a one-encoder model
is refused). The denoiser, the inversion and DAM work unchanged on top: only the prompt
encoding (:class:`PromptEncoder`) and the UNet's extra inputs (:class:`AddedConditioning`)
read the family.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal

import torch
from pydantic import BaseModel, ConfigDict, Field

from sow.engine.backbone import run_device
from sow.errors import InputError, ModelLoadError

PAPER_SIDE_RANGE = (180, 256)
"""box_v's side range on the paper's 512 canvas; other canvases scale it with their short side."""


class FamilyError(ModelLoadError):
    """The model family cannot be told from the configs, or an override does not fit them (exit 2)."""


class ModelFamily(BaseModel):
    """One Stable Diffusion family: the facts the engine needs, with the family's usual values."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(description="Short name, as --family takes it.")
    description: str = Field(description="One line for docs and `sow bench`.")
    text_encoders: int = Field(ge=1, le=2, description="How many text encoders feed the UNet's cross-attention.")
    hidden_layer: Literal["last", "penultimate"] = Field(
        description="Which hidden state of each encoder is used: the final (layer-normed) output, or the "
        "second-to-last layer's output (SDXL)."
    )
    combine: Literal["single", "concat"] = Field(
        description="How the encoders' hidden states become the context: the one encoder's, or all concatenated "
        "along the feature axis (SDXL: 768 + 1280 = 2048)."
    )
    pooled: bool = Field(description="The last encoder's pooled, projected embedding feeds the UNet (text_embeds).")
    added_conditioning: Literal["none", "text_time"] = Field(
        description="The UNet's added conditioning: none, or SDXL's pooled text + time_ids (original size, crop "
        "top-left, target size)."
    )
    zero_empty_prompt: bool = Field(
        False,
        description="The empty prompt (the inversion's unconditional branch) is all zeros instead of encoded "
        "(SDXL base's force_zeros_for_empty_prompt).",
    )
    native_resolution: int = Field(
        description="The family's usual training resolution in pixels (the loaded UNet's sample_size x the VAE "
        "scale factor decides for a given model)."
    )
    vae_scaling_factor: float = Field(description="The family's usual latent scaling (the loaded VAE's config wins).")
    vae_fp32_decode: bool = Field(
        description="Its stock VAE overflows in fp16 (config force_upcast): encode/decode in fp32 unless a fixed "
        "fp16 VAE is loaded instead."
    )
    cross_attention_dim: int | None = Field(
        description="The UNet's context width that identifies the family (None: told by structure)."
    )
    diffusers_pipeline: str = Field(description="The diffusers pipeline class whose LoRA loader fits this family.")

    def side_range(self, canvas_short_side: int | None = None) -> tuple[int, int]:
        """box_v's side range on a square canvas of ``canvas_short_side`` (default: native), from 180..256 on 512."""
        side = canvas_short_side or self.native_resolution
        return round(PAPER_SIDE_RANGE[0] * side / 512), round(PAPER_SIDE_RANGE[1] * side / 512)


FAMILIES: dict[str, ModelFamily] = {
    f.name: f
    for f in (
        ModelFamily(
            name="sd1",
            description="Stable Diffusion 1.x: CLIP ViT-L text encoder (768), 512 px",
            text_encoders=1,
            hidden_layer="last",
            combine="single",
            pooled=False,
            added_conditioning="none",
            native_resolution=512,
            vae_scaling_factor=0.18215,
            vae_fp32_decode=False,
            cross_attention_dim=768,
            diffusers_pipeline="StableDiffusionPipeline",
        ),
        ModelFamily(
            name="sd2",
            description="Stable Diffusion 2.x: OpenCLIP ViT-H text encoder (1024), 512 px (base) or 768 px",
            text_encoders=1,
            hidden_layer="last",
            combine="single",
            pooled=False,
            added_conditioning="none",
            native_resolution=512,
            vae_scaling_factor=0.18215,
            vae_fp32_decode=False,
            cross_attention_dim=1024,
            diffusers_pipeline="StableDiffusionPipeline",
        ),
        ModelFamily(
            name="sdxl",
            description="Stable Diffusion XL: CLIP ViT-L + OpenCLIP bigG (768 + 1280), pooled text and time_ids, 1024 px",
            text_encoders=2,
            hidden_layer="penultimate",
            combine="concat",
            pooled=True,
            added_conditioning="text_time",
            zero_empty_prompt=True,
            native_resolution=1024,
            vae_scaling_factor=0.13025,
            vae_fp32_decode=True,
            cross_attention_dim=None,
            diffusers_pipeline="StableDiffusionXLPipeline",
        ),
    )
}


def _get(config: Any, key: str, default: Any = None) -> Any:
    if isinstance(config, dict):
        return config.get(key, default)
    return getattr(config, key, default)


def get_family(name: str) -> ModelFamily:
    """The family called ``name``; a one-line :class:`InputError` naming the choices otherwise."""
    try:
        return FAMILIES[name]
    except KeyError:
        raise InputError(f"unknown model family {name!r}; choose one of {', '.join(FAMILIES)}") from None


def detect_family(unet_config: Any, text_encoder_configs: Sequence[Any], override: str | None = None) -> ModelFamily:
    """The family of a model, from its UNet config and its text encoders' configs (in order).

    ``override`` (``--family``) names it when the configs cannot; it must still fit the structure.
    """
    added = _get(unet_config, "addition_embed_type")
    cross = _get(unet_config, "cross_attention_dim")
    widths = [_get(c, "hidden_size") for c in text_encoder_configs]
    structure = f"{len(widths)} text encoder(s) of width {'+'.join(map(str, widths))}, cross-attention {cross}, added conditioning {added or 'none'}"
    told = _family_from_configs(added, widths, cross)
    if override is not None:
        family = get_family(override)
        if family.text_encoders != len(widths) or family.added_conditioning != (added or "none"):
            raise FamilyError(f"--family {override} does not fit this model ({structure})")
        if told is not None and told.name != family.name:  # --family only where the configs cannot tell
            raise FamilyError(f"--family {override} contradicts the model's configs, which say {told.name} ({structure}); drop --family")
        return family
    if told is not None:
        return told
    raise FamilyError(f"cannot tell the model family from its configs ({structure}); pass --family {'|'.join(FAMILIES)}")


def _family_from_configs(added: Any, widths: list[Any], cross: Any) -> ModelFamily | None:
    """The family the configs alone tell, or None when they cannot."""
    if added == "text_time" and len(widths) == 2 and isinstance(cross, int) and sum(widths) == cross:
        return FAMILIES["sdxl"]
    if added is None and len(widths) == 1 and widths[0] == cross:
        for family in FAMILIES.values():
            if family.text_encoders == 1 and family.cross_attention_dim == cross:
                return family
    return None


class PromptEncoder:
    """Texts -> the UNet's context (n, 77, D) and, for pooled families, the pooled embeddings (n, P)."""

    def __init__(self, family: ModelFamily, text_encoders: Sequence[torch.nn.Module], tokenizers: Sequence[Any]) -> None:
        if len(text_encoders) != family.text_encoders or len(tokenizers) != family.text_encoders:
            raise ValueError(f"family {family.name} needs {family.text_encoders} text encoder(s) and tokenizer(s)")
        self.family = family
        self.text_encoders = list(text_encoders)
        self.tokenizers = list(tokenizers)

    @property
    def tokenizer(self) -> Any:
        return self.tokenizers[0]

    def _tokens(self, tokenizer: Any, texts: Sequence[str], device: torch.device) -> torch.Tensor:
        return tokenizer(
            list(texts), padding="max_length", max_length=tokenizer.model_max_length, truncation=True, return_tensors="pt"
        ).input_ids.to(device)

    @torch.no_grad()
    def encode(self, texts: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(context, pooled or None) for ``texts``, each row one text."""
        family = self.family
        if family.hidden_layer == "last" and family.combine == "single" and not family.pooled:
            encoder = self.text_encoders[0]
            return encoder(self._tokens(self.tokenizer, texts, run_device(encoder)))[0], None
        hidden, pooled = [], None
        for encoder, tokenizer in zip(self.text_encoders, self.tokenizers):
            out = encoder(self._tokens(tokenizer, texts, run_device(encoder)), output_hidden_states=True)
            hidden.append(out.hidden_states[-2] if family.hidden_layer == "penultimate" else out[0])
            pooled = out[0] if family.pooled else None  # the last encoder's projected text_embeds
        context = torch.cat(hidden, dim=-1) if family.combine == "concat" else hidden[0]
        if family.zero_empty_prompt:
            empty = torch.tensor([not t for t in texts], device=context.device)
            context = torch.where(empty[:, None, None], torch.zeros_like(context), context)
            if pooled is not None:
                pooled = torch.where(empty[:, None], torch.zeros_like(pooled), pooled)
        return context, pooled


class AddedConditioning:
    """SDXL's added conditioning for one run: pooled text embeddings and ``time_ids`` per call.

    ``time_ids`` = (original height, width, crop top, crop left, target height, width) in
    pixels, here the size of the latents being denoised (the canvas, or the condition alone
    while it is inverted at its own size), no crop: what diffusers' SDXL pipeline passes for
    an uncropped image. Built once per latent size and kept: no copy to the device per call.
    """

    def __init__(self, vae_scale_factor: int) -> None:
        self.vae_scale_factor = vae_scale_factor
        self._time_ids: dict[tuple, torch.Tensor] = {}

    def time_ids(self, latents: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        height, width = latents.shape[-2] * self.vae_scale_factor, latents.shape[-1] * self.vae_scale_factor
        key = (height, width, latents.device, dtype)
        if key not in self._time_ids:
            self._time_ids[key] = torch.tensor([[height, width, 0, 0, height, width]], device=latents.device, dtype=dtype)
        return self._time_ids[key]

    def kwargs(self, latents: torch.Tensor, pooled: Sequence[torch.Tensor], dtype: torch.dtype) -> dict[str, Any]:
        """``added_cond_kwargs`` for a UNet call on ``len(pooled)`` branches of ``latents``."""
        batch = latents.shape[0]
        text_embeds = torch.cat([p.to(dtype).expand(batch, -1) for p in pooled])
        time_ids = self.time_ids(latents, dtype).expand(text_embeds.shape[0], -1)
        return {"added_cond_kwargs": {"text_embeds": text_embeds, "time_ids": time_ids}}
