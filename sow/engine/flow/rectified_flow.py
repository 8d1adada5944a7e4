"""COW's arithmetic on rectified flow, each step in the (α, σ) form of DESIGN §5.

A level with noise fraction s has α = 1 − s and σ = s: x_s = α x0 + σ ε. The model
predicts the velocity v = dx/ds = ε − x0, so

    x̂0 = x − s v,        ε̂ = x + (1 − s) v                         (the conversion)

and the deterministic move to level b is x_b = α_b x̂0 + σ_b ε̂ (DDIM's form), which
expands to the Euler step x + (s_b − s_a) v — the same function downward (sampling) and
upward (inversion by the reverse flow, first order). The noise injection from level l to a
noisier level h that keeps the flow's marginals is

    x_h = (α_h/α_l) x_l + √(σ_h² − (α_h/α_l)² σ_l²) z,                 z ~ N(0, I)

(if x_l = α_l x0 + σ_l ε then x_h = α_h x0 + σ_h ε' in law); from l = 0 it is diffusers'
``FlowMatchEulerDiscreteScheduler.scale_noise``. These functions are pure: the Euler form
is used for the step (what diffusers computes, so the zero-cycle path matches it to float
rounding) and the (x̂0, ε̂) form is kept beside it for the η step and the docs' derivation.
"""

from __future__ import annotations

import math

import torch


def alpha_sigma(s: float) -> tuple[float, float]:
    """(α, σ) of a rectified-flow level with noise fraction ``s``."""
    return 1.0 - s, s


def velocity_to_x0_eps(x: torch.Tensor, v: torch.Tensor, s: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(x̂0, ε̂) from the velocity: x̂0 = x − s v, ε̂ = x + (1 − s) v."""
    return x - s * v, x + (1.0 - s) * v


def euler_step(x: torch.Tensor, v: torch.Tensor, s_from: torch.Tensor | float, s_to: torch.Tensor | float) -> torch.Tensor:
    """x_to = x + (s_to − s_from) v: the deterministic move between two levels, either direction.

    Equal to α_to x̂0 + σ_to ε̂ (expand the conversion); computed in float32 as diffusers'
    ``FlowMatchEulerDiscreteScheduler.step`` computes it, then cast back to ``x``'s dtype.
    """
    out = x.to(torch.float32) + (s_to - s_from) * v.to(torch.float32)
    return out.to(x.dtype)


def stochastic_step(
    x: torch.Tensor, v: torch.Tensor, s_from: float, s_to: float, eta: float, noise: torch.Tensor | None
) -> torch.Tensor:
    """The η step (DDIM's eq. 12 in (α, σ) form) to a less noisy level: x_to = α_to x̂0 + √(σ_to² − c²) ε̂ + c z,
    c = η σ_to √(1 − (α_from σ_to / (α_to σ_from))²). η = 0 is :func:`euler_step`."""
    if eta == 0 or s_to >= s_from:
        return euler_step(x, v, s_from, s_to)
    if noise is None:
        raise ValueError("a stochastic step (eta > 0) needs noise")
    a_from, sig_from = alpha_sigma(s_from)
    a_to, sig_to = alpha_sigma(s_to)
    ratio = (a_from * sig_to) / (a_to * sig_from)
    c = eta * sig_to * math.sqrt(max(0.0, 1.0 - ratio**2))
    x0, eps = velocity_to_x0_eps(x.to(torch.float32), v.to(torch.float32), s_from)
    out = a_to * x0 + math.sqrt(max(0.0, sig_to**2 - c**2)) * eps + c * noise.to(torch.float32)
    return out.to(x.dtype)


def injection_coefficients(s_low: float, s_high: float) -> tuple[float, float]:
    """(a, b) with x_h = a x_l + b z keeping the marginals from level ``s_low`` to the noisier ``s_high``."""
    if s_high < s_low:
        raise ValueError("noise injection goes to a noisier level (s_high >= s_low)")
    a_low, sig_low = alpha_sigma(s_low)
    a_high, sig_high = alpha_sigma(s_high)
    if a_low <= 0:
        raise ValueError("cannot inject from pure noise (s_low = 1)")
    a = a_high / a_low
    return a, math.sqrt(max(0.0, sig_high**2 - (a * sig_low) ** 2))


def inject_noise(x: torch.Tensor, s_low: float, s_high: float, noise: torch.Tensor) -> torch.Tensor:
    """x_h = (α_h/α_l) x_l + √(σ_h² − (α_h/α_l)² σ_l²) z: the forward jump that keeps the flow's marginals."""
    a, b = injection_coefficients(s_low, s_high)
    return a * x + b * noise
