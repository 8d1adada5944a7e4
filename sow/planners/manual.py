"""Plans from hand-made boxes (``sow generate --box-v X,Y,W,H --box-r X,Y,W,H``).

A hand-made box_v rarely has the condition's aspect: pasting the condition into it as
given would stretch the face (``--box-v 10,10,100,40`` squashed it 2.4x). Here the box is
the *room* the condition may take: the condition keeps its aspect and is fitted inside,
centred; the result is snapped to the VAE's latent cells (inside the room where it can
be). The condition is cropped around its face as the ``heuristic`` planner would crop it.
Every change is one line in ``plan.repairs``, and the CLI prints them.
"""

from __future__ import annotations

import math

from PIL import Image

from sow.errors import InputError
from sow.geometry import LATENT_GRID, ceil_to_grid, floor_to_grid, move_inside
from sow.schemas import Box, GenerationConfig, Plan


def condition_crop(image: Image.Image) -> Box | None:
    """The square around the largest face that the ``heuristic`` planner crops to, or None (no face: all of it)."""
    from sow.faces import face_boxes
    from sow.planners.heuristic import face_crop

    faces = face_boxes(image)
    return face_crop(faces[0], image.size) if faces else None


def fit_inside(room: Box, aspect: float, grid: int = LATENT_GRID) -> Box:
    """The largest box of ``aspect`` (w / h) inside ``room``, centred, with sides on ``grid``.

    Refuses (:class:`InputError`, naming both ratios) when that box would be under one grid
    cell on a side.
    """
    w, h = (room.h * aspect, float(room.h)) if room.w / room.h > aspect else (float(room.w), room.w / aspect)
    w8, h8 = (math.floor(v / grid + 1e-9) * grid for v in (w, h))
    if min(w8, h8) < grid:
        raise InputError(
            f"box_v {room}: its aspect {room.w / room.h:.2f}:1 (w:h) leaves the condition's {aspect:.2f}:1 "
            f"under {grid} px on a side; give box_v about that aspect (e.g. {round(max(room.h, grid) * aspect)}x{max(room.h, grid)})"
        )
    cx, cy = room.x + room.w / 2, room.y + room.h / 2
    lo_x, hi_x = ceil_to_grid(room.x, grid), floor_to_grid(room.right - w8, grid)
    lo_y, hi_y = ceil_to_grid(room.y, grid), floor_to_grid(room.bottom - h8, grid)
    # centred on the grid line nearest the room's centre, halves to even (Python's round), as hand-made boxes always were
    x = round((cx - w8 / 2) / grid) * grid
    y = round((cy - h8 / 2) / grid) * grid
    x = min(max(x, lo_x), hi_x) if lo_x <= hi_x else floor_to_grid(room.x, grid)
    y = min(max(y, lo_y), hi_y) if lo_y <= hi_y else floor_to_grid(room.y, grid)
    return Box(x=max(0, x), y=max(0, y), w=w8, h=h8)


def hand_made_plan(image: Image.Image, box_v: Box, box_r: Box, prompt: str, config: GenerationConfig) -> Plan:
    """A plan from the user's boxes: the face crop, box_v fitted to its aspect and snapped; changes in ``repairs``."""
    crop = condition_crop(image)
    width, height = (crop.w, crop.h) if crop is not None else image.size
    aspect = width / height
    fitted = fit_inside(box_v, aspect)
    canvas = config.canvas
    if fitted.right > canvas.width or fitted.bottom > canvas.height:
        x, y = move_inside(fitted.x, fitted.y, fitted.w, fitted.h, canvas)
        fitted = fitted.model_copy(update={"x": x, "y": y})
    repairs: list[str] = []
    notes = [f"condition cropped to the face, [{crop}] in condition pixels" if crop is not None else "no face found: the whole condition is used"]
    if fitted != box_v:
        kept = abs(box_v.w / box_v.h - aspect) <= 0.02 * aspect
        why = "snapped to the 8-px latent cells" if kept else f"fitted inside to keep the condition's {aspect:.2f}:1 aspect (w:h), snapped to the {LATENT_GRID}-px latent cells"
        repairs.append(f"box_v {box_v} -> {fitted}: {why}")
    return Plan(canvas=canvas, box_v=fitted, box_r=box_r, crop=crop, prompt=prompt, user_prompt=prompt, planner="manual", repairs=repairs, notes=notes)
