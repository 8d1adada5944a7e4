"""A rich progress bar over the UNet evaluations of a run."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn


@contextmanager
def unet_progress(total: int, disable: bool = False, console: Console | None = None) -> Iterator[Callable[[dict[str, Any]], None]]:
    """Yield a pipeline callback that advances a bar labelled with the current phase."""
    progress = Progress(
        TextColumn("{task.description:<16}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=console,
        disable=disable,
        transient=False,
    )
    task = progress.add_task("UNet", total=total)

    def callback(info: dict[str, Any]) -> None:
        label = info["phase"] if info.get("cycle") is None else f"cycle {info['cycle'] + 1}"
        progress.update(task, completed=info["evaluations"], description=label)

    with progress:
        yield callback
