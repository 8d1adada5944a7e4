"""Sequential CPU offload: every layer's weights live on the CPU and visit the GPU only for that layer's forward.

The least GPU memory a run can take (about one layer's weights plus the activations), at the
price of one host-to-device copy per layer per call. This is accelerate's ``cpu_offload`` (what
diffusers' ``enable_sequential_cpu_offload`` uses): the model's parameters become meta tensors,
one copy of its state dict stays on the CPU, and a hook on each layer copies that layer's
weights to the execution device before its forward and drops them after (no copy back: the CPU
copy is the weights). :class:`sow.models.performance.ModelOffload` is the faster middle ground
(one whole model at a time).

Code that asks a module for its device while it is offloaded so gets ``meta``; the backbones
read the execution device instead (:func:`sow.engine.backbone.run_device`).
"""

from __future__ import annotations

from typing import Any

import torch

from sow.models.performance import require_accelerate


class SequentialOffload:
    """accelerate's per-layer offload over several models, with counts for reports and tests."""

    def __init__(self, execution_device: torch.device | str, offload_device: torch.device | str = "cpu") -> None:
        require_accelerate("sequential offload")
        self.execution_device = torch.device(execution_device)
        self.offload_device = torch.device(offload_device)
        self.modules = 0
        """How many modules (those holding parameters of their own) load weights on each call."""
        self.loads = 0
        """Forward calls that brought a module's weights to the execution device."""
        self._models: list[tuple[torch.nn.Module, dict[str, torch.Tensor]]] = []
        self._handles: list[Any] = []

    def add(self, model: torch.nn.Module) -> None:
        from accelerate import cpu_offload

        state = {name: tensor.to(self.offload_device) for name, tensor in model.state_dict().items()}
        cpu_offload(model, self.execution_device, state_dict=state)
        model._sow_offloaded_state = state  # the weights as they are (the fingerprint reads them: the modules hold meta tensors)
        self._models.append((model, state))
        for module in model.modules():
            if any(p is not None for p in module._parameters.values()) and hasattr(module, "_hf_hook"):
                self._handles.append(module.register_forward_pre_hook(self._count))
                self.modules += 1

    def _count(self, module: torch.nn.Module, args: tuple) -> None:
        self.loads += 1

    def remove(self) -> None:
        """Take the hooks off; every weight back on the offload device, as real tensors."""
        from accelerate.hooks import remove_hook_from_submodules
        from accelerate.utils import set_module_tensor_to_device

        for handle in self._handles:
            handle.remove()
        self._handles.clear()
        for model, state in self._models:
            remove_hook_from_submodules(model)
            for name, value in state.items():
                set_module_tensor_to_device(model, name, self.offload_device, value=value)
            del model._sow_offloaded_state
        self._models.clear()


def enable_sequential_offload(components, execution_device: torch.device | str) -> SequentialOffload:
    """Offload the text encoder(s), UNet and VAE of ``components`` layer by layer; runs go to ``execution_device``."""
    offload = SequentialOffload(execution_device)
    for model in (*components.text_encoders, components.unet, components.vae):
        offload.add(model)
    components.execution_device = torch.device(execution_device)
    return offload
