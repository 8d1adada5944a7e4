"""The example plugin does what its docstring says (its install through pip is tests/test_plugins.py's)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

from PIL import Image

from sow.plugins import build_registry
from sow.schemas import GenerationConfig
from sow.stages import Planner, PlanRequest

MODULE = Path(__file__).resolve().parents[1] / "sow_corner_planner.py"


def _plugin():
    spec = importlib.util.spec_from_file_location("sow_corner_planner", MODULE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_registers_corner_and_takes_over_fixed():
    plugin = _plugin()
    registry = build_registry(load_entry_points=False, extra_plugins=[plugin])
    assert registry.get("planner", "corner").factory is plugin.CornerPlanner
    assert registry.get("planner", "fixed").factory is plugin.CornerPlanner  # the built-in name, replaced
    assert isinstance(plugin.CornerPlanner(), Planner)


def test_plans_the_bottom_left_corner_at_the_smallest_side():
    plan = _plugin().CornerPlanner().plan(
        PlanRequest(condition=Image.new("RGB", (300, 300)), prompt="a chef", config=GenerationConfig())
    )
    # 512 canvas: smallest side 180; a square condition -> 180 x 180 at the left edge, its bottom at 512
    assert plan.box_v.as_list() == [0, 512 - 180, 180, 180]
    assert plan.planner == "corner" and plan.prompt == "a chef"


def test_several_conditions_each_get_their_own_box_in_the_plan_format():
    images = [Image.new("RGB", (300, 300)), Image.new("RGB", (200, 400))]
    plan = _plugin().CornerPlanner().plan(
        PlanRequest(condition=images[0], conditions=images, prompt="two chefs", config=GenerationConfig())
    )
    # several conditions may shrink to half the smallest side: 90 px on a 512 canvas
    assert [c.image for c in plan.conditions] == [0, 1] and len(plan.conditions) == 2
    assert plan.conditions[0].box_v.as_list() == [0, 512 - 90, 90, 90]
    assert plan.conditions[1].box_v.as_list() == [90 + 22, 512 - 90, 45, 90]  # 1:2 aspect, centred in its slot
    assert plan.overlaps() == []
