"""Batches and evaluations on a Ray cluster (the optional extra ``sow[ray]``).

The driver (the process that runs ``sow generate --batch ... --ray``) validates the
whole batch, decides what is left to do from the manifest, and hands the items to Ray
Data: ``map_batches`` over an actor pool, one item per call, each actor loading the
pipeline once (:class:`~sow.batch.workers.PipelineSpec`). Actors write their outputs
into the one output folder (on a cluster: a filesystem every node mounts at the same
path) with the file names of a single-process run, and journal each item in a manifest
part of their own (:mod:`sow.batch.workers`); the driver reports items as they finish
and merges the parts at the end. An eval sends (item, method) pairs the same way; the
actors return rows and the driver alone appends them to ``rows.jsonl``.

Nothing here is a scheduler of its own: which actor runs which item, retries of a task
whose actor died, and placement on GPUs are Ray's.
"""

from __future__ import annotations

import logging
import os
import time
import uuid
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sow.batch.runner import MANIFEST_NAME, BatchItem, BatchSummary, Manifest, _start_afresh, plan_work, run_item
from sow.batch.workers import STOP_SUFFIX, PipelineSpec, merge_parts, part_files, parts_dir, run_of
from sow.errors import InputError, SowError
from sow.io.locks import held
from sow.safety.security import redact

INSTALL_HINT = "Ray is not installed: pip install 'sow[ray]'"


@dataclass(frozen=True)
class RaySettings:
    """Where and how wide to run."""

    address: str | None = None
    """A running cluster (``auto``, ``ray://host:10001``) or None: start a local one."""
    workers: int | None = None
    """Actors in the pool (None: one per GPU of the cluster, or 2 on a cluster without GPUs)."""
    gpus_per_worker: float | None = None
    """GPUs each actor reserves (None: 1 on a cluster with GPUs, else 0)."""
    cpus_per_worker: float = 1.0
    """CPUs each actor reserves; its torch threads follow this on a CPU-only cluster."""


def _ray():
    try:
        import ray
        import ray.data  # noqa: F401
    except ImportError:
        raise InputError(INSTALL_HINT) from None
    return ray


CLIENT_PREFIX = "ray://"
"""Ray Client addresses (a remote cluster's head, port 10001): they need ``ray[client]`` (grpcio)."""


def check_ray_address(address: str) -> str:
    """``address`` if it is a form sow accepts: ``auto``, ``HOST:PORT`` or ``ray://HOST:PORT`` (exit 2 otherwise).

    A ``ray://`` address needs Ray's client (``grpcio``), which the ``ray`` extra installs; without
    it the address is refused here, before anything loads, instead of failing inside Ray.
    """
    from sow.io.network import split_host_port

    text = address.strip()
    if text == "auto":
        return text
    if text.startswith(CLIENT_PREFIX):
        split_host_port(text[len(CLIENT_PREFIX):], "--ray")
        try:
            import grpc  # noqa: F401 - what ray.util.client needs
        except ImportError:
            raise InputError(f"--ray {text}: ray:// addresses need Ray's client: pip install 'sow[ray]' (it brings ray[client])") from None
        return text
    if "://" in text:
        raise InputError(f"--ray {address!r}: use auto, HOST:PORT (a cluster's GCS, port 6379) or ray://HOST:PORT (Ray Client, port 10001)")
    split_host_port(text, "--ray")
    return text


def _check_reachable(address: str) -> None:
    """A ``HOST:PORT`` or ``ray://HOST:PORT`` where nothing answers fails within ``CONNECT_TIMEOUT_S`` (Ray retries for minutes)."""
    from sow.io.network import CONNECT_TIMEOUT_S, check_reachable, split_host_port

    if address == "auto":
        return
    host, port = split_host_port(address.removeprefix(CLIENT_PREFIX), "--ray")
    check_reachable(host, port, "--ray", CONNECT_TIMEOUT_S)


def connect(settings: RaySettings):
    """Join ``settings.address`` or start a local cluster; return the ``ray`` module."""
    ray = _ray()
    if settings.address and not ray.is_initialized():
        _check_reachable(check_ray_address(settings.address))
    if not ray.is_initialized():
        kwargs: dict[str, Any] = {"include_dashboard": False, "log_to_driver": False, "configure_logging": False}
        if settings.address:
            kwargs["address"] = settings.address
        else:  # a local cluster: a small object store, items are paths and small dicts
            kwargs["object_store_memory"] = 128 * 1024 * 1024
        try:
            ray.init(**kwargs)
        except ConnectionError as exc:  # no cluster there: the environment's, not the input's
            from sow.errors import EnvironmentProblem

            first = str(exc).splitlines()[0][:200] if str(exc) else type(exc).__name__
            raise EnvironmentProblem(f"--ray {settings.address}: cannot reach the cluster ({first})") from None
    for name in ("ray", "ray.data"):  # sow reports progress and errors itself
        logging.getLogger(name).setLevel(logging.ERROR)
    context = ray.data.DataContext.get_current()
    context.enable_progress_bars = False  # sow shows its own progress, as items finish
    context.print_on_execution_start = False
    return ray


def pool_shape(ray, settings: RaySettings) -> tuple[int, float]:
    """(actors, GPUs per actor) for this cluster."""
    gpus = float(ray.cluster_resources().get("GPU", 0))
    per = settings.gpus_per_worker if settings.gpus_per_worker is not None else (1.0 if gpus else 0.0)
    if per < 0:
        raise InputError(f"--gpus-per-worker {per}: must be 0 or more")
    if per > 0 and gpus < per:
        raise InputError(f"--gpus-per-worker {per}: the cluster has {gpus:g} GPUs")
    workers = settings.workers if settings.workers is not None else (max(1, int(gpus // per)) if per else 2)
    if workers < 1:
        raise InputError(f"--workers {workers}: must be at least 1")
    return workers, per


class _BatchActor:
    """One actor of the pool: loads the pipeline once, runs the items it is handed."""

    def __init__(self, spec: PipelineSpec, items: list[BatchItem], out_dir: str, overrides: dict, run_id: str, gpus: float):
        if spec.threads is None and gpus == 0:
            import torch

            torch.set_num_threads(max(1, int(float(os.environ.get("SOW_RAY_CPUS", "1")))))
        self.pipe = spec.load()
        self.items = {item.id: item for item in items}
        self.out_dir = Path(out_dir)
        self.overrides = overrides
        self.manifest = Manifest(self.out_dir, part=f"{run_id}{ACTOR_PART}{os.getpid()}.jsonl")
        self.stop = stop_marker(self.out_dir, run_id)

    def __call__(self, batch: dict[str, Any]) -> dict[str, list]:
        events: dict[str, list] = {"id": [], "event": [], "seconds": [], "error": [], "worker": []}
        for item_id in batch["id"]:
            item = self.items[str(item_id)]
            event = {"event": "stopped", "id": item.id}
            if not self.stop.exists():
                with self.manifest.open(fresh=False):  # locked while the item runs: a merge leaves it alone
                    if not self.stop.exists():  # asked again under the lock: the driver waits for held parts only
                        event = run_item(self.pipe, item, self.out_dir, self.manifest, self.overrides)
            events["id"].append(event["id"])
            events["event"].append(event["event"])
            events["seconds"].append(float(event.get("seconds", 0.0)))
            events["error"].append(event.get("error", ""))
            events["worker"].append(os.getpid())
        return events


def run_batch_on_ray(
    spec: PipelineSpec,
    items: list[BatchItem],
    out_dir: Path,
    settings: RaySettings,
    *,
    overrides: dict[str, Any] | None = None,
    resume: bool = False,
    overwrite: bool = False,
    on_event: Callable[[dict[str, Any]], None] | None = None,
    batch_settings: dict[str, Any] | None = None,
    resume_command: str = "",
) -> BatchSummary:
    """Run a validated batch on Ray; the same outputs, manifest entries and records as :func:`run_batch`."""
    from sow.batch.runner import batch_settings as settings_of

    started = time.perf_counter()
    emit = on_event or (lambda event: None)
    recorded = batch_settings if batch_settings is not None else settings_of(spec, overrides)
    todo, done_before, fresh = plan_work(items, out_dir, resume, overwrite, None, recorded)  # refuses to clobber, before Ray starts
    summary = BatchSummary(skipped=len(done_before), total=len(items), manifest=str(out_dir / MANIFEST_NAME))
    for item in done_before:
        emit({"event": "skipped", "id": item.id, "line": item.line})
    out_dir.mkdir(parents=True, exist_ok=True)
    if fresh and overwrite:
        _start_afresh(out_dir, None)
    run_id = f"ray-{uuid.uuid4().hex[:12]}"
    driver = Manifest(out_dir, part=f"{run_id}.driver.jsonl")
    with driver.open(fresh=False):
        driver.append(event="batch", resume=resume, items=len(items), todo=len(todo), engine="ray", settings=recorded,
                      **({"resume_command": redact(resume_command)} if resume_command else {}))
        try:
            if todo:
                for index, event in enumerate(_map_items(spec, todo, out_dir, overrides or {}, run_id, settings)):
                    summary.count(event)
                    emit({**event, "index": index, "todo": len(todo)})
        except BaseException:  # a lost actor, Ctrl-C: no actor of this run may still write when we return
            stop_actors(out_dir, run_id)
            raise
        summary.seconds = time.perf_counter() - started
        driver.append(event="summary", **{k: v for k, v in summary.as_dict().items() if k != "failures"})
    merge_parts(out_dir, out_dir / MANIFEST_NAME)
    return summary


ACTOR_PART = ".actor-"
"""What names an actor's manifest part (``<run>.actor-<pid>.jsonl``; the driver's is ``<run>.driver.jsonl``)."""

STOP_PATIENCE_S = 900.0
"""How long a stopping run waits for its actors' items in progress (one item of a large model on a slow GPU)."""


def stop_marker(out_dir: Path, run_id: str) -> Path:
    """The file that tells a run's actors to take no new item (written by the driver when the run fails)."""
    return parts_dir(out_dir) / f"{run_id}{STOP_SUFFIX}"


def stop_actors(out_dir: Path, run_id: str, patience_s: float = STOP_PATIENCE_S) -> None:
    """After a failure: let no actor of ``run_id`` start another item, and wait for those still running one.

    Ray may keep the pool's surviving actors busy with queued items after the driver gave up;
    a ``--resume`` started then would race them for the same files. Each actor asks for the
    marker before and again under its part's lock, and holds that lock while an item runs, so
    once every part of the run is free (finished or killed: a dead process holds no lock) no
    actor of the run writes again. The marker stays (an actor Ray has not yet reaped finds it)
    until a later run in the folder merges its manifest (:func:`~sow.batch.workers.merge_parts`).
    """
    marker = stop_marker(out_dir, run_id)
    marker.parent.mkdir(parents=True, exist_ok=True)
    marker.touch()
    deadline = time.monotonic() + patience_s
    for part in (p for p in part_files(out_dir) if run_of(p) == run_id and ACTOR_PART in p.name):  # not the driver's own
        while True:
            with held(part) as free:
                if free:
                    break
            if time.monotonic() > deadline:
                raise SowError(f"{part.name}: a Ray actor of the stopped run still runs an item after {patience_s:g} s; "
                               "wait for it before --resume")
            time.sleep(0.05)


def actor_map(dataset, actor: type, **kwargs: Any):
    """``dataset.map_batches(actor, ...)`` on an actor pool whose actors are not restarted.

    Ray Data restarts a dead actor forever and retries its tasks forever by default: a worker that
    dies on every item (out of memory) would loop, and every successful run printed an error-level
    line (the actors' constructor arguments sit in the object store while restarts are on). Here a
    lost worker stops the run, and ``--resume`` finishes it. Ray 2.60 names no parameter for
    ``max_restarts`` yet, so it goes in the older form, whose deprecation warning is kept quiet.
    """
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="`ray_remote_args` is deprecated")
        return dataset.map_batches(actor, max_restarts=0, **kwargs)


def _map_items(spec, todo, out_dir, overrides, run_id, settings) -> Iterator[dict[str, Any]]:
    ray = connect(settings)
    workers, gpus = pool_shape(ray, settings)
    dataset = ray.data.from_items([{"id": item.id} for item in todo], override_num_blocks=len(todo))
    results = actor_map(
        dataset, _BatchActor,
        fn_constructor_kwargs={
            "spec": spec, "items": todo, "out_dir": str(out_dir), "overrides": overrides, "run_id": run_id, "gpus": gpus,
        },
        batch_size=1,
        compute=ray.data.ActorPoolStrategy(size=min(workers, len(todo))),
        num_cpus=settings.cpus_per_worker,
        num_gpus=gpus or None,
        runtime_env={"env_vars": {"SOW_RAY_CPUS": str(settings.cpus_per_worker)}},
    )
    try:
        for row in results.iter_rows():
            yield {"id": str(row["id"]), "event": str(row["event"]), "seconds": float(row["seconds"]),
                   "error": str(row["error"]), "worker": int(row["worker"])}
    except SowError:
        raise
    except Exception as exc:  # a task that failed for good (Ray wraps the cause)
        raise SowError(f"the Ray batch stopped: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}; "
                       "finish it with --resume") from None


# -- eval ------------------------------------------------------------------------------------


class _EvalActor:
    """One actor of an eval: builds the Evaluation once, computes the rows it is handed."""

    def __init__(self, items, config, out_dir: str, spec_base: str, pairs: list):
        from sow.eval.runner import Evaluation

        self.evaluation = Evaluation(items, config, Path(out_dir), spec_base=Path(spec_base))
        methods = {m.name: m for m in self.evaluation.methods}
        by_id = {item.id: item for item in items}
        self.pairs = {key: (by_id[i], methods[m]) for key, (i, m) in pairs}

    def __call__(self, batch: dict[str, Any]) -> dict[str, list]:
        rows = []
        for key in batch["key"]:
            item, method = self.pairs[str(key)]
            rows.append(self.evaluation.run_one(item, method).as_json())
        return {"key": list(batch["key"]), "row": rows}


def eval_compute_on_ray(evaluation, settings: RaySettings) -> Callable[[list], Iterator[Any]]:
    """A ``compute`` for :meth:`Evaluation.run` that makes the rows on a Ray actor pool."""

    def compute(pairs: list) -> Iterator[Any]:
        import json

        from sow.eval.rows import EvalRow

        ray = connect(settings)
        workers, gpus = pool_shape(ray, settings)
        keyed = [(f"{n:06d}", (item.id, method.name)) for n, (item, method) in enumerate(pairs)]
        dataset = ray.data.from_items([{"key": key} for key, _ in keyed], override_num_blocks=len(keyed))
        results = actor_map(
            dataset, _EvalActor,
            fn_constructor_kwargs={
                "items": evaluation.items, "config": evaluation.config, "out_dir": str(evaluation.out_dir),
                "spec_base": str(evaluation.spec_base), "pairs": keyed,
            },
            batch_size=1,
            compute=ray.data.ActorPoolStrategy(size=min(workers, len(keyed))),
            num_cpus=settings.cpus_per_worker,
            num_gpus=gpus or None,
        )
        for row in results.iter_rows():
            yield EvalRow.from_dict(json.loads(row["row"]), "eval row from a Ray actor")

    return compute


__all__ = ["RaySettings", "connect", "eval_compute_on_ray", "pool_shape", "run_batch_on_ray"]
