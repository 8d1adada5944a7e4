"""Pixel fidelity of the condition region (``sow.eval.fidelity``) against hand-computed values."""

from __future__ import annotations

import math

import numpy as np
import pytest
from PIL import Image

from sow.eval import fidelity as fd
from sow.schemas import Box

BOX = Box(x=16, y=16, w=32, h=32)


def _textured(seed: int = 0) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(40, 216, (64, 64, 3), dtype=np.uint8))


def test_a_copy_scores_exact():
    image = _textured()
    result = fd.condition_fidelity(image, image.copy(), BOX)
    assert result.psnr == math.inf and result.ssim == 1.0


def test_psnr_of_a_constant_offset_by_hand():
    pasted = _textured()
    shifted = Image.fromarray((np.asarray(pasted).astype(np.int16) + 10).astype(np.uint8))
    # MSE = 100 inside the box: 10 log10(255^2 / 100)
    assert fd.condition_fidelity(pasted, shifted, BOX).psnr == pytest.approx(10 * math.log10(255**2 / 100), abs=1e-9)
    # only the kept pixels count: change the dropped half by 50, the kept half by 10
    array = np.asarray(pasted).astype(np.int16)
    array[16:48, 16:32] += 50
    array[16:48, 32:48] += 10
    keep = Image.new("L", (32, 32), 0)
    keep.paste(255, (16, 0, 32, 32))
    result = fd.condition_fidelity(pasted, Image.fromarray(array.astype(np.uint8)), BOX, keep)
    assert result.psnr == pytest.approx(10 * math.log10(255**2 / 100), abs=1e-9)


def test_ssim_of_flat_images_by_hand():
    # no variance anywhere: SSIM = (2 mu_a mu_b + C1) / (mu_a^2 + mu_b^2 + C1), C1 = (0.01 * 255)^2
    a, b = np.full((24, 24), 100.0), np.full((24, 24), 120.0)
    c1 = (0.01 * 255) ** 2
    assert fd.ssim(a, b) == pytest.approx((2 * 100 * 120 + c1) / (100**2 + 120**2 + c1), rel=1e-9)


def _ssim_with_opencv(a: np.ndarray, b: np.ndarray) -> float:
    """SSIM as Wang et al. (2004) define it, written here on OpenCV's Gaussian blur (a core dependency):
    an 11x11 window of sigma 1.5, C1 = (0.01 L)^2, C2 = (0.03 L)^2, the map averaged over the windows
    that lie wholly inside the image (5 pixels cropped per side), as scikit-image does."""
    import cv2

    def blur(x):
        return cv2.GaussianBlur(x, (11, 11), 1.5, borderType=cv2.BORDER_REFLECT)

    a, b = a.astype(np.float64), b.astype(np.float64)
    c1, c2 = (0.01 * 255) ** 2, (0.03 * 255) ** 2
    mu_a, mu_b = blur(a), blur(b)
    var_a, var_b, cov = blur(a * a) - mu_a**2, blur(b * b) - mu_b**2, blur(a * b) - mu_a * mu_b
    ssim_map = ((2 * mu_a * mu_b + c1) * (2 * cov + c2)) / ((mu_a**2 + mu_b**2 + c1) * (var_a + var_b + c2))
    return float(ssim_map[5:-5, 5:-5].mean())


def test_ssim_against_an_independent_implementation():
    # (it was scikit-image's, which no extra installs: the test always skipped, and its "< 0.9" never ran)
    a = fd.luminance(np.asarray(_textured(1)))
    values = []
    for noise in (12, 40):
        b = np.clip(a + np.random.default_rng(2).normal(0, noise, a.shape), 0, 255)
        assert fd.ssim(a, b) == pytest.approx(_ssim_with_opencv(a, b), abs=2e-3)
        values.append(fd.ssim(a, b))
    assert 0.9 < values[0] < 0.97 and values[1] < values[0] - 0.1  # more noise, less structure kept


def test_seam_by_hand():
    # a box of 200 with a +-2 checkerboard inside, on 100: border step 100 (or 98 / 102), inside step 4
    array = np.full((64, 64), 100.0)
    inside = 200 + 2 * (np.indices((32, 32)).sum(0) % 2 * 2 - 1)
    array[16:48, 16:48] = inside
    ratio, border, steps = fd.seam(array, BOX)
    assert steps == pytest.approx(4.0) and border == pytest.approx(100.0)
    assert ratio == pytest.approx(25.0)
    # no edge: the same texture everywhere reads about 1
    flat = 100 + 2 * (np.indices((64, 64)).sum(0) % 2 * 2 - 1).astype(float)
    assert fd.seam(flat, BOX)[0] == pytest.approx(1.0)
    # a box on the canvas edge only counts the borders inside the canvas
    corner = fd.seam(array, Box(x=0, y=0, w=48, h=48))
    assert corner[1] is not None
