"""The engine's seams against diffusers' own schedulers: the (α, σ) schedule, the parameterization
conversion and the moves between levels, for VP (every prediction type) and rectified flow.

The model output in these tests is a fixed x- and t-dependent function; diffusers' ``step`` is the
reference, never sow's code.
"""

from __future__ import annotations

import math

import pytest
import torch
from diffusers import DDIMInverseScheduler, DDIMScheduler, FlowMatchEulerDiscreteScheduler

from sow.engine import transitions as tr
from sow.models.loading import tiny_configs
from sow.engine.noise_schedule import Level, NoiseSchedule
from sow.engine.parameterization import prediction_type_of, split_prediction

STEPS = 10


def model(x: torch.Tensor, t: float) -> torch.Tensor:
    """A stand-in network output: depends on x and on the timestep it is given."""
    return 0.4 * torch.tanh(x) + 0.3 * math.sin(float(t) / 170) - 0.1 * x


def ddim(prediction_type: str) -> DDIMScheduler:
    return DDIMScheduler(**{**tiny_configs()["scheduler"], "prediction_type": prediction_type})


def move_down(schedule: NoiseSchedule, x, level, parameterization, eta=0.0, noise=None):
    out = model(x, float(schedule.timestep(level)))
    a, b = schedule.level(level), schedule.level(level - 1)
    x0, eps = split_prediction(out, x, a.alpha, a.sigma, parameterization)
    return tr.eta_step(x0, eps, a, b, eta, noise)


@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction", "sample"])
@pytest.mark.parametrize("eta", [0.0, 0.3])
def test_vp_steps_equal_diffusers_ddim_for_every_prediction_type(prediction_type, eta):
    reference = ddim(prediction_type)
    schedule = NoiseSchedule.from_scheduler(ddim(prediction_type), STEPS)
    assert schedule.kind == "vp" and prediction_type_of(reference) == prediction_type
    reference.set_timesteps(STEPS)
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(1, 4, 8, 8, generator=generator, dtype=torch.float64)
    for i, t in enumerate(reference.timesteps):
        level = STEPS - i
        assert int(schedule.timestep(level)) == int(t)  # the timestep the model sees
        noise = torch.randn(x.shape, generator=generator, dtype=torch.float64)
        ours = move_down(schedule, x, level, prediction_type, eta, noise)
        expected = reference.step(model(x, int(t)), t, x, eta=eta, variance_noise=noise).prev_sample
        torch.testing.assert_close(ours, expected, rtol=1e-5, atol=1e-6)
        x = expected


@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction"])
def test_inversion_equals_diffusers_ddim_inverse(prediction_type):
    schedule = NoiseSchedule.from_scheduler(ddim(prediction_type), STEPS)
    reference = DDIMInverseScheduler.from_config(ddim(prediction_type).config)
    reference.set_timesteps(STEPS)
    x = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    for level, t in enumerate(reference.timesteps):  # level -> level + 1, the model at t_(level+1)
        assert int(schedule.timestep(level + 1)) == int(t)
        a, b = schedule.level(level), schedule.level(level + 1)
        out = model(x, int(t))
        # the inverse step predicts from x at the lower level with the higher level's model call
        x0, eps = split_prediction(out, x, a.alpha, a.sigma, prediction_type)
        ours = tr.inversion_step(x0, eps, b)
        expected = reference.step(out, t, x).prev_sample
        torch.testing.assert_close(ours, expected, rtol=1e-5, atol=1e-6)
        x = expected


@pytest.mark.parametrize("shift", [1.0, 3.0])
def test_flow_steps_equal_diffusers_flow_match_euler(shift):
    reference = FlowMatchEulerDiscreteScheduler(shift=shift)
    schedule = NoiseSchedule.from_scheduler(FlowMatchEulerDiscreteScheduler(shift=shift), 6)
    assert schedule.kind == "flow" and prediction_type_of(reference) == "flow"
    reference.set_timesteps(6)
    x = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(2))
    for i, t in enumerate(reference.timesteps):
        level = 6 - i
        assert float(schedule.timestep(level)) == pytest.approx(float(t), rel=1e-6)  # the float timestep
        ours = move_down(schedule, x.double(), level, "flow").float()
        expected = reference.step(model(x, float(t)), t, x).prev_sample
        torch.testing.assert_close(ours, expected, rtol=1e-5, atol=1e-5)
        x = expected
    assert schedule.level(0) == Level(alpha=1.0, sigma=0.0)


def test_flow_injection_from_level_zero_is_scale_noise():
    reference = FlowMatchEulerDiscreteScheduler(shift=3.0)
    schedule = NoiseSchedule.from_scheduler(FlowMatchEulerDiscreteScheduler(shift=3.0), 8)
    reference.set_timesteps(8)
    x0 = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(3))
    z = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(4))
    for level in (2, 5, 8):
        t = reference.timesteps[8 - level].reshape(1)
        expected = reference.scale_noise(x0, t, z)
        torch.testing.assert_close(tr.inject_noise(x0, schedule.level(0), schedule.level(level), z), expected)


@pytest.mark.parametrize("kind", ["vp", "flow"])
def test_injection_keeps_the_marginals(kind):
    """x_l = α_l·x0 + σ_l·ε, injected to h: the mean and the variance of α_h·x0 + σ_h·ε', measured."""
    scheduler = ddim("epsilon") if kind == "vp" else FlowMatchEulerDiscreteScheduler(shift=3.0)
    schedule = NoiseSchedule.from_scheduler(scheduler, STEPS)
    low, high = schedule.level(5), schedule.level(7)
    g = torch.Generator().manual_seed(5)
    x0 = torch.full((200_000,), 0.7, dtype=torch.float64)
    x_low = low.alpha * x0 + low.sigma * torch.randn(x0.shape, generator=g, dtype=torch.float64)
    x_high = tr.inject_noise(x_low, low, high, torch.randn(x0.shape, generator=g, dtype=torch.float64))
    assert float(x_high.mean()) == pytest.approx(high.alpha * 0.7, abs=5e-3)
    assert float(x_high.std()) == pytest.approx(high.sigma, rel=5e-3)
    with pytest.raises(ValueError):
        tr.inject_noise(x_low, high, low, x_low)  # towards less noise


def test_vp_injection_is_the_ddpm_jump():
    schedule = NoiseSchedule.from_scheduler(ddim("epsilon"), STEPS)
    low, high = schedule.level(5), schedule.level(7)
    ratio = high.alpha**2 / low.alpha**2  # ᾱ_h / ᾱ_l
    assert tr.injection_scales(low, high) == pytest.approx((math.sqrt(ratio), math.sqrt(1 - ratio)), rel=1e-12)


@pytest.mark.parametrize("parameterization", ["epsilon", "v_prediction", "sample", "flow"])
def test_each_conversion_recovers_x0_and_eps(parameterization):
    g = torch.Generator().manual_seed(6)
    x0, eps = torch.randn(3, generator=g, dtype=torch.float64), torch.randn(3, generator=g, dtype=torch.float64)
    level = Level(alpha=0.6, sigma=0.4) if parameterization == "flow" else Level(alpha=0.6, sigma=0.8)
    x = level.alpha * x0 + level.sigma * eps
    output = {"epsilon": eps, "sample": x0, "v_prediction": level.alpha * eps - level.sigma * x0, "flow": eps - x0}[parameterization]
    got_x0, got_eps = split_prediction(output, x, level.alpha, level.sigma, parameterization)
    torch.testing.assert_close(got_x0, x0)
    torch.testing.assert_close(got_eps, eps)


def test_flow_deterministic_step_is_the_euler_step():
    a, b = Level(alpha=0.3, sigma=0.7), Level(alpha=0.55, sigma=0.45)
    x, v = torch.randn(5, dtype=torch.float64), torch.randn(5, dtype=torch.float64)
    x0, eps = split_prediction(v, x, a.alpha, a.sigma, "flow")
    torch.testing.assert_close(tr.deterministic_step(x0, eps, b), x + (b.sigma - a.sigma) * v)


def test_injection_refuses_each_wrong_direction_on_its_own():
    """Either sign of a wrong jump is refused alone: α growing (even with room for noise), or no room for noise."""
    x, z = torch.ones(4, dtype=torch.float64), torch.zeros(4, dtype=torch.float64)
    with pytest.raises(ValueError, match="noisier level"):
        tr.inject_noise(x, Level(alpha=0.5, sigma=0.0), Level(alpha=1.0, sigma=1.0), z)  # alpha doubles, variance 1
    with pytest.raises(ValueError, match="noisier level"):
        tr.inject_noise(x, Level(alpha=1.0, sigma=0.5), Level(alpha=0.5, sigma=0.1), z)  # alpha halves, variance < 0
    level = Level(alpha=0.8, sigma=0.6)
    torch.testing.assert_close(tr.inject_noise(x, level, level, z + 7), x)  # a jump of zero: x itself, no noise


def test_a_vp_scheduler_with_sigmas_is_not_read_as_flow():
    """Euler-style VP schedulers keep both ``alphas_cumprod`` and ``sigmas``: VP, with their own prediction type."""
    from diffusers import EulerDiscreteScheduler

    from sow.engine.parameterization import is_flow_scheduler

    scheduler = EulerDiscreteScheduler(prediction_type="v_prediction")
    assert hasattr(scheduler, "sigmas") and hasattr(scheduler, "alphas_cumprod")
    assert not is_flow_scheduler(scheduler)
    assert prediction_type_of(scheduler) == "v_prediction"
    assert is_flow_scheduler(FlowMatchEulerDiscreteScheduler())
