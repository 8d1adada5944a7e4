"""COW's steps on rectified flow (issue 25): the noise injection keeps the flow's marginals, the
reverse flow inverts (with a measured first-order round-trip error), in the (α, σ) form."""

from __future__ import annotations

import pytest
import torch
from diffusers import FlowMatchEulerDiscreteScheduler

from sow.engine.flow import rectified_flow as rf
from sow.engine.flow.schedule import FlowLevels
from tests.flow_models import PROMPT, flow_backbone


@pytest.mark.parametrize(("s_low", "s_high"), [(0.0, 0.6), (0.3, 0.5), (0.5, 0.7), (0.62, 0.95)])
def test_injection_keeps_the_flow_marginal(s_low, s_high):
    """x_l = (1 − s_l) x0 + s_l ε, injected to s_h, must be (1 − s_h) x0 + s_h ε' in law: given x0,
    mean (1 − s_h) x0 and variance s_h². x0 is far from Gaussian (±2) so a wrong signal scale shows."""
    n = 400_000
    g = torch.Generator().manual_seed(11)
    x0 = torch.where(torch.rand(n, generator=g, dtype=torch.float64) < 0.5, -2.0, 2.0).to(torch.float64)
    x_low = (1 - s_low) * x0 + s_low * torch.randn(n, generator=g, dtype=torch.float64)
    x_high = rf.inject_noise(x_low, s_low, s_high, torch.randn(n, generator=g, dtype=torch.float64))
    residual = x_high - (1 - s_high) * x0
    se_mean = s_high / n**0.5
    se_var = s_high**2 * (2 / n) ** 0.5
    assert abs(float(residual.mean())) < 5 * se_mean
    assert abs(float(residual.var()) - s_high**2) < 5 * se_var
    # and the signal is carried with the right scale: regression of x_high on x0
    slope = float(((x_high - x_high.mean()) * x0).mean() / x0.var())
    assert slope == pytest.approx(1 - s_high, abs=5 * s_high / (n**0.5 * 2))


def test_injection_from_the_image_is_diffusers_scale_noise():
    scheduler = FlowMatchEulerDiscreteScheduler(shift=3.0)
    scheduler.set_timesteps(10)
    x0 = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(0))
    z = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(1))
    t = scheduler.timesteps[3]
    s = float(scheduler.sigmas[3])
    expected = scheduler.scale_noise(x0, t.reshape(1), z)
    assert torch.allclose(rf.inject_noise(x0, 0.0, s, z), expected, atol=1e-6)


def test_the_step_in_x0_eps_form_is_the_euler_step():
    x = torch.randn(2, 3, 4, 4, dtype=torch.float64)
    v = torch.randn(2, 3, 4, 4, dtype=torch.float64)
    s_a, s_b = 0.7, 0.45
    x0, eps = rf.velocity_to_x0_eps(x, v, s_a)
    alpha_b, sigma_b = rf.alpha_sigma(s_b)
    assert torch.allclose(alpha_b * x0 + sigma_b * eps, x + (s_b - s_a) * v)
    assert torch.allclose(rf.euler_step(x, v, s_a, s_b), x + (s_b - s_a) * v)
    # η = 0 is the deterministic step; η > 0 keeps the marginal variance (ε̂, z independent unit noise)
    assert torch.allclose(rf.stochastic_step(x, v, s_a, s_b, 0.0, None), x + (s_b - s_a) * v)


def round_trip_error(name: str, steps: int, top: int) -> float:
    """Invert a latent by the reverse flow (first-order Euler) to level ``top``, sample back, relative error."""
    backbone = flow_backbone(name)
    shape = (1, 128, 4, 4) if name == "tiny-flux2" else (1, 16, 8, 8)
    levels = FlowLevels.from_scheduler(backbone.scheduler, steps, backbone.schedule_rule, backbone.image_tokens(*shape[-2:]))
    text = backbone.encode_texts([PROMPT])
    x0 = torch.randn(shape, generator=torch.Generator().manual_seed(1))
    x = x0
    with torch.no_grad():
        for level in range(top):
            v = backbone.velocity(x, levels.timestep(level + 1), text)  # the model at the arrival level, as DDIM inversion
            x = rf.euler_step(x, v, levels.sigmas[level], levels.sigmas[level + 1])
        for level in range(top, 0, -1):
            v = backbone.velocity(x, levels.timestep(level), text)
            x = rf.euler_step(x, v, levels.sigmas[level], levels.sigmas[level - 1])
    return float((x - x0).norm() / x0.norm())


@pytest.mark.parametrize("name", ["tiny-sd3", "tiny-flux", "tiny-flux2"])
def test_round_trip_error_is_first_order(name):
    """The reverse-flow round trip leaves an error that shrinks like 1/S (first order): ~3× fewer
    steps, ~3× the error. Values on the random tiny models: docs/method.md's table."""
    coarse = round_trip_error(name, 10, 7)
    fine = round_trip_error(name, 30, 21)
    assert 0 < fine < coarse < 0.15
    assert coarse / fine > 2.0
