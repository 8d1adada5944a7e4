"""A run rebuilt from its record alone (issue 26): ``sow generate --replay RECORD.json``.

Bit-identical replays of a default run, a several-condition run with a mask given as ``mask=``
(in memory: the record's saved mask is all that brings it back), and a batch item; refusals in
one line (exit 2) when a condition, a mask or the model no longer matches; nothing overwritten.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from sow.cli.commands import main
from sow.io.results import output_paths, write_outputs
from sow.schemas import Plan

FAST = {"canvas": {"width": 128, "height": 128}, "cycles": 1}


def _cli(*args: str) -> int:
    with pytest.raises(SystemExit) as info:
        main(list(args))
    return info.value.code


def _fast_config(tmp_path: Path, extra: dict | None = None) -> Path:
    path = tmp_path / "fast.json"
    path.write_text(json.dumps({**FAST, **(extra or {})}))
    return path


def _bytes(path: Path) -> bytes:
    return path.read_bytes()


@pytest.mark.slow
def test_a_default_run_replays_bit_identically_and_nothing_is_overwritten(tmp_path, face_path, capsys):
    face = tmp_path / "face.jpg"
    shutil.copy(face_path, face)
    out = tmp_path / "out"
    assert _cli("generate", str(face), "a chef", "--config", str(_fast_config(tmp_path)), "--out", str(out), "--name", "a", "-q") == 0
    record = json.loads((out / "a.json").read_text())
    mask = out / "a.mask-1.png"
    assert record["conditions"][0]["mask"] == str(mask) and record["outputs"]["mask_1"] == str(mask)
    assert record["conditions"][0]["mask_sha256"] == hashlib.sha256(mask.read_bytes()).hexdigest()
    assert record["model_fingerprint"] and record["config"]["paste"] == "feather"
    originals = {p.name: _bytes(p) for p in out.iterdir()}
    capsys.readouterr()

    assert _cli("generate", "--replay", str(out / "a.json"), "--out", str(out), "-q") == 0
    assert "image: identical to" in capsys.readouterr().err
    assert _bytes(out / "a-replay.png") == originals["a.png"]
    assert {p.name: _bytes(p) for p in out.iterdir() if p.name in originals} == originals  # untouched
    replayed = json.loads((out / "a-replay.json").read_text())
    assert replayed["plan"]["conditions"][0]["box_v"] == record["plan"]["conditions"][0]["box_v"]

    # a second replay into the same names: refused, before any work, naming the file
    assert _cli("generate", "--replay", str(out / "a.json"), "--out", str(out), "-q") == 2
    assert "a-replay" in capsys.readouterr().err
    assert _cli("generate", "--replay", str(out / "a.json"), "--out", str(out), "--overwrite", "-q") == 2
    assert "--overwrite" in capsys.readouterr().err


@pytest.mark.slow
def test_several_conditions_with_a_mask_given_in_memory_replay_bit_identically(tmp_path, tiny_pipe, faces_dir, face_path):
    first, second = tmp_path / "a.jpg", tmp_path / "b.jpg"
    shutil.copy(face_path, first)
    Image.open(faces_dir / "obama2.jpg").resize((313, 600)).save(second)
    plan = Plan(
        canvas={"width": 192, "height": 128},
        conditions=[{"image": 0, "box_v": [8, 8, 64, 64], "box_r": [8, 72, 64, 56]}, {"image": 1, "box_v": [104, 16, 48, 48], "box_r": [96, 64, 64, 64]}],
        prompt="two friends at a cafe",
    )
    holes = Image.new("L", (100, 100), 255)
    holes.paste(0, (30, 30, 70, 70))
    result = tiny_pipe([str(first), str(second)], "two friends", plan=plan, seed=9, canvas=plan.canvas, cycles=1, mask=[holes, None])
    out = tmp_path / "out"
    written = write_outputs(result, output_paths(out, "duo", masks=2))
    assert {"mask_1", "mask_2"} <= set(written)
    saved = Image.open(written["mask_1"])
    assert saved.size == (100, 100) and saved.getpixel((50, 50)) == 0 and saved.getpixel((5, 5)) == 255
    assert _cli("generate", "--replay", str(out / "duo.json"), "--out", str(out), "-q") == 0
    assert _bytes(out / "duo-replay.png") == _bytes(out / "duo.png")
    # without the saved mask the kept region is another one: the replay depends on it
    unmasked = tiny_pipe([str(first), str(second)], "two friends", plan=plan, seed=9, canvas=plan.canvas, cycles=1)
    assert np.asarray(unmasked.image).tobytes() != np.asarray(Image.open(out / "duo.png")).tobytes()


def test_a_batch_item_replays_bit_identically(tmp_path, face_path, faces_dir):
    face, other = tmp_path / "face.jpg", tmp_path / "other.jpg"
    shutil.copy(face_path, face)
    Image.open(faces_dir / "obama.jpg").resize((455, 568)).save(other)
    jobs = tmp_path / "jobs.jsonl"
    jobs.write_text("\n".join(json.dumps(j) for j in [
        {"condition": str(face), "prompt": "a chef", "seed": 1, "name": "one"},
        {"condition": str(other), "prompt": "a pilot", "seed": 2, "name": "two"},
    ]) + "\n")
    out = tmp_path / "out"
    assert _cli("generate", "--batch", str(jobs), "--config", str(_fast_config(tmp_path)), "--out", str(out), "-q") == 0
    assert _cli("generate", "--replay", str(out / "two.json"), "--out", str(tmp_path / "again"), "-q") == 0
    assert _bytes(tmp_path / "again" / "two-replay.png") == _bytes(out / "two.png")


def test_a_changed_condition_mask_or_model_is_refused_in_one_line(tmp_path, face_path, capsys):
    face = tmp_path / "face.jpg"
    shutil.copy(face_path, face)
    out = tmp_path / "out"
    assert _cli("generate", str(face), "a chef", "--config", str(_fast_config(tmp_path)), "--out", str(out), "--name", "a", "-q") == 0
    capsys.readouterr()
    record = out / "a.json"

    original = face.read_bytes()
    Image.open(face).transpose(Image.Transpose.FLIP_LEFT_RIGHT).save(face)  # same name, other pixels
    assert _cli("generate", "--replay", str(record), "--out", str(tmp_path / "r1"), "-q") == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and str(face) in err and "has changed since the run" in err
    assert not (tmp_path / "r1").exists() or not any((tmp_path / "r1").iterdir())  # refused before any work
    face.write_bytes(original)

    mask = out / "a.mask-1.png"
    kept = mask.read_bytes()
    Image.new("L", Image.open(mask).size, 0).save(mask)
    assert _cli("generate", "--replay", str(record), "--out", str(tmp_path / "r2"), "-q") == 2
    assert "mask of condition 1" in capsys.readouterr().err
    mask.write_bytes(kept)

    data = json.loads(record.read_text())
    data["model_fingerprint"] = "0" * 64  # as if another model had made it
    forged = out / "forged.json"
    forged.write_text(json.dumps(data))
    assert _cli("generate", "--replay", str(forged), "--out", str(tmp_path / "r3"), "-q") == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "model tiny no longer matches the record" in err

    assert _cli("generate", str(face), "a chef", "--replay", str(record), "-q") == 2
    assert "drop CONDITION and PROMPT" in capsys.readouterr().err
