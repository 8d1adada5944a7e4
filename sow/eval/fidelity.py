"""Pixel fidelity of the condition region: what one-way diffusion promises to keep.

Compares the condition **as pasted** (the seeded canvas inside the aligned box_v) with the
generated image inside the same box, and measures the **seam** at the box's border:

``psnr``   10 log10(255^2 / MSE) over the box's kept pixels (all three channels); ``inf``
           when they are equal (a pure paste).
``ssim``   structural similarity (Wang et al. 2004: 11x11 Gaussian window, sigma 1.5,
           K1 = 0.01, K2 = 0.03, L = 255) of the luminance, averaged over the kept pixels;
           1 when equal.
``seam``   mean absolute luminance step across the box border (pairs of 4-neighbour pixels,
           one inside the box, one outside, on the box's edges that lie inside the canvas)
           divided by the mean absolute step between 4-neighbours inside the box. About 1
           when the border is no edge; a gray-pasted face gives a large value.

Pure numpy, no model: the paste baseline scores psnr ``inf`` and ssim 1 exactly.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from PIL import Image

from sow.schemas import Box

SSIM_WINDOW = 11
SSIM_SIGMA = 1.5
SSIM_K1 = 0.01
SSIM_K2 = 0.03
PIXEL_RANGE = 255.0


@dataclass(frozen=True)
class Fidelity:
    psnr: float
    ssim: float
    seam: float | None
    """None when the box has no border inside the canvas or no inside steps."""
    seam_border: float | None
    seam_inside: float | None

    def as_row(self) -> dict[str, float | None]:
        def r(v: float | None) -> float | None:
            return None if v is None else (v if math.isinf(v) else round(v, 6))

        return {"psnr": r(self.psnr), "ssim": r(self.ssim), "seam": r(self.seam),
                "seam_border": r(self.seam_border), "seam_inside": r(self.seam_inside)}


def luminance(rgb: np.ndarray) -> np.ndarray:
    """ITU-R BT.601 luma of an (H, W, 3) array, float64."""
    rgb = rgb.astype(np.float64)
    return 0.299 * rgb[..., 0] + 0.587 * rgb[..., 1] + 0.114 * rgb[..., 2]


def psnr(reference: np.ndarray, image: np.ndarray, keep: np.ndarray | None = None) -> float:
    """PSNR in dB of ``image`` against ``reference`` (uint8-range arrays), over the ``keep`` pixels."""
    diff = reference.astype(np.float64) - image.astype(np.float64)
    if keep is not None:
        diff = diff[keep]
    mse = float(np.mean(diff**2)) if diff.size else 0.0
    return math.inf if mse == 0 else 10 * math.log10(PIXEL_RANGE**2 / mse)


def _gaussian_filter(values: np.ndarray) -> np.ndarray:
    """Separable Gaussian filter (valid part only: the output is smaller by the window - 1)."""
    half = SSIM_WINDOW // 2
    x = np.arange(-half, half + 1, dtype=np.float64)
    g = np.exp(-(x**2) / (2 * SSIM_SIGMA**2))
    g /= g.sum()
    rows = np.apply_along_axis(lambda r: np.convolve(r, g, mode="valid"), 1, values)
    return np.apply_along_axis(lambda c: np.convolve(c, g, mode="valid"), 0, rows)


def ssim_map(reference: np.ndarray, image: np.ndarray) -> np.ndarray:
    """The SSIM map of two (H, W) luminance arrays (valid windows only)."""
    a, b = reference.astype(np.float64), image.astype(np.float64)
    c1, c2 = (SSIM_K1 * PIXEL_RANGE) ** 2, (SSIM_K2 * PIXEL_RANGE) ** 2
    mu_a, mu_b = _gaussian_filter(a), _gaussian_filter(b)
    var_a = _gaussian_filter(a * a) - mu_a**2
    var_b = _gaussian_filter(b * b) - mu_b**2
    cov = _gaussian_filter(a * b) - mu_a * mu_b
    return ((2 * mu_a * mu_b + c1) * (2 * cov + c2)) / ((mu_a**2 + mu_b**2 + c1) * (var_a + var_b + c2))


def ssim(reference: np.ndarray, image: np.ndarray, keep: np.ndarray | None = None) -> float:
    """Mean SSIM of two (H, W) luminance arrays over the windows centred on ``keep`` pixels."""
    if np.array_equal(reference, image):
        return 1.0
    half = SSIM_WINDOW // 2
    h, w = reference.shape
    if h < SSIM_WINDOW or w < SSIM_WINDOW:
        raise ValueError(f"SSIM needs at least {SSIM_WINDOW}x{SSIM_WINDOW} pixels, got {w}x{h}")
    values = ssim_map(reference, image)
    if keep is not None:
        centres = keep[half : h - half, half : w - half]
        if centres.any():
            return float(values[centres].mean())
    return float(values.mean())


def seam(image: np.ndarray, box: Box) -> tuple[float | None, float | None, float | None]:
    """(ratio, border step, inside step) of an (H, W) luminance array at ``box``."""
    height, width = image.shape
    x0, y0, x1, y1 = box.x, box.y, min(box.right, width), min(box.bottom, height)
    steps: list[np.ndarray] = []
    if y0 > 0:
        steps.append(np.abs(image[y0, x0:x1] - image[y0 - 1, x0:x1]))
    if y1 < height:
        steps.append(np.abs(image[y1 - 1, x0:x1] - image[y1, x0:x1]))
    if x0 > 0:
        steps.append(np.abs(image[y0:y1, x0] - image[y0:y1, x0 - 1]))
    if x1 < width:
        steps.append(np.abs(image[y0:y1, x1 - 1] - image[y0:y1, x1]))
    inside = image[y0:y1, x0:x1]
    pairs = [np.abs(np.diff(inside, axis=0)).ravel(), np.abs(np.diff(inside, axis=1)).ravel()]
    inner = np.concatenate(pairs)
    if not steps or inner.size == 0:
        return None, None, None
    border = float(np.concatenate(steps).mean())
    mean_inside = float(inner.mean())
    ratio = border / mean_inside if mean_inside > 0 else (math.inf if border > 0 else 1.0)
    return ratio, border, mean_inside


def condition_fidelity(pasted: Image.Image, generated: Image.Image, box: Box, keep: Image.Image | None = None) -> Fidelity:
    """PSNR, SSIM (over ``keep``'s pixels, box-sized, white = kept) and the seam of ``generated``.

    ``pasted`` and ``generated`` are canvas-sized; ``box`` is box_v as aligned (the box the
    condition was pasted into).
    """
    if pasted.size != generated.size:
        generated = generated.resize(pasted.size, Image.Resampling.LANCZOS)
    crop = (box.x, box.y, box.right, box.bottom)
    ref = np.asarray(pasted.convert("RGB").crop(crop))
    out = np.asarray(generated.convert("RGB").crop(crop))
    kept = None if keep is None else np.asarray(keep.convert("L")) >= 128
    if kept is not None and kept.all():
        kept = None
    full = luminance(np.asarray(generated.convert("RGB")))
    ratio, border, inside = seam(full, box)
    return Fidelity(
        psnr=psnr(ref, out, kept),
        ssim=ssim(luminance(ref), luminance(out), kept),
        seam=ratio,
        seam_border=border,
        seam_inside=inside,
    )
