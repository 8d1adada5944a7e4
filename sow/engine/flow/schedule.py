"""The levels of a flow-matching scheduler, in the (α, σ) form, with the timestep the model sees.

Level k counts from the clean end as for the UNets (DESIGN §2): level 0 is the image (s = 0),
level S the start of sampling. A flow scheduler's ``sigmas`` run from noisy to clean with a
terminal 0 appended, so level k sits at ``sigmas[S - k]``; the model moving between levels k
and k − 1 is evaluated at level k's timestep ``timesteps[S - k]`` (= 1000 s_k), in both
directions, as the UNet is at t_k.

How the sigmas are made is the family's pipeline's reading, kept exactly so that the plain
sampling path equals diffusers' (:class:`TimestepShift`):

- ``sd3``: ``set_timesteps(S)`` from the scheduler's own range, static shift (3.0), or the
  resolution-dependent ``mu`` when the config asks for dynamic shifting;
- ``flux1``: ``sigmas = linspace(1, 1/S, S)``, then the static shift (schnell 1.0) or, with
  dynamic shifting (dev), ``mu`` linear in the packed image tokens (256 → 0.5 … 4096 → 1.15);
- ``flux2``: the same sigmas, ``mu`` from klein's empirical fit of tokens and steps.

A setting may override the family's choice: ``shift`` = a number gives a fixed shift
s' = k s / (1 + (k − 1) s) for any family; ``"none"`` uses the unshifted linear sigmas.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch


def resolution_mu(image_tokens: int, config) -> float:
    """FLUX.1 / SD3's dynamic-shift ``mu``: linear in the image tokens between the config's two anchors."""
    base_len, max_len = config.get("base_image_seq_len", 256), config.get("max_image_seq_len", 4096)
    base, top = config.get("base_shift", 0.5), config.get("max_shift", 1.15)
    slope = (top - base) / (max_len - base_len)
    return image_tokens * slope + base - slope * base_len


def empirical_mu(image_tokens: int, steps: int) -> float:
    """FLUX.2's ``mu`` (its pipelines' empirical fit in tokens and steps, reproduced for the same schedule)."""
    a1, b1 = 8.73809524e-05, 1.89833333
    a2, b2 = 0.00016927, 0.45666666
    if image_tokens > 4300:
        return float(a2 * image_tokens + b2)
    at_200 = a2 * image_tokens + b2
    at_10 = a1 * image_tokens + b1
    slope = (at_200 - at_10) / 190.0
    return float(slope * steps + at_200 - 200.0 * slope)


@dataclass(frozen=True)
class FlowLevels:
    """σ (= s) and the model's timestep at every level 0..S of a flow schedule."""

    sigmas: torch.Tensor
    """``sigmas[k]`` is s of level k (float32, as the scheduler keeps them); ``sigmas[0] = 0``."""
    timesteps: torch.Tensor
    """``timesteps[k]`` = 1000 s_k, the model's timestep at level k (float32); ``timesteps[0]`` unused."""

    @property
    def steps(self) -> int:
        return len(self.sigmas) - 1

    def sigma(self, level: int) -> float:
        return float(self.sigmas[level])

    def alpha(self, level: int) -> float:
        """α = 1 − s (rectified flow)."""
        return 1.0 - float(self.sigmas[level])

    def sigma_tensor(self, level: int) -> torch.Tensor:
        return self.sigmas[level]

    def timestep(self, level: int) -> torch.Tensor:
        if level < 1:
            raise ValueError(f"level {level} has no timestep (the model is evaluated at levels 1..S)")
        return self.timesteps[level]

    @classmethod
    def from_scheduler(cls, scheduler, steps: int, rule: str, image_tokens: int, shift: float | str | None = None) -> FlowLevels:
        """Levels of a ``FlowMatchEulerDiscreteScheduler`` set as family ``rule`` (``sd3``, ``flux1``, ``flux2``)
        sets it for ``image_tokens`` model tokens; ``shift`` (a number or ``"none"``) overrides the family's shift."""
        config = scheduler.config
        if shift is not None:
            sigmas = np.linspace(1.0, 1 / steps, steps)
            if shift != "none":
                sigmas = float(shift) * sigmas / (1 + (float(shift) - 1) * sigmas)
            descending = torch.from_numpy(np.append(sigmas, 0.0)).to(torch.float32)
            return cls._from_descending(descending, descending[:-1] * config.num_train_timesteps)
        mu = None
        if rule == "flux2":
            mu = empirical_mu(image_tokens, steps)
        elif rule == "flux1" or config.get("use_dynamic_shifting", False):
            mu = resolution_mu(image_tokens, config)
        if rule == "sd3":
            scheduler.set_timesteps(steps, mu=mu) if mu is not None else scheduler.set_timesteps(steps)
        else:
            scheduler.set_timesteps(sigmas=np.linspace(1.0, 1 / steps, steps), mu=mu)
        return cls._from_descending(scheduler.sigmas.to(torch.float32).cpu(), scheduler.timesteps.to(torch.float32).cpu())

    @classmethod
    def _from_descending(cls, sigmas: torch.Tensor, timesteps: torch.Tensor) -> FlowLevels:
        """From a scheduler's noisy-to-clean ``sigmas`` (S + 1, ending in 0) and ``timesteps`` (S)."""
        ascending = sigmas.flip(0)
        times = torch.cat([torch.full((1,), -1.0), timesteps.flip(0)])
        return cls(sigmas=ascending.contiguous(), timesteps=times.contiguous())
