"""Seed initialization (DESIGN §2, step 2): the seeded canvas and the condition's latent mask.

The seeded canvas is the visual condition (its planned crop) pasted at box_v on a neutral gray
canvas. Pixels outside the condition's optional mask are gray too. The background is a reading
(``config.readings.seed_background``: gray, black, noise or none). :func:`latent_mask` gives the
mask on the latent grid (which latent cells of the condition the preserver keeps). The plan
picture drawn over the seeded canvas is :func:`sow.viz.plan.draw_plan`.
"""

from __future__ import annotations

from typing import Literal

import numpy as np
import torch
from PIL import Image

from sow.errors import InputError
from sow.schemas import Box, Canvas

GRAY = (128, 128, 128)


BLACK = (0, 0, 0)
Background = Literal["gray", "black", "noise", "none"]


def fit_condition(
    condition: Image.Image, box: Box, mask: Image.Image | None = None, polarity: str = "white-keeps"
) -> tuple[Image.Image, Image.Image]:
    """The condition resized to the box, with gray where the mask is off; and the mask at that size.

    ``polarity``: ``"white-keeps"`` (pixels >= 128 keep the condition) or ``"black-keeps"``
    (pixels < 128 keep it, as the reference code's mask files do).
    """
    image = condition.convert("RGB").resize((box.w, box.h), Image.Resampling.LANCZOS)
    if mask is None:
        keep = Image.new("L", (box.w, box.h), 255)
    else:
        on, off = (0, 255) if polarity == "black-keeps" else (255, 0)
        keep = mask.convert("L").resize((box.w, box.h), Image.Resampling.NEAREST).point(lambda v: on if v >= 128 else off)
    return Image.composite(image, Image.new("RGB", image.size, GRAY), keep), keep


def background_image(canvas: Canvas, background: Background, seed: int = 0) -> Image.Image:
    """The seeded canvas's background: gray, black, or uniform RGB noise from ``numpy.random.default_rng(seed)``."""
    if background == "noise":
        rng = np.random.default_rng(seed)
        return Image.fromarray(rng.integers(0, 256, (canvas.height, canvas.width, 3), dtype=np.uint8))
    return Image.new("RGB", (canvas.width, canvas.height), BLACK if background == "black" else GRAY)


def seed_images(
    fitted: Image.Image, keep: Image.Image, box: Box, canvas: Canvas, background: Background, seed: int = 0
) -> tuple[Image.Image, Image.Image]:
    """(the condition image, the seeded canvas) for a background.

    Gray (and ``"none"``, which encodes no canvas) is :func:`paste_on_gray` of the fitted condition.
    On another background the masked-out pixels of box_v are background too, and the condition
    image is the canvas's box_v crop.
    """
    if background in ("gray", "none"):
        return fitted, paste_on_gray(fitted, box, canvas)
    out = background_image(canvas, background, seed)
    out.paste(fitted, (box.x, box.y), keep)
    return out.crop((box.x, box.y, box.right, box.bottom)), out


def seed_canvas(condition: Image.Image, box: Box, canvas: Canvas, mask: Image.Image | None = None) -> Image.Image:
    """The condition (fitted to ``box``) pasted on a gray canvas."""
    return paste_on_gray(fit_condition(condition, box, mask)[0], box, canvas)


def paste_on_gray(fitted: Image.Image, box: Box, canvas: Canvas) -> Image.Image:
    """An already fitted condition pasted at ``box`` on a gray canvas."""
    out = Image.new("RGB", (canvas.width, canvas.height), GRAY)
    out.paste(fitted, (box.x, box.y))
    return out


def paste_all_on_gray(pasted: list[tuple[Image.Image, Box]], canvas: Canvas) -> Image.Image:
    """Several fitted conditions, each at its box, on one gray canvas (in order; the boxes do not overlap)."""
    out = Image.new("RGB", (canvas.width, canvas.height), GRAY)
    for fitted, box in pasted:
        out.paste(fitted, (box.x, box.y))
    return out


def latent_mask(keep: Image.Image, scale: int, rule: str = "centre") -> torch.Tensor:
    """(1, 1, h/scale, w/scale) in {0, 1}: a latent cell is kept when its deciding pixel is kept.

    ``rule``: ``"centre"``, the pixel PIL's nearest-neighbour resize picks (``scale * i + scale // 2``);
    ``"top-left"``, the cell's first pixel (``scale * i``), as ``torch.nn.functional.interpolate``'s
    ``"nearest"`` picks it in the reference code.
    """
    w, h = keep.size
    if rule == "top-left":
        small = np.asarray(keep.convert("L"))[: (h // scale) * scale : scale, : (w // scale) * scale : scale]
    else:
        small = np.asarray(keep.resize((w // scale, h // scale), Image.Resampling.NEAREST))
    return torch.from_numpy((small >= 128).astype(np.float32))[None, None]


def apply_crop(image: Image.Image, mask: Image.Image | None, crop: Box | None) -> tuple[Image.Image, Image.Image | None]:
    """The part of the condition (and its mask) that ``plan.crop`` selects; unchanged without a crop."""
    if crop is None:
        return image, mask
    width, height = image.size
    if crop.right > width or crop.bottom > height:
        raise InputError(f"plan crop [{crop}] reaches outside the {width}x{height} condition image")
    area = (crop.x, crop.y, crop.right, crop.bottom)
    if mask is not None:
        # a mask covers the whole condition at any resolution (seeding resizes it): crop the same share of it
        sx, sy = mask.width / width, mask.height / height
        mask_area = (round(crop.x * sx), round(crop.y * sy), round(crop.right * sx), round(crop.bottom * sy))
        mask = mask.crop((mask_area[0], mask_area[1], max(mask_area[2], mask_area[0] + 1), max(mask_area[3], mask_area[1] + 1)))
    return image.crop(area), mask
