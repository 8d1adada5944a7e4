"""`sow plan`, `generate --plan`, plan files, the plan cache and the fallback policy through the CLI."""

from __future__ import annotations

import json

import pytest
from PIL import Image

from sow.cli.commands import main
from sow.errors import PlannerError
from sow.planners.cache import PlanCache, default_cache_dir
from sow.planners.policy import plan_with_policy
from sow.schemas import Box, GenerationConfig, Plan
from sow.stages import PlanRequest

FAST = {"canvas": {"width": 256, "height": 256}, "cycles": 2}


def run(argv, capsys):
    with pytest.raises(SystemExit) as info:
        main(argv)
    captured = capsys.readouterr()
    return info.value.code, captured.err


@pytest.fixture(autouse=True)
def cache_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("SOW_CACHE_DIR", str(tmp_path / "cache"))
    return tmp_path / "cache"


@pytest.fixture
def reuse_tiny(monkeypatch, tiny_components):
    """The CLI builds the tiny model on each call; reuse the session's instead (same weights, faster)."""
    monkeypatch.setattr("sow.pipeline.load_components", lambda *args, **kwargs: tiny_components)


@pytest.fixture
def fast_config(tmp_path):
    path = tmp_path / "fast.json"
    path.write_text(json.dumps(FAST))
    return path


def test_plan_writes_json_and_picture(tmp_path, face_path, fast_config, capsys):
    out = tmp_path / "p" / "plan.json"
    code, err = run(["plan", str(face_path), "a chef on the left", "--config", str(fast_config), "-o", str(out)], capsys)
    assert code == 0, err
    plan = Plan.model_validate_json(out.read_text())
    assert plan.planner == "heuristic" and plan.canvas.width == 256 and plan.crop is not None
    picture = Image.open(out.with_suffix(".png"))
    assert picture.width == 2 * 256 and picture.height > 2 * 256  # shown x2 (under 512 px), legend and prompt below
    # the picture shows the green box_v outline at box_v's top-left corner (upscaled)
    assert picture.convert("RGB").getpixel((2 * plan.box_v.x + 1, 2 * plan.box_v.y + 1)) == (0, 200, 80)
    assert "wrote" in err
    code, err = run(["plan", str(face_path), "a chef", "--config", str(fast_config), "-o", str(out)], capsys)
    assert code == 2 and "already exists" in err


def test_plan_then_generate_with_plan_equals_generate_with_the_planner(reuse_tiny, tmp_path, face_path, fast_config, capsys):
    out = tmp_path / "plan.json"
    prompt = "a portrait of an astronaut"
    assert run(["plan", str(face_path), prompt, "--config", str(fast_config), "-o", str(out)], capsys)[0] == 0
    common = [str(face_path), prompt, "--config", str(fast_config), "--seed", "3", "-q"]
    code, err = run(["generate", *common, "--plan", str(out), "--out", str(tmp_path / "a")], capsys)
    assert code == 0, err
    code, err = run(["generate", *common, "--planner", "heuristic", "--out", str(tmp_path / "b")], capsys)
    assert code == 0, err
    stem = "a-portrait-of-an-astronaut-s3"
    a = Image.open(tmp_path / "a" / f"{stem}.png")
    b = Image.open(tmp_path / "b" / f"{stem}.png")
    assert a.tobytes() == b.tobytes()
    record_a = json.loads((tmp_path / "a" / f"{stem}.json").read_text())
    record_b = json.loads((tmp_path / "b" / f"{stem}.json").read_text())
    assert record_a["plan"] == record_b["plan"]


@pytest.mark.parametrize(
    "edit, field",
    [
        (lambda d: d["conditions"][0].pop("box_v"), "conditions.0.box_v"),
        (lambda d: d["conditions"][0]["box_r"].update(w=0), "conditions.0.box_r.w"),
        (lambda d: d.update(colour="red"), "colour"),
        (lambda d: d["conditions"][0].update(box_v=[200, 0, 128, 128]), "box_v [200,0,128,128] reaches outside"),
    ],
)
def test_invalid_plan_file_names_the_field(reuse_tiny, tmp_path, face_path, fast_config, capsys, edit, field):
    out = tmp_path / "plan.json"
    assert run(["plan", str(face_path), "a chef", "--config", str(fast_config), "-o", str(out)], capsys)[0] == 0
    data = json.loads(out.read_text())
    edit(data)
    out.write_text(json.dumps(data))
    code, err = run(["generate", str(face_path), "a chef", "--config", str(fast_config), "--plan", str(out), "--out", str(tmp_path / "g")], capsys)
    assert code == 2
    assert field in err and "Traceback" not in err and len(err.strip().splitlines()) == 1


def test_hand_edited_crop_outside_the_condition_is_an_input_error(reuse_tiny, tmp_path, face_path, fast_config, capsys):
    out = tmp_path / "plan.json"
    assert run(["plan", str(face_path), "a chef", "--config", str(fast_config), "-o", str(out)], capsys)[0] == 0
    data = json.loads(out.read_text())
    data["crop"] = [0, 0, 5000, 5000]
    out.write_text(json.dumps(data))
    code, err = run(["generate", str(face_path), "a chef", "--config", str(fast_config), "--plan", str(out), "-q", "--out", str(tmp_path / "g")], capsys)
    assert code == 2 and "crop" in err


def test_unknown_planner_and_bad_option(tmp_path, face_path, capsys):
    code, err = run(["plan", str(face_path), "a chef", "--planner", "nope", "-o", str(tmp_path / "x.json")], capsys)
    assert code == 2 and "unknown planner 'nope'" in err
    code, err = run(["plan", str(face_path), "a chef", "--planner-option", "novalue", "-o", str(tmp_path / "x.json")], capsys)
    assert code == 2 and "KEY=VALUE" in err


# -- the cache --------------------------------------------------------------------------


class SpyPlanner:
    name = "spy"
    description = "counts its calls"
    model = "spy-model-1"

    def __init__(self) -> None:
        self.calls = 0

    def plan(self, request):
        self.calls += 1
        return {"box_v": [-20, 0, 300, 300], "box_r": [0, 300, 512, 400], "prompt": request.prompt + "!", "user_prompt": request.prompt, "planner": self.name}


def request_for(prompt, color=(200, 100, 50)):
    return PlanRequest(condition=Image.new("RGB", (64, 64), color), prompt=prompt, config=GenerationConfig())


def test_cache_hit_skips_the_planner_and_a_changed_prompt_misses(cache_dir):
    cache, spy = PlanCache(), SpyPlanner()
    assert cache.root == cache_dir == default_cache_dir()
    first = plan_with_policy(spy, request_for("a chef"), cache=cache)
    assert spy.calls == 1 and first.repairs  # off-canvas answer repaired before caching
    again = plan_with_policy(spy, request_for("a chef"), cache=cache)
    assert spy.calls == 1
    assert again.box_v == first.box_v and again.repairs == first.repairs
    assert any("plan cache" in note for note in again.notes)
    plan_with_policy(spy, request_for("a baker"), cache=cache)
    assert spy.calls == 2
    plan_with_policy(spy, request_for("a chef", color=(0, 0, 0)), cache=cache)
    assert spy.calls == 3
    plan_with_policy(spy, request_for("a chef"), cache=cache, settings={"temperature": 0.5})
    assert spy.calls == 4
    plan_with_policy(spy, request_for("a chef"), cache=None)
    assert spy.calls == 5
    assert len(list((cache_dir / "plans").glob("*.json"))) == 4


def test_cache_ignores_a_corrupt_entry_and_leaves_no_temporary_files(cache_dir):
    cache, spy = PlanCache(), SpyPlanner()
    request = request_for("a chef")
    key = cache.key(request, spy, {})
    cache.folder.mkdir(parents=True)
    cache.path(key).write_text('{"box_v": [0, 0')  # what a non-atomic writer could leave behind
    plan_with_policy(spy, request, cache=cache)
    assert spy.calls == 1
    assert Plan.model_validate_json(cache.path(key).read_text()).prompt == "a chef!"
    assert [p.name for p in cache.folder.iterdir()] == [f"{key}.json"]


def test_failed_write_leaves_no_entry(cache_dir, monkeypatch):
    import os

    cache = PlanCache()
    plan = Plan(box_v=Box(x=0, y=0, w=200, h=200), box_r=Box(x=0, y=200, w=200, h=200), prompt="p")

    def crash(*args):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", crash)
    with pytest.raises(OSError):
        cache.put("k", plan)
    assert cache.get("k") is None
    assert list(cache.folder.iterdir()) == []


def test_fallback_plans_are_not_cached(cache_dir):
    class Failing(SpyPlanner):
        def plan(self, request):
            self.calls += 1
            raise PlannerError("quota exhausted")

    cache, failing = PlanCache(), Failing()
    plan = plan_with_policy(failing, request_for("a chef"), cache=cache, on_error="heuristic")
    assert plan.planner == "heuristic" and "quota exhausted" in plan.notes[0]
    plan_with_policy(failing, request_for("a chef"), cache=cache, on_error="heuristic")
    assert failing.calls == 2
    with pytest.raises(PlannerError, match="--on-planner-error heuristic"):
        plan_with_policy(failing, request_for("a chef"), cache=cache)


def test_xdg_cache_home(monkeypatch, tmp_path):
    monkeypatch.delenv("SOW_CACHE_DIR")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert default_cache_dir() == tmp_path / "xdg" / "sow"
