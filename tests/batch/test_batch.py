"""Batch generation: one model load, a manifest that survives SIGKILL, failed items recorded, no clobbering."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from tests.support.hostile_files import truncated_jpeg

from sow.batch.runner import MANIFEST_NAME, Manifest, read_batch_file, run_batch
from sow.cli.commands import main
from sow.errors import InputError

REPO = Path(__file__).resolve().parents[2]
FAST = {"canvas": {"width": 128, "height": 128}, "cycles": 1}
TINIEST = {"canvas": {"width": 64, "height": 64}, "cycles": 1, "num_inference_steps": 4, "t1": 2, "t2": 3, "t3": [1]}
"""For tests that run many batches: 7 UNet evaluations a run."""


@pytest.fixture(autouse=True)
def _only_builtin_plugins(builtin_plugins_only):
    """The shared venv may hold third-party plugins: load none of them here."""


def _jobs(path: Path, face: Path, count: int, **extra) -> Path:
    lines = ["# six faces", ""]
    for i in range(count):
        job = {"condition": str(face), "prompt": f"portrait number {i}", "seed": i, **extra}
        if i % 3 == 1:
            job["preset"] = "attribute"
        lines.append(json.dumps(job))
    path.write_text("\n".join(lines) + "\n")
    return path


def _done_ids(out: Path) -> list[str]:
    return [e["id"] for e in Manifest(out).entries() if e.get("event") == "done"]


def test_batch_sigkill_then_resume(tmp_path, face_path):
    """6 items; SIGKILL after the 2nd finished one; --resume finishes the rest, each item produced once."""
    jobs = _jobs(tmp_path / "jobs.jsonl", face_path, 6)
    config = tmp_path / "fast.json"
    config.write_text(json.dumps(FAST))
    out = tmp_path / "out"
    argv = [sys.executable, "-m", "sow", "generate", "--batch", str(jobs), "--config", str(config), "-o", str(out), "--quiet"]
    env = {**os.environ, "SOW_LOAD_PLUGINS": "", "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(argv, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:  # no deadline: the loop ends when 2 items are done or the batch ends (which fails the test)
        while len(_done_ids(out)) < 2:
            assert proc.poll() is None, f"batch ended before it could be killed: {proc.communicate()[1].decode()[-2000:]}"
            time.sleep(0.02)
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == -signal.SIGKILL
    finished = _done_ids(out)
    assert 2 <= len(finished) < 6
    first_files = {p.name: p.stat().st_mtime_ns for p in out.glob("*.png")}

    resumed = subprocess.run([*argv, "--resume", "--json"], cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    events = [json.loads(line) for line in resumed.stdout.splitlines()]
    summary = events[-1]
    assert summary["event"] == "summary"
    assert (summary["done"], summary["skipped"], summary["failed"]) == (6 - len(finished), len(finished), 0)
    assert sorted(e["id"] for e in events if e["event"] == "skipped") == sorted(finished)

    # 6 outputs, each produced exactly once; the finished ones were not touched again
    items = read_batch_file(jobs)
    done = _done_ids(out)
    assert sorted(done) == sorted(item.id for item in items) and len(done) == 6
    for item in items:
        for path in item.outputs(out).values():
            assert path.is_file(), path
    for name, mtime in first_files.items():
        if name.removesuffix(".plan.png").removesuffix(".png") in finished:
            assert (out / name).stat().st_mtime_ns == mtime
    # the manifest is consistent: every done entry's image hash matches the file on disk
    import hashlib

    for entry in Manifest(out).entries():
        if entry.get("event") == "done":
            assert hashlib.sha256((out / entry["outputs"]["image"]).read_bytes()).hexdigest() == entry["image_sha256"]
    assert not list(out.glob(".*.tmp"))


def test_failed_item_recorded_batch_goes_on(tmp_path, tiny_pipe, face_path):
    bad = truncated_jpeg(tmp_path / "bad.jpg")
    jobs = tmp_path / "jobs.jsonl"
    jobs.write_text(
        "\n".join(
            [
                json.dumps({"condition": str(face_path), "prompt": "a chef", "name": "one"}),
                json.dumps({"condition": "bad.jpg", "prompt": "a chef", "name": "two"}),  # relative: from the batch folder
                json.dumps({"condition": str(face_path), "prompt": "a chef", "plan": "missing.plan.json", "name": "three"}),
                json.dumps({"condition": str(face_path), "prompt": "a knight", "name": "four", "seed": 3}),
            ]
        )
    )
    assert bad.is_file()
    events = []
    summary = run_batch(tiny_pipe, read_batch_file(jobs), tmp_path / "out", overrides=FAST, on_event=events.append)
    assert (summary.done, summary.failed, summary.skipped) == (2, 2, 0)
    errors = {f["id"]: f["error"] for f in summary.failures}
    assert "corrupt or truncated image" in errors["two"]
    assert "missing.plan.json: no such file" in errors["three"]
    assert (tmp_path / "out" / "four.png").is_file() and not (tmp_path / "out" / "two.png").exists()
    failed = [e for e in Manifest(tmp_path / "out").entries() if e.get("event") == "failed"]
    assert {e["id"]: e["exit_code"] for e in failed} == {"two": 2, "three": 2}

    # resume retries only the failed ones (still failing), skipping the finished
    summary = run_batch(tiny_pipe, read_batch_file(jobs), tmp_path / "out", overrides=FAST, resume=True)
    assert (summary.done, summary.failed, summary.skipped) == (0, 2, 2)


def test_batch_refuses_to_clobber(tmp_path, tiny_pipe, face_path):
    jobs = _jobs(tmp_path / "jobs.jsonl", face_path, 1)
    out = tmp_path / "out"
    run_batch(tiny_pipe, read_batch_file(jobs), out, overrides=FAST)
    with pytest.raises(InputError, match="pass --resume"):
        run_batch(tiny_pipe, read_batch_file(jobs), out, overrides=FAST)
    # someone else's file where an unstarted item would write
    jobs2 = _jobs(tmp_path / "jobs2.jsonl", face_path, 2)
    other = read_batch_file(jobs2)[1].outputs(out)["image"]
    other.write_bytes(b"not ours")
    with pytest.raises(InputError, match="already exists"):
        run_batch(tiny_pipe, read_batch_file(jobs2), out, overrides=FAST, resume=True)
    assert other.read_bytes() == b"not ours"
    summary = run_batch(tiny_pipe, read_batch_file(jobs2), out, overrides=FAST, resume=True, overwrite=True)
    assert summary.done == 1 and other.read_bytes() != b"not ours"


def test_manifest_survives_a_torn_last_line(tmp_path, tiny_pipe, face_path):
    jobs = _jobs(tmp_path / "jobs.jsonl", face_path, 2)
    out = tmp_path / "out"
    items = read_batch_file(jobs)
    run_batch(tiny_pipe, items[:1], out, overrides=FAST)
    with open(out / MANIFEST_NAME, "a") as handle:  # a kill in the middle of writing a line
        handle.write('{"event": "done", "id": "' + items[1].id + '", "job"')
    (out / f".{items[1].id}.png.abc123.tmp").write_bytes(b"half an image")
    summary = run_batch(tiny_pipe, items, out, overrides=FAST, resume=True)
    assert (summary.done, summary.skipped) == (1, 1)
    assert not list(out.glob(".*.tmp"))
    assert all(isinstance(e, dict) for e in Manifest(out).entries())
    assert sorted(_done_ids(out)) == sorted(i.id for i in items)


def test_changed_job_is_recomputed(tmp_path, tiny_pipe, face_path):
    jobs = tmp_path / "jobs.jsonl"
    jobs.write_text(json.dumps({"condition": str(face_path), "prompt": "a chef", "name": "x", "seed": 1}))
    run_batch(tiny_pipe, read_batch_file(jobs), tmp_path / "out", overrides=FAST)
    jobs.write_text(json.dumps({"condition": str(face_path), "prompt": "a chef", "name": "x", "seed": 2}))
    summary = run_batch(tiny_pipe, read_batch_file(jobs), tmp_path / "out", overrides=FAST, resume=True)
    assert (summary.done, summary.skipped) == (1, 0)
    assert json.loads((tmp_path / "out" / "x.json").read_text())["seed"] == 2


@pytest.mark.parametrize("name", ["../escape", "/abs/path", "a/b", "..", "C:\\evil", "nul"])
def test_names_cannot_leave_the_output_folder(tmp_path, face_path, name):
    jobs = tmp_path / "jobs.jsonl"
    jobs.write_text(json.dumps({"condition": str(face_path), "prompt": "a chef", "name": name}))
    try:
        items = read_batch_file(jobs)
    except InputError as exc:
        assert "plain file name" in str(exc)
        return
    out = tmp_path / "out"
    out.mkdir()
    for path in items[0].outputs(out).values():  # accepted names are made safe
        assert path.resolve().parent == out.resolve()


def test_cli_batch_json_and_exit_code(tmp_path, face_path, capsys):
    jobs = tmp_path / "jobs.jsonl"
    jobs.write_text(
        json.dumps({"condition": str(face_path), "prompt": "a chef", "name": "ok"})
        + "\n"
        + json.dumps({"condition": "nowhere.png", "prompt": "a chef", "name": "bad"})
        + "\n"
    )
    config = tmp_path / "fast.json"
    config.write_text(json.dumps(FAST))
    with pytest.raises(SystemExit) as info:
        main(["generate", "--batch", str(jobs), "--config", str(config), "-o", str(tmp_path / "out"), "--json"])
    captured = capsys.readouterr()
    assert info.value.code == 1  # an item failed
    events = [json.loads(line) for line in captured.out.splitlines()]
    assert [e["event"] for e in events] == ["start", "done", "start", "failed", "summary"]
    assert events[-1]["failures"][0]["id"] == "bad" and "no such file" in events[-1]["failures"][0]["error"]
    assert "Traceback" not in captured.err


def test_ctrl_c_mid_batch_then_resume(tmp_path, tiny_pipe, face_path):
    """KeyboardInterrupt (Ctrl-C) after the 2nd finished item: the manifest is consistent and --resume completes it."""
    jobs = _jobs(tmp_path / "jobs.jsonl", face_path, 4)
    out = tmp_path / "out"
    items = read_batch_file(jobs)

    def interrupt_after_two(event):
        if event["event"] == "done" and event["index"] == 1:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run_batch(tiny_pipe, items, out, overrides=FAST, on_event=interrupt_after_two)
    assert len(_done_ids(out)) == 2
    computed = []
    summary = run_batch(tiny_pipe, items, out, overrides=FAST, resume=True, on_event=lambda e: e["event"] == "done" and computed.append(e["id"]))
    assert (summary.done, summary.skipped) == (2, 2)
    assert sorted(computed) == sorted(i.id for i in items[2:])
    assert sorted(_done_ids(out)) == sorted(i.id for i in items)


def test_cli_interrupt_exit_130_with_resume_hint(tmp_path, face_path, capsys, monkeypatch):
    from sow.pipeline import SOWPipeline

    jobs = _jobs(tmp_path / "jobs.jsonl", face_path, 2)
    config = tmp_path / "fast.json"
    config.write_text(json.dumps(FAST))

    def interrupt(self, *args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(SOWPipeline, "__call__", interrupt)
    with pytest.raises(SystemExit) as info:
        main(["generate", "--batch", str(jobs), "--config", str(config), "-o", str(tmp_path / "out"), "-q"])
    captured = capsys.readouterr()
    assert info.value.code == 130
    assert "--resume" in captured.err and captured.err.strip().endswith("interrupted")


@pytest.mark.parametrize("quiet", [False, True])
def test_cli_batch_progress_bar_and_summary(tmp_path, face_path, capsys, quiet):
    jobs = _jobs(tmp_path / "jobs.jsonl", face_path, 2)
    config = tmp_path / "fast.json"
    config.write_text(json.dumps(FAST))
    with pytest.raises(SystemExit) as info:
        main(["generate", "--batch", str(jobs), "--config", str(config), "-o", str(tmp_path / "out"), *(["-q"] if quiet else [])])
    captured = capsys.readouterr()
    assert info.value.code == 0 and captured.out == ""
    assert ("ETA" in captured.err and "2/2" in captured.err) is not quiet  # the bar: items done and time left
    summary = [line for line in captured.err.splitlines() if line.startswith("batch:")]
    assert len(summary) == 1 and summary[0].startswith("batch: 2 done, 0 failed, 0 skipped of 2 in ")


class _Killed(BaseException):
    """Stands for the process dying: not an Exception, so nothing in the batch catches it."""


def test_a_crash_after_any_write_resumes_to_the_same_result(tmp_path, tiny_pipe, face_path, monkeypatch):
    """Crash right after every single write a 2-item batch makes (manifest lines and files), resume,
    and check: both items done exactly once, files matching the manifest, no temporary left."""
    import hashlib

    import sow.io.outputs as outputs_module

    jobs = _jobs(tmp_path / "jobs.jsonl", face_path, 2)
    items = read_batch_file(jobs)
    real_write, real_append = outputs_module.write_bytes_atomic, Manifest.append
    state = {"ops": 0, "crash_at": None}

    def counted(function):
        def wrapper(*args, **kwargs):
            result = function(*args, **kwargs)
            state["ops"] += 1
            if state["ops"] == state["crash_at"]:
                raise _Killed
            return result

        return wrapper

    monkeypatch.setattr(outputs_module, "write_bytes_atomic", counted(real_write))
    monkeypatch.setattr(Manifest, "append", counted(real_append))
    run_batch(tiny_pipe, items, tmp_path / "count", overrides=TINIEST)
    total_ops = state["ops"]
    assert total_ops == 1 + 2 * 6 + 1  # batch line; per item start, 4 files (image, plan picture, mask, record), done; summary

    for crash_at in range(1, total_ops + 1):
        out = tmp_path / f"crash-{crash_at}"
        state.update(ops=0, crash_at=crash_at)
        with pytest.raises(_Killed):
            run_batch(tiny_pipe, items, out, overrides=TINIEST)
        state.update(ops=0, crash_at=None)
        summary = run_batch(tiny_pipe, items, out, overrides=TINIEST, resume=True)
        assert summary.done + summary.skipped == 2 and summary.failed == 0, crash_at
        done = [e for e in Manifest(out).entries() if e.get("event") == "done"]
        assert sorted(e["id"] for e in done) == sorted(i.id for i in items), crash_at
        for entry in done:
            assert hashlib.sha256((out / entry["outputs"]["image"]).read_bytes()).hexdigest() == entry["image_sha256"]
        assert not list(out.glob(".*.tmp"))
