"""Peak memory per execution mode of a flow model's architecture, computed on the meta device.

The same model of the allocator as :mod:`sow.bench.memory` (live bytes of every tensor an op
creates, SDPA as a fused kernel), for a flow transformer, its VAE and its text encoders:

- ``resident``: every model on the device: all weights + the largest activation peak;
- ``model offload``: one model on the device at a time: max over models of (its weights + its
  activations) — for FLUX.1 the 4.7 B T5 encoder, not the transformer, can set it at short
  prompts, so both are listed;
- ``sequential offload``: one block's weights at a time (the largest transformer block, or
  the largest text-encoder layer) + the activations;
- ``8-bit weights``: the transformer's and text encoders' linear weights at one byte each
  (bitsandbytes int8 / fp8; the rest, VAE included, stays in ``dtype``), resident.

The transformer's activations are taken at the largest batch of a run (the cycles' branches:
4 with background guidance on SD 3.5, 1 on the distilled models).
"""

from __future__ import annotations

from typing import Any

import torch

from sow.bench.flow_cost import branches, meta_backbone, text_width_of, vae_input, vae_latent_channels
from sow.bench.memory import activation_peak, fused_attention, weight_bytes
from sow.engine.flow.backbone import TextRows
from sow.engine.flow.readings import config_overrides
from sow.schemas import GenerationConfig


def _linear_params(module: torch.nn.Module) -> int:
    return sum(m.weight.numel() for m in module.modules() if isinstance(m, torch.nn.Linear))


def _largest_block(module: torch.nn.Module, dtype: torch.dtype) -> int:
    """Weights of the largest repeated block (a ModuleList's element) of ``module``."""
    blocks = [child for lst in module.modules() if isinstance(lst, torch.nn.ModuleList) for child in lst]
    return max((weight_bytes(b, dtype) for b in blocks), default=weight_bytes(module, dtype))


def flow_memory_table(spec: str, canvas: int = 1024, dtype: torch.dtype = torch.bfloat16) -> dict[str, Any]:
    """Peak bytes of a SOW run of the flow model in ``spec`` (a folder of configs) per mode."""
    from pathlib import Path

    backbone = meta_backbone(Path(spec).expanduser())
    config = GenerationConfig.from_preset("normal", **config_overrides(backbone))
    batch = max(branches(config).values())
    parts = {k: torch.nn.Module.to(m, dtype) for k, m in backbone.components.items() if isinstance(m, torch.nn.Module)}
    transformer, vae = parts["transformer"], parts["vae"]
    encoders = {k: m for k, m in parts.items() if k.startswith("text_encoder")}
    meta = {"device": "meta", "dtype": dtype}
    scale = backbone.vae_scale_factor
    text_tokens = backbone.text_length + (77 if backbone.family == "sd3" else 0)
    pooled = getattr(transformer.config, "pooled_projection_dim", None)
    latents = torch.zeros(batch, backbone.latent_channels, canvas // scale, canvas // scale, **meta)
    text = TextRows(torch.zeros(batch, text_tokens, text_width_of(transformer.config), **meta),
                    torch.zeros(batch, pooled, **meta) if pooled else None)
    peaks: dict[str, int] = {}
    with fused_attention():
        peaks["transformer"] = activation_peak(lambda: backbone.velocity(latents, 500.0, text))
        raw = vae_input(vae, torch.zeros(1, vae_latent_channels(vae), canvas // 8, canvas // 8, **meta))
        peaks["vae_decode"] = activation_peak(lambda: vae.decode(raw))
        for key, module in encoders.items():
            tokens = 77 if "CLIP" in type(module).__name__ else backbone.text_length
            ids = torch.zeros(5, tokens, dtype=torch.long, device="meta")
            peaks[key] = activation_peak(lambda m=module, i=ids: m(i, output_hidden_states=True))
    weights = {"transformer": weight_bytes(transformer, dtype), "vae": weight_bytes(vae, dtype)}
    weights.update({k: weight_bytes(m, dtype) for k, m in encoders.items()})
    size = torch.tensor([], dtype=dtype).element_size()
    eight_bit = {k: w - (size - 1) * _linear_params(parts[k]) if k != "vae" else w for k, w in weights.items()}
    activations = max(peaks.values())
    per_model = [weights["transformer"] + peaks["transformer"], weights["vae"] + peaks["vae_decode"]]
    per_model += [weights[k] + peaks[k] for k in encoders]
    sequential = max(_largest_block(transformer, dtype), *(_largest_block(m, dtype) for m in encoders.values())) + activations
    modes = {
        "resident": sum(weights.values()) + activations,
        "model offload": max(per_model),
        "sequential offload": sequential,
        "8-bit weights, resident": sum(eight_bit.values()) + activations,
        "8-bit weights, model offload": max(eight_bit["transformer"] + peaks["transformer"], weights["vae"] + peaks["vae_decode"],
                                            *(eight_bit[k] + peaks[k] for k in encoders)),
    }
    return {"model": spec, "canvas": canvas, "dtype": str(dtype).removeprefix("torch."), "batch": batch,
            "weights": weights, "activation_peaks": peaks, "modes": modes}
