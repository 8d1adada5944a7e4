"""The noise schedule as a signal scale α and a noise scale σ per level (DESIGN §5).

Seam 1 of the engine (the others: :mod:`sow.engine.parameterization` turns a model's output into
(x̂0, ε̂), :mod:`sow.engine.transitions` moves latents between levels, :mod:`sow.engine.backbone`
is a model family's network). Every model the engine serves writes a noisy latent at level k as

    x_k = α_k · x0 + σ_k · ε

Levels count from the clean end, as everywhere in sow: level 0 is the image, level S pure
noise (or as close as the schedule gets). The model moving between levels k-1 and k is
evaluated at level k's timestep, in both directions (denoising k -> k-1 and inverting k-1 -> k).

- **VP** (SD 1.x / 2.x / SDXL, any DDIM-style scheduler with ``alphas_cumprod``):
  α = √ᾱ, σ = √(1 − ᾱ); level k >= 1 sits at the integer training timestep t_k of the
  scheduler's ``set_timesteps``; level 0 has the scheduler's ``final_alpha_cumprod``.
- **flow** (rectified flow: SD 3.x, FLUX.1, FLUX.2; diffusers' ``FlowMatchEulerDiscreteScheduler``):
  α = 1 − s, σ = s, where s is the scheduler's (shifted) sigma; level k >= 1 has
  s_k = ``sigmas[S - k]`` and the float timestep ``s_k · num_train_timesteps``; level 0 has
  s = 0 (the appended terminal sigma). The shift (fixed ``shift``, or dynamic with ``mu``) is
  the scheduler's own: pass ``mu`` for schedulers with ``use_dynamic_shifting``.

``timestep(k)`` is what the scheduler would hand the model; a backbone that feeds its network
a rescaled value (FLUX divides by 1000) does so inside :meth:`sow.engine.backbone.Backbone.predict`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import torch

from sow.engine import transitions as tr
from sow.engine.parameterization import is_flow_scheduler, split_prediction
from sow.engine.transitions import Level

__all__ = ["Level", "NoiseSchedule", "ScheduleKind", "is_flow_scheduler", "vp_alpha_bars"]

ScheduleKind = Literal["vp", "flow"]


@dataclass(frozen=True)
class NoiseSchedule:
    """(α_k, σ_k) and the model's timestep for the levels k = 0..S of one run."""

    kind: ScheduleKind
    levels: tuple[Level, ...]
    """``levels[k]`` for k = 0..S."""
    timesteps: torch.Tensor
    """``timesteps[k]``: the timestep the model sees at level k >= 1 (int64 for VP, float32 for flow);
    ``timesteps[0]`` is a placeholder (-1 for VP, 0 for flow): no model call is made at level 0."""

    def __post_init__(self) -> None:
        if len(self.levels) != len(self.timesteps):
            raise ValueError(f"{len(self.levels)} levels but {len(self.timesteps)} timesteps")

    @property
    def steps(self) -> int:
        """S: the number of model-evaluated levels (the run's ``num_inference_steps``)."""
        return len(self.levels) - 1

    def level(self, k: int) -> Level:
        return self.levels[k]

    def timestep(self, k: int) -> torch.Tensor:
        """The model's timestep at level ``k`` (1..S), as a 0-d tensor of the schedule's dtype (int64 VP, float32 flow)."""
        if not 1 <= k <= self.steps:
            raise ValueError(f"level {k} has no timestep (the model is evaluated at levels 1..{self.steps})")
        return self.timesteps[k]

    # -- moves (the engine calls these; the equations are in sow.engine.transitions) ------------

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
        """From level ``start`` to level ``end`` with the model's ``output`` at ``start``'s scales:
        the η step down (η = 0: deterministic), or the inversion step up."""
        frm, to = self.levels[start], self.levels[end]
        x0, eps = split_prediction(output, x, frm.alpha, frm.sigma, parameterization)
        if end > start:
            return tr.inversion_step(x0, eps, to)
        return tr.eta_step(x0, eps, frm, to, eta, noise)

    def inject(self, x: torch.Tensor, low: int, high: int, noise: torch.Tensor) -> torch.Tensor:
        """Noise injection from level ``low`` to the noisier ``high``, keeping the marginals."""
        return tr.inject_noise(x, self.levels[low], self.levels[high], noise)

    # -- builders -------------------------------------------------------------------------

    @classmethod
    def from_scheduler(cls, scheduler: Any, num_inference_steps: int, mu: float | None = None) -> NoiseSchedule:
        """The schedule of a diffusers scheduler: flow-matching when it has ``sigmas`` and no
        ``alphas_cumprod`` (``FlowMatchEulerDiscreteScheduler``), VP otherwise."""
        if is_flow_scheduler(scheduler):
            return cls.from_flow_scheduler(scheduler, num_inference_steps, mu=mu)
        return cls.from_ddim_scheduler(scheduler, num_inference_steps)

    @classmethod
    def from_ddim_scheduler(cls, scheduler: Any, num_inference_steps: int) -> NoiseSchedule:
        """VP levels of a DDIM-style scheduler (``alphas_cumprod``, ``final_alpha_cumprod``, integer timesteps)."""
        alpha_bars, timesteps = vp_alpha_bars(scheduler, num_inference_steps)
        levels = tuple(Level(alpha=a**0.5, sigma=(1 - a) ** 0.5) for a in alpha_bars.tolist())
        return cls(kind="vp", levels=levels, timesteps=timesteps)

    @classmethod
    def from_flow_scheduler(cls, scheduler: Any, num_inference_steps: int, mu: float | None = None) -> NoiseSchedule:
        """Flow levels of ``FlowMatchEulerDiscreteScheduler`` (its shift, or ``mu`` when it shifts dynamically)."""
        kwargs = {"mu": mu} if mu is not None else {}
        scheduler.set_timesteps(num_inference_steps, device="cpu", **kwargs)
        sigmas = scheduler.sigmas.to(torch.float64).cpu()  # s of each step, noisiest first, then the terminal 0
        if len(sigmas) != num_inference_steps + 1:
            raise ValueError(f"flow scheduler gave {len(sigmas)} sigmas for {num_inference_steps} steps")
        ascending = sigmas.flip(0)  # level k: s_k; level 0: the terminal sigma (0)
        model_timesteps = scheduler.timesteps.to(torch.float32).cpu().flip(0)
        timesteps = torch.cat([torch.zeros(1, dtype=torch.float32), model_timesteps])
        levels = tuple(Level(alpha=1.0 - s, sigma=s) for s in ascending.tolist())
        return cls(kind="flow", levels=levels, timesteps=timesteps)


def vp_alpha_bars(scheduler: Any, num_inference_steps: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(ᾱ of the levels 0..S in float64, their int64 timesteps with -1 at level 0) of a DDIM-style scheduler."""
    scheduler.set_timesteps(num_inference_steps)
    ascending = scheduler.timesteps.to(torch.int64).cpu().flip(0)
    alphas_cumprod = scheduler.alphas_cumprod.to(torch.float64).cpu()
    if len(ascending) != num_inference_steps or int(ascending.max()) >= len(alphas_cumprod) or int(ascending.min()) < 0:
        from sow.errors import InputError  # a schedule past the trained timesteps: said, not an index error

        raise InputError(
            f"num_inference_steps {num_inference_steps}: this model's scheduler ({len(alphas_cumprod)} training "
            f"timesteps, steps_offset {scheduler.config.get('steps_offset', 0)}) has no such schedule; use fewer steps"
        )
    final = torch.as_tensor(scheduler.final_alpha_cumprod, dtype=torch.float64).reshape(1)
    return torch.cat([final, alphas_cumprod[ascending]]), torch.cat([torch.tensor([-1]), ascending])
