"""Many workers on one batch: who runs which item, and one manifest part per worker.

A batch split over workers (torchrun / accelerate ranks, Ray actors) keeps the
single-process guarantees with no coordination during work:

- **Assignment.** Under torchrun each rank takes the items at positions
  ``rank, rank + world, ...`` of the batch file (:func:`shard`), decided from the file
  alone, so no rank waits on another and two ranks never share an item. Ray hands items
  to its actor pool as they free up; each item is handed to one actor (a retried task
  after a dead actor reruns an item that never finished).
- **Manifest parts.** Each worker appends to a part of its own,
  ``<out>/manifest.parts/<run>.<worker>.jsonl``, holding an exclusive lock on it while it
  runs. The state of a batch (what is done) is the union of ``manifest.jsonl`` and every
  part, so a resume on any number of workers, or on one process, skips what any worker
  finished.
- **Merge.** When a worker finishes it folds every part whose writer is gone (its lock
  is free: finished, or killed) into ``manifest.jsonl`` and removes it; the last worker
  to finish leaves a single manifest. A part still locked belongs to a running worker
  and is left for it.

Locks are filelock's (:mod:`sow.io.locks`: a ``<part>.lock`` sidecar; ``flock`` on POSIX,
``LockFileEx`` on Windows): on a cluster's shared filesystem use one that supports ``flock``
(NFSv4, Lustre and CephFS do).
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

from sow.errors import InputError
from sow.io.locks import forget, held
from sow.pipeline import PipelineSpec  # the recipe is public beside SOWPipeline.from_pretrained (issue 24); kept importable here

PARTS_DIR = "manifest.parts"
"""The folder, inside the output folder, of the workers' manifest parts."""

STOP_SUFFIX = ".stop"
"""A stopped run's marker in the parts folder (:func:`sow.batch.ray_engine.stop_actors`)."""

T = TypeVar("T")


@dataclass(frozen=True)
class WorkerIdentity:
    """One worker of a multi-process batch: its rank among ``world_size`` and the run it belongs to."""

    rank: int
    world_size: int
    local_rank: int
    run_id: str

    @property
    def part_name(self) -> str:
        """The file name of this worker's manifest part."""
        return f"{_plain(self.run_id)}.rank{self.rank:04d}-of-{self.world_size:04d}.jsonl"

    @classmethod
    def from_environment(cls, env: Mapping[str, str] | None = None, batch: str = "") -> WorkerIdentity | None:
        """The identity torchrun or ``accelerate launch`` gives this process, or None when alone.

        Reads ``RANK``, ``WORLD_SIZE`` and ``LOCAL_RANK``. The run is named by the launch
        (``TORCHELASTIC_RUN_ID``, or ``MASTER_ADDR:MASTER_PORT`` where torchrun leaves it
        ``none``) and by ``batch``, the digest of the batch's jobs and settings
        (:func:`sow.batch.runner.batch_digest`): the same for every rank of one launch, and
        different for another batch, even when every launch shares torchrun's defaults.
        """
        env = os.environ if env is None else env
        if "WORLD_SIZE" not in env:
            return None
        world = _env_int(env, "WORLD_SIZE", minimum=1)
        if world == 1:
            return None
        rank = _env_int(env, "RANK", minimum=0)
        if rank >= world:
            raise InputError(f"RANK={rank} must be below WORLD_SIZE={world}")
        local = _env_int(env, "LOCAL_RANK", minimum=0) if "LOCAL_RANK" in env else rank
        run = env.get("TORCHELASTIC_RUN_ID", "")
        if not run or run == "none":
            run = f"{env.get('MASTER_ADDR', 'local')}:{env.get('MASTER_PORT', '0')}"
        if batch:
            run = f"{_plain(run)[:40]}-{batch[:16]}"
        return cls(rank=rank, world_size=world, local_rank=local, run_id=run)


def _env_int(env: Mapping[str, str], name: str, minimum: int) -> int:
    raw = env.get(name, "")
    try:
        value = int(raw)
    except ValueError:
        raise InputError(f"{name}={raw!r} in the environment is not a whole number") from None
    if value < minimum:
        raise InputError(f"{name}={value} in the environment must be at least {minimum}")
    return value


def _plain(text: str) -> str:
    """``text`` as a file-name field: no dots, which separate a part name's fields (:func:`run_of`)."""
    return re.sub(r"[^A-Za-z0-9_-]+", "-", text).strip("-")[:80] or "run"


def shard(items: Sequence[T], rank: int, world_size: int) -> list[T]:
    """The items of ``rank``: every ``world_size``-th, starting at position ``rank``."""
    if not 0 <= rank < world_size:
        raise ValueError(f"rank {rank} is outside a world of {world_size}")
    return list(items[rank::world_size])


def parts_dir(out_dir: Path) -> Path:
    return out_dir / PARTS_DIR


def part_files(out_dir: Path) -> list[Path]:
    """Every manifest part in ``out_dir``, in name order."""
    folder = parts_dir(out_dir)
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.glob("*.jsonl") if p.is_file())


def run_of(part: Path) -> str:
    """The run a part file belongs to (the first dot-separated field of its name)."""
    return part.name.split(".", 1)[0]


@contextmanager
def _locked_file(path: Path, mode: str) -> Iterator[object | None]:
    """Open ``path`` and yield it under its lock (:func:`sow.io.locks.held`), or yield None when another process holds it."""
    with held(path) as ours:
        if not ours:
            yield None
            return
        with open(path, mode) as handle:
            yield handle


def complete_lines(data: bytes) -> list[bytes]:
    """The lines of a journal that a writer finished (a line cut short by a kill is dropped).

    Lines end at ``\\n`` only: JSON Lines may hold U+2028 or U+0085 inside a string.
    """
    lines = data.split(b"\n")
    return [line for line in lines[:-1] if line.strip()]


def merge_parts(out_dir: Path, manifest_path: Path) -> int:
    """Fold every part whose writer is gone into ``manifest_path``; return how many were merged.

    Holds the manifest's lock while it writes; when another process holds it (a
    single-process batch running on the same folder) nothing is merged now and the parts
    stay: every reader takes the union anyway.
    """
    parts = part_files(out_dir)
    if not parts:
        _tidy_parts_dir(out_dir)
        return 0
    manifest_path.parent.mkdir(parents=True, exist_ok=True)
    merged = 0
    with _locked_file(manifest_path, "a+b") as manifest:
        if manifest is None:
            return 0
        manifest.seek(0)
        data = manifest.read()
        complete = data.rfind(b"\n") + 1
        if complete != len(data):  # the torn tail of a kill is no entry: cut it (sow.io.journal's policy)
            manifest.truncate(complete)
        manifest.seek(0, os.SEEK_END)
        for part in parts:
            with _locked_file(part, "rb") as handle:
                if handle is None:  # its worker still runs
                    continue
                lines = complete_lines(handle.read())
                if lines:
                    manifest.write(b"".join(line + b"\n" for line in lines))
                    manifest.flush()
                    os.fsync(manifest.fileno())
                part.unlink()
                merged += 1
            forget(part)  # its lock's sidecar, now that the part is gone
    _tidy_parts_dir(out_dir)
    return merged


def _tidy_parts_dir(out_dir: Path) -> None:
    """Remove the stop markers of runs with no part left, then the parts folder if it is empty."""
    folder = parts_dir(out_dir)
    if not folder.is_dir():
        return
    live = {run_of(part) for part in part_files(out_dir)}
    for marker in folder.glob(f"*{STOP_SUFFIX}"):
        if run_of(marker) not in live:  # a stopped run with no part left: none of its actors writes again
            marker.unlink(missing_ok=True)
    try:
        folder.rmdir()
    except OSError:
        pass  # parts of running workers, or their lock sidecars


__all__ = [
    "PARTS_DIR",
    "PipelineSpec",
    "WorkerIdentity",
    "complete_lines",
    "merge_parts",
    "part_files",
    "parts_dir",
    "run_of",
    "shard",
]
