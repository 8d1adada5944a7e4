"""Sequential CPU offload: every layer's weights live on the CPU and visit the GPU only for that layer's forward.

The least GPU memory a run can take (about one layer's weights plus the activations), at the
price of one host-to-device copy per layer per call: diffusers' ``enable_sequential_cpu_offload``,
written with plain forward hooks instead of accelerate. :class:`sow.models.performance.ModelOffload`
is the faster middle ground (one whole model at a time).
"""

from __future__ import annotations

from typing import Any

import torch

from sow.models.performance import _to_device


class SequentialOffload:
    """Forward hooks that bring each module's own parameters and buffers to ``execution_device`` and back."""

    def __init__(self, execution_device: torch.device | str, offload_device: torch.device | str = "cpu") -> None:
        self.execution_device = torch.device(execution_device)
        self.offload_device = torch.device(offload_device)
        self.modules = 0
        """How many modules (those holding parameters or buffers of their own) are hooked."""
        self.loads = 0
        """Forward calls that brought weights to the execution device."""
        self._handles: list[Any] = []

    def add(self, model: torch.nn.Module) -> None:
        model.to(self.offload_device)
        for module in model.modules():
            if any(t is not None for t in (*module._parameters.values(), *module._buffers.values())):
                self._handles.append(module.register_forward_pre_hook(self._load, with_kwargs=True))
                self._handles.append(module.register_forward_hook(self._unload))
                self.modules += 1

    def _load(self, module: torch.nn.Module, args: tuple, kwargs: dict) -> tuple[tuple, dict]:
        _move_own(module, self.execution_device)
        self.loads += 1
        return _to_device(args, self.execution_device), _to_device(kwargs, self.execution_device)

    def _unload(self, module: torch.nn.Module, args: tuple, output: Any) -> None:
        _move_own(module, self.offload_device)

    def remove(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()


def _move_own(module: torch.nn.Module, device: torch.device) -> None:
    """Move the parameters and buffers held by ``module`` itself (not its children's) to ``device``."""
    for param in module._parameters.values():
        if param is not None and param.device != device:
            param.data = param.data.to(device)
    for name, buffer in module._buffers.items():
        if buffer is not None and buffer.device != device:
            module._buffers[name] = buffer.to(device)


def enable_sequential_offload(components, execution_device: torch.device | str) -> SequentialOffload:
    """Offload the text encoder, UNet and VAE of ``components`` layer by layer; runs go to ``execution_device``."""
    offload = SequentialOffload(execution_device)
    for model in (components.text_encoder, components.unet, components.vae):
        offload.add(model)
    components.execution_device = torch.device(execution_device)
    return offload
