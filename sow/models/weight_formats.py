"""Weights stored in 8 bits: fp8 (float8 e4m3) through diffusers' layerwise casting, int8 through bitsandbytes.

A 12 B-parameter FLUX.1 transformer is 22 GiB in bf16 and 11 GiB in 8 bits, the difference
between a 24 GiB card refusing it and running it. Both formats keep the arithmetic in the run's
dtype; they change what the weights *are*, so an image differs slightly from the bf16 one:

- ``fp8``: each supported layer's weights stored as ``torch.float8_e4m3fn`` and cast to the
  compute dtype just before its forward (diffusers' ``apply_layerwise_casting``, the machinery
  of ``ModelMixin.enable_layerwise_casting``; norms, position embeddings and the in/out
  projections stay in the compute dtype, diffusers' default skip list). Runs on any device.
- ``int8``: every ``nn.Linear`` replaced by bitsandbytes' ``Linear8bitLt`` (LLM.int8: row-wise
  int8 weights, outlier features above the threshold in 16 bits). bitsandbytes 0.50 runs it on
  the CPU too. Needs ``bitsandbytes`` (``pip install 'sow[quant]'``).

Applied after loading, to the modules in memory (the tiny and random-weight models are built,
not read); a loader that quantizes while reading a checkpoint (diffusers' ``quantization_config``)
would avoid holding the full-precision weights first, and is not used here. The VAE is never
converted (small, and sensitive).
"""

from __future__ import annotations

import re

import torch

from sow.errors import EnvironmentProblem

INT8_THRESHOLD = 6.0
"""LLM.int8's outlier threshold: input features above it in magnitude are computed in 16 bits (bitsandbytes' default)."""


def store_fp8(module: torch.nn.Module, compute_dtype: torch.dtype) -> int:
    """Store ``module``'s supported layers in float8 e4m3, computed in ``compute_dtype``; returns how many layers."""
    from diffusers.hooks.layerwise_casting import DEFAULT_SKIP_MODULES_PATTERN, apply_layerwise_casting

    patterns = tuple(getattr(module, "_skip_layerwise_casting_patterns", None) or ()) + DEFAULT_SKIP_MODULES_PATTERN
    # layers a model keeps in fp32 read their weight's dtype in code (T5's ``wo`` casts its input to it): left alone
    patterns += tuple(rf"(^|\.){re.escape(name)}$" for name in getattr(module, "_keep_in_fp32_modules", None) or ())
    apply_layerwise_casting(module, storage_dtype=torch.float8_e4m3fn, compute_dtype=compute_dtype, skip_modules_pattern=patterns)
    return sum(1 for m in module.modules() if any(p.dtype == torch.float8_e4m3fn for p in m.parameters(recurse=False)))


def store_int8(module: torch.nn.Module, threshold: float = INT8_THRESHOLD) -> int:
    """Replace every ``nn.Linear`` of ``module`` by bitsandbytes' LLM.int8 layer (weights quantized where they are); returns how many."""
    try:
        import bitsandbytes as bnb
    except ImportError:
        raise EnvironmentProblem("int8 weights need bitsandbytes: pip install 'sow[quant]'") from None
    count = 0
    for parent in list(module.modules()):
        for name, child in list(parent.named_children()):
            if type(child) is not torch.nn.Linear:
                continue
            device = child.weight.device
            layer = bnb.nn.Linear8bitLt(child.in_features, child.out_features, bias=child.bias is not None,
                                        has_fp16_weights=False, threshold=threshold)
            layer.weight = bnb.nn.Int8Params(child.weight.data.to("cpu"), requires_grad=False, has_fp16_weights=False)
            if child.bias is not None:
                layer.bias = torch.nn.Parameter(child.bias.data, requires_grad=False)
            setattr(parent, name, layer.to(device))  # the move quantizes the weights (row-wise int8 + scales)
            count += 1
    return count


def store_weights(module: torch.nn.Module, weight_format: str, compute_dtype: torch.dtype) -> int:
    """``module``'s weights in ``weight_format`` (``native``: left as they are); returns the layers converted."""
    if weight_format == "fp8":
        return store_fp8(module, compute_dtype)
    if weight_format == "int8":
        return store_int8(module)
    return 0


def weight_storage_bytes(module: torch.nn.Module) -> int:
    """Bytes of ``module``'s parameters as stored (int8 and fp8 weights at one byte per value)."""
    return sum(p.numel() * p.element_size() for p in module.parameters())
