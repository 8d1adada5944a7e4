"""The performance settings on a backbone that is not a UNet (the flow transformers: SD 3, FLUX.1, FLUX.2).

:func:`sow.models.performance.apply` sets up the UNet families' modules; this module does the
same for a backbone holding its modules in a ``components`` dict (``transformer``, ``vae``,
``text_encoder*``), as :class:`sow.engine.flow.backbone.FlowBackbone` does:

- ``attention``: ``math`` runs every attention call of the model on torch's explicit-softmax
  SDPA kernel (the backbone's ``attention_kernel``), ``sdpa`` on the fused kernels;
- ``compile``: regional ``torch.compile`` of the transformer's feed-forward blocks (attention
  stays eager: DAM swaps its processors per run);
- ``vae_slicing`` / ``vae_tiling`` as for the UNets;
- ``weight_format``: the transformer's and text encoders' weights in fp8 or int8
  (:mod:`sow.models.weight_formats`);
- ``offload`` / ``sequential_offload``: model offload (one model on the GPU at a time) or
  per-layer offload, on accelerate's hooks (:class:`~sow.models.performance.ModelOffload`,
  :class:`~sow.models.sequential_offload.SequentialOffload`). On a machine without CUDA there
  is nothing to offload to: the settings are skipped with a log line, as for the UNets, and
  ``SOWPipeline.enable_model_cpu_offload(device="cpu")`` shows the wiring on the CPU.

``channels_last`` does not apply (a transformer's activations are token sequences).
"""

from __future__ import annotations

import logging
from typing import Any

import torch

from sow.errors import InputError
from sow.models.performance import (
    TILING_AUTO_PIXELS,
    ModelOffload,
    PerformanceSettings,
    compile_regions,
    require_accelerate,
    vae_entries,
)
from sow.models.sequential_offload import SequentialOffload
from sow.models.weight_formats import store_weights

log = logging.getLogger("sow.models.backbone_performance")

DENOISER_KEYS = ("transformer", "unet")
"""The component that denoises (converted by ``weight_format`` with the text encoders)."""


def backbone_models(backbone: Any) -> dict[str, torch.nn.Module]:
    """The backbone's networks by component name (text encoders, the denoiser, the VAE), in its components' order."""
    components = getattr(backbone, "components", None)
    if not isinstance(components, dict):
        raise InputError(f"performance settings need a backbone with a components dict; the {backbone.family} family has none")
    return {k: m for k, m in components.items() if isinstance(m, torch.nn.Module)}


def apply_to_backbone(backbone: Any, settings: PerformanceSettings, canvas_pixels: int | None = None) -> dict[str, Any]:
    """Apply ``settings`` to a non-UNet ``backbone`` in place; returns what was done (for reports)."""
    models = backbone_models(backbone)
    device = backbone.device
    if settings.offload and settings.sequential_offload:
        raise InputError("offload and sequential_offload are two ways of offloading: choose one")
    if settings.weight_format == "int8" and (settings.offload or settings.sequential_offload):
        raise InputError("int8 weights cannot be offloaded (bitsandbytes' layers quantize when they move): use fp8 weights with offload")
    if not hasattr(backbone, "attention_kernel"):
        if settings.attention != "sdpa":
            raise InputError(f"the {backbone.family} family's backbone has no attention_kernel to set to {settings.attention!r}")
    else:
        backbone.attention_kernel = settings.attention
    done: dict[str, Any] = {"attention": settings.attention}
    vae = models.get("vae")
    if vae is not None and hasattr(vae, "enable_slicing"):
        vae.enable_slicing() if settings.vae_slicing else vae.disable_slicing()
        tiling = settings.vae_tiling
        if tiling is None:
            tiling = canvas_pixels is not None and canvas_pixels >= TILING_AUTO_PIXELS
        vae.enable_tiling() if tiling else vae.disable_tiling()
        done["vae_slicing"], done["vae_tiling"] = settings.vae_slicing, tiling
    if settings.weight_format != "native":
        compute = backbone.dtype
        converted = 0
        for name, module in models.items():
            if name in DENOISER_KEYS or name.startswith("text_encoder"):
                converted += store_weights(module, settings.weight_format, compute)
        if hasattr(backbone, "compute_dtype"):
            backbone.compute_dtype = compute
        done["weight_format"], done["layers_converted"] = settings.weight_format, converted
    if settings.compile:
        done["compiled_blocks"] = compile_regions(backbone.network, settings.compile_mode)
    if settings.offload or settings.sequential_offload:
        if device.type != "cuda":
            log.info("offload asked for on %s: nothing to offload to, skipped", device)
        elif settings.offload:
            offload_backbone(backbone, device)
            done["offload"] = True
        else:
            sequential_offload_backbone(backbone, device)
            done["sequential_offload"] = True
    return done


def offload_backbone(backbone: Any, execution_device: torch.device | str) -> ModelOffload:
    """Model offload over the backbone's networks: each moves to ``execution_device`` when it runs, the last one back."""
    require_accelerate("model offload")
    offload = ModelOffload(execution_device)
    for name, module in backbone_models(backbone).items():
        entries = vae_entries(module) if name == "vae" else None
        offload.add(name, module, entries)
    backbone.execution_device = torch.device(execution_device)
    return offload


def sequential_offload_backbone(backbone: Any, execution_device: torch.device | str) -> SequentialOffload:
    """accelerate's per-layer offload over every network of the backbone; runs go to ``execution_device``."""
    offload = SequentialOffload(execution_device)
    for module in backbone_models(backbone).values():
        offload.add(module)
    backbone.execution_device = torch.device(execution_device)
    return offload
