"""The COW engine on the tiny model: inversion, replacement, UNet counts, seeds, stage swaps."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from diffusers import DDIMScheduler
from PIL import Image

from sow.engine import diffusion_math as dm
from sow.engine.context import RunContext
from sow.engine.denoiser import Denoiser, PromptEmbeddings
from sow.hookspecs import hookimpl
from sow.engine.inversion import DDIMInverter
from sow.models.loading import tiny_configs
from sow.pipeline import SOWPipeline
from sow.plugins import build_registry
from sow.engine.preservation import RegionReplacePreserver
from sow.schemas import Box, GenerationConfig, Plan
from tests.support.noise_models import TimeDependentNoise

# -- DDIM inversion round trip --------------------------------------------------------------


class OffByOneDenoiser(Denoiser):
    """Inverts with the UNet evaluated at t_level instead of t_(level+1): the classic slip."""

    def invert(self, latents, level, phase):
        step_level = max(level, 1)
        eps = self.predict(latents, step_level, __import__("sow.engine.context").engine.context.Step(phase, level + 1))
        return dm.ddim_update(latents, eps, self.schedule.alpha(level), self.schedule.alpha(level + 1))


def _round_trip_error(denoiser_cls, k: float, top: int = 7) -> float:
    shape = (1, 4, 16, 16)
    model = TimeDependentNoise(shape, k=k)
    config = GenerationConfig(inversion_guidance_scale=1.0, guidance_scale=1.0)
    embeddings = PromptEmbeddings(*(torch.zeros(1, 77, 8) for _ in range(5)))
    schedule = dm.LevelSchedule.from_scheduler(DDIMScheduler(**tiny_configs()["scheduler"]), 10)
    denoiser = denoiser_cls(model, schedule, embeddings, config)
    x0 = torch.randn(shape, generator=torch.Generator().manual_seed(3))
    trajectory = DDIMInverter().invert(denoiser, x0, 0, top, "invert_canvas")
    x = trajectory[-1]
    for level in range(top, 0, -1):
        x = denoiser.denoise(x, level, "final")
    return ((x - x0).norm() / x0.norm()).item()


def test_inversion_then_denoising_returns_to_the_start():
    # eps depends on the timestep only: the DDIM round trip is exact up to float error
    assert _round_trip_error(Denoiser, k=0.0) < 1e-5
    # eps also depends (smoothly) on x: small, measured error (about 3e-3 with k = 0.02)
    assert _round_trip_error(Denoiser, k=0.02) < 2e-2


def test_an_off_by_one_timestep_breaks_the_round_trip():
    correct = _round_trip_error(Denoiser, k=0.02)
    slipped = _round_trip_error(OffByOneDenoiser, k=0.02)
    assert slipped > 0.1
    assert slipped > 20 * correct


def test_inverter_keeps_the_whole_trajectory():
    model = TimeDependentNoise((1, 4, 8, 8))
    config = GenerationConfig(inversion_guidance_scale=1.0)
    schedule = dm.LevelSchedule.from_scheduler(DDIMScheduler(**tiny_configs()["scheduler"]), 10)
    denoiser = Denoiser(model, schedule, PromptEmbeddings(*(torch.zeros(1, 77, 8) for _ in range(5))), config)
    x0 = torch.randn(1, 4, 8, 8)
    trajectory = DDIMInverter().invert(denoiser, x0, 0, 7, "invert_condition")
    assert len(trajectory) == 8 and trajectory[0] is x0
    assert denoiser.evaluations == 7
    with pytest.raises(ValueError):
        DDIMInverter().invert(denoiser, x0, 5, 2, "invert_condition")


# -- replacement ----------------------------------------------------------------------------


class SpyPreserver(RegionReplacePreserver):
    name = "spy"
    description = "Records every replacement."
    calls: list = []

    def preserve(self, latents, condition, region):
        out = super().preserve(latents, condition, region)
        SpyPreserver.calls.append((latents.clone(), condition, region, out.clone()))
        return out


class SpyPlugin:
    @hookimpl
    def register_preservers(self, register):
        register(SpyPreserver)


@pytest.fixture
def spy_pipe(tiny_components):
    SpyPreserver.calls = []
    return SOWPipeline(tiny_components, {"preserver": "spy"}, registry=build_registry(load_entry_points=False, extra_plugins=[SpyPlugin()]))


def test_every_replacement_sets_the_region_exactly_and_nothing_else(spy_pipe, face_path, fast_overrides, monkeypatch):
    levels = []
    original = RunContext.preserve

    def recording(self, latents, level):
        levels.append((level, self.condition_trajectory[level]))
        return original(self, latents, level)

    monkeypatch.setattr(RunContext, "preserve", recording)
    result = spy_pipe(face_path, "a portrait", seed=1, **fast_overrides)
    cfg = result.record.config
    expected = [lv for _ in range(cfg.cycles) for lv in (7, 6, 5)] + cfg.t3
    assert [lv for lv, _ in levels] == expected
    assert len(SpyPreserver.calls) == len(expected)
    for (level, stored), (before, condition, region, after) in zip(levels, SpyPreserver.calls):
        assert condition is stored  # the trajectory latent of that very level
        rows, cols = region.slices
        inside = after[:, :, rows, cols]
        keep = region.mask.bool().expand_as(inside)
        assert torch.equal(inside[keep], condition.expand_as(inside)[keep])
        outside = torch.ones_like(after, dtype=torch.bool)
        outside[:, :, rows, cols] = ~keep
        assert torch.equal(after[outside], before[outside])


def test_a_mask_keeps_only_masked_cells(spy_pipe, face_path, fast_overrides):
    mask = Image.new("L", (64, 64), 0)
    mask.paste(255, (0, 0, 32, 64))  # keep the left half of the condition
    spy_pipe(face_path, "a portrait", seed=1, mask=mask, **fast_overrides)
    _, condition, region, after = SpyPreserver.calls[0]
    assert 0 < region.mask.mean().item() < 1
    rows, cols = region.slices
    right_half = after[:, :, rows, cols][..., region.width // 2 + 1 :]
    assert not torch.equal(right_half, condition[..., region.width // 2 + 1 :])


# -- UNet evaluation counts -----------------------------------------------------------------


@pytest.mark.parametrize(
    "overrides",
    [
        {},  # the paper's default schedule: 7 + 5 + 10 * 2 + 5 = 37
        {"num_inference_steps": 20, "t1": 8, "t2": 12, "cycles": 3, "t3": [6]},
        {"t1": 3, "t2": 4, "cycles": 0, "t3": [2, 1], "background_guidance": False},
    ],
)
def test_unet_evaluations_match_the_config(tiny_pipe, face_path, overrides, monkeypatch):
    unet = tiny_pipe.components.unet
    calls = []
    original = unet.forward

    def counting(*args, **kwargs):
        calls.append(args[0].shape[0])
        return original(*args, **kwargs)

    monkeypatch.setattr(unet, "forward", counting)
    result = tiny_pipe(face_path, "a chef", seed=0, canvas={"width": 128, "height": 128}, **overrides)
    config = result.record.config
    assert len(calls) == tiny_pipe.unet_evaluations(config) == result.record.unet_evaluations
    if not overrides:
        assert len(calls) == 37
        # CFG batch of 2 in inversion and the final phase, 4 with background guidance in the cycles
        assert calls.count(4) == 20 and calls.count(2) == 17


# -- seed initialization ------------------------------------------------------------------


def test_seed_canvas_holds_the_condition_inside_box_v_on_gray(tiny_pipe, face_path, fast_overrides):
    plan = Plan(
        canvas={"width": 256, "height": 256},
        box_v=Box(x=64, y=32, w=96, h=96),
        box_r=Box(x=32, y=128, w=160, h=128),
        prompt="a portrait",
    )
    result = tiny_pipe(face_path, "a portrait", plan=plan, seed=0, **fast_overrides)
    seeded = np.asarray(result.seeded_canvas).astype(int)
    fitted = np.asarray(Image.open(face_path).convert("RGB").resize((96, 96), Image.Resampling.LANCZOS)).astype(int)
    assert np.array_equal(seeded[32:128, 64:160], fitted)
    outside = seeded.copy()
    outside[32:128, 64:160] = 128
    assert (outside == 128).all()


def test_box_v_is_snapped_to_latent_cells(tiny_pipe, face_path, fast_overrides):
    plan = Plan(canvas={"width": 256, "height": 256}, box_v=[61, 30, 99, 97], box_r=[30, 130, 150, 120], prompt="x")
    result = tiny_pipe(face_path, "x", plan=plan, **fast_overrides)
    assert result.record.aligned_box_v.as_list() == [64, 32, 96, 96]  # corner to the nearest cell


# -- seeds and stage swaps ----------------------------------------------------------------


def test_same_seed_same_image_other_seed_other_image(tiny_pipe, face_path, fast_overrides):
    a = tiny_pipe(face_path, "a chef", seed=5, **fast_overrides)
    b = tiny_pipe(face_path, "a chef", seed=5, **fast_overrides)
    c = tiny_pipe(face_path, "a chef", seed=6, **fast_overrides)
    assert torch.equal(a.latents, b.latents)
    assert np.array_equal(np.asarray(a.image), np.asarray(b.image))
    assert not torch.equal(a.latents, c.latents)


def test_prompt_changes_the_image(tiny_pipe, face_path, fast_overrides):
    a = tiny_pipe(face_path, "a chef in a kitchen", seed=5, **fast_overrides)
    b = tiny_pipe(face_path, "an astronaut on the moon", seed=5, **fast_overrides)
    assert not torch.equal(a.latents, b.latents)


def test_stages_are_swapped_by_name_through_the_api(tiny_components, face_path, fast_overrides):
    SpyPreserver.calls = []
    registry = build_registry(load_entry_points=False, extra_plugins=[SpyPlugin()])
    pipe = SOWPipeline(tiny_components, {"preserver": "spy"}, registry=registry)
    result = pipe(face_path, "a chef", **fast_overrides)
    assert SpyPreserver.calls and result.record.config.stages.preserver == "spy"


def test_unknown_stage_name_lists_the_available_ones(tiny_components):
    from sow.errors import UnknownStageError

    with pytest.raises(UnknownStageError, match="unknown preserver 'nope'; available: replace"):
        SOWPipeline(tiny_components, {"preserver": "nope"}, registry=build_registry(load_entry_points=False))


def test_empty_prompt_is_refused(tiny_pipe, face_path):
    from sow.errors import InputError

    with pytest.raises(InputError, match="prompt is empty"):
        tiny_pipe(face_path, "   ")


def test_a_planner_object_or_name_can_be_passed_per_call(tiny_pipe, face_path, fast_overrides):
    from sow.planners.fixed import FixedPlanner

    class LeftPlanner(FixedPlanner):
        def plan(self, request):
            plan = super().plan(request)
            return plan.model_copy(update={"box_v": plan.box_v.model_copy(update={"x": 0}), "planner": "left"})

    result = tiny_pipe(face_path, "a chef", planner=LeftPlanner(), **fast_overrides)
    assert result.plan.planner == "left" and result.record.aligned_box_v.x == 0
    # a partial stage override keeps the pipeline's other choices
    config = tiny_pipe.make_config(stages={"planner": "fixed"})
    assert config.stages.preserver == tiny_pipe.stages.preserver


def test_plan_takes_a_path_or_an_image_like_a_run(tiny_pipe, face_path):
    from PIL import Image

    from sow.errors import InputError

    with Image.open(face_path) as opened:
        image = opened.convert("RGB")
    by_path = tiny_pipe.plan(face_path, "a chef", seed=2, planner="heuristic")
    assert by_path.box_v == tiny_pipe.plan(str(face_path), "a chef", seed=2, planner="heuristic").box_v
    assert by_path.box_v == tiny_pipe.plan(image, "a chef", seed=2, planner="heuristic").box_v
    with pytest.raises(InputError, match="condition must be a path or a PIL image"):
        tiny_pipe.plan(42, "a chef")
    with pytest.raises(InputError, match="not found|does not exist|no such"):
        tiny_pipe.plan(face_path.with_name("missing.jpg"), "a chef")
