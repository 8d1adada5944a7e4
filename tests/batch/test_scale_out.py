"""Scale-out: the same batch on torchrun ranks, on a Ray actor pool and in one process.

The promises under test (docs/scale-out.md): an item's output depends only on its job,
never on which worker ran it or how many there were; each item is produced once; a
batch killed on N workers resumes on any number (or on one process) without redoing a
finished item or losing one; `sow eval` over Ray gives the single-process table.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from sow.batch.runner import MANIFEST_NAME, Manifest, read_batch_file, run_batch
from sow.batch.workers import PARTS_DIR, WorkerIdentity, merge_parts, part_files, shard
from sow.errors import InputError

REPO = Path(__file__).resolve().parents[2]
FAST = {"canvas": {"width": 64, "height": 64}, "cycles": 2}
JOBS = 6


def _jobs(path: Path, face: Path, n: int = JOBS) -> Path:
    lines = [json.dumps({"condition": str(face), "prompt": f"a chef number {i}", "seed": 10 + i, "name": f"job{i}"}) for i in range(n)]
    path.write_text("\n".join(lines) + "\n")
    return path


def _digests(out: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(out.glob("job*.png"))}


def _done_counts(out: Path) -> dict[str, int]:
    """How many `done` lines each item has, over the manifest and every part left."""
    counts: dict[str, int] = {}
    for entry in Manifest(out).entries():
        if entry.get("event") == "done":
            counts[entry["id"]] = counts.get(entry["id"], 0) + 1
    return counts


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}
    return {**env, "SOW_LOAD_PLUGINS": "", "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO), **extra}


@pytest.fixture(scope="module")
def batch_setup(tmp_path_factory, face_path):
    root = tmp_path_factory.mktemp("scale")
    jobs = _jobs(root / "jobs.jsonl", face_path)
    config = root / "fast.json"
    config.write_text(json.dumps(FAST))
    return root, jobs, config


@pytest.fixture(scope="module")
def reference(batch_setup, tiny_pipe):
    """The single-process run, one torch thread (as every worker here uses)."""
    import torch

    root, jobs, _ = batch_setup
    out = root / "single"
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        summary = run_batch(tiny_pipe, read_batch_file(jobs), out, overrides=FAST)
    finally:
        torch.set_num_threads(threads)
    assert summary.done == JOBS
    return _digests(out)


# -- assignment and identity ------------------------------------------------------------


@pytest.mark.parametrize("world", [1, 2, 3, 4, 7])
def test_shards_cover_every_item_once(world):
    items = list(range(10))
    shares = [shard(items, rank, world) for rank in range(world)]
    assert sorted(x for share in shares for x in share) == items
    assert all(share == [x for x in items if x % world == rank] for rank, share in enumerate(shares))


def test_identity_from_the_torchrun_environment():
    env = {"RANK": "3", "WORLD_SIZE": "4", "LOCAL_RANK": "1", "TORCHELASTIC_RUN_ID": "abc"}
    worker = WorkerIdentity.from_environment(env)
    assert (worker.rank, worker.world_size, worker.local_rank, worker.run_id) == (3, 4, 1, "abc")
    assert worker.part_name == "abc.rank0003-of-0004.jsonl"
    assert WorkerIdentity.from_environment({}) is None
    assert WorkerIdentity.from_environment({"WORLD_SIZE": "1", "RANK": "0"}) is None
    # without a run id, the rendezvous address names the run (the same for every rank)
    a = WorkerIdentity.from_environment({"RANK": "0", "WORLD_SIZE": "2", "MASTER_ADDR": "h", "MASTER_PORT": "29500"})
    b = WorkerIdentity.from_environment({"RANK": "1", "WORLD_SIZE": "2", "MASTER_ADDR": "h", "MASTER_PORT": "29500"})
    assert a.part_name.split(".")[0] == b.part_name.split(".")[0] and a.part_name != b.part_name


@pytest.mark.parametrize("env", [{"RANK": "x", "WORLD_SIZE": "2"}, {"RANK": "2", "WORLD_SIZE": "2"}, {"RANK": "0", "WORLD_SIZE": "0"}])
def test_a_bad_rank_environment_is_an_input_error(env):
    with pytest.raises(InputError, match="RANK|WORLD_SIZE"):
        WorkerIdentity.from_environment(env)


# -- manifest parts -----------------------------------------------------------------------


def test_merge_folds_finished_parts_and_leaves_running_ones(tmp_path):
    parts = tmp_path / PARTS_DIR
    parts.mkdir()
    (parts / "r.rank0000-of-0002.jsonl").write_bytes(b'{"event": "done", "id": "a"}\n{"event": "sta')  # torn by a kill
    running = parts / "r.rank0001-of-0002.jsonl"
    running.write_bytes(b'{"event": "start", "id": "b"}\n')
    (tmp_path / MANIFEST_NAME).write_bytes(b'{"event": "done", "id": "old"}\n{"event": "to')  # torn too
    from sow.io.locks import held

    with held(running) as ours:  # a running worker holds its part's lock
        assert ours
        assert merge_parts(tmp_path, tmp_path / MANIFEST_NAME) == 1
        assert part_files(tmp_path) == [running]
    lines = (tmp_path / MANIFEST_NAME).read_bytes().split(b"\n")
    assert lines[0] == b'{"event": "done", "id": "old"}'
    assert b'{"event": "done", "id": "a"}' in lines and not any(b'"sta' in line for line in lines[1:])
    assert merge_parts(tmp_path, tmp_path / MANIFEST_NAME) == 1  # its writer is gone now
    assert part_files(tmp_path) == [] and not parts.exists()
    ids = [e["id"] for e in Manifest(tmp_path).entries()]
    assert ids == ["old", "a", "b"]


def test_a_done_in_any_part_is_done_for_a_resume(tmp_path):
    (tmp_path / PARTS_DIR).mkdir()
    (tmp_path / MANIFEST_NAME).write_text(json.dumps({"event": "done", "id": "x", "job": "j"}) + "\n")
    (tmp_path / PARTS_DIR / "r.rank0001-of-0002.jsonl").write_text(json.dumps({"event": "start", "id": "x", "job": "j"}) + "\n")
    assert Manifest(tmp_path).state()["x"]["event"] == "done"


def test_a_killed_four_worker_batch_resumes_on_one(tmp_path, face_path, tiny_pipe, reference):
    """Ranks 0 and 2 of 4 finished, ranks 1 and 3 died before their first item: one process does the rest."""
    import torch

    jobs = _jobs(tmp_path / "jobs.jsonl", face_path)
    items = read_batch_file(jobs)
    out = tmp_path / "out"
    torch.set_num_threads(1)
    for rank in (0, 2):
        worker = WorkerIdentity(rank=rank, world_size=4, local_rank=rank, run_id="r4")
        assert run_batch(tiny_pipe, items, out, overrides=FAST, worker=worker).done == len(shard(items, rank, 4))
    # a dead rank's part: started an item, never finished it (and holds no lock: its process is gone)
    (out / PARTS_DIR).mkdir(exist_ok=True)
    dead = items[1]
    (out / PARTS_DIR / "r4.rank0001-of-0004.jsonl").write_text(
        json.dumps({"event": "start", "id": dead.id, "job": dead.job_sha256}) + "\n"
    )
    summary = run_batch(tiny_pipe, items, out, overrides=FAST, resume=True)
    finished_before = [i.id for r in (0, 2) for i in shard(items, r, 4)]
    assert (summary.done, summary.skipped) == (JOBS - len(finished_before), len(finished_before))
    assert _done_counts(out) == {item.id: 1 for item in items}
    assert part_files(out) == []  # folded into the manifest at the end
    assert _digests(out) == reference


# -- torchrun -----------------------------------------------------------------------------


def _torchrun(jobs: Path, config: Path, out: Path, *extra: str) -> subprocess.Popen:
    argv = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
            "-m", "sow", "generate", "--batch", str(jobs), "--config", str(config), "-o", str(out), "--quiet", *extra]
    return subprocess.Popen(argv, cwd=REPO, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def test_torchrun_two_ranks_match_one_process(batch_setup, reference):
    root, jobs, config = batch_setup
    out = root / "torchrun"
    proc = _torchrun(jobs, config, out)
    stdout, stderr = proc.communicate(timeout=600)
    assert proc.returncode == 0, stderr[-3000:]
    assert "rank 0 of 2" in stderr and "rank 1 of 2" in stderr
    assert _digests(out) == reference
    assert _done_counts(out) == {f"job{i}": 1 for i in range(JOBS)}
    assert part_files(out) == []  # merged when the last rank finished
    ranks = {e["id"]: e["worker"] for e in Manifest(out).entries() if e.get("event") == "start"}
    assert len(set(ranks.values())) == 2  # the work was really split over two processes


def _pids_started(out: Path) -> list[tuple[str, int]]:
    return [(e["id"], e["worker"]) for e in Manifest(out).entries() if e.get("event") == "start" and "worker" in e]


def test_torchrun_rank_killed_mid_item_then_resume(batch_setup, reference):
    root, jobs, config = batch_setup
    out = root / "torchrun-killed"
    proc = _torchrun(jobs, config, out)
    deadline = time.monotonic() + 400
    victim = None
    try:
        while victim is None:
            assert proc.poll() is None, f"torchrun ended before a rank could be killed: {proc.communicate()[1][-2000:]}"
            assert time.monotonic() < deadline, "torchrun too slow"
            done = {e["id"] for e in Manifest(out).entries() if e.get("event") == "done"}
            started = [(i, pid) for i, pid in _pids_started(out) if i not in done]
            rank1 = [(i, pid) for i, pid in started if i in {"job1", "job3", "job5"}]  # rank 1's share
            if rank1 and done:
                victim = rank1[-1]
            time.sleep(0.02)
        os.kill(victim[1], signal.SIGKILL)
        proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode != 0  # torchrun reports the dead rank
    before = _done_counts(out)
    assert victim[0] not in before

    resumed = subprocess.run(
        [sys.executable, "-m", "sow", "generate", "--batch", str(jobs), "--config", str(config), "-o", str(out), "--quiet", "--resume"],
        cwd=REPO, env=_env(), capture_output=True, text=True, timeout=600,
    )
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert f"{len(before)} skipped" in resumed.stderr
    assert _done_counts(out) == {f"job{i}": 1 for i in range(JOBS)}
    assert _digests(out) == reference
    assert part_files(out) == []


# -- Ray ----------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def local_ray():
    ray = pytest.importorskip("ray", reason="the ray extra is not installed (pip install 'sow[ray]')")
    from sow.batch.ray_engine import RaySettings, connect

    settings = RaySettings(workers=2)
    connect(settings)
    yield settings
    ray.shutdown()


def test_ray_two_actors_match_one_process(batch_setup, reference, local_ray, capfd):
    from sow.batch.ray_engine import run_batch_on_ray
    from sow.batch.workers import PipelineSpec

    root, jobs, _ = batch_setup
    out = root / "ray"
    events = []
    summary = run_batch_on_ray(PipelineSpec(model="tiny", device="cpu"), read_batch_file(jobs), out, local_ray,
                               overrides=FAST, on_event=events.append)
    assert (summary.done, summary.failed) == (JOBS, 0)
    assert sorted(e["id"] for e in events if e["event"] == "done") == [f"job{i}" for i in range(JOBS)]
    assert _digests(out) == reference
    assert _done_counts(out) == {f"job{i}": 1 for i in range(JOBS)}
    assert part_files(out) == []
    assert len({e["worker"] for e in events}) == 2  # both actors worked
    err = capfd.readouterr().err  # Ray's core writes to the process's stderr itself
    assert "has constructor arguments in the object store" not in err  # no error-level line on success
    assert not [line for line in err.splitlines() if " E " in line[:40] and line.startswith("[")], err[-2000:]


def test_ray_actor_killed_mid_item_then_resume(batch_setup, reference, local_ray, tiny_pipe):
    from sow.batch.ray_engine import run_batch_on_ray
    from sow.batch.workers import PipelineSpec

    root, jobs, _ = batch_setup
    out = root / "ray-killed"
    items = read_batch_file(jobs)
    outcome: dict = {}

    def drive():
        try:
            outcome["summary"] = run_batch_on_ray(PipelineSpec(model="tiny", device="cpu"), items, out, local_ray, overrides=FAST)
        except Exception as exc:  # noqa: BLE001 - Ray may give up on the killed actor's task
            outcome["error"] = exc

    thread = threading.Thread(target=drive)
    thread.start()
    deadline = time.monotonic() + 400
    victim = None
    while victim is None and thread.is_alive():
        assert time.monotonic() < deadline, "ray batch too slow"
        done = {e["id"] for e in Manifest(out).entries() if e.get("event") == "done"} if out.exists() else set()
        running = [(i, pid) for i, pid in (_pids_started(out) if out.exists() else []) if i not in done]
        if running and done:
            victim = running[-1]
        time.sleep(0.02)
    assert victim is not None, "the batch finished before an actor could be killed"
    os.kill(victim[1], signal.SIGKILL)
    thread.join(timeout=600)
    assert not thread.is_alive()

    import torch

    torch.set_num_threads(1)
    summary = run_batch(tiny_pipe, items, out, overrides=FAST, resume=True)
    assert summary.failed == 0
    assert _done_counts(out) == {item.id: 1 for item in items}
    assert _digests(out) == reference
    assert part_files(out) == []


def test_eval_over_ray_gives_the_single_process_table(tmp_path, faces_dir, local_ray, dlib_metric, tiny_components):
    from sow.batch.ray_engine import eval_compute_on_ray
    from sow.eval.runner import Evaluation, load_eval_config
    from sow.eval.spec import SpecItem

    faces = sorted(p for p in faces_dir.iterdir() if p.suffix.lower() in (".jpg", ".png") and p.name != "32bit.png")[:2]
    items = [SpecItem(id=f"f{n}", condition=str(path), prompt="a chef in a busy kitchen", setting="normal") for n, path in enumerate(faces)]
    config = load_eval_config(None, model="tiny", methods=["sow", "paste"], generation={**FAST}, device="cpu", dtype="fp32")

    import torch

    torch.set_num_threads(1)
    single = Evaluation(items, config, tmp_path / "single", components=tiny_components, metric=dlib_metric).run()
    on_ray = Evaluation(items, config, tmp_path / "ray", metric=dlib_metric)
    distributed = on_ray.run(compute=eval_compute_on_ray(on_ray, local_ray))

    def table(rows):
        return [row.model_dump(exclude={"seconds"}) for row in rows]

    assert len(distributed.rows) == len(single.rows) == 4
    assert table(distributed.rows) == table(single.rows)
    for a, b in zip(single.rows, distributed.rows):
        assert (tmp_path / "single" / a.image).read_bytes() == (tmp_path / "ray" / b.image).read_bytes()
