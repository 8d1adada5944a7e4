"""`make_plan` (what `sow plan` runs) passes every argument through, and the cache keys on the options."""

from __future__ import annotations

import pytest

from sow.errors import InputError
from sow.hookspecs import hookimpl
from sow.planners.cache import PlanCache
from sow.planners.fixed import body_box
from sow.planners.policy import make_plan
from sow.plugins import build_registry
from sow.schemas import Box, GenerationConfig, Plan

SEEN: list[dict] = []


class Recorder:
    """Plans a fixed box and records what it was created with and asked."""

    name = "recorder"
    description = "Records its options and requests."

    def __init__(self, **options):
        self.options = options

    def plan(self, request):
        SEEN.append({"options": self.options, "seed": request.seed, "canvas": request.config.canvas, "prompt": request.prompt})
        canvas = request.config.canvas
        box_v = Box(x=0, y=0, w=canvas.width // 2, h=canvas.height // 2)
        return Plan(canvas=canvas, box_v=box_v, box_r=body_box(box_v, canvas), prompt=request.prompt, planner="recorder")


class RecorderPlugin:
    @hookimpl
    def register_planners(self, register):
        register(Recorder)


@pytest.fixture
def registry():
    SEEN.clear()
    return build_registry(load_entry_points=False, extra_plugins=[RecorderPlugin()])


def test_arguments_reach_the_planner(registry, face_path):
    config = GenerationConfig(canvas={"width": 256, "height": 384}, min_side=100, max_side=400)
    plan, picture = make_plan(face_path, "a chef", planner="recorder", options={"tag": "x"}, config=config, registry=registry)
    assert SEEN == [{"options": {"tag": "x"}, "seed": 0, "canvas": config.canvas, "prompt": "a chef"}]
    assert plan.planner == "recorder" and plan.canvas == config.canvas
    # the plan picture: the canvas upscaled to a readable size (x2 here), with a legend below it
    assert picture.width == 2 * 256 and picture.height > 2 * 384
    make_plan(face_path, "a chef", planner="recorder", registry=registry, seed=9)
    assert SEEN[-1]["seed"] == 9 and SEEN[-1]["options"] == {} and SEEN[-1]["canvas"] == GenerationConfig().canvas


@pytest.mark.parametrize("prompt", ["", "   "])
def test_an_empty_prompt_is_refused_before_planning(registry, face_path, prompt):
    with pytest.raises(InputError, match="prompt is empty"):
        make_plan(face_path, prompt, planner="recorder", registry=registry)
    assert SEEN == []


def test_the_cache_keys_on_the_planners_options(registry, face_path, tmp_path):
    cache = PlanCache(tmp_path)
    first, _ = make_plan(face_path, "a chef", planner="recorder", options={"tag": "x"}, cache=cache, registry=registry)
    again, _ = make_plan(face_path, "a chef", planner="recorder", options={"tag": "x"}, cache=cache, registry=registry)
    other, _ = make_plan(face_path, "a chef", planner="recorder", options={"tag": "y"}, cache=cache, registry=registry)
    assert len(SEEN) == 2  # the second call was a cache hit, the third (other options) was not
    assert any("plan cache" in n for n in again.notes) and not any("plan cache" in n for n in other.notes)
