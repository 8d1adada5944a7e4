"""A stopped Ray run: no actor of it writes after the driver returns (the race a quick --resume ran into)."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest

from sow.batch.ray_engine import _BatchActor, stop_actors, stop_marker
from sow.batch.workers import merge_parts, part_files, parts_dir
from sow.io.locks import lock_path

HOLD = """
import sys, time
from filelock import FileLock
lock = FileLock(sys.argv[1]); lock.acquire()
print("held", flush=True)
time.sleep(float(sys.argv[2]))
open(sys.argv[3], "w").write("written while held")
lock.release()
"""


def _hold(part: Path, seconds: float, witness: Path) -> subprocess.Popen:
    proc = subprocess.Popen([sys.executable, "-c", HOLD, str(lock_path(part)), str(seconds), str(witness)],
                            stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "held"
    return proc


def test_stop_waits_for_the_item_an_actor_still_runs(tmp_path):
    from sow.batch.runner import Manifest

    part = parts_dir(tmp_path) / "ray-abc.actor-1.jsonl"
    part.parent.mkdir(parents=True)
    part.write_text("")
    driver = Manifest(tmp_path, part="ray-abc.driver.jsonl")  # the driver holds its own part while it stops
    witness = tmp_path / "job3.png"
    proc = _hold(part, 1.0, witness)
    try:
        started = time.monotonic()
        with driver.open(fresh=False):
            stop_actors(tmp_path, "ray-abc", patience_s=20)
        waited = time.monotonic() - started
        assert witness.exists(), "stop_actors returned while the actor still wrote"
        assert waited > 0.5
        assert stop_marker(tmp_path, "ray-abc").exists()
    finally:
        proc.wait(timeout=30)


def test_stop_leaves_other_runs_alone_and_gives_up_after_its_patience(tmp_path):
    mine = parts_dir(tmp_path) / "ray-abc.actor-1.jsonl"
    other = parts_dir(tmp_path) / "ray-xyz.actor-2.jsonl"
    mine.parent.mkdir(parents=True)
    for part in (mine, other):
        part.write_text("")
    proc = _hold(other, 30.0, tmp_path / "other.txt")
    try:
        started = time.monotonic()
        stop_actors(tmp_path, "ray-abc", patience_s=5)  # another run's busy part is not waited for
        assert time.monotonic() - started < 2
    finally:
        proc.kill()
        proc.wait()
    proc = _hold(mine, 30.0, tmp_path / "mine.txt")
    try:
        with pytest.raises(Exception, match="still runs an item"):
            stop_actors(tmp_path, "ray-abc", patience_s=0.3)
    finally:
        proc.kill()
        proc.wait()


def test_an_actor_of_a_stopped_run_takes_no_item(tmp_path):
    from sow.batch.runner import Manifest

    actor = object.__new__(_BatchActor)  # the pipeline is never used: nothing may run
    actor.pipe, actor.items, actor.out_dir, actor.overrides = None, {"job0": _Item("job0")}, tmp_path, {}
    actor.manifest = Manifest(tmp_path, part="ray-abc.actor-1.jsonl")
    actor.stop = stop_marker(tmp_path, "ray-abc")
    actor.stop.parent.mkdir(parents=True)
    actor.stop.touch()
    events = actor({"id": ["job0"]})
    assert events["event"] == ["stopped"]
    assert not list(tmp_path.glob("*.png"))


def test_a_later_merge_removes_the_markers_of_finished_runs(tmp_path):
    stop_marker(tmp_path, "ray-old").parent.mkdir(parents=True)
    stop_marker(tmp_path, "ray-old").touch()
    running = parts_dir(tmp_path) / "ray-new.actor-1.jsonl"
    running.write_text("")
    stop_marker(tmp_path, "ray-new").touch()
    proc = _hold(running, 30.0, tmp_path / "w.txt")
    try:
        merge_parts(tmp_path, tmp_path / "manifest.jsonl")
        assert not stop_marker(tmp_path, "ray-old").exists()
        assert stop_marker(tmp_path, "ray-new").exists()  # its actor still holds its part
    finally:
        proc.kill()
        proc.wait()
    merge_parts(tmp_path, tmp_path / "manifest.jsonl")
    assert part_files(tmp_path) == []
    assert not stop_marker(tmp_path, "ray-new").exists()


class _Item:
    def __init__(self, item_id: str):
        self.id = item_id
