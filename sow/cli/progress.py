"""The CLI's one rich progress bar: over the UNet evaluations of a run, a batch's jobs, an eval's items, a benchmark's runs."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn


def make_progress(label_width: int = 16, console: Console | None = None, disable: bool = False, transient: bool = False) -> Progress:
    """A bar: label (``label_width`` characters), bar, done/total, elapsed, ETA. On stderr when ``console`` is.

    ``transient``: the bar is removed when done (and not printed at all on an error or off a terminal).
    """
    return Progress(
        TextColumn(f"{{task.description:<{label_width}}}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TextColumn("ETA"),
        TimeRemainingColumn(),
        console=console,
        disable=disable,
        transient=transient,
    )


@contextmanager
def counted_progress(
    label: str, total: int | None = None, label_width: int = 32, console: Console | None = None,
    disable: bool = False, transient: bool = False,
) -> Iterator[Callable[[int, int, str], None]]:
    """Yield ``progress(done, total, label)``, the callback the eval and the benchmark report to."""
    bar = make_progress(label_width, console, disable, transient)
    task = bar.add_task(label, total=total)

    def progress(done: int, total: int, label: str) -> None:
        bar.update(task, completed=done, total=total, description=label[:label_width])

    with bar:
        yield progress


@contextmanager
def unet_progress(total: int, disable: bool = False, console: Console | None = None) -> Iterator[Callable[[dict[str, Any]], None]]:
    """Yield a pipeline callback that advances a bar labelled with the current phase.

    ``total`` is the bar's length before the run starts (from the request's condition count); the
    pipeline's callback then reports the exact ``total`` of model calls, which the bar takes.
    """
    progress = make_progress(16, console, disable)
    task = progress.add_task("UNet", total=total)

    def callback(info: dict[str, Any]) -> None:
        label = info["phase"] if info.get("cycle") is None else f"cycle {info['cycle'] + 1}"
        progress.update(task, completed=info["evaluations"], total=info.get("total") or total, description=label)

    with progress:
        yield callback
