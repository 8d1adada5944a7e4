"""Property tests (hypothesis) on plan repair: whatever a planner answers, a valid plan or one PlannerError line."""

from __future__ import annotations

import math

from hypothesis import assume, given
from hypothesis import strategies as st

from sow.errors import PlannerError
from sow.planners.repair import repair_plan
from sow.schemas import Canvas, GenerationConfig


canvases = st.builds(
    Canvas,
    width=st.integers(8, 160).map(lambda v: v * 8),  # 64..1280
    height=st.integers(8, 160).map(lambda v: v * 8),
)
numbers = st.floats(min_value=-3000, max_value=3000, allow_nan=False, allow_infinity=False) | st.integers(-3000, 3000)
raw_boxes = st.tuples(numbers, numbers, numbers, numbers).map(list)


def _answer(box_v, box_r, prompt="a chef in a kitchen", canvas=None):
    data = {"box_v": box_v, "box_r": box_r, "prompt": prompt, "user_prompt": "a chef"}
    if canvas is not None:
        data["canvas"] = canvas
    return data


@given(canvases, raw_boxes, raw_boxes)
def test_any_numbers_on_any_canvas_give_a_valid_plan(canvas, box_v, box_r):
    config = GenerationConfig(canvas=canvas)
    plan = repair_plan(_answer(box_v, box_r), config)
    lo, hi = config.side_limits()
    assert plan.canvas == canvas
    assert plan.box_v.fits(canvas) and plan.box_r.fits(canvas)
    longer = max(plan.box_v.w, plan.box_v.h)
    # within the side limits, unless the canvas itself is smaller than the lower limit
    assert longer <= max(hi, 1) + 1
    if min(canvas.width, canvas.height) >= lo and max(box_v[2], box_v[3]) > 0:
        assert longer >= lo - 1
    assert plan.box_v.aligned(8, canvas).fits(canvas)  # the pipeline's latent snapping keeps it on the canvas


@given(canvases, raw_boxes, raw_boxes)
def test_repair_is_idempotent(canvas, box_v, box_r):
    config = GenerationConfig(canvas=canvas)
    once = repair_plan(_answer(box_v, box_r), config)
    twice = repair_plan(once, config)
    assert (twice.box_v, twice.box_r, twice.prompt) == (once.box_v, once.box_r, once.prompt)
    assert twice.repairs == once.repairs  # nothing new to repair


@given(canvases, st.data())
def test_a_valid_answer_passes_unchanged(canvas, data):
    config = GenerationConfig(canvas=canvas)
    lo, hi = config.side_limits()
    assume(hi <= min(canvas.width, canvas.height) and lo <= hi)
    side = data.draw(st.integers(lo, hi))
    other = data.draw(st.integers(max(8, side // 3), side))
    w, h = data.draw(st.sampled_from([(side, other), (other, side)]))
    x = data.draw(st.integers(0, canvas.width - w))
    y = data.draw(st.integers(0, canvas.height - h))
    rx = data.draw(st.integers(0, canvas.width - 1))
    ry = data.draw(st.integers(0, canvas.height - 1))
    rw = data.draw(st.integers(1, canvas.width - rx))
    rh = data.draw(st.integers(1, canvas.height - ry))
    plan = repair_plan(_answer([x, y, w, h], [rx, ry, rw, rh]), config)
    assert plan.repairs == []
    assert plan.box_v.as_list() == [x, y, w, h] and plan.box_r.as_list() == [rx, ry, rw, rh]


positive = st.floats(min_value=8, max_value=3000, allow_nan=False) | st.integers(8, 3000)


@given(canvases, numbers, numbers, positive, positive, raw_boxes)
def test_box_v_keeps_its_aspect_when_scaled(canvas, x, y, w, h, box_r):
    config = GenerationConfig(canvas=canvas)
    plan = repair_plan(_answer([x, y, w, h], box_r), config)
    short = min(plan.box_v.w, plan.box_v.h)
    if short <= 8:  # the 8 px minimum side may widen a sliver: aspect not kept there
        return
    # rounding each side to whole pixels moves the ratio by at most about 1/short (relative)
    assert math.isclose(w / h, plan.box_v.w / plan.box_v.h, rel_tol=1.5 / short + 1e-9)


@given(canvases, canvases, st.data())
def test_plan_for_another_canvas_is_scaled(source, target, data):
    assume(source != target)
    x = data.draw(st.integers(0, source.width - 8))
    y = data.draw(st.integers(0, source.height - 8))
    box = [x, y, data.draw(st.integers(8, source.width - x)), data.draw(st.integers(8, source.height - y))]
    plan = repair_plan(_answer(box, box, canvas={"width": source.width, "height": source.height}), GenerationConfig(canvas=target))
    assert plan.canvas == target and plan.box_v.fits(target) and plan.box_r.fits(target)
    assert any("boxes scaled" in r for r in plan.repairs)


junk = st.one_of(
    st.none(),
    st.text(max_size=8),
    st.floats(allow_nan=True, allow_infinity=True),
    st.lists(st.one_of(st.floats(allow_nan=True), st.text(max_size=3), st.none()), max_size=6),
    st.dictionaries(st.sampled_from(["x", "y", "w", "h", "z"]), st.one_of(st.integers(-9, 9), st.text(max_size=2)), max_size=5),
)


@given(junk, junk, st.one_of(st.none(), st.text(max_size=20)))
def test_garbage_answers_are_one_planner_error_line(box_v, box_r, prompt):
    try:
        plan = repair_plan(_answer(box_v, box_r, prompt=prompt), GenerationConfig())
    except PlannerError as exc:
        assert "\n" not in str(exc) and str(exc).startswith("planner answer")
    else:
        assert plan.box_v.fits(plan.canvas) and plan.box_r.fits(plan.canvas) and plan.prompt.strip()
