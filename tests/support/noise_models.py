"""Stand-in noise predictors with known structure, for testing the schedule bookkeeping."""

from __future__ import annotations

from types import SimpleNamespace

import torch


class TimeDependentNoise(torch.nn.Module):
    """eps(x, t) = base * sin(t / 150 + 0.3) + k * tanh(x).

    Mostly a function of the timestep (so evaluating at the wrong timestep changes it a
    lot) and smoothly dependent on x (with ``k = 0``, DDIM inversion is exactly reversible).
    """

    def __init__(self, shape: tuple[int, ...], k: float = 0.0, seed: int = 0) -> None:
        super().__init__()
        generator = torch.Generator().manual_seed(seed)
        self.register_buffer("base", torch.randn(shape, generator=generator))
        self.k = k
        self.dtype = torch.float32

    def forward(self, sample, timestep, encoder_hidden_states=None, **kwargs):
        t = torch.as_tensor(timestep, dtype=torch.float32)
        eps = self.base * torch.sin(t / 150 + 0.3) + self.k * torch.tanh(sample)
        return SimpleNamespace(sample=eps)
