"""COW on each flow family, through the engine's own stages (issue 25, "must show"): every
condition region is reset to its own trajectory exactly at every level of the cycles and at
the levels t3, on every family; several people on ``tiny-flux``."""

from __future__ import annotations

import pytest
import torch

from tests.support.flow_models import flow_backbone
from tests.support.flow_qwen_models import qwen_backbone
from tests.support.flow_runs import flow_config, flow_run

FAMILIES = ["tiny-sd3", "tiny-flux", "tiny-flux-dev", "tiny-flux2"]


def check_regions_reset(run) -> int:
    """Assert each region equals its trajectory at every cycle level and t3 level; return how many were checked."""
    ctx, cfg = run.ctx, run.ctx.config
    checked = 0
    for step, latents in run.seen:
        if step.phase == "cycle" or (step.phase == "final" and step.level in cfg.t3):
            for region, trajectory in zip(ctx.regions, ctx.condition_trajectories, strict=True):
                rows, cols = region.slices
                assert torch.equal(latents[:, :, rows, cols], trajectory[step.level].expand_as(latents[:, :, rows, cols])), (
                    f"{step}: region at ({region.top}, {region.left}) differs from its level-{step.level} latent"
                )
                checked += 1
    return checked


@pytest.mark.parametrize("name", FAMILIES)
def test_each_region_is_reset_at_every_level(name):
    backbone = flow_backbone(name)
    run = flow_run(backbone, [[32, 32, 48, 48]] if name != "tiny-flux2" else [[32, 32, 48, 48]])
    cfg = run.ctx.config
    levels_per_run = cfg.cycles * (cfg.t2 - cfg.t1) + len(cfg.t3)
    assert check_regions_reset(run) == levels_per_run
    # what was not reset moved: the canvas outside the region is not its inverted self
    assert not torch.equal(run.latents, run.ctx.canvas_latents)
    assert torch.isfinite(run.latents).all()
    # the whole count: inversions (condition to t2, canvas to t1) + cycles + final
    assert len(run.seen) == cfg.t2 + cfg.t1 + cfg.cycles * (cfg.t2 - cfg.t1) + cfg.t1


def test_several_people_on_tiny_flux_non_square():
    backbone = flow_backbone("tiny-flux")
    config = flow_config(backbone, width=192, height=128)
    run = flow_run(backbone, [[16, 16, 48, 48], [112, 32, 64, 48]], config)
    assert len(run.ctx.regions) == 2
    assert check_regions_reset(run) == 2 * (config.cycles * (config.t2 - config.t1) + len(config.t3))
    assert run.latents.shape == (1, 16, 16, 24)


def test_background_guidance_runs_four_branches_where_the_model_has_cfg():
    """SD3 with real CFG: the cycle phase's calls carry four prompt branches (negative, prompt, suppress, diverse)."""
    backbone = flow_backbone("tiny-sd3")
    calls = []
    original = backbone.predict

    def counting(latents, timestep, conditioning):
        calls.append(latents.shape[0])
        return original(latents, timestep, conditioning)

    backbone.predict = counting
    try:
        run = flow_run(backbone, [[32, 32, 48, 48]])
    finally:
        del backbone.predict
    cfg = run.ctx.config
    phases = [step.phase for step, _ in run.seen]
    cycle_calls = [c for c, p in zip(calls, phases) if p == "cycle"]
    assert cycle_calls == [4] * (cfg.cycles * (cfg.t2 - cfg.t1))
    assert {c for c, p in zip(calls, phases) if p == "final"} == {2}


@pytest.mark.parametrize("name", ["tiny-sd3", "tiny-flux", "tiny-flux2", "tiny-qwen-image", "tiny-z-image"])
def test_dam_acts_in_the_cycles_and_keeps_the_regions(name):
    """With DAM's joint processors installed (gate off: always on), the run differs from one without,
    every region is still reset exactly, and the processors are gone afterwards."""
    backbone = qwen_backbone(name) if name in ("tiny-qwen-image", "tiny-z-image") else flow_backbone(name)
    before = {k: type(p) for k, p in backbone.network.attn_processors.items()}
    config = flow_config(backbone, modulation={"use_gate": False, "w_plus": 1.0, "w_minus": 1.0})
    plain = flow_run(backbone, [[32, 32, 48, 48]], config)
    modulated = flow_run(backbone, [[32, 32, 48, 48]], config, dam=True)
    assert check_regions_reset(modulated) == check_regions_reset(plain) > 0
    assert not torch.allclose(modulated.latents, plain.latents, atol=1e-4)
    # inversions are not modulated (DAM acts in the cycle phase only): the trajectories agree
    assert torch.equal(modulated.ctx.condition_trajectories[0][-1], plain.ctx.condition_trajectories[0][-1])
    assert {k: type(p) for k, p in backbone.network.attn_processors.items()} == before
