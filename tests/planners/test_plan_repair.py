"""repair_plan: every change is made safely and written into plan.repairs; the fallback policy."""

from __future__ import annotations

import pytest
from PIL import Image

from sow.errors import InputError, PlannerError
from sow.engine.seeding import apply_crop
from sow.planners.policy import plan_with_policy
from sow.planners.repair import repair_plan
from sow.schemas import Box, GenerationConfig, Plan
from sow.stages import PlanRequest


@pytest.fixture
def config() -> GenerationConfig:
    return GenerationConfig()  # 512x512, side limits 180..256


def raw(box_v, box_r, prompt="a chef", **extra):
    return {"box_v": box_v, "box_r": box_r, "prompt": prompt, "user_prompt": "chef", "planner": "test", **extra}


def test_valid_plan_is_unchanged(config):
    plan = Plan(box_v=Box(x=128, y=0, w=256, h=256), box_r=Box(x=64, y=256, w=384, h=256), prompt="a chef")
    repaired = repair_plan(plan, config)
    assert repaired == plan
    assert repaired.repairs == []


def test_box_v_off_canvas_is_moved_not_cut(config):
    plan = repair_plan(raw([400, -30, 200, 200], [0, 0, 100, 100]), config)
    assert plan.box_v.as_list() == [312, 0, 200, 200]
    assert any("box_v moved inside" in line for line in plan.repairs)


def test_box_v_side_limits_are_enforced_with_aspect_kept(config):
    plan = repair_plan(raw([0, 0, 400, 200], [0, 0, 100, 100]), config)
    assert (plan.box_v.w, plan.box_v.h) == (256, 128)
    assert plan.box_v.center == (200.0, 100.0)
    small = repair_plan(raw([100, 100, 50, 50], [0, 0, 100, 100]), config)
    assert (small.box_v.w, small.box_v.h) == (180, 180)
    assert any("outside 180..256" in line for line in small.repairs)


def test_side_limits_scale_with_the_canvas():
    config = GenerationConfig(canvas={"width": 256, "height": 256})
    assert config.side_limits() == (90, 128)
    plan = repair_plan(raw([0, 0, 256, 256], [0, 0, 10, 10]), config)
    assert (plan.box_v.w, plan.box_v.h) == (128, 128)


def test_box_r_is_clipped_and_never_empty(config):
    clipped = repair_plan(raw([128, 0, 256, 256], [-50, 300, 700, 400]), config)
    assert clipped.box_r.as_list() == [0, 300, 512, 212]
    assert any("box_r" in line and "clipped" in line for line in clipped.repairs)
    gone = repair_plan(raw([128, 0, 256, 256], [600, 600, 50, 50]), config)
    assert gone.box_r.y == gone.box_v.bottom and gone.box_r.bottom == 512
    assert any("empty" in line for line in gone.repairs)


def test_other_canvas_is_rescaled(config):
    plan = repair_plan(raw([64, 0, 128, 128], [32, 128, 192, 128], canvas={"width": 256, "height": 256}), config)
    assert plan.box_v.as_list() == [128, 0, 256, 256]
    assert plan.canvas == config.canvas
    assert any("256x256" in line for line in plan.repairs)


def test_empty_prompt_falls_back_to_the_users(config):
    plan = repair_plan(raw([128, 0, 256, 256], [0, 256, 512, 256], prompt=""), config)
    assert plan.prompt == "chef"
    assert plan.repairs == ["prompt was empty; the user's prompt is used"]


@pytest.mark.parametrize(
    "box, field",
    [([1, 2, 3], "box_v"), (["a", 1, 2, 3], "box_v"), ({"x": 1}, "box_v"), ([float("nan"), 0, 1, 1], "box_v")],
)
def test_unreadable_answer_names_the_field(config, box, field):
    with pytest.raises(PlannerError, match=field):
        repair_plan(raw(box, [0, 0, 10, 10]), config)


def test_apply_crop_crops_the_same_share_of_a_mask_of_another_size():
    image = Image.new("RGB", (200, 100))
    mask = Image.new("L", (20, 10), 0)
    mask.paste(255, (0, 0, 10, 10))  # the left half is kept
    _, cropped = apply_crop(image, mask, Box(x=50, y=0, w=100, h=100))  # the middle half of the image
    assert cropped.size == (10, 10)
    assert cropped.getpixel((2, 5)) == 255 and cropped.getpixel((7, 5)) == 0


def test_apply_crop():
    image = Image.new("RGB", (100, 80), (10, 20, 30))
    cropped, mask = apply_crop(image, None, Box(x=10, y=10, w=50, h=40))
    assert cropped.size == (50, 40) and mask is None
    assert apply_crop(image, None, None)[0] is image
    with pytest.raises(InputError, match="crop"):
        apply_crop(image, None, Box(x=60, y=0, w=50, h=40))


class _Failing:
    name = "broken"
    description = "always fails"

    def plan(self, request):
        raise PlannerError("the model said no")


class _Offline:
    name = "offline"
    description = "a fixed answer"

    def plan(self, request):
        return Plan(box_v=Box(x=0, y=0, w=256, h=256), box_r=Box(x=0, y=256, w=256, h=256), prompt=request.prompt, user_prompt=request.prompt)


def test_policy_fail_raises_with_hint(config):
    request = PlanRequest(condition=Image.new("RGB", (64, 64)), prompt="a chef", config=config)
    with pytest.raises(PlannerError, match="on-planner-error heuristic") as info:
        plan_with_policy(_Failing(), request)
    assert "the model said no" in str(info.value) and "\n" not in str(info.value)


def test_policy_heuristic_falls_back_with_a_note(config):
    request = PlanRequest(condition=Image.new("RGB", (64, 64)), prompt="a chef", config=config)
    plan = plan_with_policy(_Failing(), request, on_error="heuristic", fallback=_Offline())
    assert plan.box_v.as_list() == [0, 0, 256, 256]
    assert "broken" in plan.notes[0] and "the model said no" in plan.notes[0]


def test_policy_rejects_unknown_choice(config):
    request = PlanRequest(condition=Image.new("RGB", (64, 64)), prompt="a chef", config=config)
    with pytest.raises(InputError, match="on-planner-error"):
        plan_with_policy(_Offline(), request, on_error="retry")


def test_a_crashing_planner_is_one_line_and_can_fall_back(config):
    class Buggy(_Offline):
        name = "buggy"

        def plan(self, request):
            return {}["box_v"]

    request = PlanRequest(condition=Image.new("RGB", (64, 64)), prompt="a chef", config=config)
    with pytest.raises(PlannerError, match=r"planner 'buggy' failed: KeyError: 'box_v' \(a bug in the planner\)") as info:
        plan_with_policy(Buggy(), request)
    assert isinstance(info.value.__cause__, KeyError)
    plan = plan_with_policy(Buggy(), request, on_error="heuristic", fallback=_Offline())
    assert "a bug in the planner" in plan.notes[0]


from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

_coord = st.integers(min_value=-2000, max_value=2000)
_size = st.integers(min_value=-50, max_value=2000)


@settings(max_examples=150, deadline=None)
@given(
    box_v=st.tuples(_coord, _coord, _size, _size),
    box_r=st.tuples(_coord, _coord, _size, _size),
    side=st.sampled_from([256, 512, 768]),
)
def test_any_answer_becomes_a_valid_plan_and_every_change_is_recorded(box_v, box_r, side):
    config = GenerationConfig(canvas={"width": side, "height": side})
    plan = repair_plan(raw(list(box_v), list(box_r)), config)
    lo, hi = config.side_limits()
    assert plan.box_v.fits(config.canvas) and plan.box_r.fits(config.canvas)
    assert lo - 1 <= max(plan.box_v.w, plan.box_v.h) <= hi
    changed = (plan.box_v.as_list() != list(box_v)) or (plan.box_r.as_list() != list(box_r))
    assert bool(plan.repairs) == changed
