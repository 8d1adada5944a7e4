"""The defect tests of this room (issue 13's classes by number; issue 12's one journal):

- 6. python -m sow never loads plugins from the working directory
- 9. sys.exit in plugin code is that plugin's failure
- 13. one broken plugin, reported by name; the rest works
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import types

import pytest

from sow.errors import PluginError
from sow.hookspecs import hookimpl

from tests.support.defects import TINIEST, good_plan, planner_plugin, run_cli, use_registry, write_file


@pytest.fixture(autouse=True)
def _only_builtin_plugins(builtin_plugins_only):
    """The shared venv may hold third-party plugins: load none of them here."""


# -- 6. python -m sow never loads plugins from the working directory --------------------------------


def test_6_python_dash_m_ignores_a_dist_info_in_the_working_directory(tmp_path):
    marker = tmp_path / "ran.txt"
    dist = tmp_path / "evil_plugin-1.0.dist-info"
    dist.mkdir()
    write_file(dist / "METADATA", "Metadata-Version: 2.1\nName: evil-plugin\nVersion: 1.0\n")
    write_file(dist / "entry_points.txt", "[sow]\nevil = evil_plugin\n")
    write_file(tmp_path / "evil_plugin.py", f"open({str(marker)!r}, 'w').write('ran')\n")
    env = {**os.environ, "SOW_LOAD_PLUGINS": "evil"}
    proc = subprocess.run([sys.executable, "-m", "sow", "plugins"], cwd=tmp_path, capture_output=True, text=True, timeout=120, env=env)
    assert proc.returncode == 0, proc.stderr
    assert not marker.exists()
    assert "evil" not in proc.stdout + proc.stderr


def test_6_plugin_search_path_leaves_out_the_working_directory(tmp_path, monkeypatch):
    from sow.plugins import plugin_search_path

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", ["", ".", str(tmp_path), "/usr/lib/python3/dist-packages"])
    assert plugin_search_path() == ["/usr/lib/python3/dist-packages"]


# -- 9. sys.exit in plugin code is that plugin's failure -------------------------------------------------


def _exiting(request):
    sys.exit(0)


def test_9_sys_exit_in_a_planner_fails_generate_with_the_plugin_named(tmp_path, face_path, capsys, monkeypatch):
    use_registry(monkeypatch, planner_plugin("quitter", _exiting))
    config = write_file(tmp_path / "c.json", json.dumps(TINIEST))
    code, _, err = run_cli(capsys, ["generate", str(face_path), "a chef", "--planner", "quitter", "-o", str(tmp_path / "o"), "--config", str(config), "-q"])
    assert code == 1
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "quitter" in errors[0] and "SystemExit" in errors[0]
    assert not (tmp_path / "o").exists() or not list((tmp_path / "o").glob("*.png"))


def test_9_sys_exit_in_a_batch_makes_failed_items(tmp_path, face_path, tiny_pipe, monkeypatch):
    from sow.batch.runner import read_batch_file, run_batch

    use_registry(monkeypatch, planner_plugin("quitter", _exiting))
    monkeypatch.setattr(tiny_pipe, "registry", sys.modules["sow.plugins"].get_registry(), raising=False)
    jobs = write_file(tmp_path / "jobs.jsonl", "\n".join(json.dumps({"condition": str(face_path), "prompt": f"p{i}"}) for i in range(2)) + "\n")
    summary = run_batch(tiny_pipe, read_batch_file(jobs), tmp_path / "out", overrides={**TINIEST, "stages": {"planner": "quitter"}})
    assert (summary.done, summary.failed) == (0, 2)
    assert all("quitter" in f["error"] or "SystemExit" in f["error"] for f in summary.failures)


def test_9_sys_exit_in_any_stage_of_a_run_is_a_plugin_error(tiny_pipe, face_path, monkeypatch):
    import sow.engine.inversion

    def exiting_invert(self, *args, **kwargs):
        sys.exit("bye")

    monkeypatch.setattr(sow.engine.inversion.DDIMInverter, "invert", exiting_invert)
    with pytest.raises(PluginError, match=r"plugin code in tests?.*test_defects stopped the run \(it called sys.exit\('bye'\)\)|stopped the run \(it called sys.exit\('bye'\)\)"):
        tiny_pipe(face_path, "a chef", seed=0, **TINIEST)


def test_9_sys_exit_at_plugin_import_is_a_load_failure(monkeypatch):
    import sow.plugins as plugins_module

    class ExitingEntryPoint:
        name, value, group, dist = "exiter", "exiter:plugin", "sow", None

        def load(self):
            raise SystemExit(3)

    monkeypatch.delenv("SOW_LOAD_PLUGINS", raising=False)
    monkeypatch.setattr(plugins_module, "plugin_entry_points", lambda: [ExitingEntryPoint()])
    registry = plugins_module.build_registry()
    assert [(f.name, f.error) for f in registry.failures] == [("exiter", "it called sys.exit(3)")]
    assert "heuristic" in registry.names("planner")


# -- 13. one broken plugin, reported by name; the rest works ----------------------------------------------


def _unknown_hook_plugin():
    module = types.ModuleType("typo_plugin")

    @hookimpl
    def register_planer(register):  # the typo: not a sow hook
        pass

    module.register_planer = register_planer
    return module


def _nameless_plugin():
    module = types.ModuleType("nameless_plugin")

    @hookimpl
    def register_planners(register):
        register(lambda: None)  # no name, and a lambda has none either
        register(type("Fine", (), {"name": "fine", "plan": lambda self, r: None}))

    module.register_planners = register_planners
    return module


def test_13_broken_plugins_are_reported_by_name_and_the_rest_works():
    from sow.plugins import build_registry

    first = planner_plugin("twin", good_plan)
    second = planner_plugin("twin", good_plan)
    second.__name__ = "plugin_twin_again"
    registry = build_registry(load_entry_points=False, extra_plugins=[_unknown_hook_plugin(), _nameless_plugin(), first, second])
    failures = {f.name: f.error for f in registry.failures}
    assert "register_planer" in failures["typo_plugin"]
    assert "without a name" in failures["nameless_plugin"]
    assert "registered by both plugin_twin and plugin_twin_again" in failures["plugin_twin_again"]
    assert registry.get("planner", "twin").distribution == "plugin_twin"
    assert {"heuristic", "fixed", "fine", "twin"} <= set(registry.names("planner"))


def test_13_sow_plugins_lists_the_rest_and_names_the_broken_one(capsys, monkeypatch):
    import sow.plugins as plugins_module

    class EntryPoint:
        def __init__(self, name, plugin):
            self.name, self.value, self.group, self.dist, self._plugin = name, name, "sow", None, plugin

        def load(self):
            return self._plugin

    monkeypatch.delenv("SOW_LOAD_PLUGINS", raising=False)
    monkeypatch.setattr(plugins_module, "plugin_entry_points", lambda: [EntryPoint("typo", _unknown_hook_plugin())])
    plugins_module.reset_registry()
    code, out, err = run_cli(capsys, ["plugins"])
    assert code == 0
    assert "heuristic" in out and "dam" in out
    assert "plugin typo (typo) failed to load: implements hook 'register_planer'" in " ".join(err.split())
