"""Counting FLOPs with PyTorch's ``FlopCounterMode``, CPU attention included."""

from __future__ import annotations

import torch


def flop_counter():
    """``FlopCounterMode`` that also counts CPU SDPA (PyTorch counts only the CUDA attention kernels)."""
    from torch.utils.flop_counter import FlopCounterMode, sdpa_flop_count

    def cpu_sdpa(query, key, value, *args, out_shape=None, **kwargs):
        return sdpa_flop_count(query, key, value)

    mapping = {torch.ops.aten._scaled_dot_product_flash_attention_for_cpu: cpu_sdpa}
    return FlopCounterMode(display=False, custom_mapping=mapping)
