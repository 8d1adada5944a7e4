"""The defect tests of this room (issue 13's classes by number; issue 12's one journal):

- 8. redaction before serialisation
"""

from __future__ import annotations

import json

import pytest

from tests.support.defects import SECRET


@pytest.fixture(autouse=True)
def _only_builtin_plugins(builtin_plugins_only):
    """The shared venv may hold third-party plugins: load none of them here."""


# -- 8. redaction before serialisation ---------------------------------------------------------------


def test_8_a_key_with_quotes_and_backslashes_never_reaches_a_json_file(tmp_path, monkeypatch):
    from sow.batch.runner import Manifest
    from sow.io.outputs import save_json_atomic
    from sow.planners.cache import PlanCache
    from sow.schemas import Box, Plan

    monkeypatch.setenv("GEMINI_API_KEY", SECRET)
    escaped = json.dumps(SECRET)[1:-1]
    assert escaped != SECRET  # the escaped form is what a redaction after dumps would miss
    save_json_atomic({"error": f"bad key {SECRET}"}, tmp_path / "a.json")
    plan = Plan(box_v=Box(x=0, y=0, w=64, h=64), box_r=Box(x=0, y=0, w=64, h=64), prompt="p", notes=[f"echo {SECRET}"])
    cache_file = PlanCache(tmp_path / "cache").put("k", plan)
    manifest = Manifest(tmp_path)
    with manifest.open(fresh=True):
        manifest.append(event="failed", id="x", error=f"key {SECRET}")
    for path in (tmp_path / "a.json", cache_file, manifest.path):
        text = path.read_text()
        assert escaped not in text and SECRET not in text and "***" in text, path
