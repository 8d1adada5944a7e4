"""Images <-> the VAE's pixel tensors: ``(n, 3, H, W)`` in [-1, 1], through diffusers' ``VaeImageProcessor``.

The seeded canvas and the conditions go in with :func:`to_tensor`; the decoded images come out as
PIL images, a numpy array or a tensor in [0, 1] (:func:`to_output`, the ``output_type`` of a
diffusers pipeline, through the processor's ``postprocess``). The processor is used without its
resize (sow sizes the canvas itself) and in float32 (a half-precision decode is upcast first, so
the 8-bit values do not depend on the dtype).
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np
import torch
from diffusers.image_processor import VaeImageProcessor
from PIL import Image


@lru_cache(maxsize=1)
def processor() -> VaeImageProcessor:
    """diffusers' image processor: [0, 255] <-> [-1, 1], no resize."""
    return VaeImageProcessor(do_resize=False, do_normalize=True)


# Kept by hand: VaeImageProcessor.preprocess gives the same values but a channels-last layout, which sends the VAE
# encoder down another convolution path on the CPU (latents 1e-4 off the recorded ones, tests/engine/test_regression_checksums.py).
def to_tensor(image: Image.Image) -> torch.Tensor:
    """RGB image -> (1, 3, H, W) float32 in [-1, 1]."""
    array = np.asarray(image.convert("RGB"), dtype=np.float32) / 127.5 - 1.0
    return torch.from_numpy(array).permute(2, 0, 1)[None]


def to_output(decoded: torch.Tensor, output_type: str) -> list[Image.Image] | np.ndarray | torch.Tensor:
    """Decoded images (n, 3, H, W) in [-1, 1] as ``output_type`` asks: ``"pil"`` (a list of RGB images),
    ``"np"`` ((n, H, W, 3) in [0, 1]) or ``"pt"`` ((n, 3, H, W) in [0, 1], on the CPU)."""
    out = processor().postprocess(decoded.float(), output_type=output_type)
    return out.cpu() if isinstance(out, torch.Tensor) else out


def to_image(tensor: torch.Tensor) -> Image.Image:
    """(1, 3, H, W) in [-1, 1] -> RGB image."""
    return to_output(tensor[:1], "pil")[0]
