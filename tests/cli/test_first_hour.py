"""The frictions of a first hour with the CLI (issue 29): each through the command a user types.

`sow bench --smoke` honoured, global options on either side of the command, help and a missing
file without importing torch, the canvas flags and a plan file's canvas, input checks before any
model loads, box_v on the nearest latent cell, and third-party noise silenced.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from sow.cli.commands import main
from sow.cli.startup import hoist_global_options, reads_text_only

ROOT = Path(__file__).resolve().parents[2]
COMMANDS = ("generate", "plan", "plugins", "eval", "eval-spec", "ui", "bench")


def run(argv: list[str]) -> int:
    try:
        main(argv)
    except SystemExit as exc:
        return int(exc.code or 0)
    return 0


@pytest.fixture
def no_model(monkeypatch):
    """Fail the test if any Stable Diffusion model is built (the refusal must come first)."""
    import sow.pipeline

    def refuse(*args, **kwargs):
        raise AssertionError("a model was loaded before the refusal")

    monkeypatch.setattr(sow.pipeline, "load_components", refuse)


@pytest.fixture
def reuse_tiny(monkeypatch, tiny_components):
    monkeypatch.setattr("sow.pipeline.load_components", lambda *args, **kwargs: tiny_components)


# -- sow bench --smoke ---------------------------------------------------------------------------


def test_bench_smoke_count_only_takes_the_smoke_canvas_through_the_command(tmp_path, capsys):
    out = tmp_path / "cost.json"
    assert run(["bench", "--smoke", "--count-only", "--quiet", "--json", str(out)]) == 0
    report = json.loads(out.read_text())
    text = json.dumps(report)
    assert '"canvas": 64' in text and '"steps": 4' in text and '"cycles": 1' in text, text[:400]
    assert run(["bench", "--smoke", "--count-only", "--size", "128", "--quiet", "--json", str(tmp_path / "b.json")]) == 0
    assert '"canvas": 128' in (tmp_path / "b.json").read_text()  # an option given explicitly wins over --smoke


def test_bench_smoke_runs_the_smoke_settings_through_the_command(tmp_path):
    out = tmp_path / "smoke.json"
    assert run(["bench", "--smoke", "--device", "cpu", "--quiet", "--json", str(out)]) == 0
    report = json.loads(out.read_text())
    config = report["config"]
    assert (config["canvas"], config["steps"], config["cycles"]) == (64, 4, 1), config
    assert report["baselines"]["ddim"]["steps"] == 2


# -- global options ------------------------------------------------------------------------------


def test_global_options_move_before_the_command():
    assert hoist_global_options(["plan", "a.jpg", "x", "--threads", "1"], COMMANDS) == ["--threads", "1", "plan", "a.jpg", "x"]
    assert hoist_global_options(["generate", "--threads=2", "a.jpg", "x", "--trust-remote-code"], COMMANDS) == [
        "--threads=2", "--trust-remote-code", "generate", "a.jpg", "x"]
    assert hoist_global_options(["--threads", "1", "plan", "--disable-plugin", "p", "a"], COMMANDS) == [
        "--threads", "1", "--disable-plugin", "p", "plan", "a"]
    assert hoist_global_options(["plan", "a.jpg", "--", "--threads"], COMMANDS) == ["plan", "a.jpg", "--", "--threads"]
    assert hoist_global_options(["--version"], COMMANDS) == ["--version"]


def test_threads_after_the_command_is_accepted(monkeypatch):
    import torch

    before = torch.get_num_threads()
    monkeypatch.delenv("SOW_THREADS", raising=False)
    try:
        assert run(["plugins", "--threads", "2"]) == 0
        assert torch.get_num_threads() == 2
        assert run(["plugins", "--threads=1"]) == 0
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)


def test_text_only_runs_are_recognised():
    assert reads_text_only(["generate", "--help"], {}) and reads_text_only(["-h"], {}) and reads_text_only([], {})
    assert reads_text_only(["generate"], {"_SOW_COMPLETE": "bash_complete"})
    assert not reads_text_only(["generate", "a.jpg", "x"], {})
    assert not reads_text_only(["generate", "a.jpg", "--", "--help"], {})


# -- no torch for help, completion, a missing file ------------------------------------------------

PROBE = """
import sys
from sow.cli.commands import main
try:
    main({argv!r})
except SystemExit as exc:
    code = exc.code
print("EXIT", code, "TORCH", "torch" in sys.modules)
"""


@pytest.mark.parametrize("argv, code", [
    (["generate", "--help"], 0), (["--help"], 0), (["--version"], 0), (["bench", "-h"], 0),
    (["generate", "missing-photo.jpg", "a chef"], 2), (["plan", "missing-photo.jpg", "a chef"], 2),
    (["generate", "a chef", "missing-photo.jpg"], 2),
])  # fmt: skip
def test_help_and_a_missing_file_do_not_import_torch(argv, code, tmp_path):
    done = subprocess.run([sys.executable, "-c", PROBE.format(argv=argv)], capture_output=True, text=True, cwd=tmp_path,
                          env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin", "SOW_THREADS": "1"}, timeout=120)
    assert f"EXIT {code} TORCH False" in done.stdout, done.stdout + done.stderr
    if code == 2:
        assert "missing-photo.jpg" in done.stderr and ("no such file" in done.stderr or "give the prompt last" in done.stderr)


def test_completion_answers_without_torch(tmp_path):
    code = "import sys, os\nfrom sow.cli.commands import main\ntry:\n    main([])\nexcept SystemExit:\n    pass\nprint('TORCH', 'torch' in sys.modules)\n"
    env = {"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin", "_SOW_COMPLETE": "complete_bash", "COMP_WORDS": "sow gen", "COMP_CWORD": "1"}
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path, env=env, timeout=120)
    assert "generate" in done.stdout and "TORCH False" in done.stdout, done.stdout + done.stderr


def test_the_image_given_last_gets_a_hint_about_the_order(tmp_path, capsys):
    assert run(["generate", "a chef", "face.jpg", "-o", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "give the prompt last" in err and "\n" not in err.strip()  # issue 27's check, before any file is read


def test_help_keeps_option_names_whole_at_80_columns(monkeypatch, capsys):
    monkeypatch.setenv("COLUMNS", "80")
    assert run(["generate", "--help"]) == 0
    text = capsys.readouterr().out
    assert "…" not in text
    for name in ("--on-planner-error", "--gpus-per-worker", "--random-weights", "--width", "--height"):
        assert name in text
    assert run(["ui", "--help"]) == 0
    assert "sow[ui]" in capsys.readouterr().out  # not eaten as markup ("(needs sow)")


# -- the canvas --------------------------------------------------------------------------------------


def test_width_and_height_set_the_canvas(reuse_tiny, face_path, tmp_path):
    from PIL import Image

    config = tmp_path / "fast.json"
    config.write_text(json.dumps({"cycles": 1}))
    assert run(["generate", str(face_path), "a chef", "-q", "--width", "128", "--height", "64", "--config", str(config),
                "-o", str(tmp_path), "--name", "wide"]) == 0
    assert Image.open(tmp_path / "wide.png").size == (128, 64)
    plan = json.loads((tmp_path / "wide.json").read_text())["plan"]
    assert plan["canvas"] == {"width": 128, "height": 64}


def test_a_plan_files_canvas_is_used_and_a_different_one_refused_before_the_model(face_path, tmp_path, capsys, monkeypatch, tiny_components):
    from PIL import Image

    plan = {"canvas": {"width": 96, "height": 64}, "box_v": [8, 8, 40, 40], "box_r": [0, 48, 96, 16], "prompt": "a chef", "planner": "manual"}
    (tmp_path / "plan.json").write_text(json.dumps(plan))
    config = tmp_path / "fast.json"
    config.write_text(json.dumps({"cycles": 1}))
    base = ["generate", str(face_path), "a chef", "-q", "--plan", str(tmp_path / "plan.json"), "--config", str(config), "-o", str(tmp_path)]
    import sow.pipeline

    def refuse(*args, **kwargs):
        raise AssertionError("a model was loaded before the refusal")

    monkeypatch.setattr(sow.pipeline, "load_components", refuse)
    assert run([*base, "--width", "128", "--height", "128", "--name", "clash"]) == 2
    err = capsys.readouterr().err
    assert "is for a 96x64 canvas, but the run's canvas is 128x128" in err
    monkeypatch.setattr(sow.pipeline, "load_components", lambda *args, **kwargs: tiny_components)
    assert run([*base, "--name", "planned"]) == 0  # no canvas given: the plan's
    assert Image.open(tmp_path / "planned.png").size == (96, 64)


@pytest.mark.parametrize("argv, message", [
    (["--width", "100", "--height", "64"], "--width 100: the canvas side must be a multiple of 8"),
    (["--width", "128"], "--width and --height go together"),
])  # fmt: skip
def test_bad_canvas_flags_are_one_line(argv, message, face_path, tmp_path, capsys, no_model):
    assert run(["generate", str(face_path), "a chef", "-o", str(tmp_path), *argv]) == 2
    assert message in capsys.readouterr().err


def test_plan_takes_the_canvas_flags(face_path, tmp_path):
    out = tmp_path / "plan.json"
    assert run(["plan", str(face_path), "a chef", "--width", "256", "--height", "128", "-o", str(out)]) == 0
    plan = json.loads(out.read_text())
    assert plan["canvas"] == {"width": 256, "height": 128}


# -- checks before any model loads --------------------------------------------------------------------


def test_a_missing_lora_is_refused_before_the_model(face_path, tmp_path, capsys, no_model):
    assert run(["generate", str(face_path), "a chef", "-o", str(tmp_path), "--lora", str(tmp_path / "style.safetensors")]) == 2
    assert "style.safetensors: no such file" in capsys.readouterr().err


def test_a_local_mllm_path_that_holds_no_model_is_refused_before_the_model(face_path, tmp_path, capsys, no_model):
    from sow.plugins import get_registry

    if "llava" not in get_registry().names("planner"):
        pytest.skip("the sow-llava plugin is not installed")
    (tmp_path / "empty").mkdir()
    for where, message in ((tmp_path / "nothing", "no such folder"), (tmp_path / "empty", "holds no config.json")):
        argv = ["generate", str(face_path), "a chef", "-o", str(tmp_path), "--planner", "llava", "--planner-option", f"model={where}"]
        assert run(argv) == 2
        err = capsys.readouterr().err
        assert message in err and "--on-planner-error heuristic" in err, err


# -- the latent grid -----------------------------------------------------------------------------------


def test_the_default_plan_holds_the_box_the_image_uses(face_path, tmp_path, capsys):
    """The heuristic's box_v top at 31 px is planned on the nearest cell, 32 (it was pasted at 24)."""
    from sow.schemas import Plan

    out = tmp_path / "plan.json"
    assert run(["plan", str(face_path), "a chef", "-o", str(out), "--no-cache"]) == 0
    plan = Plan.model_validate(json.loads(out.read_text()))
    box = plan.box_v
    assert box.as_list() == [128, 32, 256, 256]
    assert box.aligned(8, plan.canvas) == box  # nothing left to snap: the plan file says what is pasted


def test_nearest_cell_rounding():
    from sow.planners.repair import on_latent_grid
    from sow.schemas import Box, Canvas

    canvas = Canvas(width=512, height=512)
    assert Box(x=131, y=31, w=256, h=256).aligned(8).as_list() == [128, 32, 256, 256]
    assert Box(x=4, y=3, w=20, h=20).aligned(8).as_list() == [8, 0, 16, 16]  # halves up, below half down
    assert on_latent_grid(Box(x=131, y=31, w=181, h=250), canvas, (180, 256)).as_list() == [128, 32, 176, 248]
    assert on_latent_grid(Box(x=300, y=300, w=256, h=256), canvas, (180, 256)).as_list() == [256, 256, 256, 256]  # kept on


# -- noise ---------------------------------------------------------------------------------------------


def test_the_python_api_prints_no_bitsandbytes_warning(tmp_path):
    code = "import sow\nfrom diffusers import AutoencoderKL\nprint('imported')\n"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path,
                          env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"}, timeout=120)
    assert "imported" in done.stdout, done.stderr
    assert "kernels" not in done.stderr and "gemm_4bit" not in done.stderr, done.stderr
