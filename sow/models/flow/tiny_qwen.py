"""The embedded tiny ``tiny-qwen-image`` and ``tiny-z-image``: the two families that read prompts
with a Qwen text encoder, at a toy's widths, seeded, built offline in about a second.

**Their weights are random: their images are noise.** They run the real diffusers and
transformers modules, so the tests exercise the real prompt templates, packing, rotary positions,
VAE normalisation and attention layouts. What each keeps of its real configuration
(``../shared/data/qwen-image-config``, ``z-image-turbo-config``):

- ``tiny-qwen-image``: ``QwenImageTransformer2DModel`` with two double-stream blocks, patch 2
  (64 = 16 × 4 packed channels), rotary axes (4, 6, 6) over a head of 16; a two-layer
  ``Qwen2_5_VLForConditionalGeneration`` (text width 32 = ``joint_attention_dim``, a one-block
  vision tower that is never called, multimodal rotary sections (1, 1, 2)); the video VAE
  ``AutoencoderKLQwenImage`` (base width 8, one frame) with the real per-channel
  ``latents_mean`` / ``latents_std``; the real scheduler (dynamic shift 0.5–0.9, ``shift_terminal``
  0.02). Text length 256: the byte-level tiny tokenizer spends ~150 tokens on the system turn
  the real one writes in 34, and the prompt must survive the cut.
- ``tiny-z-image``: ``ZImageTransformer2DModel`` with two main blocks and one noise and one
  context refiner, width 32, two heads of 16, rotary axes (4, 6, 6); a three-layer ``Qwen3Model``
  (its second-to-last state, width 32 = ``cap_feat_dim``); FLUX.1's VAE factors 0.3611 / 0.1159;
  Turbo's static shift 3.0. Text length 128.

Both tokenizers are :func:`sow.models.flow.tokenizers.qwen_tokenizer` (bytes + Qwen's chat tokens).
"""

from __future__ import annotations

from typing import Any

import torch

from sow.models.flow.tokenizers import qwen_tokenizer

TINY_QWEN_MODELS = ("tiny-qwen-image", "tiny-z-image")

TINY_QWEN_TEXT_LENGTH = {"tiny-qwen-image": 256, "tiny-z-image": 128}
"""The text tokens each tiny model keeps (see the module docstring)."""

QWEN_IMAGE_LATENTS_MEAN = [-0.7571, -0.7089, -0.9113, 0.1075, -0.1745, 0.9653, -0.1517, 1.5508,
                           0.4134, -0.0715, 0.5517, -0.3632, -0.1922, -0.9497, 0.2503, -0.2921]
QWEN_IMAGE_LATENTS_STD = [2.8184, 1.4541, 2.3275, 2.6558, 1.2196, 1.7708, 2.6052, 2.0743,
                          3.2687, 2.1526, 2.8652, 1.5579, 1.6382, 1.1253, 2.8251, 1.9160]
"""Qwen-Image's VAE statistics (``qwen-image-config/vae/config.json``), kept so the normalisation is exercised."""


def tiny_qwen_configs(name: str) -> dict[str, dict[str, Any]]:
    """Component configs of one tiny model (see the module docstring)."""
    if name == "tiny-qwen-image":
        return {
            "transformer": {"patch_size": 2, "in_channels": 64, "out_channels": 16, "num_layers": 2, "attention_head_dim": 16,
                            "num_attention_heads": 2, "joint_attention_dim": 32, "axes_dims_rope": [4, 6, 6]},
            "vae": {"base_dim": 8, "z_dim": 16, "dim_mult": [1, 2, 2, 2], "num_res_blocks": 1,
                    "latents_mean": QWEN_IMAGE_LATENTS_MEAN, "latents_std": QWEN_IMAGE_LATENTS_STD},
            "text_encoder": {
                # ids 259..263 are never produced by the byte tokenizer: the vision markers stay out of the text
                "vocab_size": 264, "image_token_id": 259, "video_token_id": 260, "vision_start_token_id": 261,
                "vision_end_token_id": 262, "vision_token_id": 263,
                "text_config": {"vocab_size": 264, "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2,
                                "num_attention_heads": 4, "num_key_value_heads": 2, "max_position_embeddings": 2048,
                                "rope_scaling": {"mrope_section": [1, 1, 2], "rope_type": "default", "type": "default"},
                                "bos_token_id": 256, "eos_token_id": 258},
                "vision_config": {"depth": 1, "hidden_size": 16, "intermediate_size": 32, "num_heads": 2, "out_hidden_size": 32,
                                  "fullatt_block_indexes": [0]},
            },
            "scheduler": {"num_train_timesteps": 1000, "shift": 1.0, "use_dynamic_shifting": True, "base_image_seq_len": 256,
                          "max_image_seq_len": 8192, "base_shift": 0.5, "max_shift": 0.9, "shift_terminal": 0.02,
                          "time_shift_type": "exponential"},
        }
    if name == "tiny-z-image":
        return {
            "transformer": {"all_patch_size": [2], "all_f_patch_size": [1], "in_channels": 16, "dim": 32, "n_layers": 2,
                            "n_refiner_layers": 1, "n_heads": 2, "n_kv_heads": 2, "cap_feat_dim": 32, "axes_dims": [4, 6, 6],
                            "axes_lens": [512, 64, 64], "rope_theta": 256.0, "t_scale": 1000.0, "qk_norm": True},
            "vae": {"in_channels": 3, "out_channels": 3, "latent_channels": 16, "block_out_channels": [8, 16, 16, 16],
                    "down_block_types": ["DownEncoderBlock2D"] * 4, "up_block_types": ["UpDecoderBlock2D"] * 4,
                    "layers_per_block": 1, "norm_num_groups": 8, "sample_size": 128, "scaling_factor": 0.3611,
                    "shift_factor": 0.1159, "use_quant_conv": False, "use_post_quant_conv": False},
            "text_encoder": {"vocab_size": 259, "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 3,
                             "num_attention_heads": 4, "num_key_value_heads": 2, "head_dim": 8, "max_position_embeddings": 512,
                             "rope_theta": 10000.0, "bos_token_id": 256, "eos_token_id": 258},
            "scheduler": {"num_train_timesteps": 1000, "shift": 3.0, "use_dynamic_shifting": False},
        }
    raise ValueError(f"unknown tiny model {name!r}; choose one of {', '.join(TINY_QWEN_MODELS)}")


def build_tiny_qwen(name: str, seed: int) -> dict[str, Any]:
    """The components of ``tiny-qwen-image`` or ``tiny-z-image`` under their pipeline's names, weights from ``seed``."""
    import diffusers
    import transformers

    configs = tiny_qwen_configs(name)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        if name == "tiny-qwen-image":
            parts = {
                "transformer": diffusers.QwenImageTransformer2DModel(**configs["transformer"]),
                "vae": diffusers.AutoencoderKLQwenImage(**configs["vae"]),
                "text_encoder": transformers.Qwen2_5_VLForConditionalGeneration(transformers.Qwen2_5_VLConfig(**configs["text_encoder"])),
            }
        else:
            parts = {
                "transformer": diffusers.ZImageTransformer2DModel(**configs["transformer"]),
                "vae": diffusers.AutoencoderKL(**configs["vae"]),
                "text_encoder": transformers.Qwen3Model(transformers.Qwen3Config(**configs["text_encoder"])),
            }
    for module in parts.values():
        module.eval().requires_grad_(False)
    parts["tokenizer"] = qwen_tokenizer(2048)
    parts["scheduler"] = diffusers.FlowMatchEulerDiscreteScheduler(**configs["scheduler"])
    return parts
