"""The defect tests of this room (issue 13's classes by number; issue 12's one journal):

- 11. the plan cache
"""

from __future__ import annotations

import json
import os

import pytest
from PIL import Image

from tests.support.defects import good_plan, planner_plugin, within


@pytest.fixture(autouse=True)
def _only_builtin_plugins(builtin_plugins_only):
    """The shared venv may hold third-party plugins: load none of them here."""


# -- 11. the plan cache --------------------------------------------------------------------------


def _cache_case(tmp_path, planner_plan):
    from sow.planners.cache import PlanCache
    from sow.schemas import GenerationConfig
    from sow.stages import PlanRequest

    plugin = planner_plugin("paid", planner_plan, cacheable=True)
    planner = None
    collected = []
    plugin.register_planners(lambda factory, name, description: collected.append(factory))
    planner = collected[0]()
    request = PlanRequest(condition=Image.new("RGB", (96, 96), "gray"), prompt="a chef",
                          config=GenerationConfig.from_preset("normal", canvas={"width": 256, "height": 256}), seed=0)
    cache = PlanCache(tmp_path / "cache")
    return planner, request, cache


@pytest.mark.parametrize("stale", ["canvas", "crop", "fifo", "garbage"])
def test_11_a_bad_cache_entry_is_a_recorded_miss(tmp_path, stale):
    from sow.planners.policy import plan_with_policy
    from sow.schemas import Box, Canvas

    planner, request, cache = _cache_case(tmp_path, good_plan)
    key = cache.key(request, planner, {})
    cache.folder.mkdir(parents=True)
    entry = good_plan(request)
    if stale == "canvas":  # a plan for another canvas under this key: a tensor crash if it were used
        entry = entry.model_copy(update={"canvas": Canvas(width=512, height=512)})
        cache.path(key).write_text(entry.model_dump_json())
    elif stale == "crop":
        cache.path(key).write_text(entry.model_copy(update={"crop": Box(x=50, y=50, w=90, h=90)}).model_dump_json())
    elif stale == "fifo":
        if not hasattr(os, "mkfifo"):
            pytest.skip("POSIX FIFOs")
        os.mkfifo(cache.path(key))
    else:
        cache.path(key).write_text("{not json")
    plan = within(10, plan_with_policy, planner, request, cache=cache)
    assert planner.calls == 1
    assert plan.canvas == request.config.canvas and plan.crop is None
    assert any(f"plan cache entry {key[:12]} not used" in note for note in plan.notes)
    if stale != "fifo":  # the entry was replaced by a good one: the next run hits
        again = plan_with_policy(planner, request, cache=cache)
        assert planner.calls == 1 and "read from the plan cache" in again.notes[-1]


def test_11_a_failed_cache_write_is_a_warning(tmp_path):
    from sow.planners.cache import PlanCache
    from sow.planners.policy import plan_with_policy

    planner, request, _ = _cache_case(tmp_path, good_plan)
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("a file where the cache folder should be")
    plan = plan_with_policy(planner, request, cache=PlanCache(blocker))
    assert planner.calls == 1
    assert plan.notes[-1].startswith("warning: plan cache not written")
