"""The bad-input corpus: hostile files, plans, configs and batch files, each refused with its
one-line message and exit code, and never a traceback."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from tests.support.hostile_files import face_like, png_bomb, save, transparent_png, truncated_jpeg

from sow.cli.commands import main

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(autouse=True)
def _only_builtin_plugins(builtin_plugins_only):
    """The shared venv may hold third-party plugins: load none of them here."""


def _write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


def _plan(**changes) -> str:
    plan = {"canvas": {"width": 512, "height": 512}, "box_v": [160, 0, 192, 192], "box_r": [112, 192, 288, 320], "prompt": "a chef"}
    plan.update(changes)
    return json.dumps(plan)


def _corpus(tmp: Path, face: Path) -> list[tuple[str, list[str], str, int]]:
    """(case id, argv, expected message fragment, exit code)."""
    out = ["-o", str(tmp / "out")]
    gen = ["generate"]
    good = str(face)
    (tmp / "empty.jpg").write_bytes(b"")
    _write(tmp / "text.jpg", "GIF89a? no, just text pretending to be an image")
    (tmp / "folder.png").mkdir()
    (tmp / "taken").mkdir()
    (tmp / "taken" / "x.png").write_bytes(b"already here")
    nested = "[" * 100_000 + "]" * 100_000
    jsonl = lambda name, *lines: str(_write(tmp / name, "\n".join(lines) + "\n"))  # noqa: E731
    job = json.dumps({"condition": good, "prompt": "a chef"})
    digits = "9" * 5000  # over Python's 4300-digit limit for int()
    fifo = tmp / "fifo.json"
    if hasattr(os, "mkfifo"):
        os.mkfifo(fifo)
    configs = tmp / "configs"
    for part in ("unet", "vae", "text_encoder"):
        (configs / part).mkdir(parents=True)
        _write(configs / part / "config.json", "{not json")
    (configs / "scheduler").mkdir()
    _write(configs / "scheduler" / "scheduler_config.json", "{}")
    plan_ok = str(_write(tmp / "ok.json", _plan()))
    spec = _write(tmp / "spec.jsonl", "".join(json.dumps({"id": i, "condition": good, "prompt": "p", "setting": "normal"}) + "\n" for i in ("Obama", "obama")))
    unwritable = "/proc/sow-cannot-make-this/out"  # not even root can make a folder in /proc
    issue_13 = [
        ("batch roles collide", [*gen, "--batch", jsonl("r1.jsonl", json.dumps({"condition": good, "prompt": "a", "name": "foo"}), json.dumps({"condition": good, "prompt": "b", "name": "foo.plan"})), *out], "is also the output file of line 1 plan_image", 2),
        ("batch names differ in case", [*gen, "--batch", jsonl("r2.jsonl", json.dumps({"condition": good, "prompt": "a", "name": "Foo"}), json.dumps({"condition": good, "prompt": "b", "name": "foo"})), *out], "already used by line 1", 2),
        ("eval ids differ in case", ["eval", str(spec), "-o", str(tmp / "eval")], "writes the same file", 2),
        ("plan is /dev/zero", [*gen, good, "a chef", "--plan", "/dev/zero", *out], "not a regular file", 2),
        ("config is /dev/zero", [*gen, good, "a chef", "--config", "/dev/zero", *out], "not a regular file", 2),
        ("batch is /dev/zero", [*gen, "--batch", "/dev/zero", *out], "not a regular file", 2),
        ("spec is /dev/zero", ["eval", "/dev/zero", "-o", str(tmp / "eval")], "not a regular file", 2),
        ("plan 5000-digit integer", [*gen, good, "a chef", "--plan", str(_write(tmp / "p7.json", _plan().replace("160", digits, 1))), *out], "Exceeds the limit (4300 digits)", 2),
        ("batch 5000-digit seed", [*gen, "--batch", jsonl("b10.jsonl", '{"condition": "x.png", "prompt": "a", "seed": ' + digits + "}"), *out], "line 1: not valid JSON (Exceeds the limit", 2),
        ("unwritable out", [*gen, good, "a chef", "-o", unwritable], "cannot write there", 2),
        ("unwritable plan out", ["plan", good, "a chef", "-o", unwritable + "/p.json"], "cannot write there", 2),
        ("unwritable batch out", [*gen, "--batch", jsonl("b11.jsonl", job), "-o", unwritable], "cannot write there", 2),
        ("device meta", [*gen, good, "a chef", "--device", "meta", *out], "device 'meta' is not supported", 2),
        ("device mps", [*gen, good, "a chef", "--device", "mps", *out], "device 'mps' is not supported", 2),
        ("unknown planner option", [*gen, good, "a chef", "--planner-option", "face_margn=0.1", *out], "has no option 'face_margn'", 2),
        ("config folder bad json", [*gen, good, "a chef", "--model", str(configs), "--random-weights", *out], "not valid JSON", 2),
        ("plan with boxes", [*gen, good, "a chef", "--plan", plan_ok, "--box-v", "0,0,64,64", "--box-r", "0,0,64,64", *out], "drop --box-v/--box-r", 2),
        ("true as a coordinate", [*gen, good, "a chef", "--plan", str(_write(tmp / "p8.json", _plan(box_v=[True, 0, 192, 192]))), *out], "not true/false", 2),
        ("true as a count", [*gen, good, "a chef", "--config", str(_write(tmp / "c6.json", '{"cycles": true}')), *out], "cycles: expected a number, not true", 2),
        ("a billion cycles", [*gen, good, "a chef", "--config", str(_write(tmp / "c7.json", '{"cycles": 1000000000}')), *out], "less than or equal to 200", 2),
        ("typer usage error", [*gen, good, "a chef", "--no-such-option", *out], "No such option: --no-such-option", 2),
    ]
    if hasattr(os, "mkfifo"):
        issue_13 += [
            ("plan is a fifo", [*gen, good, "a chef", "--plan", str(fifo), *out], "not a regular file", 2),
            ("batch is a fifo", [*gen, "--batch", str(fifo), *out], "not a regular file", 2),
        ]
    return issue_13 + [
        ("empty image file", [*gen, str(tmp / "empty.jpg"), "a chef", *out], "empty file", 2),
        ("text file named .jpg", [*gen, str(tmp / "text.jpg"), "a chef", *out], "not an image file Pillow can read", 2),
        ("truncated jpeg", [*gen, str(truncated_jpeg(tmp / "trunc.jpg")), "a chef", *out], "corrupt or truncated image", 2),
        ("decompression bomb", [*gen, str(png_bomb(tmp / "bomb.png")), "a chef", *out], "over Pillow's limit of 89,478,485 pixels", 2),
        ("folder as image", [*gen, str(tmp / "folder.png"), "a chef", *out], "is a folder", 2),
        ("device as image", [*gen, "/dev/zero", "a chef", *out], "not a regular file", 2),
        ("fully transparent", [*gen, str(transparent_png(tmp / "clear.png")), "a chef", *out], "fully transparent", 2),
        ("8 px image", [*gen, str(save(face_like((8, 8)), tmp / "tiny.png")), "a chef", *out], "too small", 2),
        ("1:10 image", [*gen, str(save(face_like((640, 64)), tmp / "strip.png")), "a chef", *out], "too elongated", 2),
        ("missing image", [*gen, str(tmp / "nope.jpg"), "a chef", *out], "no such file", 2),
        ("blank prompt", [*gen, good, "   ", *out], "prompt is empty", 2),
        ("plan not json", [*gen, good, "a chef", "--plan", str(_write(tmp / "p1.json", "{box_v: 1")), *out], "not valid JSON", 2),
        ("plan nested bomb", [*gen, good, "a chef", "--plan", str(_write(tmp / "p2.json", nested)), *out], "nested too deeply", 2),
        ("plan box outside", [*gen, good, "a chef", "--plan", str(_write(tmp / "p3.json", _plan(box_v=[400, 0, 192, 192]))), *out], "box_v [400,0,192,192] reaches outside the 512x512 canvas", 2),
        ("plan zero box", [*gen, good, "a chef", "--plan", str(_write(tmp / "p4.json", _plan(box_r=[0, 0, 0, 10]))), *out], "box_r.w: Input should be greater than 0", 2),
        ("plan negative box", [*gen, good, "a chef", "--plan", str(_write(tmp / "p5.json", _plan(box_v=[-5, 0, 100, 100]))), *out], "box_v.x: Input should be greater than or equal to 0", 2),
        ("plan unknown field", [*gen, good, "a chef", "--plan", str(_write(tmp / "p6.json", _plan(boxv=[0, 0, 8, 8]))), *out], "boxv: Extra inputs are not permitted", 2),
        ("plan missing file", [*gen, good, "a chef", "--plan", str(tmp / "absent.json"), *out], "no such file", 2),
        ("config typo", [*gen, good, "a chef", "--config", str(_write(tmp / "c1.json", '{"cycels": 3}')), *out], "cycels: Extra inputs are not permitted", 2),
        ("config levels", [*gen, good, "a chef", "--config", str(_write(tmp / "c2.json", '{"t1": 7, "t2": 5}')), *out], "t1 < t2 <= num_inference_steps", 2),
        ("config NaN", [*gen, good, "a chef", "--config", str(_write(tmp / "c3.json", '{"modulation": {"tau": NaN}}')), *out], "modulation.tau", 2),
        ("config a list", [*gen, good, "a chef", "--config", str(_write(tmp / "c4.json", "[1, 2]")), *out], "expected a JSON object", 2),
        ("config canvas", [*gen, good, "a chef", "--config", str(_write(tmp / "c5.json", '{"canvas": {"width": 500}}')), *out], "canvas.width: Input should be a multiple of 8", 2),
        ("box zero size", [*gen, good, "a chef", "--box-v", "0,0,0,10", "--box-r", "0,0,10,10", *out], "greater than 0", 2),
        ("box outside", [*gen, good, "a chef", "--box-v", "480,0,100,100", "--box-r", "0,0,10,10", *out], "reaches outside", 2),
        ("box garbage", [*gen, good, "a chef", "--box-v", "1,2,x", "--box-r", "0,0,10,10", *out], "expected four integers", 2),
        ("unknown preset", [*gen, good, "a chef", "--preset", "fancy", *out], "Invalid value for '--preset': 'fancy' is not one of", 2),
        ("unknown planner", [*gen, good, "a chef", "--planner", "nope", *out], "unknown planner 'nope'", 2),
        ("pickle checkpoint", [*gen, good, "a chef", "--model", str(_write(tmp / "m.ckpt", "x")), *out], "only .safetensors checkpoints load by default", 2),
        ("output exists", [*gen, good, "a chef", "--name", "x", "-o", str(tmp / "taken")], "already exists; pass --overwrite", 2),
        ("batch bad json", [*gen, "--batch", jsonl("b1.jsonl", job, "{oops"), *out], "line 2: not valid JSON", 2),
        ("batch traversal", [*gen, "--batch", jsonl("b2.jsonl", json.dumps({"condition": good, "prompt": "a", "name": "../../evil"})), *out], "must be a plain file name", 2),
        ("batch missing prompt", [*gen, "--batch", jsonl("b3.jsonl", json.dumps({"condition": good})), *out], "line 1: prompt: Field required", 2),
        ("batch duplicate", [*gen, "--batch", jsonl("b4.jsonl", json.dumps({"condition": good, "prompt": "a", "name": "same"}), json.dumps({"condition": good, "prompt": "b", "name": "same"})), *out], "already used by line 1", 2),
        ("batch empty", [*gen, "--batch", jsonl("b5.jsonl", "# nothing here"), *out], "no jobs", 2),
        ("batch negative seed", [*gen, "--batch", jsonl("b6.jsonl", json.dumps({"condition": good, "prompt": "a", "seed": -1})), *out], "seed: Input should be greater than or equal to 0", 2),
        ("resume alone", [*gen, good, "a chef", "--resume", *out], "--resume goes with --batch", 2),
        ("undecodable prompt", [*gen, good, "a chef \udcff", *out], "not valid text", 2),
        ("huge prompt", [*gen, good, "a chef " * 3000, *out], "the limit is 10,000", 2),
        ("seed overflow", [*gen, good, "a chef", "--seed", str(2**64 + 5), *out], "must lie in 0 .. 2**63-1", 2),
        ("out is a file", [*gen, good, "a chef", "-o", str(tmp / "text.jpg")], "is a file, not a folder", 2),
        ("batch blank prompt", [*gen, "--batch", jsonl("b7.jsonl", json.dumps({"condition": good, "prompt": " "})), *out], "line 1: prompt: the prompt is empty", 2),
        ("batch not an object", [*gen, "--batch", jsonl("b8.jsonl", "[1, 2, 3]"), *out], "line 1: expected a JSON object", 2),
        ("batch unknown field", [*gen, "--batch", jsonl("b9.jsonl", json.dumps({"condition": good, "prompt": "a", "sead": 3})), *out], "line 1: sead: Extra inputs are not permitted", 2),
        ("plan command bomb", ["plan", str(tmp / "bomb.png"), "a chef", "-o", str(tmp / "plans" / "p.json")], "over Pillow's limit", 2),
        ("batch is binary", [*gen, "--batch", str(truncated_jpeg(tmp / "jobs.bin")), *out], "not UTF-8 text", 2),
    ]


@pytest.fixture
def corpus(tmp_path, face_path):
    return _corpus(tmp_path, face_path)


def test_every_hostile_input_gets_one_line_and_its_exit_code(corpus, capsys):
    from sow.plugins import reset_registry

    assert len({case[0] for case in corpus}) == len(corpus)  # each name is one case in the failure list
    failures = []
    for case, argv, fragment, code in corpus:
        with pytest.raises(SystemExit) as info:
            main(argv)
        captured = capsys.readouterr()
        errors = [line for line in captured.err.splitlines() if line.startswith("error:")]
        problems = []
        if info.value.code != code:
            problems.append(f"exit {info.value.code} != {code}")
        if "Traceback" in captured.err or "Traceback" in captured.out:
            problems.append("traceback")
        if len(errors) != 1 or fragment not in errors[0]:
            problems.append(f"stderr {captured.err!r} lacks one error line with {fragment!r}")
        if problems:
            failures.append(f"{case}: {'; '.join(problems)}")
        reset_registry()
    assert not failures, "\n".join(failures)


def test_usage_error_exits_2_without_traceback(capsys):
    with pytest.raises(SystemExit) as info:
        main(["generate", "x.jpg", "a chef", "--no-such-option"])
    captured = capsys.readouterr()
    assert info.value.code == 2
    lines = captured.err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: No such option: --no-such-option"), lines


def test_hostile_input_in_a_real_process(tmp_path):
    """The same contract seen from outside: a subprocess, its stderr and exit code."""
    bomb = png_bomb(tmp_path / "bomb.png")
    proc = subprocess.run(
        [sys.executable, "-m", "sow", "generate", str(bomb), "a chef", "-o", str(tmp_path / "out")],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    assert [line for line in proc.stderr.splitlines() if line.startswith("error:")] == [
        f"error: condition {bomb}: image too large (over Pillow's limit of 89,478,485 pixels, a guard against decompression bombs)"
    ]
    assert not (tmp_path / "out").exists()
