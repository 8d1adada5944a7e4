"""A fingerprint of a loaded model's weights: is this the model a run was made with?

Hashing every byte of a Stable Diffusion model (2-7 GB) would add seconds to every run, so
the fingerprint hashes what tells two models apart cheaply: every parameter's and buffer's
name, shape and dtype, and a strided sample of its values (:data:`SAMPLES` per tensor,
evenly spaced from its first to its last element), of the UNet (or transformer), the VAE and
every text encoder, with LoRA adapters as loaded. Two different trainings, a fine-tune, a
changed LoRA scale or another dtype give another fingerprint; two models that differ only in
values between the sampled ones would not (it is a check against mistakes, not against forgery).
"""

from __future__ import annotations

import hashlib
from typing import Any

import torch

SAMPLES = 16
"""Values sampled from each tensor."""

MODULE_NAMES = ("unet", "transformer", "network", "vae", "text_encoder", "text_encoder_2", "text_encoder_3")
"""The attributes read from the components (or a backbone): each distinct module once, in this order."""


def module_entries(module: torch.nn.Module) -> list[tuple[str, torch.Tensor]]:
    """(name, tensor) of every parameter and buffer of ``module``, in a stable order; a sequentially
    offloaded module's meta tensors read from the offload's CPU copy (``_sow_offloaded_state``)."""
    entries = [*module.named_parameters(), *module.named_buffers()]
    offloaded = getattr(module, "_sow_offloaded_state", None)
    if offloaded:
        entries = [(n, offloaded.get(n, t) if t.device.type == "meta" else t) for n, t in entries]
    return sorted(entries, key=lambda item: item[0])


def weights_fingerprint(components: Any) -> str:
    """sha256 (hex) of the weights of ``components`` (a :class:`~sow.models.loading.Components` or a backbone
    with these attributes: :data:`MODULE_NAMES`), as :mod:`this module <sow.engine.fingerprint>` describes."""
    parts: dict[str, torch.nn.Module] = {}
    seen: set[int] = set()
    for label in MODULE_NAMES:
        module = getattr(components, label, None)
        module = getattr(module, "_orig_mod", module)  # torch.compile's wrapper holds the same weights
        if isinstance(module, torch.nn.Module) and id(module) not in seen:
            seen.add(id(module))
            parts[label] = module
    digest = hashlib.sha256()
    samples: list[torch.Tensor] = []
    with torch.no_grad():
        for label, module in parts.items():
            for name, tensor in module_entries(module):
                digest.update(f"{label}.{name}:{tuple(tensor.shape)}:{tensor.dtype}\n".encode())
                flat = tensor.detach().reshape(-1)
                if flat.numel() == 0 or flat.device.type == "meta":
                    continue
                count, last = min(SAMPLES, flat.numel()), flat.numel() - 1
                # evenly spaced, first and last included, in integers (float positions overflow past 2**24)
                index = torch.arange(count, device=flat.device) * last // max(count - 1, 1)
                samples.append(flat[index].to(torch.float64).cpu())  # float64 holds every narrower float exactly
    if samples:
        digest.update(torch.cat(samples).numpy().tobytes())
    return digest.hexdigest()
