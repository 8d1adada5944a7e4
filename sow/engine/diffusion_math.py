"""The diffusion arithmetic of COW/SOW as small pure functions of tensors.

Notation (DESIGN §2): with ``S`` DDIM steps, *level* k counts noise levels from the
clean end: level 0 is the image, level S pure noise. Level k >= 1 sits at training
timestep ``t_k`` (for S = 10 and SD's ``steps_offset = 1``: t_1 = 1, ..., t_10 = 901);
level 0 has the scheduler's final alpha (``alphas_cumprod[0]`` for SD 2.x). The UNet
moving between levels k-1 and k is always evaluated at ``t_k``, in both directions.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class LevelSchedule:
    """Timesteps and cumulative alphas of the levels 0..S."""

    timesteps: torch.Tensor
    """``timesteps[k]`` is ``t_k`` for k >= 1; ``timesteps[0]`` is -1 (no UNet call there)."""
    alphas: torch.Tensor
    """``alphas[k]`` is ``alpha_bar`` of level k, float64 on the CPU."""

    def __post_init__(self) -> None:
        # Plain-number copies for the per-step reads: indexing a tensor and calling float() on it is
        # a scalar read (a device sync, were the tables ever on a GPU), and the loop does it ~100 times.
        object.__setattr__(self, "_alpha_values", tuple(float(a) for a in self.alphas.tolist()))
        object.__setattr__(self, "_timestep_values", tuple(int(t) for t in self.timesteps.tolist()))

    @classmethod
    def from_scheduler(cls, scheduler, num_inference_steps: int) -> LevelSchedule:
        """Levels of a diffusers DDIM-style scheduler (``alphas_cumprod``, ``final_alpha_cumprod``)."""
        scheduler.set_timesteps(num_inference_steps)
        descending = scheduler.timesteps.to(torch.int64).cpu()
        ascending = descending.flip(0)
        alphas_cumprod = scheduler.alphas_cumprod.to(torch.float64).cpu()
        if len(ascending) != num_inference_steps or int(ascending.max()) >= len(alphas_cumprod) or int(ascending.min()) < 0:
            from sow.errors import InputError

            raise InputError(
                f"num_inference_steps {num_inference_steps}: this model's scheduler ({len(alphas_cumprod)} training "
                f"timesteps, steps_offset {scheduler.config.get('steps_offset', 0)}) has no such schedule; use fewer steps"
            )
        final = torch.as_tensor(scheduler.final_alpha_cumprod, dtype=torch.float64).reshape(1)
        alphas = torch.cat([final, alphas_cumprod[ascending]])
        return cls(timesteps=torch.cat([torch.tensor([-1]), ascending]), alphas=alphas)

    def alpha(self, level: int) -> float:
        return self._alpha_values[level]

    def timestep(self, level: int) -> int:
        if level < 1:
            raise ValueError(f"level {level} has no timestep (the UNet is evaluated at levels 1..S)")
        return self._timestep_values[level]


def predict_x0(x: torch.Tensor, eps: torch.Tensor, alpha: float) -> torch.Tensor:
    """x0 = (x - sqrt(1 - a) eps) / sqrt(a)   (DDIM, eq. 12 of Song et al. 2021)."""
    return (x - (1 - alpha) ** 0.5 * eps) / alpha**0.5


def ddim_sigma(alpha_from: float, alpha_to: float, eta: float) -> float:
    """sigma = eta * sqrt((1 - a_to) / (1 - a_from)) * sqrt(1 - a_from / a_to), for a step to less noise."""
    if eta == 0 or alpha_to <= alpha_from:
        return 0.0
    return eta * ((1 - alpha_to) / (1 - alpha_from)) ** 0.5 * (1 - alpha_from / alpha_to) ** 0.5


def ddim_update(
    x: torch.Tensor,
    eps: torch.Tensor,
    alpha_from: float,
    alpha_to: float,
    eta: float = 0.0,
    noise: torch.Tensor | None = None,
) -> torch.Tensor:
    """Move ``x`` from a level with ``alpha_from`` to one with ``alpha_to`` along the predicted noise.

    x_to = sqrt(a_to) x0 + sqrt(1 - a_to - sigma^2) eps + sigma z. With eta = 0 this is the
    deterministic DDIM step; with ``alpha_to < alpha_from`` it is DDIM inversion (sigma = 0).
    """
    sigma = ddim_sigma(alpha_from, alpha_to, eta)
    x0 = predict_x0(x, eps, alpha_from)
    out = alpha_to**0.5 * x0 + max(0.0, 1 - alpha_to - sigma**2) ** 0.5 * eps
    if sigma > 0:
        if noise is None:
            raise ValueError("a stochastic DDIM step (eta > 0) needs noise")
        out = out + sigma * noise
    return out


def inject_noise(x: torch.Tensor, alpha_from: float, alpha_to: float, noise: torch.Tensor) -> torch.Tensor:
    """Jump from a level to a noisier one in one go (the forward process between them):

    x_to = sqrt(a_to / a_from) x_from + sqrt(1 - a_to / a_from) eps.
    """
    ratio = alpha_to / alpha_from
    if ratio > 1:
        raise ValueError("noise injection goes to a noisier level (alpha_to <= alpha_from)")
    return ratio**0.5 * x + (1 - ratio) ** 0.5 * noise


def injection_levels(t1: int, t2: int, reading: str = "exact") -> tuple[int, int]:
    """The levels whose alphas the injection t1 -> t2 uses.

    ``"exact"``: (t1, t2), so the injected latent has level t2's marginal. ``"reference"``:
    (t1 + 1, t2 + 1), as the reference code reads ``alphas_cumprod`` at the inverse scheduler's
    timesteps indexed by t1 and t2 (the timesteps of levels t1 + 1 and t2 + 1), while the latent
    sits at level t1 and is then denoised from level t2.
    """
    if reading == "reference":
        return t1 + 1, t2 + 1
    if reading != "exact":
        raise ValueError(f"unknown injection reading {reading!r}")
    return t1, t2


def classifier_free_guidance(eps_uncond: torch.Tensor, eps_text: torch.Tensor, scale: float) -> torch.Tensor:
    """eps = eps_uncond + scale (eps_text - eps_uncond)."""
    return eps_uncond + scale * (eps_text - eps_uncond)


def background_guidance(
    eps_neg: torch.Tensor,
    eps_text: torch.Tensor,
    eps_suppress: torch.Tensor,
    eps_diverse: torch.Tensor,
    condition_mask: torch.Tensor,
    scale: float,
) -> torch.Tensor:
    """CFG whose unconditional branch, outside the condition, is pushed away from a second face.

    Outside the condition region the unconditional prediction becomes
    ``eps_neg + eps_suppress - eps_diverse`` (suppress = "human face", diverse = "a high
    quality and colorful image"); inside it stays ``eps_neg``. ``condition_mask`` is 1 in
    the condition region and broadcasts over the latents.
    """
    uncond = eps_neg + (1 - condition_mask) * (eps_suppress - eps_diverse)
    return classifier_free_guidance(uncond, eps_text, scale)
