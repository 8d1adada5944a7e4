"""What a model predicts, and the one conversion of its output into (x̂0, ε̂) (DESIGN §5).

Seam 2 of the engine (after :mod:`sow.engine.noise_schedule`). With x = α·x0 + σ·ε at the
level the model was evaluated at:

``epsilon``       the model predicts ε:            x̂0 = (x − σ·ε̂) / α,  ε̂ = output
``v_prediction``  v = α·ε − σ·x0 (VP, α²+σ² = 1): x̂0 = α·x − σ·v,       ε̂ = σ·x + α·v
``sample``        the model predicts x0:            x̂0 = output,         ε̂ = (x − α·x̂0) / σ
``flow``          velocity v = ε − x0 (α = 1 − σ):  x̂0 = x − σ·v,         ε̂ = x + α·v

(Salimans & Ho 2022, eq. 9 for v; Liu et al. 2022 / Esser et al. 2024 for the flow velocity.)
Guidance (CFG, the background guidance) is linear in the model output, and each conversion is
affine in it for a fixed x, so guiding the raw outputs and then converting equals converting
each branch and guiding (x̂0, ε̂).

The parameterization of a VP model is its scheduler config's ``prediction_type``
(:func:`prediction_type_of`); flow models always predict the velocity.
"""

from __future__ import annotations

from typing import Any, Literal, get_args

import torch

from sow.errors import ModelLoadError

Parameterization = Literal["epsilon", "v_prediction", "sample", "flow"]
PARAMETERIZATIONS: tuple[str, ...] = get_args(Parameterization)


def split_prediction(
    output: torch.Tensor, x: torch.Tensor, alpha: float, sigma: float, parameterization: Parameterization
) -> tuple[torch.Tensor, torch.Tensor]:
    """(x̂0, ε̂) from the model's ``output`` on ``x`` at a level with scales (``alpha``, ``sigma``)."""
    if parameterization == "epsilon":
        return (x - sigma * output) / alpha, output
    if parameterization == "v_prediction":
        return alpha * x - sigma * output, sigma * x + alpha * output
    if parameterization == "sample":
        return output, (x - alpha * output) / sigma
    if parameterization == "flow":
        return x - sigma * output, x + alpha * output
    raise ValueError(f"unknown parameterization {parameterization!r}; one of {', '.join(PARAMETERIZATIONS)}")


def prediction_type_of(scheduler: Any) -> Parameterization:
    """The parameterization a scheduler was configured with: its ``prediction_type``
    (``epsilon`` when absent), ``flow`` for flow-matching schedulers. An unknown value is refused."""
    if is_flow_scheduler(scheduler):
        return "flow"
    config = getattr(scheduler, "config", {})
    value = config.get("prediction_type", "epsilon") if hasattr(config, "get") else getattr(config, "prediction_type", "epsilon")
    value = value or "epsilon"
    if value not in ("epsilon", "v_prediction", "sample"):
        raise ModelLoadError(f"scheduler prediction_type {value!r} is not supported; sow reads epsilon, v_prediction and sample")
    return value


def is_flow_scheduler(scheduler: Any) -> bool:
    """A flow-matching scheduler (diffusers' ``FlowMatch*``): ``sigmas`` and no ``alphas_cumprod``."""
    return not hasattr(scheduler, "alphas_cumprod") and hasattr(scheduler, "sigmas")
