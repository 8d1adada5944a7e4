"""Helpers of the defect tests (issue 13): a CLI runner, a registry of test plugins, a valid plan."""

from __future__ import annotations

import threading
import types
from pathlib import Path

import pytest

from sow.cli.commands import main
from sow.hookspecs import hookimpl

REPO = Path(__file__).resolve().parents[2]


TINIEST = {"canvas": {"width": 64, "height": 64}, "cycles": 1, "num_inference_steps": 4, "t1": 2, "t2": 3, "t3": [1]}


SECRET = 'sk-"quoted\\back-1234567890'
"""A key with the two characters JSON escapes."""


def write_file(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


def run_cli(capsys, argv: list[str]) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as info:
        main(argv)
    captured = capsys.readouterr()
    return info.value.code, captured.out, captured.err


def use_registry(monkeypatch, *plugins) -> None:
    """Make the process-wide registry the built-ins plus ``plugins`` (no entry points)."""
    import sow.plugins as plugins_module

    registry = plugins_module.build_registry(load_entry_points=False, extra_plugins=plugins)
    monkeypatch.setattr(plugins_module, "_registry", registry)
    monkeypatch.setattr(plugins_module, "get_registry", lambda: registry)
    import sow.pipeline
    import sow.planners.policy  # noqa: F401

    monkeypatch.setattr(sow.pipeline, "get_registry", lambda: registry)


def planner_plugin(name: str, plan, cacheable: bool = False):
    """A plugin module registering a planner whose ``plan(request)`` is ``plan``."""

    class Planner:
        def __init__(self) -> None:
            self.name = name
            self.cacheable = cacheable
            self.calls = 0

        def plan(self, request):
            self.calls += 1
            return plan(request)

    Planner.name = name
    module = types.ModuleType(f"plugin_{name}")

    @hookimpl
    def register_planners(register):
        register(Planner, name=name, description="test planner")

    module.register_planners = register_planners
    return module


def good_plan(request, **changes):
    from sow.schemas import Box, Plan

    canvas = request.config.canvas
    side = canvas.width // 2
    data = dict(canvas=canvas, box_v=Box(x=0, y=0, w=side, h=side), box_r=Box(x=0, y=0, w=canvas.width, h=canvas.height),
                prompt=request.prompt, user_prompt=request.prompt, planner="test")
    data.update(changes)
    return Plan(**data)


def within(seconds: float, function, *args, **kwargs):
    """``function(*args, **kwargs)`` in a thread; fails the test if it does not return within ``seconds`` (a FIFO hang)."""
    box: dict = {}

    def target():
        try:
            box["value"] = function(*args, **kwargs)
        except BaseException as exc:  # noqa: BLE001
            box["error"] = exc

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    thread.join(seconds)
    assert not thread.is_alive(), f"{function.__name__} hung"
    if "error" in box:
        raise box["error"]
    return box.get("value")
