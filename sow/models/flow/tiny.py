"""The embedded tiny flow models: ``tiny-sd3``, ``tiny-flux`` and ``tiny-flux2``.

Each is the real family's structure at a toy's widths, built from configs with seeded random
weights in about a second, offline (tokenizers from :mod:`sow.models.flow.tokenizers` and the
CLIP vocabulary sow ships). **Their weights are random: their images are noise.** They exist
so that tests run the real diffusers modules — the joint attention, the packing, the rotary
positions, the VAE normalisation — without downloading anything.

What each keeps of its real configuration (``../shared/data/*-config``):

- ``tiny-sd3``: ``SD3Transformer2DModel`` with patch 2, RMS qk-norm and one dual-attention
  (MMDiT-X) block out of two; two CLIP towers *with projection* (widths 32 and 48: their
  penultimate states concatenated, padded to the T5 width) and a T5 encoder (width 96 =
  ``joint_attention_dim``); pooled text 32 + 48 = 80; 16 latent channels; the VAE's scale
  *and shift* (1.5305 / 0.0609); scheduler shift 3.0.
- ``tiny-flux``: ``FluxTransformer2DModel`` with one double- and two single-stream blocks,
  2×2-packed latents (64 = 16 × 4 channels), rotary axes (4, 6, 6) over a head of 16; CLIP
  (pooled) + T5 (width 64); VAE 0.3611 / 0.1159; schnell's static scheduler (shift 1.0).
  ``tiny-flux-dev`` is the same with ``guidance_embeds`` and dev's dynamic shifting.
- ``tiny-flux2``: ``Flux2Transformer2DModel`` with one double- and two single-stream blocks,
  patchified latents (128 = 32 × 4), four rotary axes; a 4-layer Qwen3 whose hidden states
  1, 2 and 3 are stacked (klein: 9, 18, 27) to width 3 × 32 = 96; ``AutoencoderKLFlux2`` with
  *seeded non-trivial* batch-norm statistics (so the normalisation is exercised); klein's
  dynamic-shift scheduler; distilled (no CFG).
"""

from __future__ import annotations

from typing import Any

import torch

from sow.models.flow.tokenizers import qwen_tokenizer, t5_tokenizer

TINY_FLOW_SEED = 20240607

TINY_FLOW_MODELS = ("tiny-sd3", "tiny-flux", "tiny-flux-dev", "tiny-flux2", "tiny-qwen-image", "tiny-z-image")
"""Every tiny flow model; ``tiny-qwen-image`` and ``tiny-z-image`` are built in :mod:`sow.models.flow.tiny_qwen`."""

TINY_TEXT_LENGTH = 32
"""Text tokens of the tiny models' T5 / Qwen branch (the real pipelines' 256 / 512 would only slow tests)."""

TINY_QWEN_LAYERS = (1, 2, 3)
"""The tiny Qwen3's hidden states stacked for FLUX.2 (klein stacks 9, 18, 27 of 36)."""


def _vae_config(latent_channels: int, scaling: float | None = None, shift: float | None = None) -> dict[str, Any]:
    config = {
        "in_channels": 3,
        "out_channels": 3,
        "latent_channels": latent_channels,
        "block_out_channels": [8, 16, 16, 16],
        "down_block_types": ["DownEncoderBlock2D"] * 4,
        "up_block_types": ["UpDecoderBlock2D"] * 4,
        "layers_per_block": 1,
        "norm_num_groups": 8,
        "sample_size": 128,
    }
    if scaling is not None:
        config.update(scaling_factor=scaling, shift_factor=shift, use_quant_conv=False, use_post_quant_conv=False)
    return config


def _clip_config(hidden: int, projection: int | None = None) -> dict[str, Any]:
    return {
        "vocab_size": 49408,
        "hidden_size": hidden,
        "intermediate_size": 2 * hidden,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "max_position_embeddings": 77,
        "projection_dim": projection or hidden,
        "bos_token_id": 49406,
        "eos_token_id": 49407,
        "pad_token_id": 0,
        "hidden_act": "gelu",
    }


def _t5_config(width: int, vocab: int) -> dict[str, Any]:
    return {
        "vocab_size": vocab,
        "d_model": width,
        "d_kv": 8,
        "d_ff": 2 * width,
        "num_layers": 2,
        "num_heads": 4,
        "relative_attention_num_buckets": 8,
        "feed_forward_proj": "gated-gelu",
        "is_encoder_decoder": False,
        "decoder_start_token_id": 0,
        "pad_token_id": 0,
        "eos_token_id": 1,
    }


def tiny_flow_configs(name: str) -> dict[str, dict[str, Any]]:
    """Component configs of one tiny flow model (see the module docstring)."""
    if name == "tiny-sd3":
        return {
            "transformer": {
                "sample_size": 16,
                "patch_size": 2,
                "in_channels": 16,
                "out_channels": 16,
                "num_layers": 2,
                "attention_head_dim": 8,
                "num_attention_heads": 4,
                "joint_attention_dim": 96,
                "caption_projection_dim": 32,
                "pooled_projection_dim": 80,
                "pos_embed_max_size": 64,
                "qk_norm": "rms_norm",
                "dual_attention_layers": [0],
            },
            "vae": _vae_config(16, 1.5305, 0.0609),
            "text_encoder": _clip_config(32),
            "text_encoder_2": _clip_config(48),
            "text_encoder_3": _t5_config(96, 0),
            "scheduler": {"num_train_timesteps": 1000, "shift": 3.0},
        }
    if name in ("tiny-flux", "tiny-flux-dev"):
        dev = name == "tiny-flux-dev"
        scheduler = {"num_train_timesteps": 1000, "shift": 1.0, "use_dynamic_shifting": False}
        if dev:
            scheduler = {
                "num_train_timesteps": 1000,
                "shift": 3.0,
                "use_dynamic_shifting": True,
                "base_image_seq_len": 256,
                "max_image_seq_len": 4096,
                "base_shift": 0.5,
                "max_shift": 1.15,
            }
        return {
            "transformer": {
                "patch_size": 1,
                "in_channels": 64,
                "num_layers": 1,
                "num_single_layers": 2,
                "attention_head_dim": 16,
                "num_attention_heads": 2,
                "joint_attention_dim": 64,
                "pooled_projection_dim": 32,
                "guidance_embeds": dev,
                "axes_dims_rope": [4, 6, 6],
            },
            "vae": _vae_config(16, 0.3611, 0.1159),
            "text_encoder": _clip_config(32),
            "text_encoder_2": _t5_config(64, 0),
            "scheduler": scheduler,
        }
    if name == "tiny-flux2":
        vae = _vae_config(32)
        vae.update(patch_size=[2, 2], batch_norm_eps=1e-4, batch_norm_momentum=0.1, use_quant_conv=True, use_post_quant_conv=True)
        return {
            "transformer": {
                "patch_size": 1,
                "in_channels": 128,
                "num_layers": 1,
                "num_single_layers": 2,
                "attention_head_dim": 16,
                "num_attention_heads": 2,
                "joint_attention_dim": 96,
                "timestep_guidance_channels": 32,
                "mlp_ratio": 3.0,
                "axes_dims_rope": [4, 4, 4, 4],
                "rope_theta": 2000,
                "eps": 1e-6,
                "guidance_embeds": False,
            },
            "vae": vae,
            "text_encoder": {
                "vocab_size": 259,
                "hidden_size": 32,
                "intermediate_size": 64,
                "num_hidden_layers": 4,
                "num_attention_heads": 4,
                "num_key_value_heads": 2,
                "head_dim": 8,
                "max_position_embeddings": 512,
                "tie_word_embeddings": True,
                "rope_theta": 10000.0,
            },
            "scheduler": {
                "num_train_timesteps": 1000,
                "shift": 3.0,
                "use_dynamic_shifting": True,
                "base_image_seq_len": 256,
                "max_image_seq_len": 4096,
                "base_shift": 0.5,
                "max_shift": 1.15,
                "time_shift_type": "exponential",
            },
        }
    raise ValueError(f"unknown tiny flow model {name!r}; choose one of {', '.join(TINY_FLOW_MODELS)}")


def build_tiny_flow(name: str, seed: int = TINY_FLOW_SEED) -> dict[str, Any]:
    """The components of tiny flow model ``name`` under diffusers' pipeline names (``transformer``,
    ``vae``, ``text_encoder``…, ``tokenizer``…, ``scheduler``), weights drawn from ``seed``."""
    from diffusers import FlowMatchEulerDiscreteScheduler

    from sow.models.flow.tiny_qwen import TINY_QWEN_MODELS, build_tiny_qwen

    if name in TINY_QWEN_MODELS:
        return build_tiny_qwen(name, seed)
    configs = tiny_flow_configs(name)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        if name == "tiny-sd3":
            parts = _build_sd3(configs)
        elif name == "tiny-flux2":
            parts = _build_flux2(configs)
        else:
            parts = _build_flux1(configs)
    for key, module in parts.items():
        if isinstance(module, torch.nn.Module):
            parts[key] = module.eval().requires_grad_(False)
    parts["scheduler"] = FlowMatchEulerDiscreteScheduler(**configs["scheduler"])
    return parts


def _build_sd3(configs: dict[str, dict[str, Any]]) -> dict[str, Any]:
    from diffusers import AutoencoderKL, SD3Transformer2DModel
    from transformers import CLIPTextConfig, CLIPTextModelWithProjection, T5Config, T5EncoderModel

    from sow.models.loading import bundled_tokenizer

    t5_tok = t5_tokenizer(TINY_TEXT_LENGTH)
    return {
        "transformer": SD3Transformer2DModel(**configs["transformer"]),
        "vae": AutoencoderKL(**configs["vae"]),
        "text_encoder": CLIPTextModelWithProjection(CLIPTextConfig(**configs["text_encoder"])),
        "text_encoder_2": CLIPTextModelWithProjection(CLIPTextConfig(**configs["text_encoder_2"])),
        "text_encoder_3": T5EncoderModel(T5Config(**{**configs["text_encoder_3"], "vocab_size": len(t5_tok)})),
        "tokenizer": bundled_tokenizer(),
        "tokenizer_2": bundled_tokenizer(pad_token="!"),
        "tokenizer_3": t5_tok,
    }


def _build_flux1(configs: dict[str, dict[str, Any]]) -> dict[str, Any]:
    from diffusers import AutoencoderKL, FluxTransformer2DModel
    from transformers import CLIPTextConfig, CLIPTextModel, T5Config, T5EncoderModel

    from sow.models.loading import bundled_tokenizer

    t5_tok = t5_tokenizer(TINY_TEXT_LENGTH)
    return {
        "transformer": FluxTransformer2DModel(**configs["transformer"]),
        "vae": AutoencoderKL(**configs["vae"]),
        "text_encoder": CLIPTextModel(CLIPTextConfig(**configs["text_encoder"])),
        "text_encoder_2": T5EncoderModel(T5Config(**{**configs["text_encoder_2"], "vocab_size": len(t5_tok)})),
        "tokenizer": bundled_tokenizer(),
        "tokenizer_2": t5_tok,
    }


def _build_flux2(configs: dict[str, dict[str, Any]]) -> dict[str, Any]:
    from diffusers import AutoencoderKLFlux2, Flux2Transformer2DModel
    from transformers import Qwen3Config, Qwen3ForCausalLM

    vae = AutoencoderKLFlux2(**configs["vae"])
    channels = vae.bn.running_mean.shape[0]
    vae.bn.running_mean.copy_(0.3 * torch.randn(channels))
    vae.bn.running_var.copy_(0.5 + torch.rand(channels))
    return {
        "transformer": Flux2Transformer2DModel(**configs["transformer"]),
        "vae": vae,
        "text_encoder": Qwen3ForCausalLM(Qwen3Config(**configs["text_encoder"])),
        "tokenizer": qwen_tokenizer(TINY_TEXT_LENGTH),
    }
