"""The paste: each condition's kept pixels put back over the decoded image, exactly.

The engine keeps a condition's *latents* exact (reset at every level of the cycles and at
t3); the last denoising steps and the VAE decoder then change its pixels. After decoding, the
paste writes every **kept pixel** back: the condition as seeded (its plan crop, resized to the
aligned box_v with Lanczos, the pixels its mask or alpha channel keeps) replaces the decoded
pixel at the same place, bit for bit. What differs is the seam, the border between a kept
pixel and a generated one:

``feather`` (default)  the generated side of a narrow band (``paste_band`` pixels) is shifted
                       towards the kept pixels: each band pixel gets the jump measured at its
                       nearest kept pixel (kept minus decoded there, smoothed along the border),
                       weighted by a cosine that falls from 1 at the border to 0 at the band's
                       outer edge. The generated texture (its gradients) stays; only a smooth
                       offset is added, so the border carries no step. Kept pixels: unchanged.
``hard``               the kept pixels alone, no blend: exact, with whatever step the decode left.
``none``               no paste: the method's own decode (the paper's output; not exact).

Everything here works on pixels and boxes only (a canvas, per condition its box, its fitted
RGB picture and its keep mask), so every model family gets the same paste.

The values are exact *in the output's own type*: a PIL image holds the condition's uint8
values; ``output_type="np"``/``"pt"`` hold ``float32(v) / 255`` for a kept value ``v``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Literal

import cv2
import numpy as np
import torch
from PIL import Image

from sow.schemas import Box, Canvas

PasteMode = Literal["feather", "hard", "none"]
PASTE_MODES: tuple[str, ...] = ("feather", "hard", "none")

BORDER_SMOOTHING = 1.5
"""Sigma (pixels) of the smoothing of the border jump along the border before it is carried into the band."""


@dataclass(frozen=True)
class KeptCondition:
    """One condition as seeded: where it sits and which of its pixels are kept."""

    box: Box
    """box_v as pasted (snapped to the latent grid), in canvas pixels."""
    pixels: Image.Image
    """The fitted RGB picture, box-sized (the condition's crop resized to the box; gray where not kept)."""
    keep: Image.Image
    """Box-sized ``L`` mask: 255 where the condition's pixel is kept, 0 where it is not."""


def band_width(canvas: Canvas, band: int | None) -> int:
    """The feather band in pixels: ``band``, or 1/64 of the canvas's short side (8 px at 512, at least 2)."""
    return band if band is not None else max(2, round(min(canvas.width, canvas.height) / 64))


def kept_layout(kept: list[KeptCondition], canvas: Canvas) -> tuple[np.ndarray, np.ndarray, list[np.ndarray]]:
    """(canvas-sized uint8 RGB of the kept pixels, their union mask, each condition's own mask).

    Boxes may reach past the canvas's edge only where the pipeline put them there; what lies
    outside the canvas is dropped.
    """
    height, width = canvas.height, canvas.width
    rgb = np.zeros((height, width, 3), np.uint8)
    union = np.zeros((height, width), bool)
    each = []
    for one in kept:
        mask = np.zeros((height, width), bool)
        box = one.box
        x0, y0 = max(box.x, 0), max(box.y, 0)
        x1, y1 = min(box.x + box.w, width), min(box.y + box.h, height)
        if x1 > x0 and y1 > y0:
            keep = np.asarray(one.keep.convert("L"))[y0 - box.y : y1 - box.y, x0 - box.x : x1 - box.x] >= 128
            pixels = np.asarray(one.pixels.convert("RGB"))[y0 - box.y : y1 - box.y, x0 - box.x : x1 - box.x]
            region = rgb[y0:y1, x0:x1]
            region[keep] = pixels[keep]
            mask[y0:y1, x0:x1] = keep
        union |= mask
        each.append(mask)
    return rgb, union, each


def _smooth_on(values: np.ndarray, where: np.ndarray, sigma: float) -> np.ndarray:
    """Normalized Gaussian smoothing of ``values`` (H, W, C) using only the ``where`` pixels."""
    weight = where.astype(np.float64)
    size = 2 * math.ceil(3 * sigma) + 1
    numerator = cv2.GaussianBlur(values * weight[..., None], (size, size), sigma, borderType=cv2.BORDER_CONSTANT)
    denominator = cv2.GaussianBlur(weight, (size, size), sigma, borderType=cv2.BORDER_CONSTANT)
    out = numerator / np.maximum(denominator, 1e-12)[..., None]
    return np.where(where[..., None], out, 0.0)


def feather_offset(generated: np.ndarray, target: np.ndarray, kept: np.ndarray, band: int) -> np.ndarray:
    """The offset the ``feather`` paste adds to the generated side, (H, W, C) float64 (zero off the band).

    ``generated`` and ``target`` are (H, W, C) in one scale; ``kept`` (H, W) bool. For a
    generated pixel at distance d (Euclidean, pixels) from the nearest kept pixel p, with d <= band:
    offset = w(d) * J(p), J = (target - generated) at the kept pixels on the border, smoothed along
    the border (sigma :data:`BORDER_SMOOTHING`), w(d) = (1 + cos(pi * d / (band + 1))) / 2.
    """
    if not kept.any() or kept.all() or band < 1:
        return np.zeros_like(generated, dtype=np.float64)
    outside = (~kept).astype(np.uint8)
    # kept pixels with a generated 8-neighbour: where the jump is measured
    border = kept & (cv2.dilate(outside, np.ones((3, 3), np.uint8)) > 0)
    jump = _smooth_on(target.astype(np.float64) - generated.astype(np.float64), border, BORDER_SMOOTHING)
    distance, label = cv2.distanceTransformWithLabels(outside, cv2.DIST_L2, 5, labelType=cv2.DIST_LABEL_PIXEL)
    # labels number the zero (kept) pixels in row-major order, from 1
    ys, xs = np.nonzero(outside == 0)
    nearest_y, nearest_x = ys[label - 1], xs[label - 1]
    weight = np.where((~kept) & (distance <= band), 0.5 * (1 + np.cos(np.pi * distance / (band + 1))), 0.0)
    return weight[..., None] * jump[nearest_y, nearest_x]


def paste_array(generated: np.ndarray, target: np.ndarray, kept: np.ndarray, mode: str, band: int) -> np.ndarray:
    """One image (H, W, C) float64 with the kept pixels of ``target`` pasted in (``mode`` feather or hard).

    The kept pixels of the result are ``target``'s exactly; the rest is ``generated``, plus the
    feather offset in the band.
    """
    out = generated.astype(np.float64)
    if mode == "feather":
        out = out + feather_offset(out, target, kept, band)
    out[kept] = target[kept]
    return out


@dataclass
class Pasted:
    """What :func:`paste_outputs` returns."""

    images: Any
    """The images in the output's type, the kept pixels exact."""
    unpasted: Any
    """The images as decoded (before the paste), same type; ``images`` itself when nothing was pasted."""
    notes: list[str]


def paste_outputs(images: Any, kept: list[KeptCondition], canvas: Canvas, mode: str, band: int | None, output_type: str) -> Pasted:
    """Paste the kept pixels into every image of a run (``output_type`` pil, np or pt; latent: nothing).

    A list of PIL images, an (n, H, W, 3) float array in [0, 1] or an (n, 3, H, W) tensor in
    [0, 1]; the same type comes back. Several conditions, masks with holes and alpha channels
    are all just a union of kept pixels here. (The pipeline pastes its PIL images through
    :func:`decode_type` and :func:`paste_decoded`, on the floats.)
    """
    if mode == "none":
        return Pasted(images, images, ["paste none: the kept regions are the model's decode, not the condition's pixels (the paper's method alone)"])
    if output_type == "latent":
        return Pasted(images, images, ["output_type latent: no pixels to paste into; decode the latents yourself (the kept pixels are not exact there)"])
    rgb, union, _ = kept_layout(kept, canvas)
    width = band_width(canvas, band)
    if output_type == "pil":
        out = []
        for image in images:
            array = paste_array(np.asarray(image.convert("RGB"), np.float64), rgb.astype(np.float64), union, mode, width)
            out.append(Image.fromarray(np.clip(np.rint(array), 0, 255).astype(np.uint8)))
        return Pasted(out, images, [])
    target32 = rgb.astype(np.float32) / np.float32(255)
    if output_type == "np":
        out = np.empty_like(images)
        for i, image in enumerate(images):
            blended = paste_array(image.astype(np.float64), target32.astype(np.float64), union, mode, width)
            one = np.clip(blended, 0, 1).astype(np.float32)
            one[union] = target32[union]
            out[i] = one
        return Pasted(out, images, [])
    arrays = images.permute(0, 2, 3, 1).numpy()
    pasted = paste_outputs(arrays, kept, canvas, mode, band, "np")
    return Pasted(torch.from_numpy(pasted.images).permute(0, 3, 1, 2).contiguous(), images, [])


def decode_type(mode: str, output_type: str) -> str:
    """What the decode should hand the paste: floats (``"np"``) for a PIL output that is pasted, else the output type."""
    return "np" if output_type == "pil" and mode != "none" else output_type


def paste_decoded(decoded: Any, kept: list[KeptCondition], canvas: Canvas, mode: str, band: int | None, output_type: str) -> Pasted:
    """The paste of a run: ``decoded`` as :func:`decode_type` asked for it, the result as ``output_type``.

    A PIL output is pasted on the decoder's floats and rounded once, so the PIL image is the
    ``output_type="np"`` array rounded, the feather band included; its kept pixels hold the
    condition's uint8 values exactly (``rint(float32(v) / 255 * 255) = v``).
    """
    if decode_type(mode, output_type) == output_type:
        return paste_outputs(decoded, kept, canvas, mode, band, output_type)
    floats = paste_outputs(decoded, kept, canvas, mode, band, "np")
    return Pasted(_rounded_images(floats.images), _rounded_images(floats.unpasted), floats.notes)


def _rounded_images(arrays: np.ndarray) -> list[Image.Image]:
    return [Image.fromarray(np.clip(np.rint(a.astype(np.float64) * 255), 0, 255).astype(np.uint8)) for a in arrays]
