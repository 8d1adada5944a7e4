"""Peak memory per execution mode of a flow model's architecture, computed on the meta device.

The same model of the allocator as :mod:`sow.bench.memory` (live bytes of every tensor an op
creates, SDPA as a fused kernel), for a flow transformer, its VAE and its text encoders:

- ``resident``: every model on the device: all weights + the largest activation peak;
- ``model offload``: one model on the device at a time: max over models of (its weights + its
  activations) — for FLUX.1 the 4.7 B T5 encoder, not the transformer, can set it at short
  prompts, so both are listed;
- ``sequential offload``: accelerate's ``cpu_offload`` (:mod:`sow.models.sequential_offload`) loads
  each layer's own parameters for its forward and drops them after, and leaves the buffers on the
  device: the largest layer's own parameters + every buffer + the activations;
- ``8-bit weights``: the transformer's and text encoders' linear weights at one byte each
  (``weight_format`` int8 or fp8, :mod:`sow.models.weight_formats`; the rest, VAE included, stays in
  ``dtype``), resident or under model offload; fp8 under sequential offload holds one 8-bit layer at a time.

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


def _largest_layer(module: torch.nn.Module, dtype: torch.dtype, eight_bit: bool = False) -> int:
    """Bytes of the largest set of parameters one module holds itself (what sequential offload loads at once);
    ``eight_bit``: ``nn.Linear`` weights at one byte (embeddings, norms and biases stay in ``dtype``)."""
    size = torch.tensor([], dtype=dtype).element_size()

    def own(m: torch.nn.Module) -> int:
        total = sum(p.numel() for p in m.parameters(recurse=False)) * size
        if eight_bit and isinstance(m, torch.nn.Linear):
            total -= (size - 1) * m.weight.numel()
        return total

    return max((own(m) for m in module.modules()), default=0)


def _buffer_bytes(module: torch.nn.Module) -> int:
    return sum(b.numel() * b.element_size() for b in module.buffers())


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
    layer = max(_largest_layer(m, dtype) for m in parts.values())
    buffers = sum(_buffer_bytes(m) for m in parts.values())
    layer_8bit = max(_largest_layer(m, dtype, eight_bit=k != "vae") for k, m in parts.items())
    sequential = layer + buffers + activations
    modes = {
        "resident": sum(weights.values()) + activations,
        "model offload": max(per_model),
        "sequential offload": sequential,
        "8-bit weights, resident": sum(eight_bit.values()) + activations,
        "8-bit (fp8) weights, sequential offload": layer_8bit + buffers + activations,
        "8-bit weights, model offload": max(eight_bit["transformer"] + peaks["transformer"], weights["vae"] + peaks["vae_decode"],
                                            *(eight_bit[k] + peaks[k] for k in encoders)),
    }
    return {"model": spec, "canvas": canvas, "dtype": str(dtype).removeprefix("torch."), "batch": batch,
            "weights": weights, "activation_peaks": peaks, "buffers": buffers, "largest_layer": layer, "modes": modes}
