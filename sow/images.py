"""The one image loader every command uses for visual conditions.

Conversions (each one documented in docs/method.md):

- EXIF orientation is applied.
- An alpha channel (RGBA, LA, palette with transparency) becomes the condition mask:
  pixels with alpha >= 128 are kept, the rest are gray on the canvas.
- Grayscale, palette, CMYK and 16-bit images are converted to 8-bit RGB.
"""

from __future__ import annotations

import hashlib
import io
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from sow.errors import InputError


@dataclass
class LoadedCondition:
    image: Image.Image
    """8-bit RGB."""
    mask: Image.Image | None
    """8-bit L, 255 where the condition is kept; None when the image has no alpha."""
    sha256: str
    notes: list[str] = field(default_factory=list)


def _to_rgb_and_mask(image: Image.Image, notes: list[str]) -> tuple[Image.Image, Image.Image | None]:
    if image.mode == "P" and "transparency" in image.info:
        image = image.convert("RGBA")
    if image.mode in ("I;16", "I;16B", "I;16L", "I"):
        array = np.asarray(image, dtype=np.float64)
        peak = 65535.0 if array.max() > 255 else 255.0
        image = Image.fromarray((array / peak * 255).round().clip(0, 255).astype(np.uint8), mode="L")
        notes.append("16-bit image scaled to 8 bits")
    mask = None
    if image.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        alpha = image.getchannel("A")
        mask = alpha.point(lambda v: 255 if v >= 128 else 0)
        notes.append("alpha channel used as the condition mask")
        if mask.getextrema() == (0, 0):
            raise InputError("condition is fully transparent: nothing of it would be kept")
    if image.mode != "RGB":
        notes.append(f"converted from {image.mode} to RGB")
        image = image.convert("RGB")
    return image, mask


def load_condition(source: Path | str | Image.Image) -> LoadedCondition:
    """Read a visual condition from a file or an in-memory image."""
    notes: list[str] = []
    if isinstance(source, Image.Image):
        image = source
        digest = hashlib.sha256(image.tobytes()).hexdigest()
    else:
        path = Path(source)
        if not path.exists():
            raise InputError(f"condition {path}: no such file")
        if path.is_dir():
            raise InputError(f"condition {path}: is a folder, not an image file")
        data = path.read_bytes()
        if not data:
            raise InputError(f"condition {path}: empty file")
        digest = hashlib.sha256(data).hexdigest()
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("error", Image.DecompressionBombWarning)
                image = Image.open(io.BytesIO(data))
                image.load()
        except (Image.DecompressionBombError, Image.DecompressionBombWarning):
            raise InputError(
                f"condition {path}: image too large (over Pillow's limit of {Image.MAX_IMAGE_PIXELS:,} pixels)"
            ) from None
        except UnidentifiedImageError:
            raise InputError(f"condition {path}: not an image file Pillow can read") from None
        except (OSError, SyntaxError, ValueError) as exc:
            raise InputError(f"condition {path}: corrupt or truncated image ({exc})") from None
    transposed = ImageOps.exif_transpose(image)
    if transposed is not image and transposed is not None:
        notes.append("EXIF orientation applied")
        image = transposed
    image, mask = _to_rgb_and_mask(image, notes)
    return LoadedCondition(image=image, mask=mask, sha256=digest, notes=notes)
