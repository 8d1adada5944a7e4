"""Finding NaN and inf in the latents at the step where they appear.

In fp16, Stable Diffusion's activations can overflow; the latents then fill with NaN
and the VAE decodes a black (or garbage) image. sow never writes that image silently:
the :class:`FiniteGuard` of a run checks the latents after every DDIM update and raises
:class:`~sow.errors.NumericalError` naming the phase, cycle and level where they first
went non-finite, with the advice to use bf16 or fp32.

Checking costs a host-device synchronization per step when done at once, which a GPU
benchmark does not want inside its loop. The check mode (``GenerationConfig.finite_check``):

``step``
    ``torch.isfinite(x).all()`` after every update, read at once: raises at that step.
``deferred``
    the same reduction, kept on the device; all the flags are read once when the loop
    ends (:meth:`FiniteGuard.finish`): no sync inside the loop, the error still names the
    first bad step.
``off``
    no check of the loop (the decoded image is still checked).
``auto`` (default)
    ``step`` on CPU, ``deferred`` on accelerators.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from sow.errors import NumericalError

if TYPE_CHECKING:
    from sow.engine.steps import Step

ADVICE = "usually fp16 overflow; run with --dtype bf16 or --dtype fp32"

_PHASE_NAMES = {
    "invert_condition": "inverting the condition",
    "invert_canvas": "inverting the canvas",
    "cycle": "the cycles",
    "final": "the final denoise",
}


def describe_step(step: Step) -> str:
    """``'cycle 3 of the cycles, level 6'``-style words for an error message."""
    where = _PHASE_NAMES.get(step.phase, step.phase)
    cycle = f"cycle {step.cycle + 1}, " if step.cycle is not None else ""
    return f"{cycle}level {step.level} ({where})"


def resolve_mode(mode: str, device: torch.device) -> str:
    if mode == "auto":
        return "step" if device.type == "cpu" else "deferred"
    if mode not in ("step", "deferred", "off"):
        raise ValueError(f"unknown finite_check mode {mode!r}")
    return mode


def require_finite(tensor: torch.Tensor, where: str) -> None:
    """Raise :class:`NumericalError` when ``tensor`` holds NaN or inf (syncs once)."""
    if not bool(torch.isfinite(tensor).all()):
        raise NumericalError(f"NaN or inf in {where} ({str(tensor.dtype).removeprefix('torch.')}): {ADVICE}")


class FiniteGuard:
    """Checks the latents after each update of one run (see the module's docstring for modes)."""

    def __init__(self, mode: str = "auto", device: torch.device | str | None = None) -> None:
        """``device=None``: ``auto`` is resolved from the first latents checked."""
        resolve_mode(mode, torch.device("cpu"))  # reject unknown modes now
        self._requested = mode
        self.mode = resolve_mode(mode, torch.device(device)) if device is not None else mode
        self._steps: list[Step] = []
        self._flags: list[torch.Tensor] = []
        self._dtype = ""

    def check(self, latents: torch.Tensor, step: Step) -> None:
        """Check ``latents`` just produced by ``step`` (raises at once in ``step`` mode)."""
        if self.mode == "auto":
            self.mode = resolve_mode(self._requested, latents.device)
        if self.mode == "off":
            return
        if self.mode == "step":
            require_finite(latents, f"the latents at {describe_step(step)}")
            return
        self._dtype = str(latents.dtype).removeprefix("torch.")
        self._steps.append(step)
        self._flags.append(torch.isfinite(latents).all())

    def finish(self) -> None:
        """Read the deferred flags (one sync) and raise for the first bad step, if any."""
        if not self._flags:
            return
        flags = torch.stack(self._flags)
        self._flags = []
        bad = (~flags).nonzero()
        if bad.numel():
            step = self._steps[int(bad[0, 0])]
            raise NumericalError(f"NaN or inf in the latents at {describe_step(step)} ({self._dtype}): {ADVICE}")
