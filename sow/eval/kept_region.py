"""How exact the kept pixels are, and how visible their seam: the paste's measurements.

For one condition, with ``kept`` its canvas-sized mask of kept pixels (:func:`sow.io.paste.kept_layout`)
and ``target`` the condition's pixels as seeded there:

``psnr``      10 log10(255^2 / MSE) over the kept pixels, all three channels; ``inf`` when equal.
``max_abs``   the largest absolute difference (0..255) over the kept pixels and channels; 0 when equal.
``seam``      the **jump** across the kept region's border over the gradients **beside** it:
              for every pair of 4-neighbour pixels with one kept and one not (the border), the
              absolute luminance step between them; beside, the steps of the pairs one pixel
              further in on each side, in the same direction (kept-kept inside, generated-generated
              outside), where both exist. ``seam = mean(jump) / mean(beside)``: about 1 when the
              border is no edge (the image continues across it as it does next to it), large for a
              hard edge. Unlike :func:`sow.eval.fidelity.seam` (box_v's rectangle against the
              inside only) it follows the mask (holes, alpha) and weighs both sides.

Pure numpy on uint8-range arrays, no model.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from sow.eval.fidelity import luminance, psnr


@dataclass(frozen=True)
class Seam:
    ratio: float | None
    """mean jump / mean beside; None when the region has no border inside the image."""
    jump: float | None
    beside: float | None


def seam_score(image: np.ndarray, kept: np.ndarray) -> Seam:
    """The seam of an (H, W, 3) (or (H, W) luminance) image at the border of ``kept`` (H, W) bool."""
    values = luminance(image) if image.ndim == 3 else image.astype(np.float64)
    jumps: list[np.ndarray] = []
    besides: list[np.ndarray] = []
    for axis in (0, 1):
        v = np.moveaxis(values, axis, 0)
        k = np.moveaxis(kept, axis, 0)
        n = v.shape[0]
        if n < 2:
            continue
        step = np.abs(np.diff(v, axis=0))  # step[i] between rows i and i+1
        crossing = k[:-1] != k[1:]
        jumps.append(step[crossing])
        # beside: the step one further on each side, on the same side of the border as its pixel
        rows, cols = np.nonzero(crossing)
        before = rows - 1  # the step between rows i-1 and i
        ok = (before >= 0)
        ok[ok] &= k[before[ok], cols[ok]] == k[rows[ok], cols[ok]]
        besides.append(step[before[ok], cols[ok]])
        after = rows + 1  # the step between rows i+1 and i+2
        ok = after < n - 1
        ok[ok] &= k[after[ok] + 1, cols[ok]] == k[after[ok], cols[ok]]
        besides.append(step[after[ok], cols[ok]])
    jump = np.concatenate(jumps) if jumps else np.empty(0)
    beside = np.concatenate(besides) if besides else np.empty(0)
    if jump.size == 0 or beside.size == 0:
        return Seam(None, None, None)
    mean_jump, mean_beside = float(jump.mean()), float(beside.mean())
    ratio = mean_jump / mean_beside if mean_beside > 0 else (math.inf if mean_jump > 0 else 1.0)
    return Seam(ratio, mean_jump, mean_beside)


def max_abs(target: np.ndarray, image: np.ndarray, kept: np.ndarray) -> float:
    """The largest absolute difference over the kept pixels (0 when there are none)."""
    if not kept.any():
        return 0.0
    return float(np.abs(target.astype(np.float64)[kept] - image.astype(np.float64)[kept]).max())


def kept_measures(target: np.ndarray, image: np.ndarray, kept: np.ndarray) -> dict[str, float | None]:
    """``psnr``, ``max_abs`` and ``seam`` of one image (uint8-range (H, W, 3)) for one condition's kept pixels."""
    seam = seam_score(image, kept)
    return {"psnr": psnr(target, image, kept), "max_abs": max_abs(target, image, kept), "seam": seam.ratio}
