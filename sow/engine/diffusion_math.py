"""The VP (ᾱ) reading of the engine's moves, and the guidance arithmetic, as small pure functions.

The moves themselves are written once, in the (α, σ) form, in :mod:`sow.engine.transitions`
(DESIGN §5). For VP models (SD 1.x / 2.x / SDXL) α = √ᾱ and σ = √(1 − ᾱ); the functions here
take ᾱ (``alpha`` below, as in Song et al. 2021 and the reference code) and hand over to them, and
:class:`LevelSchedule` is the VP :class:`~sow.engine.noise_schedule.NoiseSchedule` that moves
through them (the method oracles watch :func:`ddim_update` and :func:`inject_noise`).

Notation (DESIGN §2): with ``S`` DDIM steps, *level* k counts noise levels from the
clean end: level 0 is the image, level S pure noise. Level k >= 1 sits at training
timestep ``t_k`` (for S = 10 and SD's ``steps_offset = 1``: t_1 = 1, ..., t_10 = 901);
level 0 has the scheduler's final alpha (``alphas_cumprod[0]`` for SD 2.x). The UNet
moving between levels k-1 and k is always evaluated at ``t_k``, in both directions.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from sow.engine import transitions as tr
from sow.engine.noise_schedule import vp_alpha_bars
from sow.engine.parameterization import split_prediction
from sow.engine.transitions import Level


def vp_level(alpha_bar: float) -> Level:
    """(α, σ) = (√ᾱ, √(1 − ᾱ))."""
    return Level(alpha=alpha_bar**0.5, sigma=(1 - alpha_bar) ** 0.5)


@dataclass(frozen=True)
class LevelSchedule:
    """The VP levels 0..S: timesteps and cumulative alphas ᾱ (a :class:`~sow.engine.noise_schedule.NoiseSchedule` of kind ``vp``)."""

    timesteps: torch.Tensor
    """``timesteps[k]`` is ``t_k`` for k >= 1; ``timesteps[0]`` is -1 (no UNet call there)."""
    alphas: torch.Tensor
    """``alphas[k]`` is ``alpha_bar`` of level k, float64 on the CPU."""

    kind = "vp"

    def __post_init__(self) -> None:
        # Plain-number copies for the per-step reads: indexing a tensor and calling float() on it is
        # a scalar read (a device sync, were the tables ever on a GPU), and the loop does it ~100 times.
        object.__setattr__(self, "_alpha_values", tuple(float(a) for a in self.alphas.tolist()))
        object.__setattr__(self, "_timestep_values", tuple(int(t) for t in self.timesteps.tolist()))
        object.__setattr__(self, "levels", tuple(vp_level(a) for a in self._alpha_values))

    @classmethod
    def from_scheduler(cls, scheduler, num_inference_steps: int) -> LevelSchedule:
        """Levels of a diffusers DDIM-style scheduler (``alphas_cumprod``, ``final_alpha_cumprod``)."""
        alphas, timesteps = vp_alpha_bars(scheduler, num_inference_steps)
        return cls(timesteps=timesteps, alphas=alphas)

    @property
    def steps(self) -> int:
        return len(self._alpha_values) - 1

    def alpha(self, level: int) -> float:
        """ᾱ of ``level`` (not α = √ᾱ: :meth:`level` has the (α, σ) pair)."""
        return self._alpha_values[level]

    def level(self, k: int) -> Level:
        return self.levels[k]

    def timestep(self, level: int) -> int:
        if level < 1:
            raise ValueError(f"level {level} has no timestep (the UNet is evaluated at levels 1..S)")
        return self._timestep_values[level]

    def move(
        self,
        x: torch.Tensor,
        output: torch.Tensor,
        parameterization: str,
        start: int,
        end: int,
        eta: float = 0.0,
        noise: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """As :meth:`NoiseSchedule.move`, through :func:`ddim_update` (ε̂ from any VP parameterization)."""
        if parameterization == "epsilon":
            eps = output
        else:
            frm = self.levels[start]
            eps = split_prediction(output, x, frm.alpha, frm.sigma, parameterization)[1]
        return ddim_update(x, eps, self.alpha(start), self.alpha(end), eta=eta if end < start else 0.0, noise=noise)

    def inject(self, x: torch.Tensor, low: int, high: int, noise: torch.Tensor) -> torch.Tensor:
        """As :meth:`NoiseSchedule.inject`, through :func:`inject_noise`."""
        return inject_noise(x, self.alpha(low), self.alpha(high), noise)


def predict_x0(x: torch.Tensor, eps: torch.Tensor, alpha: float) -> torch.Tensor:
    """x0 = (x - sqrt(1 - a) eps) / sqrt(a)   (DDIM, eq. 12 of Song et al. 2021): the ``epsilon``
    case of :func:`sow.engine.parameterization.split_prediction` with α = √a, σ = √(1 − a)."""
    return (x - (1 - alpha) ** 0.5 * eps) / alpha**0.5


def ddim_sigma(alpha_from: float, alpha_to: float, eta: float) -> float:
    """sigma = eta * sqrt((1 - a_to) / (1 - a_from)) * sqrt(1 - a_from / a_to), for a step to less noise
    (:func:`sow.engine.transitions.eta_sigma` in ᾱ)."""
    if eta == 0 or alpha_to <= alpha_from:
        return 0.0
    return tr.eta_sigma(vp_level(alpha_from), vp_level(alpha_to), eta)


def ddim_update(
    x: torch.Tensor,
    eps: torch.Tensor,
    alpha_from: float,
    alpha_to: float,
    eta: float = 0.0,
    noise: torch.Tensor | None = None,
) -> torch.Tensor:
    """Move ``x`` from a level with ``alpha_from`` to one with ``alpha_to`` along the predicted noise.

    x_to = sqrt(a_to) x0 + sqrt(1 - a_to - sigma^2) eps + sigma z: :func:`sow.engine.transitions.eta_step`
    with α = √ᾱ, σ = √(1 − ᾱ). With eta = 0 this is the deterministic DDIM step; with
    ``alpha_to < alpha_from`` it is DDIM inversion (sigma = 0).
    """
    x0 = predict_x0(x, eps, alpha_from)
    if alpha_to <= alpha_from:
        eta = 0.0  # inversion: deterministic
    return tr.eta_step(x0, eps, vp_level(alpha_from), vp_level(alpha_to), eta, noise)


def inject_noise(x: torch.Tensor, alpha_from: float, alpha_to: float, noise: torch.Tensor) -> torch.Tensor:
    """Jump from a level to a noisier one in one go (the forward process between them):

    x_to = sqrt(a_to / a_from) x_from + sqrt(1 - a_to / a_from) eps — :func:`sow.engine.transitions.inject_noise`
    with α = √ᾱ, σ = √(1 − ᾱ).
    """
    if alpha_to / alpha_from > 1:
        raise ValueError("noise injection goes to a noisier level (alpha_to <= alpha_from)")
    return tr.inject_noise(x, vp_level(alpha_from), vp_level(alpha_to), noise)


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
    guide=classifier_free_guidance,
) -> torch.Tensor:
    """CFG whose unconditional branch, outside the condition, is pushed away from a second face.

    Outside the condition region the unconditional prediction becomes
    ``eps_neg + eps_suppress - eps_diverse`` (suppress = "human face", diverse = "a high
    quality and colorful image"); inside it stays ``eps_neg``. ``condition_mask`` is 1 in
    the condition region and broadcasts over the latents. ``guide`` combines the two branches
    (a family's own CFG, such as Qwen-Image's norm-rescaled one; plain CFG by default).
    """
    uncond = eps_neg + (1 - condition_mask) * (eps_suppress - eps_diverse)
    return guide(uncond, eps_text, scale)
