"""Plugin discovery: built-ins, entry points of real installed distributions, failures, docs."""

from __future__ import annotations

import inspect
import subprocess
import sys
from pathlib import Path

import pytest

from sow import hookspecs
from sow.hookspecs import hookimpl
from sow.plugins import build_registry, reset_registry
from sow.stages import STAGE_KINDS

ROOT = Path(__file__).resolve().parents[1]
PLUGIN_DISTS = {
    "sow-corner-planner": ROOT / "examples" / "sow-corner-planner",  # the example plugin of docs/plugins.md
    "sow-broken": Path(__file__).parent / "plugin_dist" / "sow-broken",  # a plugin that fails to load
}


@pytest.fixture(scope="session")
def installed_plugins(tmp_path_factory) -> Path:
    """The two test distributions, really installed (pip, entry points and all) into a folder."""
    target = tmp_path_factory.mktemp("site")
    for dist in ("sow-corner-planner", "sow-broken"):
        subprocess.run(
            [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation",
             "--no-index", "--target", str(target), str(PLUGIN_DISTS[dist])],
            check=True,
        )
    return target


@pytest.fixture
def with_plugins(installed_plugins, monkeypatch):
    monkeypatch.syspath_prepend(str(installed_plugins))
    monkeypatch.delenv("SOW_DISABLE_PLUGINS", raising=False)
    # only the two test distributions: other installed plugins (sow-gemini, ...) stay out
    monkeypatch.setenv("SOW_LOAD_PLUGINS", "corner,broken")
    reset_registry()
    yield installed_plugins
    reset_registry()


def test_builtins_register_one_of_each_kind():
    registry = build_registry(load_entry_points=False)
    assert registry.names("planner")[:1] and "ddim" in registry.names("inverter")
    assert "cyclic" in registry.names("scheduler") and "replace" in registry.names("preserver")
    assert "none" in registry.names("modulator")
    assert all(e.distribution == "sow" for e in registry.all_entries())
    assert not registry.failures


def test_an_entry_point_plugin_replaces_a_builtin_and_a_broken_one_is_reported(with_plugins):
    registry = build_registry()
    fixed = registry.get("planner", "fixed")
    assert fixed.distribution == "sow-corner-planner"
    assert registry.get("planner", "corner").distribution == "sow-corner-planner"
    assert [f.name for f in registry.failures] == ["broken"]
    assert registry.failures[0].distribution == "sow-broken"
    assert "ModuleNotFoundError" in registry.failures[0].error
    assert registry.get("inverter", "ddim").distribution == "sow"  # the rest still load


def test_plugins_can_be_disabled_or_limited(with_plugins, monkeypatch):
    monkeypatch.setenv("SOW_DISABLE_PLUGINS", "corner,broken")
    registry = build_registry()
    assert registry.get("planner", "fixed").distribution == "sow"
    assert "corner" not in registry.names("planner") and not registry.failures
    monkeypatch.delenv("SOW_DISABLE_PLUGINS")
    monkeypatch.setenv("SOW_LOAD_PLUGINS", "corner")
    registry = build_registry()
    assert "corner" in registry.names("planner") and not registry.failures


def test_the_replaced_stage_runs_in_a_generation(with_plugins, tiny_components, face_path, fast_overrides):
    from sow.pipeline import SOWPipeline

    pipe = SOWPipeline(tiny_components, {"planner": "fixed"}, registry=build_registry())
    result = pipe(face_path, "a chef", **fast_overrides)
    assert result.plan.planner == "corner"
    assert result.plan.box_v.bottom == 256 and result.plan.box_v.center[0] < 128  # bottom-left


def test_cli_lists_plugins_with_their_distribution_and_failures(with_plugins, capsys):
    from sow.cli.commands import main

    with pytest.raises(SystemExit) as exit_info:
        main(["plugins"])
    assert exit_info.value.code == 0
    captured = capsys.readouterr()
    assert "sow-corner-planner" in captured.out and "corner" in captured.out
    assert "plugin broken (sow-broken) failed to load" in captured.err.replace("\n", " ")


def test_cli_swaps_a_stage_by_name(with_plugins, face_path, tmp_path, capsys):
    from sow.cli.commands import main

    config = tmp_path / "fast.json"
    config.write_text('{"canvas": {"width": 128, "height": 128}, "cycles": 1}')
    with pytest.raises(SystemExit) as exit_info:
        main(["generate", str(face_path), "a chef", "--planner", "corner", "--config", str(config),
              "--out", str(tmp_path), "--name", "c", "-q"])
    assert exit_info.value.code == 0
    import json

    record = json.loads((tmp_path / "c.json").read_text())
    assert record["plan"]["planner"] == "corner" and record["config"]["stages"]["planner"] == "corner"


def test_two_third_party_plugins_cannot_claim_one_name():
    class A:
        __name__ = "plugin-a"

        @hookimpl
        def register_planners(self, register):
            register(type("P", (), {"name": "same", "description": "a", "plan": None}))

    class B(A):
        __name__ = "plugin-b"

    registry = build_registry(load_entry_points=False, extra_plugins=[A(), B()])  # reported, not fatal (issue 13)
    assert [f.error for f in registry.failures if "registered by both" in f.error]
    assert registry.get("planner", "same").description == "a" and "heuristic" in registry.names("planner")


def test_a_misspelled_hook_fails_loudly():
    class Typo:
        @hookimpl
        def register_planner(self, register):  # missing the final "s"
            pass

    registry = build_registry(load_entry_points=False, extra_plugins=[Typo()])  # loudly, but only for itself
    assert any("register_planner" in f.error and "does not define" in f.error for f in registry.failures)
    assert "heuristic" in registry.names("planner")


def test_every_stage_kind_has_a_documented_hook():
    for kind in STAGE_KINDS:
        hook = getattr(hookspecs, f"register_{kind}s")
        assert inspect.getdoc(hook), f"register_{kind}s has no docstring"
    guide = (ROOT / "docs" / "plugins.md").read_text()
    for kind in STAGE_KINDS:
        assert f"register_{kind}s(register)" in guide, f"docs/plugins.md does not document register_{kind}s"
