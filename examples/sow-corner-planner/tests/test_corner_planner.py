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
