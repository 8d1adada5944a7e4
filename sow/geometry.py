"""Box geometry: the pure functions every box of sow goes through.

A box is ``(x, y, w, h)`` in canvas pixels, (x, y) its top-left corner: a :class:`sow.schemas.Box`
or any object with ``x``, ``y``, ``w``, ``h`` attributes, or a 4-tuple. A canvas is anything with
``width`` and ``height`` (a :class:`sow.schemas.Canvas`) or a ``(width, height)`` pair. Functions
that make a box return a plain ``(x, y, w, h)`` tuple of ints; :class:`~sow.schemas.Box`'s methods
(``aligned``, ``clipped``, ``fits``), :func:`sow.schemas.overlapping`, the planners' repair, layout
and hand-made boxes, the engine's latent regions and DAM's masks all call these.

The latent grid is the VAE's: one latent cell covers ``grid`` x ``grid`` pixels (8 for SD 1.x,
2.x and SDXL; a run uses the model's own ``vae_scale_factor``). Two roundings are used and named:
a box's *corner* goes to the nearest grid line with halves up (:func:`nearest_grid_line`), its
*sides* to the nearest whole number of cells with halves to even (Python's ``round``).

This module imports nothing of sow (so :mod:`sow.schemas` may use it) and torch only inside the
two grid-mask functions (so ``import sow`` stays light).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # pragma: no cover
    import torch

LATENT_GRID = 8
"""Pixels per latent cell of SD 1.x / 2.x / SDXL's VAE: where a plan's boxes are placed. A run snaps
to its model's own ``vae_scale_factor``."""

Rect = tuple[int, int, int, int]
"""``(x, y, w, h)`` in canvas pixels."""


def xywh(box: Any) -> tuple:
    """``(x, y, w, h)`` of a Box-like object or a 4-sequence."""
    if hasattr(box, "w"):
        return (box.x, box.y, box.w, box.h)
    x, y, w, h = box
    return (x, y, w, h)


def size_of(canvas: Any) -> tuple[int, int]:
    """``(width, height)`` of a Canvas-like object or a pair."""
    if hasattr(canvas, "width"):
        return (canvas.width, canvas.height)
    width, height = canvas
    return (width, height)


# -- the grid -----------------------------------------------------------------------------


def floor_to_grid(value: float, grid: int) -> int:
    """The grid line at or below ``value``."""
    return int(value // grid) * grid


def ceil_to_grid(value: float, grid: int) -> int:
    """The grid line at or above ``value``."""
    return -floor_to_grid(-value, grid)


def nearest_grid_line(value: float, grid: int) -> int:
    """The grid line nearest ``value``, halves up (``4 -> 8`` on the 8-pixel grid, ``3.9 -> 0``)."""
    return int((value + grid / 2) // grid) * grid


def snap_to_grid(box: Any, grid: int, canvas: Any = None) -> Rect:
    """``box`` snapped to the ``grid``: the corner to the nearest grid line (halves up), each side
    rounded to whole cells (halves to even, at least one cell).

    With ``canvas`` (its sides multiples of ``grid``) a box that fitted is kept on it: a side
    longer than the canvas is cut to it, a corner rounded past the edge moves back by whole cells.
    """
    x, y, w, h = xywh(box)
    x, y = nearest_grid_line(x, grid), nearest_grid_line(y, grid)
    w = max(grid, round(w / grid) * grid)
    h = max(grid, round(h / grid) * grid)
    if canvas is not None:
        width, height = size_of(canvas)
        w, h = min(w, max(grid, floor_to_grid(width, grid))), min(h, max(grid, floor_to_grid(height, grid)))
        x, y = max(0, min(x, floor_to_grid(width - w, grid))), max(0, min(y, floor_to_grid(height - h, grid)))
    return (x, y, w, h)


# -- boxes on a canvas ----------------------------------------------------------------------


def fits(box: Any, canvas: Any) -> bool:
    """Whether ``box`` (corner at or past 0, 0) ends inside the canvas."""
    x, y, w, h = xywh(box)
    width, height = size_of(canvas)
    return x + w <= width and y + h <= height


def clip_to_canvas(box: Any, canvas: Any) -> Rect:
    """The part of ``box`` inside the canvas, at least one pixel (a box past the edge keeps the last pixel)."""
    x0, y0, w, h = xywh(box)
    width, height = size_of(canvas)
    x, y = min(x0, width - 1), min(y0, height - 1)
    return (x, y, max(1, min(x0 + w, width) - x), max(1, min(y0 + h, height) - y))


def move_inside(x: float, y: float, w: int, h: int, canvas: Any) -> tuple[float, float]:
    """The corner ``(x, y)`` of a ``w`` x ``h`` box moved (not cut) onto the canvas: first to 0, then
    back from the far edge (a box larger than the canvas ends up past the near edge)."""
    width, height = size_of(canvas)
    return min(max(0, x), width - w), min(max(0, y), height - h)


def overlapping(a: Any, b: Any) -> bool:
    """Whether two boxes share at least one pixel (touching edges do not)."""
    ax, ay, aw, ah = xywh(a)
    bx, by, bw, bh = xywh(b)
    return ax < bx + bw and bx < ax + aw and ay < by + bh and by < ay + ah


def intersection_area(a: Any, b: Any) -> int:
    """Pixels two boxes share (0 when they only touch or are apart)."""
    ax, ay, aw, ah = xywh(a)
    bx, by, bw, bh = xywh(b)
    w = min(ax + aw, bx + bw) - max(ax, bx)
    h = min(ay + ah, by + bh) - max(ay, by)
    return max(0, w) * max(0, h)


def iou(a: Any, b: Any) -> float:
    """Intersection over union of two boxes, 0..1 (0 when they share no pixel, e.g. one has no area)."""
    shared = intersection_area(a, b)
    if shared == 0:
        return 0.0
    _, _, aw, ah = xywh(a)
    _, _, bw, bh = xywh(b)
    return shared / (aw * ah + bw * bh - shared)


# -- pixels and latent cells -------------------------------------------------------------------


def to_latent_cells(box: Any, scale: int) -> tuple[int, int, int, int]:
    """``(top, left, height, width)`` in latent cells of a box already on the ``scale``-pixel grid;
    ``ValueError`` when it is not."""
    x, y, w, h = xywh(box)
    if x % scale or y % scale or w % scale or h % scale:
        raise ValueError(f"box {x},{y},{w},{h} is not aligned to the {scale}-pixel latent grid")
    return (y // scale, x // scale, h // scale, w // scale)


def from_latent_cells(top: int, left: int, height: int, width: int, scale: int) -> Rect:
    """The box in canvas pixels of a region of latent cells (the inverse of :func:`to_latent_cells`)."""
    return (left * scale, top * scale, width * scale, height * scale)


def box_mask(box: Any, canvas: Any, height: int, width: int) -> torch.Tensor:
    """(height, width) bool mask of the grid cells whose centres fall inside ``box``.

    The grid covers the canvas at any resolution (the latent grid, an attention layer's grid);
    a box off the canvas or without area marks no cell.
    """
    import torch

    x, y, w, h = xywh(box)
    canvas_width, canvas_height = size_of(canvas)
    ys = (torch.arange(height, dtype=torch.float32) + 0.5) * canvas_height / height
    xs = (torch.arange(width, dtype=torch.float32) + 0.5) * canvas_width / width
    inside_y = (ys >= y) & (ys < y + h)
    inside_x = (xs >= x) & (xs < x + w)
    return inside_y[:, None] & inside_x[None, :]


def cell_distances(centre: tuple[float, float], canvas: Any, height: int, width: int) -> torch.Tensor:
    """(height, width) float64: distance in canvas pixels from each grid cell's centre to ``centre`` (x, y)."""
    import torch

    canvas_width, canvas_height = size_of(canvas)
    ys = (torch.arange(height, dtype=torch.float64) + 0.5) * canvas_height / height
    xs = (torch.arange(width, dtype=torch.float64) + 0.5) * canvas_width / width
    cx, cy = centre
    return torch.sqrt((ys[:, None] - cy) ** 2 + (xs[None, :] - cx) ** 2)
