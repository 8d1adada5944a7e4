"""The CLI: files written, one-line errors with documented exit codes."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from sow.cli.commands import main
from sow.schemas import RunRecord

pytestmark = pytest.mark.usefixtures("isolated_registry")  # built-in stages only, whatever the venv holds

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def fast_config(tmp_path) -> Path:
    path = tmp_path / "fast.json"
    path.write_text(json.dumps({"canvas": {"width": 128, "height": 128}, "cycles": 1}))
    return path


def run(argv: list[str]) -> int:
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    return exit_info.value.code


def test_generate_writes_image_plan_picture_and_record(face_path, fast_config, tmp_path):
    out = tmp_path / "out"
    code = run(["generate", str(face_path), "a chef in a kitchen", "--seed", "3", "--config", str(fast_config), "--out", str(out), "-q"])
    assert code == 0
    stem = "a-chef-in-a-kitchen-s3"
    assert {p.name for p in out.iterdir()} == {f"{stem}.png", f"{stem}.plan.png", f"{stem}.mask-1.png", f"{stem}.json"}
    record = RunRecord.model_validate_json((out / f"{stem}.json").read_text())
    assert record.seed == 3 and record.model == "tiny"
    assert record.unet_evaluations == 7 + 5 + 2 + 5
    assert {t.name for t in record.timings} >= {"plan", "encode", "inversion", "cycles", "final", "decode"}
    assert record.outputs["image"].endswith(f"{stem}.png")


def test_existing_outputs_are_not_overwritten(face_path, fast_config, tmp_path, capsys):
    args = ["generate", str(face_path), "x", "--config", str(fast_config), "--out", str(tmp_path), "--name", "n", "-q"]
    assert run(args) == 0
    before = (tmp_path / "n.png").read_bytes()
    capsys.readouterr()
    assert run(args + ["--seed", "9"]) == 2
    assert "already exists; pass --overwrite" in capsys.readouterr().err
    assert (tmp_path / "n.png").read_bytes() == before
    assert run(args + ["--seed", "9", "--overwrite"]) == 0
    assert (tmp_path / "n.png").read_bytes() != before


def test_manual_boxes_are_used(face_path, fast_config, tmp_path):
    code = run(["generate", str(face_path), "x", "--config", str(fast_config), "--out", str(tmp_path), "--name", "m", "-q",
                "--box-v", "0,0,64,64", "--box-r", "0,64,128,64"])
    assert code == 0
    record = json.loads((tmp_path / "m.json").read_text())
    assert record["plan"]["conditions"][0]["box_v"] == {"x": 0, "y": 0, "w": 64, "h": 64} and record["plan"]["planner"] == "manual"


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--box-v", "0,0,64,64"], "--box-v and --box-r go together"),
        (["--modulator", "nope"], "unknown attention modulator 'nope'; available: "),
        (["--model", "./no/such/folder"], "model './no/such/folder' not found"),
    ],
)
def test_bad_options_exit_2_with_one_line(face_path, fast_config, tmp_path, capsys, extra, message):
    code = run(["generate", str(face_path), "x", "--config", str(fast_config), "--out", str(tmp_path), "-q", *extra])
    err = capsys.readouterr().err
    assert code == 2
    assert message in err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--preset", "fancy"], "'fancy' is not one of 'normal', 'attribute', 'style'"),
        (["--dtype", "fp8"], "'fp8' is not one of 'auto', 'fp32', 'fp16', 'bf16'"),
    ],
)
def test_a_choice_outside_the_enum_is_a_usage_error_listing_the_choices(face_path, tmp_path, capsys, extra, message):
    code = run(["generate", str(face_path), "x", "--out", str(tmp_path), "-q", *extra])
    err = capsys.readouterr().err
    assert code == 2 and message in err and "Traceback" not in err


def test_invalid_plan_file_names_the_field(face_path, tmp_path, capsys):
    plan = tmp_path / "plan.json"
    plan.write_text(json.dumps({"box_v": [0, 0, -5, 10], "box_r": [0, 0, 10, 10], "prompt": "p"}))
    assert run(["generate", str(face_path), "x", "--plan", str(plan), "--out", str(tmp_path), "-q"]) == 2
    assert "box_v.w" in capsys.readouterr().err


def test_console_script_help_and_missing_argument():
    help_run = subprocess.run([sys.executable, "-m", "sow", "generate", "--help"], capture_output=True, text=True, cwd=ROOT)
    assert help_run.returncode == 0 and "--planner" in help_run.stdout
    missing = subprocess.run([sys.executable, "-m", "sow", "generate"], capture_output=True, text=True, cwd=ROOT)
    assert missing.returncode == 2 and "Missing argument" in missing.stderr and "Traceback" not in missing.stderr


def test_num_images_writes_each_variation_as_its_single_seed_would(face_path, fast_config, tmp_path):
    import numpy as np
    from PIL import Image

    base = ["generate", str(face_path), "a chef", "--config", str(fast_config), "-q"]
    assert run([*base, "--seed", "4", "-n", "2", "--out", str(tmp_path / "batch"), "--name", "v"]) == 0
    assert run([*base, "--seed", "5", "--out", str(tmp_path / "single"), "--name", "v"]) == 0
    record = json.loads((tmp_path / "batch" / "v.json").read_text())
    assert set(record["outputs"]) >= {"image_0", "image_1"} and record["num_images"] == 2
    batched = np.asarray(Image.open(tmp_path / "batch" / "v-1.png")).astype(int)
    single = np.asarray(Image.open(tmp_path / "single" / "v.png")).astype(int)
    assert np.abs(batched - single).max() <= 1  # same image up to float rounding of the batch
