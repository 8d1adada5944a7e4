"""The scale-out options shared by `sow generate --batch` and `sow eval` (docs/scale-out.md)."""

from __future__ import annotations

from typing import Annotated, Optional

import typer

from sow.errors import InputError

LOCAL_CLUSTER = "local"
"""The address that starts a local Ray cluster (what a bare ``--ray`` means)."""

RayOpt = Annotated[Optional[str], typer.Option("--ray", metavar="[ADDRESS]", help="Run on Ray (the 'ray' extra of sow): alone (or 'local'), a local cluster; with ADDRESS (auto, ray://host:10001), that cluster.")]
WorkersOpt = Annotated[Optional[int], typer.Option("--workers", min=1, help="With --ray: actors in the pool, each loading the model once (default: one per GPU, or 2 without GPUs).")]
GpusPerWorkerOpt = Annotated[Optional[float], typer.Option("--gpus-per-worker", min=0, help="With --ray: GPUs each actor reserves (default: 1 on a cluster with GPUs, else 0: CPU actors).")]


def ray_settings(address: str | None, workers: int | None, gpus_per_worker: float | None):
    """The Ray settings of ``--ray [ADDRESS] --workers N --gpus-per-worker G``, or None without ``--ray``."""
    if address is None:
        if workers is not None or gpus_per_worker is not None:
            raise InputError("--workers and --gpus-per-worker go with --ray")
        return None
    from sow.batch.ray_engine import RaySettings, check_ray_address

    address = None if address in ("", LOCAL_CLUSTER) else check_ray_address(address)
    return RaySettings(address=address, workers=workers, gpus_per_worker=gpus_per_worker)


def optional_ray_address(argv: list[str]) -> list[str]:
    """Let ``--ray`` stand alone: a bare ``--ray`` (last, or before another option) means ``--ray local``."""
    out = list(argv)
    for index, arg in enumerate(out):
        if arg == "--":
            break
        if arg == "--ray" and (index + 1 == len(out) or out[index + 1].startswith("-")):
            out.insert(index + 1, LOCAL_CLUSTER)
            break
    return out
