"""The plan's boxes as the page shows them: draggable boxes on the canvas and a table of numbers.

Each condition (person) has two boxes, ``box_v`` (where the face is pasted) and ``box_r`` (the
related region, the body), labelled ``person N box_v`` / ``person N box_r`` and coloured as in
the plan picture (:data:`sow.viz.plan.PLAN_COLORS`). A box the user moved or resized is snapped
to the latent grid when it is released, so the page shows the box the image will use; the table
shows the same boxes in canvas pixels and takes typed numbers for precision.

No gradio here: the page (:mod:`sow.ui.app`) hands these functions plain lists and dicts.
"""

from __future__ import annotations

from typing import Any

from PIL import Image

from sow.errors import InputError
from sow.schemas import Box, Plan

DISPLAY_SIDE = 384
"""Canvases smaller than this are shown enlarged by a whole factor (the box component shows a small
image at its own size, too small to grab a box)."""
LABEL_MARGIN = 24
"""Display pixels of empty band above the canvas: the component writes each box's label above its
top edge, so a box at the canvas's top keeps its label in view."""

KINDS = ("box_v", "box_r")
"""The two boxes of a condition, in the order the table lists them."""
TABLE_HEADERS = ["person", "box", "x", "y", "w", "h"]
"""The columns of the box table."""


def box_label(index: int, kind: str) -> str:
    """``person 1 box_v``: the label of condition ``index``'s box (0-based index)."""
    return f"person {index + 1} {kind}"


def parse_label(label: str, conditions: int) -> tuple[int, str]:
    """``"person 2 box_r"`` -> ``(1, "box_r")``; anything else is refused naming the label."""
    parts = str(label or "").split()
    if len(parts) == 3 and parts[0] == "person" and parts[1].isdigit() and parts[2] in KINDS:
        index = int(parts[1]) - 1
        if 0 <= index < conditions:
            return index, parts[2]
    raise InputError(f"box {label!r}: not one of the plan's boxes (person 1..{conditions}, box_v or box_r)")


def display_factor(plan: Plan) -> int:
    """The whole factor the canvas is enlarged by on the page (1 from :data:`DISPLAY_SIDE` up)."""
    return max(1, round(DISPLAY_SIDE / max(plan.canvas.width, plan.canvas.height)))


def display_image(seeded: Image.Image, plan: Plan) -> Image.Image:
    """The seeded canvas as the box component shows it: enlarged (nearest neighbour) under a label band."""
    factor = display_factor(plan)
    width, height = seeded.width * factor, seeded.height * factor
    shown = Image.new("RGB", (width, height + LABEL_MARGIN), (246, 246, 246))
    shown.paste(seeded.convert("RGB").resize((width, height), Image.Resampling.NEAREST), (0, LABEL_MARGIN))
    return shown


def annotation_boxes(plan: Plan) -> list[dict[str, Any]]:
    """The plan's boxes in the box component's form (corners in the pixels of :func:`display_image`),
    box_r first so that each box_v is drawn, and picked, on top of the body box it sits in."""
    from sow.viz.plan import PLAN_COLORS

    factor = display_factor(plan)
    boxes = []
    for kind in reversed(KINDS):
        for i, cond in enumerate(plan.conditions):
            box: Box = getattr(cond, kind)
            color = PLAN_COLORS[i % len(PLAN_COLORS)][KINDS.index(kind)]
            boxes.append({"xmin": box.x * factor, "ymin": box.y * factor + LABEL_MARGIN,
                          "xmax": box.right * factor, "ymax": box.bottom * factor + LABEL_MARGIN,
                          "label": box_label(i, kind), "color": tuple(color)})
    return boxes


def snapped(box: Box, plan: Plan, grid: int) -> Box:
    """``box`` on the latent grid (corner to the nearest line, whole cells), kept on the canvas."""
    return box.aligned(grid, plan.canvas) if grid > 1 else box


def plan_with_annotation(plan: Plan, boxes: list[dict[str, Any]] | None, grid: int = 8) -> Plan:
    """``plan`` with the boxes as the component now holds them (display pixels, as
    :func:`annotation_boxes` gives them), each snapped to the grid in canvas pixels.

    A box missing from ``boxes`` keeps its place; coordinates are clipped to the canvas.
    """
    factor = display_factor(plan)
    update: dict[int, dict[str, Box]] = {}
    for item in boxes or []:
        index, kind = parse_label(item.get("label", ""), len(plan.conditions))
        try:
            x0, x1 = (int(round(float(item[k]) / factor)) for k in ("xmin", "xmax"))
            y0, y1 = (int(round((float(item[k]) - LABEL_MARGIN) / factor)) for k in ("ymin", "ymax"))
        except (KeyError, TypeError, ValueError, OverflowError):  # a visitor's value: anything may come
            raise InputError(f"box {item.get('label')!r}: its corners are not numbers") from None
        x0, x1 = sorted((max(0, min(x0, plan.canvas.width)), max(0, min(x1, plan.canvas.width))))
        y0, y1 = sorted((max(0, min(y0, plan.canvas.height)), max(0, min(y1, plan.canvas.height))))
        box = Box(x=min(x0, plan.canvas.width - 1), y=min(y0, plan.canvas.height - 1), w=max(1, x1 - x0), h=max(1, y1 - y0))
        update.setdefault(index, {})[kind] = snapped(box, plan, grid)
    return _with_boxes(plan, update)


def table_rows(plan: Plan) -> list[list[Any]]:
    """One row per box: person number, box kind, x, y, w, h (canvas pixels)."""
    return [[i + 1, kind, *getattr(cond, kind).as_list()] for i, cond in enumerate(plan.conditions) for kind in KINDS]


def plan_with_rows(plan: Plan, rows: list[list[Any]] | None, grid: int = 8) -> Plan:
    """``plan`` with the boxes as the table's rows type them (snapped to the grid like a drag)."""
    update: dict[int, dict[str, Box]] = {}
    for row in rows or []:
        if len(row) < 6 or all(v in (None, "") for v in row):
            continue
        index, kind = parse_label(f"person {row[0]} {row[1]}", len(plan.conditions))
        try:
            x, y, w, h = (int(round(float(v))) for v in row[2:6])
        except (TypeError, ValueError, OverflowError):
            raise InputError(f"person {row[0]} {row[1]}: x, y, w, h must be numbers (canvas pixels)") from None
        try:
            box = Box(x=x, y=y, w=w, h=h)
        except ValueError:
            raise InputError(f"person {row[0]} {row[1]}: [{x}, {y}, {w}, {h}] is not a box (w and h above 0, x and y from 0)") from None
        if not box.fits(plan.canvas):
            raise InputError(f"person {row[0]} {row[1]} [{box}] reaches outside the {plan.canvas.width}x{plan.canvas.height} canvas")
        update.setdefault(index, {})[kind] = snapped(box, plan, grid)
    return _with_boxes(plan, update)


def _with_boxes(plan: Plan, update: dict[int, dict[str, Box]]) -> Plan:
    for index, boxes in sorted(update.items()):
        if any(getattr(plan.conditions[index], k) != b for k, b in boxes.items()):
            try:
                plan = plan.with_condition(index, **boxes)
            except ValueError as exc:
                from sow.schemas import first_error

                raise InputError(f"person {index + 1}: {first_error(exc)}") from None
    return plan
