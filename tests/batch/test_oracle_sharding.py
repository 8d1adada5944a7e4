"""Batch sharding at its edges (issue 23): several nodes, an earlier run beside a fresh one, ``--overwrite``.

Each worker's identity is read from the environment torchrun gives it
(:meth:`WorkerIdentity.from_environment`), and the expectations are written here from the
rules of docs/scale-out.md, not read from the sharding code: item k belongs to the worker whose
*global* ``RANK`` is k mod ``WORLD_SIZE`` (``LOCAL_RANK`` only picks the GPU on its node); a
fresh batch refuses to write beside another run's manifest or parts but not beside its own
siblings'; ``--overwrite`` forgets other runs and never a sibling's part that is still being
written (its lock is held).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from sow.batch.runner import MANIFEST_NAME, Manifest, read_batch_file, run_batch
from sow.batch.workers import PARTS_DIR, WorkerIdentity, part_files
from sow.errors import InputError
from sow.io.locks import held

FAST = {"canvas": {"width": 64, "height": 64}, "cycles": 1}


def _items(tmp_path: Path, face: Path, n: int):
    lines = [json.dumps({"condition": str(face), "prompt": f"a chef number {i}", "seed": 20 + i, "name": f"job{i}"}) for i in range(n)]
    (tmp_path / "jobs.jsonl").write_text("\n".join(lines) + "\n")
    return read_batch_file(tmp_path / "jobs.jsonl")


def _worker(rank: int, local_rank: int, world: int, port: str = "29500") -> WorkerIdentity:
    """What torchrun tells one process of a ``world``-process launch (two nodes: local ranks repeat)."""
    env = {"RANK": str(rank), "LOCAL_RANK": str(local_rank), "WORLD_SIZE": str(world),
           "MASTER_ADDR": "node0", "MASTER_PORT": port}  # no TORCHELASTIC_RUN_ID (accelerate launch): the run is addr:port
    return WorkerIdentity.from_environment(env)


@pytest.fixture(autouse=True)
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _run(pipe, items, out, worker, **kw):
    ran = []
    summary = run_batch(pipe, items, out, overrides=FAST, worker=worker,
                        on_event=lambda e: ran.append(e["id"]) if e["event"] == "done" else None, **kw)
    return summary, ran


def _done_ids(out: Path) -> list[str]:
    return sorted(e["id"] for e in Manifest(out).entries() if e.get("event") == "done")


@pytest.mark.slow
def test_two_nodes_shard_by_global_rank_not_local_rank(tmp_path, face_path, tiny_pipe):
    items = _items(tmp_path, face_path, 4)
    out = tmp_path / "out"
    # two nodes of two GPUs: global ranks 0..3, local ranks 0, 1, 0, 1
    workers = [_worker(rank, rank % 2, 4) for rank in range(4)]
    assert len({w.part_name for w in workers}) == 4  # four parts, never two ranks in one file
    for rank, worker in enumerate(workers):
        summary, ran = _run(tiny_pipe, items, out, worker)
        assert ran == [items[rank].id], f"rank {rank} (local {rank % 2}) ran {ran}"
        assert (summary.done, summary.total) == (1, 1)
    assert _done_ids(out) == sorted(i.id for i in items)  # each item once, none twice
    batches = [e for e in Manifest(out).entries() if e.get("event") == "batch"]
    assert sorted(e["rank"] for e in batches) == [0, 1, 2, 3] and {e["world_size"] for e in batches} == {4}
    assert part_files(out) == []


def _earlier_part(out: Path, run: str = "old-run") -> Path:
    """An earlier launch's part, left behind by a worker that was killed (no lock held)."""
    (out / PARTS_DIR).mkdir(parents=True, exist_ok=True)
    part = out / PARTS_DIR / f"{run}.rank0001-of-0002.jsonl"
    part.write_text(json.dumps({"event": "start", "id": "x", "job": "j", "run": run}) + "\n")
    return part


@pytest.mark.parametrize("rank", [0, 1])
def test_a_fresh_distributed_run_beside_an_earlier_runs_part_is_refused(tmp_path, face_path, tiny_pipe, rank):
    items = _items(tmp_path, face_path, 2)
    out = tmp_path / "out"
    earlier = _earlier_part(out)
    with pytest.raises(InputError, match="records an earlier batch; pass --resume to finish it, or --overwrite"):
        _run(tiny_pipe, items, out, _worker(rank, 0, 2))
    assert earlier.read_text().count("\n") == 1 and not (out / "job0.png").exists()


def test_a_fresh_distributed_run_beside_an_earlier_runs_manifest_is_refused(tmp_path, face_path, tiny_pipe):
    items = _items(tmp_path, face_path, 2)
    out = tmp_path / "out"
    out.mkdir()
    (out / MANIFEST_NAME).write_text(json.dumps({"event": "done", "id": "x", "job": "j", "run": "old-run"}) + "\n")
    with pytest.raises(InputError, match="records an earlier batch"):
        _run(tiny_pipe, items, out, _worker(1, 1, 2))


@pytest.mark.slow
def test_siblings_of_one_launch_are_no_earlier_batch(tmp_path, face_path, tiny_pipe):
    """Rank 0 finishes first and merges its part into the manifest; rank 1 then starts fresh beside it."""
    items = _items(tmp_path, face_path, 2)
    out = tmp_path / "out"
    for rank in (0, 1):
        summary, ran = _run(tiny_pipe, items, out, _worker(rank, rank, 2))
        assert ran == [items[rank].id]
    assert _done_ids(out) == sorted(i.id for i in items)
    # another launch (another port) is another run: refused
    with pytest.raises(InputError, match="records an earlier batch"):
        _run(tiny_pipe, items, out, _worker(0, 0, 2, port="29501"))


@pytest.mark.slow
def test_overwrite_forgets_other_runs_but_never_a_live_sibling_part(tmp_path, face_path, tiny_pipe):
    items = _items(tmp_path, face_path, 2)
    out = tmp_path / "out"
    earlier = _earlier_part(out)
    (out / MANIFEST_NAME).write_text(json.dumps({"event": "done", "id": "x", "job": "j", "run": "old-run"}) + "\n")
    rank0, rank1 = _worker(0, 0, 2), _worker(1, 1, 2)
    # rank 1 of the same launch is running: its part is open and locked
    sibling = out / PARTS_DIR / rank1.part_name
    sibling.write_text(json.dumps({"event": "batch", "run": rank1.part_name.split(".")[0]}) + "\n")
    with held(sibling) as ours:  # how a running worker holds its part
        assert ours
        summary, ran = _run(tiny_pipe, items, out, rank0, overwrite=True)
        assert ran == [items[0].id]
        assert sibling.is_file() and sibling.read_text().startswith('{"event": "batch"')  # the live part is untouched
        assert not earlier.exists()  # the other run's part is forgotten
        assert all(e.get("run") != "old-run" for e in Manifest(out).entries())  # and its manifest lines
    assert _done_ids(out) == [items[0].id]
