"""Several conditions on one canvas: placing them side by side so that their boxes fit and never overlap.

Used by the heuristic planner (several photos, or several faces of one group photo) and by
the planner policy when a planner's boxes for several conditions cannot be repaired
(:func:`sow.planners.repair.repair_plan`). Every box this module makes lies on the 8-pixel
latent grid, so snapping it to the grid at run time moves nothing and two neighbours stay apart.
"""

from __future__ import annotations

from PIL import Image, ImageDraw

from sow.errors import InputError
from sow.geometry import LATENT_GRID, floor_to_grid, move_inside
from sow.schemas import Box, Canvas, GenerationConfig

GRID = LATENT_GRID
"""The latent cell of SD's VAE (:data:`sow.geometry.LATENT_GRID`): boxes are placed on this grid."""
GAP = 8
"""Pixels left free between two neighbouring boxes and at the canvas edges (one latent cell)."""
SHARED_MIN_SCALE = 0.5
"""With several conditions box_v may shrink to this share of ``min_side`` (a 512 canvas: 90 px) to fit."""


def side_limits(config: GenerationConfig, conditions: int) -> tuple[int, int]:
    """box_v's side limits with ``conditions`` people: one keeps the paper's, several may go smaller."""
    lo, hi = config.side_limits()
    if conditions <= 1:
        return lo, hi
    return max(GRID, round(lo * SHARED_MIN_SCALE)), hi


def check_fits(conditions: int, config: GenerationConfig) -> None:
    """Raise now, before any model loads, when ``conditions`` are more than a run takes or cannot fit side by side."""
    from sow.errors import InputError
    from sow.schemas import MAX_CONDITIONS

    if conditions > MAX_CONDITIONS:
        raise InputError(f"{conditions} conditions: a run takes at most {MAX_CONDITIONS} people")
    side_by_side([(1, 1)] * conditions, config.canvas, config, 0.0)


def side_by_side(
    sizes: list[tuple[int, int]], canvas: Canvas, config: GenerationConfig, top: float
) -> list[Box]:
    """One box per ``(width, height)`` image, left to right in the given order, the same longer side each.

    The longer side is the largest that fits ``len(sizes)`` boxes with :data:`GAP` between them
    and at both edges, capped at ``max_side`` (scaled with the canvas); each box keeps its image's
    aspect ratio and sits centred in its share of the canvas width, its top at ``top`` (a fraction
    of the height). Raises :class:`InputError` when the boxes would be smaller than
    :func:`side_limits` allows ("more conditions than fit").
    """
    n = len(sizes)
    lo, hi = side_limits(config, n)
    room = floor_to_grid((canvas.width - GAP * (n + 1)) / n, GRID)
    side = min(floor_to_grid(hi, GRID), room, floor_to_grid(canvas.height - GAP, GRID))
    if side < lo:
        raise InputError(
            f"{n} conditions do not fit side by side on the {canvas.width}x{canvas.height} canvas: each box would be "
            f"{max(side, 0)} px, below the smallest allowed {lo} px; use a wider canvas (e.g. 768x512) or fewer people"
        )
    boxes = []
    for k, (w, h) in enumerate(sizes):
        bw, bh = (side, max(GRID, floor_to_grid(side * h / w, GRID))) if w >= h else (max(GRID, floor_to_grid(side * w / h, GRID)), side)
        centre = (k + 0.5) * canvas.width / n
        x, y = move_inside(floor_to_grid(centre - bw / 2, GRID), floor_to_grid(canvas.height * top, GRID), bw, bh, canvas)
        boxes.append(Box(x=x, y=y, w=bw, h=bh))
    return boxes


STRIP_HEIGHT = 384
"""Height of each photo in the strip shown to a multimodal planner for several conditions."""


def condition_strip(images: list[Image.Image], height: int = STRIP_HEIGHT, gap: int = 16) -> Image.Image:
    """The condition photos side by side at one height on white, each numbered 1.. in its top-left corner."""
    scaled = [im.convert("RGB").resize((max(1, round(im.width * height / im.height)), height)) for im in images]
    strip = Image.new("RGB", (sum(im.width for im in scaled) + gap * (len(scaled) + 1), height + 2 * gap), (255, 255, 255))
    draw = ImageDraw.Draw(strip)
    x = gap
    for number, im in enumerate(scaled, start=1):
        strip.paste(im, (x, gap))
        label = (x + 4, gap + 4)
        draw.rectangle(draw.textbbox(label, str(number)), fill=(0, 0, 0))
        draw.text(label, str(number), fill=(255, 255, 255))
        x += im.width + gap
    return strip
