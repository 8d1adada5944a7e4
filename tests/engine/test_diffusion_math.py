"""The pure diffusion functions against hand-computed values."""

from __future__ import annotations

import math

import pytest
import torch
from diffusers import DDIMScheduler

from sow.engine import diffusion_math as dm
from sow.models.loading import tiny_configs


@pytest.fixture
def schedule() -> dm.LevelSchedule:
    return dm.LevelSchedule.from_scheduler(DDIMScheduler(**tiny_configs()["scheduler"]), 10)


def test_levels_map_to_sd_timesteps(schedule):
    assert schedule.timesteps[1:].tolist() == [1, 101, 201, 301, 401, 501, 601, 701, 801, 901]
    scheduler = DDIMScheduler(**tiny_configs()["scheduler"])
    # set_alpha_to_one = False: level 0 carries alphas_cumprod[0], as SD 2.x's DDIM does
    assert schedule.alpha(0) == pytest.approx(float(scheduler.alphas_cumprod[0]))
    assert schedule.alpha(6) == pytest.approx(float(scheduler.alphas_cumprod[501]))
    assert all(schedule.alphas[k] > schedule.alphas[k + 1] for k in range(10))
    with pytest.raises(ValueError):
        schedule.timestep(0)


def test_ddim_update_matches_hand_computation():
    x, eps = torch.tensor([1.0]), torch.tensor([0.5])
    # x0 = (1 - sqrt(0.75) * 0.5) / 0.5 ; out = 0.8 x0 + 0.6 * 0.5
    x0 = (1 - math.sqrt(0.75) * 0.5) / 0.5
    out = dm.ddim_update(x, eps, alpha_from=0.25, alpha_to=0.64)
    assert out.item() == pytest.approx(0.8 * x0 + 0.6 * 0.5, abs=1e-6)


def test_ddim_update_is_its_own_inverse_for_fixed_noise():
    torch.manual_seed(0)
    x, eps = torch.randn(2, 4, 8, 8), torch.randn(2, 4, 8, 8)
    up = dm.ddim_update(x, eps, 0.9, 0.3)
    back = dm.ddim_update(up, eps, 0.3, 0.9)
    torch.testing.assert_close(back, x, atol=1e-5, rtol=1e-5)


def test_stochastic_step_needs_noise_and_uses_ddpm_sigma_at_eta_1():
    a_from, a_to = 0.3, 0.6
    sigma = dm.ddim_sigma(a_from, a_to, 1.0)
    beta = 1 - a_from / a_to
    assert sigma == pytest.approx(math.sqrt((1 - a_to) / (1 - a_from) * beta))
    assert dm.ddim_sigma(a_from, a_to, 0.0) == 0.0
    assert dm.ddim_sigma(0.6, 0.3, 1.0) == 0.0  # going up (inversion) is never stochastic
    with pytest.raises(ValueError):
        dm.ddim_update(torch.zeros(1), torch.zeros(1), a_from, a_to, eta=0.5)
    noise = torch.ones(1)
    out = dm.ddim_update(torch.zeros(1), torch.zeros(1), a_from, a_to, eta=1.0, noise=noise)
    assert out.item() == pytest.approx(sigma)


def test_inject_noise_hand_values_and_refuses_going_down():
    x, n = torch.tensor([2.0]), torch.tensor([1.0])
    out = dm.inject_noise(x, alpha_from=0.8, alpha_to=0.2, noise=n)
    assert out.item() == pytest.approx(math.sqrt(0.25) * 2 + math.sqrt(0.75) * 1)
    with pytest.raises(ValueError):
        dm.inject_noise(x, alpha_from=0.2, alpha_to=0.8, noise=n)


def test_inject_noise_keeps_the_marginal_of_the_forward_process():
    torch.manual_seed(1)
    x0 = torch.randn(200_000)
    a1, a2 = 0.55, 0.25
    x_t1 = math.sqrt(a1) * x0 + math.sqrt(1 - a1) * torch.randn_like(x0)
    x_t2 = dm.inject_noise(x_t1, a1, a2, torch.randn_like(x0))
    # x_t2 = sqrt(a2) x0 + sqrt(1 - a2) e: unit variance, correlation sqrt(a2) with x0
    assert x_t2.var().item() == pytest.approx(1.0, abs=0.01)
    assert torch.corrcoef(torch.stack([x_t2, x0]))[0, 1].item() == pytest.approx(math.sqrt(a2), abs=0.01)


def test_background_guidance_only_changes_the_outside():
    torch.manual_seed(2)
    neg, text, sup, div = (torch.randn(1, 4, 6, 6) for _ in range(4))
    mask = torch.zeros(1, 1, 6, 6)
    mask[..., 1:4, 2:5] = 1
    out = dm.background_guidance(neg, text, sup, div, mask, 7.5)
    plain = dm.classifier_free_guidance(neg, text, 7.5)
    pushed = dm.classifier_free_guidance(neg + sup - div, text, 7.5)
    inside = mask.bool().expand_as(out)
    torch.testing.assert_close(out[inside], plain[inside])
    torch.testing.assert_close(out[~inside], pushed[~inside])
