"""``sow generate --batch``: the command-line face of :mod:`sow.batch.runner` (bar, JSON lines, summary)."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import typer
from rich.console import Console

from sow.cli.progress import make_progress
from sow.batch.runner import batch_digest, batch_settings, check_resume_settings, plan_work, read_batch_file, run_batch
from sow.batch.workers import PipelineSpec, WorkerIdentity
from sow.errors import InputError
from sow.schemas import GenerationConfig
from sow.safety.security import redact, redact_data


def generate_batch(
    batch: Path,
    out_dir: Path,
    overrides: dict[str, Any],
    *,
    spec: PipelineSpec,
    ray: Any = None,
    resume: bool,
    overwrite: bool,
    quiet: bool,
    json_output: bool,
    console: Console,
) -> None:
    """Validate everything, load the model once, run, print the summary; exit 1 if an item failed.

    With ``ray`` (:class:`~sow.batch.ray_engine.RaySettings`) the items run on a Ray actor
    pool; under torchrun / ``accelerate launch`` (``WORLD_SIZE`` > 1) this process runs its
    rank's share on its own GPU.
    """
    items = read_batch_file(batch)
    for preset in sorted({item.job.preset for item in items}):
        GenerationConfig.from_preset(preset, **overrides)  # a bad config fails before the model loads
    settings = batch_settings(spec, overrides)
    worker = WorkerIdentity.from_environment(batch=batch_digest(items, settings))  # the run: this batch, this launch
    if worker is not None and ray is not None:
        raise InputError("--ray runs its own workers: start it once, not under torchrun")
    hint = resume_command(batch, out_dir, worker)
    if resume:
        check_resume_settings(out_dir, settings, hint)  # other settings than the start's: refused, naming what differs
    todo, _, _ = plan_work(items, out_dir, resume, overwrite, worker, settings)  # refuses to clobber, before the model loads
    if ray is not None:
        _run_on_ray(batch, items, out_dir, overrides, spec, ray, resume, overwrite, quiet, json_output, console, settings, hint)
        return
    if worker is not None:
        spec = _rank_spec(spec, worker)
    load = spec.load
    pipe = load() if todo else None

    def emit_json(event: dict[str, Any]) -> None:
        print(redact(json.dumps(redact_data(event))), flush=True)

    progress = make_progress(24, console, disable=quiet)
    task = progress.add_task("batch", total=len(todo))

    def on_event(event: dict[str, Any]) -> None:
        if json_output:
            emit_json(event)
        kind = event["event"]
        if kind == "start":
            progress.update(task, description=event["id"][:24])
        elif kind in ("done", "failed"):
            progress.advance(task)
            if kind == "failed" and not json_output:
                progress.console.print(f"failed {event['id']} (line {event['line']}): {event['error']}", markup=False, highlight=False, soft_wrap=True)

    try:
        if pipe is None:
            summary = run_batch(None, items, out_dir, overrides=overrides, resume=resume, overwrite=overwrite, on_event=on_event, worker=worker, settings=settings, resume_command=hint)
        else:
            with progress:
                summary = run_batch(pipe, items, out_dir, overrides=overrides, resume=resume, overwrite=overwrite, on_event=on_event, worker=worker, settings=settings, resume_command=hint)
    except KeyboardInterrupt:
        console.print(f"batch interrupted; finish it with: {hint}", markup=False, highlight=False, soft_wrap=True)
        raise
    _finish(summary, json_output, console, "" if worker is None else f" (rank {worker.rank} of {worker.world_size})")


def resume_command(batch: Path, out_dir: Path, worker: WorkerIdentity | None = None) -> str:
    """The command that resumes this batch exactly: this one's arguments, less ``--overwrite``, plus ``--resume``.

    Every option the batch started with (``--config``, ``--model``, ``--lora``...) is kept, so the
    resumed items run at the same settings (a resume at other settings is refused anyway).
    """
    import shlex

    from sow.cli.startup import INVOKED  # this process's arguments, set by sow.cli.commands.main

    given = INVOKED if INVOKED else ["generate", "--batch", str(batch), "--out", str(out_dir)]
    args = [a for a in given if a != "--overwrite"]
    if "--resume" not in args:
        args.append("--resume")
    launcher = "sow"
    if worker is not None:
        launcher = f"torchrun --nproc-per-node {worker.world_size} -m sow"
    return f"{launcher} {shlex.join(args)}"


def _finish(summary, json_output: bool, console: Console, who: str = "") -> None:
    result = summary.as_dict()
    if json_output:
        print(redact(json.dumps(redact_data({"event": "summary", **result}))), flush=True)
    else:
        console.print(
            f"batch{who}: {summary.done} done, {summary.failed} failed, {summary.skipped} skipped "
            f"of {summary.total} in {summary.seconds:.1f} s; manifest {summary.manifest}",
            markup=False,
            highlight=False,
            soft_wrap=True,
        )
    sys.stdout.flush()
    if summary.failed:
        raise typer.Exit(1)


def _rank_spec(spec: PipelineSpec, worker: WorkerIdentity) -> PipelineSpec:
    """A rank's pipeline: on its own GPU (``LOCAL_RANK``) when there are GPUs."""
    import dataclasses

    import torch

    if spec.device in ("auto", "cuda") and torch.cuda.is_available():
        torch.cuda.set_device(worker.local_rank % torch.cuda.device_count())
        return dataclasses.replace(spec, device=f"cuda:{torch.cuda.current_device()}")
    return spec


def _run_on_ray(batch, items, out_dir, overrides, spec, ray, resume, overwrite, quiet, json_output, console, settings, hint) -> None:
    from sow.batch.ray_engine import run_batch_on_ray

    bar = make_progress(24, console, disable=quiet)
    task = bar.add_task("batch (ray)", total=None)

    def on_event(event: dict[str, Any]) -> None:
        if json_output:
            print(redact(json.dumps(redact_data(event))), flush=True)
        if event["event"] in ("done", "failed"):
            bar.update(task, completed=event["index"] + 1, total=event["todo"], description=event["id"][:24])
            if event["event"] == "failed" and not json_output:
                bar.console.print(f"failed {event['id']}: {event['error']}", markup=False, highlight=False, soft_wrap=True)

    try:
        with bar:
            summary = run_batch_on_ray(spec, items, out_dir, ray, overrides=overrides, resume=resume, overwrite=overwrite, on_event=on_event,
                                       batch_settings=settings, resume_command=hint)
    except KeyboardInterrupt:
        console.print(f"batch interrupted; finish it with: {hint}", markup=False, highlight=False, soft_wrap=True)
        raise
    _finish(summary, json_output, console, " on ray")
