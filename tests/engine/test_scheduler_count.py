"""The scheduler kind can be swapped: the run's UNet count comes from the scheduler, not the config."""

from __future__ import annotations

import pytest

from sow.engine.scheduling import CyclicOneWayScheduler
from sow.errors import SowError
from sow.hookspecs import hookimpl
from sow.pipeline import SOWPipeline
from sow.plugins import build_registry
from sow.schemas import GenerationConfig
from sow.stages import RunInputs, Scheduler


class StraightDown:
    """A third-party-style scheduler: no cycles, one plain denoise from t1 to the image."""

    name = "straight"
    description = "Denoise from t1 to 0 once; no cycles."

    def run(self, ctx):
        x = ctx.canvas_latents
        for level in range(ctx.config.t1, 0, -1):
            x = ctx.denoiser.denoise(x, level, "final")
        return x

    def unet_evaluations(self, config, inputs):
        return config.t1


class Miscounting(StraightDown):
    name = "miscounting"

    def unet_evaluations(self, config, inputs):
        return config.t1 + 1


class SchedulerPlugin:
    @hookimpl
    def register_schedulers(self, register):
        register(StraightDown)
        register(Miscounting)


@pytest.fixture(scope="module")
def registry():
    return build_registry(load_entry_points=False, extra_plugins=[SchedulerPlugin()])


def test_cyclic_count_by_hand():
    # the paper's default: 10 cycles of t2 - t1 = 2 steps, then t1 = 5 final steps
    assert CyclicOneWayScheduler().unet_evaluations(GenerationConfig(), RunInputs()) == 25
    odd = GenerationConfig(num_inference_steps=20, t1=8, t2=12, cycles=3, t3=[6])
    assert CyclicOneWayScheduler().unet_evaluations(odd, RunInputs(conditions=3)) == 3 * 4 + 8
    assert isinstance(CyclicOneWayScheduler(), Scheduler) and isinstance(StraightDown(), Scheduler)


def test_pipeline_count_adds_the_inversions(tiny_components, registry):
    pipe = SOWPipeline(tiny_components, registry=registry)
    config = pipe.make_config(None, "normal")
    assert pipe.unet_evaluations(config) == 7 + 5 + 25 == 37
    assert pipe.unet_evaluations(config, RunInputs(conditions=2)) == 2 * 7 + 5 + 25
    straight = pipe.make_config(None, "normal", stages={"scheduler": "straight"})
    assert pipe.unet_evaluations(straight) == 7 + 5 + 5


def test_a_swapped_scheduler_sets_the_totals_everyone_sees(tiny_components, registry, face_path):
    pipe = SOWPipeline(tiny_components, stages={"scheduler": "straight"}, registry=registry)
    seen = []
    result = pipe(face_path, "a chef", seed=0, canvas={"width": 128, "height": 128}, callback=seen.append)
    assert result.record.unet_evaluations == len(seen) == 7 + 5 + 5
    assert {info["total"] for info in seen} == {17}  # the progress bar's and the sync watch's total
    assert seen[-1]["evaluations"] == 17
    assert [info["phase"] for info in seen[12:]] == ["final"] * 5


def test_a_scheduler_that_miscounts_is_named(tiny_components, registry, face_path):
    pipe = SOWPipeline(tiny_components, stages={"scheduler": "miscounting"}, registry=registry)
    with pytest.raises(SowError, match="scheduler 'miscounting' counted 18 UNet evaluations .* but 17 were made"):
        pipe(face_path, "a chef", seed=0, canvas={"width": 128, "height": 128})
