"""Counting FLOPs for ``sow bench``: the shapes of every model call, and their FLOPs on meta-device copies.

:class:`CallShapes` records what each model was called with during a real run;
:func:`count_flops` replays those shapes through copies of the models on the meta device
under ``FlopCounterMode`` (nothing is computed, any device's model can be priced);
:func:`flop_counter` counts a whole real run, attention on the CPU included.
"""

from __future__ import annotations

from collections import Counter

import torch

from sow.bench.reports import CallFlops, FlopCount


class CallShapes:
    """Records the input shapes of every call of a few modules (for FLOP counting)."""

    def __init__(self, modules: dict[str, torch.nn.Module]) -> None:
        self.calls: Counter = Counter()
        self._handles = [m.register_forward_pre_hook(self._hook(name), with_kwargs=True) for name, m in modules.items()]

    def _hook(self, name: str):
        def record(_module, args, kwargs):
            tensors = [a for a in args if isinstance(a, torch.Tensor)]
            context = kwargs.get("encoder_hidden_states")
            added = kwargs.get("added_cond_kwargs") or {}
            shapes = tuple(tuple(t.shape) for t in tensors[:1])
            if context is not None:
                shapes += (tuple(context.shape),)
            if "text_embeds" in added:  # SDXL: the pooled text (time_ids follow from the batch)
                shapes += (tuple(added["text_embeds"].shape),)
            self.calls[(name, shapes)] += 1

        return record

    def remove(self) -> None:
        for handle in self._handles:
            handle.remove()


def flop_counter():
    """``FlopCounterMode`` that also counts CPU SDPA (PyTorch counts only the CUDA attention kernels)."""
    from torch.utils.flop_counter import FlopCounterMode, sdpa_flop_count

    def cpu_sdpa(query, key, value, *args, out_shape=None, **kwargs):
        return sdpa_flop_count(query, key, value)

    mapping = {torch.ops.aten._scaled_dot_product_flash_attention_for_cpu: cpu_sdpa}
    return FlopCounterMode(display=False, custom_mapping=mapping)


def count_flops(components, calls: Counter) -> FlopCount:
    """FLOPs of the recorded calls, counted with ``FlopCounterMode`` on meta-device copies of the models."""
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from diffusers.models.attention_processor import AttnProcessor
    from torch.utils.flop_counter import FlopCounterMode

    with torch.device("meta"):
        unet = UNet2DConditionModel.from_config(components.unet.config)
        vae = AutoencoderKL.from_config(components.vae.config)
        text_encoder = type(components.text_encoder)(components.text_encoder.config)
        second = getattr(components, "text_encoder_2", None)
        text_encoder_2 = type(second)(second.config) if second is not None else None
    unet.set_attn_processor(AttnProcessor())  # explicit matmuls: counted on any device
    per_call, totals = [], Counter()
    for (name, shapes), n in sorted(calls.items()):
        meta = [torch.zeros(s, device="meta") for s in shapes]
        with FlopCounterMode(display=False) as counter:
            if name == "unet" and len(shapes) > 2:  # SDXL's added conditioning: pooled text and 6 time_ids
                added = {"text_embeds": meta[2], "time_ids": torch.zeros((shapes[2][0], 6), device="meta")}
                unet(meta[0], torch.zeros((), device="meta"), encoder_hidden_states=meta[1], added_cond_kwargs=added)
            elif name == "unet":
                unet(meta[0], torch.zeros((), device="meta"), encoder_hidden_states=meta[1])
            elif name == "vae_encoder":
                vae.encoder(meta[0])
            elif name == "vae_decoder":
                vae.decoder(meta[0])
            elif name == "text_encoder":
                text_encoder(torch.zeros(shapes[0], dtype=torch.long, device="meta"))
            elif name == "text_encoder_2":
                text_encoder_2(torch.zeros(shapes[0], dtype=torch.long, device="meta"), output_hidden_states=True)
        flops = counter.get_total_flops()
        per_call.append(CallFlops(module=name, shapes=[list(s) for s in shapes], calls=n, tflop_per_call=flops / 1e12))
        totals[name] += flops * n
    return FlopCount(per_call=per_call, tflop={k: v / 1e12 for k, v in totals.items()}, total_tflop=sum(totals.values()) / 1e12)


def modules_to_watch(components) -> dict[str, torch.nn.Module]:
    modules = {
        "unet": components.unet,
        "vae_encoder": components.vae.encoder,
        "vae_decoder": components.vae.decoder,
        "text_encoder": components.text_encoder,
    }
    if getattr(components, "text_encoder_2", None) is not None:
        modules["text_encoder_2"] = components.text_encoder_2
    return modules


