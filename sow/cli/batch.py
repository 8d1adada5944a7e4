"""``sow generate --batch``: the command-line face of :mod:`sow.batch.runner` (bar, JSON lines, summary)."""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from sow.batch.runner import plan_work, read_batch_file, run_batch
from sow.schemas import GenerationConfig
from sow.io.security import redact, redact_data


def generate_batch(
    batch: Path,
    out_dir: Path,
    overrides: dict[str, Any],
    *,
    load: Callable[[], Any],
    resume: bool,
    overwrite: bool,
    quiet: bool,
    json_output: bool,
    console: Console,
) -> None:
    """Validate everything, load the model once, run, print the summary; exit 1 if an item failed."""
    items = read_batch_file(batch)
    for preset in sorted({item.job.preset for item in items}):
        GenerationConfig.from_preset(preset, **overrides)  # a bad config fails before the model loads
    todo, _, _ = plan_work(items, out_dir, resume, overwrite)  # refuses to clobber, before the model loads
    pipe = load() if todo else None

    def emit_json(event: dict[str, Any]) -> None:
        print(redact(json.dumps(redact_data(event))), flush=True)

    progress = Progress(
        TextColumn("{task.description:<24}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TextColumn("ETA"),
        TimeRemainingColumn(),
        console=console,
        disable=quiet,
    )
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
            summary = run_batch(None, items, out_dir, overrides=overrides, resume=resume, overwrite=overwrite, on_event=on_event)
        else:
            with progress:
                summary = run_batch(pipe, items, out_dir, overrides=overrides, resume=resume, overwrite=overwrite, on_event=on_event)
    except KeyboardInterrupt:
        console.print(f"batch interrupted; finish it with: sow generate --batch {batch} -o {out_dir} --resume", markup=False, highlight=False, soft_wrap=True)
        raise
    result = summary.as_dict()
    if json_output:
        emit_json({"event": "summary", **result})
    else:
        console.print(
            f"batch: {summary.done} done, {summary.failed} failed, {summary.skipped} skipped "
            f"of {summary.total} in {summary.seconds:.1f} s; manifest {summary.manifest}",
            markup=False,
            highlight=False,
            soft_wrap=True,
        )
    sys.stdout.flush()
    if summary.failed:
        raise typer.Exit(1)
