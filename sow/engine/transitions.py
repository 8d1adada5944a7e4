"""Moves between noise levels in the (α, σ) form, each written once (DESIGN §5).

Seam 3 of the engine: given (x̂0, ε̂) from :func:`sow.engine.parameterization.split_prediction`
and the levels of a :class:`sow.engine.noise_schedule.NoiseSchedule`, these pure functions
move a latent. The same function serves every schedule kind:

- :func:`deterministic_step` x_b = α_b·x̂0 + σ_b·ε̂ — DDIM with η = 0 for VP (Song et al. 2021,
  eq. 12); for flow (α = 1 − s, σ = s, v = ε − x0) it equals the Euler step x + (s_b − s_a)·v.
- :func:`inversion_step` the same step towards a noisier level (DDIM inversion; the reverse flow).
- :func:`eta_step` the stochastic step x_b = α_b·x̂0 + √(σ_b² − σ_η²)·ε̂ + σ_η·z with
  σ_η = η·(σ_b/σ_a)·√(σ_a² − (α_a/α_b)²·σ_b²) — for VP DDIM's η·√((1−ᾱ_b)/(1−ᾱ_a))·√(1−ᾱ_a/ᾱ_b)
  (Song et al. 2021, eqs. 12 and 16).
- :func:`inject_noise` the jump from a level l to a noisier level h that keeps the marginals:
  x_h = (α_h/α_l)·x_l + √(σ_h² − (α_h/α_l)²·σ_l²)·z. For VP it is DDPM's forward jump
  √(ᾱ_h/ᾱ_l)·x + √(1 − ᾱ_h/ᾱ_l)·z (Ho et al. 2020, eq. 4 between two levels); for flow from
  level 0 it is diffusers' ``scale_noise``, s·z + (1 − s)·x0.

The functions take the levels as :class:`Level` (α, σ); nothing here
knows which kind of model made the prediction.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class Level:
    """One noise level: x = alpha · x0 + sigma · ε (levels of a run: :class:`sow.engine.noise_schedule.NoiseSchedule`)."""

    alpha: float
    """Signal scale α (VP: √ᾱ; flow: 1 − s)."""
    sigma: float
    """Noise scale σ (VP: √(1 − ᾱ); flow: s)."""


def deterministic_step(x0: torch.Tensor, eps: torch.Tensor, to: Level) -> torch.Tensor:
    """x_b = α_b·x̂0 + σ_b·ε̂: DDIM (η = 0) for VP, the Euler step for flow; to any level, up or down."""
    return to.alpha * x0 + to.sigma * eps


def inversion_step(x0: torch.Tensor, eps: torch.Tensor, to: Level) -> torch.Tensor:
    """One inversion step to the noisier level ``to``: the deterministic step read upwards
    (DDIM inversion for VP, the reverse-time Euler step for flow)."""
    return deterministic_step(x0, eps, to)


def eta_sigma(frm: Level, to: Level, eta: float) -> float:
    """The stochastic step's noise scale for a step from level a to the less noisy b (0 when η = 0 or going up).

    σ_η = η · (σ_b/σ_a) · √(σ_a² − (α_a/α_b)²·σ_b²): η times the standard deviation of
    q(x_b | x_a, x0), whose forward jump b -> a has variance σ_a² − (α_a/α_b)²·σ_b² (see
    :func:`inject_noise`). For VP (α² + σ² = 1) this is DDIM's η·√((1−ᾱ_b)/(1−ᾱ_a))·√(1 − ᾱ_a/ᾱ_b)
    (Song et al. 2021, eq. 16).
    """
    if eta == 0 or to.sigma >= frm.sigma:
        return 0.0
    jump = frm.sigma**2 - (frm.alpha / to.alpha) ** 2 * to.sigma**2
    return eta * (to.sigma / frm.sigma) * max(0.0, jump) ** 0.5


def eta_step(
    x0: torch.Tensor, eps: torch.Tensor, frm: Level, to: Level, eta: float, noise: torch.Tensor | None = None
) -> torch.Tensor:
    """x_b = α_b·x̂0 + √(σ_b² − σ_η²)·ε̂ + σ_η·z (DDIM's generalized step, Song et al. 2021 eq. 12 with σ_t(η) of eq. 16)."""
    s = eta_sigma(frm, to, eta)
    if s == 0:
        return deterministic_step(x0, eps, to)
    if noise is None:
        raise ValueError("a stochastic step (eta > 0) needs noise")
    return to.alpha * x0 + max(0.0, to.sigma**2 - s**2) ** 0.5 * eps + s * noise


def injection_scales(low: Level, high: Level) -> tuple[float, float]:
    """(α_h/α_l, √(σ_h² − (α_h/α_l)²·σ_l²)): the factors of :func:`inject_noise`."""
    ratio = high.alpha / low.alpha
    variance = high.sigma**2 - ratio**2 * low.sigma**2
    if ratio > 1 or variance < -1e-12:
        raise ValueError("noise injection goes to a noisier level (alpha_high <= alpha_low, marginal variance >= 0)")
    return ratio, max(0.0, variance) ** 0.5


def inject_noise(x: torch.Tensor, low: Level, high: Level, noise: torch.Tensor) -> torch.Tensor:
    """x_h = (α_h/α_l)·x_l + √(σ_h² − (α_h/α_l)²·σ_l²)·z: from level l to the noisier h, keeping the marginals."""
    ratio, scale = injection_scales(low, high)
    return ratio * x + scale * noise
