"""COW's steps on rectified flow (issue 25): the noise injection keeps the flow's marginals, the
reverse flow inverts (with a measured first-order round-trip error), in the (α, σ) form."""

from __future__ import annotations

import pytest
import torch

from sow.engine import transitions as tr
from sow.engine.noise_schedule import Level
from tests.support.flow_models import flow_backbone
from tests.support.flow_runs import round_trip_error as flow_round_trip


def flow_level(s: float) -> Level:
    return Level(alpha=1 - s, sigma=s)


@pytest.mark.parametrize(("s_low", "s_high"), [(0.0, 0.6), (0.3, 0.5), (0.5, 0.7), (0.62, 0.95)])
def test_injection_keeps_the_flow_marginal(s_low, s_high):
    """x_l = (1 − s_l) x0 + s_l ε, injected to s_h, must be (1 − s_h) x0 + s_h ε' in law: given x0,
    mean (1 − s_h) x0 and variance s_h². x0 is far from Gaussian (±2) so a wrong signal scale shows."""
    n = 400_000
    g = torch.Generator().manual_seed(11)
    x0 = torch.where(torch.rand(n, generator=g, dtype=torch.float64) < 0.5, -2.0, 2.0).to(torch.float64)
    x_low = (1 - s_low) * x0 + s_low * torch.randn(n, generator=g, dtype=torch.float64)
    x_high = tr.inject_noise(x_low, flow_level(s_low), flow_level(s_high), torch.randn(n, generator=g, dtype=torch.float64))
    residual = x_high - (1 - s_high) * x0
    se_mean = s_high / n**0.5
    se_var = s_high**2 * (2 / n) ** 0.5
    assert abs(float(residual.mean())) < 5 * se_mean
    assert abs(float(residual.var()) - s_high**2) < 5 * se_var
    # and the signal is carried with the right scale: regression of x_high on x0
    slope = float(((x_high - x_high.mean()) * x0).mean() / x0.var())
    assert slope == pytest.approx(1 - s_high, abs=5 * s_high / (n**0.5 * 2))


def round_trip_error(name: str, steps: int, top: int) -> float:
    """The relative error of a reverse-flow round trip to level ``top`` on a tiny model (:func:`flow_round_trip`)."""
    shape = (1, 128, 4, 4) if name == "tiny-flux2" else (1, 16, 8, 8)
    return flow_round_trip(flow_backbone(name), shape, steps, top)


@pytest.mark.parametrize("name", ["tiny-sd3", "tiny-flux", "tiny-flux2"])
def test_round_trip_error_is_first_order(name):
    """The reverse-flow round trip leaves an error that shrinks like 1/S (first order): ~3× fewer
    steps, ~3× the error. Values on the random tiny models: docs/method.md's table."""
    coarse = round_trip_error(name, 10, 7)
    fine = round_trip_error(name, 30, 21)
    assert 0 < fine < coarse < 0.15
    assert coarse / fine > 2.0
