"""Peak memory per execution mode, computed on the meta device (no weights, no GPU).

:class:`LiveBytes` is a dispatch mode that adds up the bytes of every tensor an op creates
(views excluded: they share their base's memory) and subtracts them when the tensor is
freed, so the peak of one forward pass under ``no_grad`` is what its activations need at
most. :func:`memory_table` combines those peaks with the weights of each model for the
modes of :class:`sow.models.performance.PerformanceSettings`:

- ``resident``: every model on the device; peak = all weights + the largest activation peak;
- ``offload`` (model offload): one model on the device at a time; peak = max over models of
  (its weights + its activations);
- VAE tiling changes the decoder's activation peak (tiles of the VAE's ``sample_size``, and
  of 512 px).

SDPA is modelled as a fused kernel (:func:`fused_attention`): output only, no N x N matrix.

The numbers are a model of the allocator, not a measurement: the caching allocator's
fragmentation, cuDNN workspaces and the CUDA context (~0.5 GiB) come on top.
"""

from __future__ import annotations

import weakref
from contextlib import contextmanager
from typing import Any

import torch
import torch.nn.functional as F
from torch.utils._python_dispatch import TorchDispatchMode


class LiveBytes(TorchDispatchMode):
    """Tracks the bytes of live tensors created inside the mode and their peak."""

    def __init__(self) -> None:
        super().__init__()
        self.live = 0
        self.peak = 0

    def _free(self, nbytes: int) -> None:
        self.live -= nbytes

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        returns = func._schema.returns
        outputs = out if isinstance(out, (tuple, list)) else (out,)
        for ret, tensor in zip(returns, outputs):
            if isinstance(tensor, torch.Tensor) and ret.alias_info is None:
                nbytes = tensor.numel() * tensor.element_size()
                self.live += nbytes
                weakref.finalize(tensor, self._free, nbytes)
        self.peak = max(self.peak, self.live)
        return out


@contextmanager
def fused_attention():
    """``F.scaled_dot_product_attention`` as a fused kernel allocates it: the output only.

    On the meta device PyTorch decomposes SDPA into its math form (the N x N matrix, in
    fp32), which no GPU kernel (flash, memory-efficient, cuDNN) materialises; this stands in
    for the kernel with an output of the right shape and dtype.
    """
    original = F.scaled_dot_product_attention

    def kernel(query, key, value, *args, **kwargs):
        return query.new_empty((*query.shape[:-1], value.shape[-1]))

    F.scaled_dot_product_attention = kernel
    try:
        yield
    finally:
        F.scaled_dot_product_attention = original


def activation_peak(fn) -> int:
    """Peak bytes of the tensors ``fn()`` creates (its inputs and the weights not counted)."""
    with torch.no_grad(), LiveBytes() as tracker:
        fn()
    return tracker.peak


def weight_bytes(module: torch.nn.Module, dtype: torch.dtype) -> int:
    size = torch.tensor([], dtype=dtype).element_size()
    return sum(p.numel() for p in module.parameters()) * size


def memory_table(models, canvas: int = 1024, dtype: torch.dtype = torch.bfloat16, batches=(2, 4)) -> dict[str, Any]:
    """Peak bytes of a run of ``models`` (meta-device modules: unet, vae, text_encoder[, text_encoder_2]) per mode.

    The UNet's activation peak is taken at each of ``batches`` (2: CFG; 4: background guidance
    in the cycles), with SDPA attention (fused: no N x N matrix) and with the explicit
    ``math`` attention; the VAE decoder's with and without tiling.
    """
    from diffusers.models.attention_processor import AttnProcessor, AttnProcessor2_0

    # torch's own cast: diffusers' .to() warns on every dtype cast about an empty keep-in-fp32 list
    unet, vae = torch.nn.Module.to(models.unet, dtype), torch.nn.Module.to(models.vae, dtype)
    encoders = [torch.nn.Module.to(m, dtype) for m in (models.text_encoder, getattr(models, "text_encoder_2", None)) if m is not None]
    scale = 2 ** (len(vae.config.block_out_channels) - 1)
    side = canvas // scale
    cross = unet.config.cross_attention_dim
    meta = {"device": "meta", "dtype": dtype}

    def unet_call(batch: int):
        kwargs = {}
        if unet.config.addition_embed_type == "text_time":
            pooled = encoders[-1].config.projection_dim
            kwargs["added_cond_kwargs"] = {"text_embeds": torch.zeros(batch, pooled, **meta), "time_ids": torch.zeros(batch, 6, **meta)}
        latents = torch.zeros(batch, unet.config.in_channels, side, side, **meta)
        context = torch.zeros(batch, 77, cross, **meta)
        return lambda: unet(latents, torch.zeros((), **meta), encoder_hidden_states=context, **kwargs)

    peaks: dict[str, int] = {}
    for kind, processor in (("sdpa", AttnProcessor2_0()), ("math", AttnProcessor())):
        unet.set_attn_processor(processor)
        for batch in batches:
            with fused_attention():  # the math processor does not call SDPA: unaffected
                peaks[f"unet_b{batch}_{kind}"] = activation_peak(unet_call(batch))
    unet.set_attn_processor(AttnProcessor2_0())
    latents = torch.zeros(1, vae.config.latent_channels, side, side, **meta)
    with fused_attention():
        peaks["vae_decode"] = activation_peak(lambda: vae.decode(latents))
        vae.enable_tiling()
        peaks["vae_decode_tiled"] = activation_peak(lambda: vae.decode(latents))
        tile = (vae.tile_sample_min_size, vae.tile_latent_min_size)
        vae.tile_sample_min_size, vae.tile_latent_min_size = 512, 512 // scale
        peaks["vae_decode_tiled_512"] = activation_peak(lambda: vae.decode(latents))
        vae.tile_sample_min_size, vae.tile_latent_min_size = tile
        vae.disable_tiling()
    tokens = torch.zeros(5, 77, dtype=torch.long, device="meta")
    peaks["text_encoders"] = max(activation_peak(lambda m=m: m(tokens, output_hidden_states=True)) for m in encoders)

    weights = {"unet": weight_bytes(unet, dtype), "vae": weight_bytes(vae, dtype),
               "text_encoders": sum(weight_bytes(m, dtype) for m in encoders)}
    unet_peak = peaks[f"unet_b{max(batches)}_sdpa"]
    total = sum(weights.values())
    modes = {
        "resident": total + max(unet_peak, peaks["vae_decode"]),
        "resident, VAE tiling": total + max(unet_peak, peaks["vae_decode_tiled"]),
        "resident, VAE tiles of 512 px": total + max(unet_peak, peaks["vae_decode_tiled_512"]),
        "model offload": max(weights["unet"] + unet_peak, weights["vae"] + peaks["vae_decode"],
                             weights["text_encoders"] + peaks["text_encoders"]),
        "model offload, VAE tiling": max(weights["unet"] + unet_peak, weights["vae"] + peaks["vae_decode_tiled"],
                                         weights["text_encoders"] + peaks["text_encoders"]),
        "model offload, VAE tiles of 512 px": max(weights["unet"] + unet_peak, weights["vae"] + peaks["vae_decode_tiled_512"],
                                                  weights["text_encoders"] + peaks["text_encoders"]),
        "resident, math attention": total + max(peaks[f"unet_b{max(batches)}_math"], peaks["vae_decode"]),
    }
    return {"canvas": canvas, "dtype": str(dtype).removeprefix("torch."), "weights": weights, "activation_peaks": peaks, "modes": modes}
