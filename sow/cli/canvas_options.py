"""``--width`` / ``--height``: the canvas from the command line, and which canvas a run uses.

The canvas comes, first found wins, from ``--width``/``--height``, the ``--config`` file's
``canvas``, the ``--plan`` file's canvas, and last the model's native square (known only once
the model is built). A ``--plan`` whose canvas differs from a canvas given explicitly is
refused here, before any model loads.
"""

from __future__ import annotations

from typing import Annotated, Any, Optional

import typer

from sow.errors import InputError
from sow.schemas import Plan

WidthOpt = Annotated[
    Optional[int],
    typer.Option("--width", metavar="PX", help="Canvas width in pixels (a multiple of 8, 64..4096; with --height). Default: a --plan file's canvas where one is given, else the model's native square."),
]
HeightOpt = Annotated[
    Optional[int],
    typer.Option("--height", metavar="PX", help="Canvas height in pixels (a multiple of 8, 64..4096; with --width)."),
]


def with_canvas(overrides: dict[str, Any], width: int | None, height: int | None) -> dict[str, Any]:
    """``overrides`` (the ``--config`` fields) with ``--width``/``--height`` as the canvas.

    Both flags, or one of them beside a ``--config`` canvas that gives the other side.
    """
    if width is None and height is None:
        return overrides
    given = overrides.get("canvas") if isinstance(overrides.get("canvas"), dict) else {}
    width = width if width is not None else given.get("width")
    height = height if height is not None else given.get("height")
    if width is None or height is None:
        raise InputError("--width and --height go together (or give the other side in --config's canvas)")
    for name, value in (("--width", width), ("--height", height)):
        if isinstance(value, int) and (value % 8 or not 64 <= value <= 4096):
            raise InputError(f"{name} {value}: the canvas side must be a multiple of 8 in 64..4096")
    return {**overrides, "canvas": {"width": width, "height": height}}


def with_plan_canvas(overrides: dict[str, Any], plan: Plan | None, plan_file: Any) -> dict[str, Any]:
    """``overrides`` with the ``--plan`` file's canvas when none was given; a different one given is refused."""
    if plan is None:
        return overrides
    canvas = plan.canvas.model_dump()
    given = overrides.get("canvas")
    if given is None:
        return {**overrides, "canvas": canvas}
    if isinstance(given, dict) and (given.get("width"), given.get("height")) != (canvas["width"], canvas["height"]):
        raise InputError(
            f"--plan {plan_file} is for a {canvas['width']}x{canvas['height']} canvas, but the run's canvas is "
            f"{given.get('width')}x{given.get('height')} (--width/--height or --config); drop one, or re-plan"
        )
    return overrides
