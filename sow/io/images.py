"""The one image loader every command uses for visual conditions.

Every file a user can point sow at either becomes an 8-bit RGB condition (plus an
optional mask) through a documented conversion, or is refused with a one-line
:class:`~sow.errors.InputError` (exit code 2). The conversions, each recorded in
:attr:`LoadedCondition.notes` (and from there in the run record's ``warnings``):

- EXIF orientation is applied (a phone photo taken sideways comes out upright).
- An alpha channel (RGBA, LA, PA, palette or grayscale/RGB with a transparent colour)
  becomes the condition mask: pixels with alpha >= 128 are kept, the rest are gray on
  the canvas. A fully opaque alpha channel is dropped; a fully transparent one is refused.
- Grayscale, bilevel, palette, CMYK, YCbCr, LAB and HSV images are converted to RGB.
- 16-bit and 32-bit integer images are scaled to 8 bits (by 65535 when a pixel exceeds
  255, else by 255); 32-bit float images by 1 when their pixels lie in [0, 1], else by 255.
- Animated or multi-page files: the first frame is used.
- Sides under :data:`SMALL_SIDE` pixels are used as they are (resized up to ``box_v`` like
  every condition) with a note that the result will be blurry; sides under
  :data:`MIN_SIDE` are refused.
- Images whose longer side exceeds :data:`MAX_WORKING_SIDE` are downscaled to it on load
  (the condition is never pasted larger than a 4096 canvas anyway); JPEGs are decoded at
  reduced size directly, so a large photo costs little memory.
- Non-square conditions keep their aspect ratio (the planner sizes ``box_v`` to it);
  ratios beyond :data:`MAX_ASPECT_RATIO` : 1 are refused.

Refused: missing paths, folders, special files (devices, pipes), empty files, files over
:data:`MAX_FILE_BYTES`, files Pillow cannot identify, corrupt or truncated images, and
decompression bombs (more pixels than Pillow's ``Image.MAX_IMAGE_PIXELS``, 89,478,485 by
default; the limit in force is stated in the error).
"""

from __future__ import annotations

import hashlib
import io
import stat
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from sow.errors import InputError

SAMPLE_FACE = Path(__file__).resolve().parents[1] / "data" / "sample_face.jpg"
"""The face photo shipped with sow (the quickstart's and the docs' condition)."""

MIN_SIDE = 16
"""Conditions with a side below this many pixels are refused: nothing recognizable survives."""

SMALL_SIDE = 64
"""Conditions with a side below this many pixels are upscaled to box_v with a warning."""

MAX_WORKING_SIDE = 2048
"""Larger conditions are downscaled on load so that their longer side is this many pixels."""

MAX_ASPECT_RATIO = 8.0
"""Longer side / shorter side beyond which a condition is refused."""

IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff"})
"""File-name endings of the image formats a condition comes in (what tells a path from a prompt)."""


def looks_like_image_path(text: str) -> bool:
    """Whether ``text`` names an existing file, or is one word ending in an image suffix (``b.jpg``): not a prompt."""
    text = text.strip()
    if not text or "\n" in text or len(text) > 4096:
        return False
    try:
        if Path(text).expanduser().is_file():
            return True
    except (OSError, ValueError):  # a name too long for the OS, a NUL byte: not a path
        return False
    return " " not in text and Path(text).suffix.lower() in IMAGE_SUFFIXES


MAX_FILE_BYTES = 512 * 1024 * 1024
"""Condition files larger than this (512 MiB) are refused before being read."""

_ALPHA_MODES = ("RGBA", "LA", "PA", "RGBa", "La")
_INT_MODES = ("I;16", "I;16B", "I;16L", "I;16N", "I")


@dataclass
class LoadedCondition:
    image: Image.Image
    """8-bit RGB."""
    mask: Image.Image | None
    """8-bit L, 255 where the condition is kept; None when the image has no alpha."""
    sha256: str
    notes: list[str] = field(default_factory=list)
    """The conversions applied, one short sentence each."""


def _to_8bit(image: Image.Image, notes: list[str]) -> Image.Image:
    array = np.asarray(image, dtype=np.float64)
    if image.mode == "F":
        if not np.isfinite(array).all():
            raise InputError("condition is a floating-point image with NaN or infinite pixels")
        peak = 1.0 if array.size and array.min() >= 0 and array.max() <= 1.0 else 255.0
        notes.append(f"32-bit float image scaled to 8 bits (by {peak:g})")
    else:
        peak = 65535.0 if array.size and array.max() > 255 else 255.0
        notes.append(f"{'16' if image.mode.startswith('I;16') else '32'}-bit image scaled to 8 bits (by {peak:g})")
    return Image.fromarray((array / peak * 255).round().clip(0, 255).astype(np.uint8), mode="L")


def _to_rgb_and_mask(image: Image.Image, notes: list[str]) -> tuple[Image.Image, Image.Image | None]:
    if image.mode in ("P", "L", "RGB") and "transparency" in image.info:
        image = image.convert("RGBA")
    if image.mode == "La":
        image = image.convert("LA")
    if image.mode in _INT_MODES or image.mode == "F":
        image = _to_8bit(image, notes)
    mask = None
    if image.mode in _ALPHA_MODES:
        alpha = image.getchannel("A")
        low, high = alpha.getextrema()
        if high < 128:
            raise InputError("condition is fully transparent: nothing of it would be kept")
        if low >= 128:
            notes.append("alpha channel fully opaque: ignored")
        else:
            mask = alpha.point(lambda v: 255 if v >= 128 else 0)
            notes.append("alpha channel used as the condition mask")
    if image.mode != "RGB":
        notes.append(f"converted from {image.mode} to RGB")
        try:
            image = image.convert("RGB")
        except (ValueError, OSError) as exc:
            raise InputError(f"condition in mode {image.mode} cannot be converted to RGB ({exc})") from None
    return image, mask


def _check_size(image: Image.Image, label: str, notes: list[str]) -> Image.Image:
    w, h = image.size
    if min(w, h) < MIN_SIDE:
        raise InputError(f"{label}: {w}x{h} pixels is too small (each side must be at least {MIN_SIDE} pixels)")
    if max(w, h) / min(w, h) > MAX_ASPECT_RATIO:
        raise InputError(
            f"{label}: {w}x{h} pixels is too elongated (aspect ratio over {MAX_ASPECT_RATIO:g}:1); crop it first"
        )
    if min(w, h) < SMALL_SIDE:
        notes.append(f"small condition ({w}x{h} px, under {SMALL_SIDE} px a side): upscaled to box_v, expect it blurry")
    if max(w, h) > MAX_WORKING_SIDE:
        scale = MAX_WORKING_SIDE / max(w, h)
        size = (max(1, round(w * scale)), max(1, round(h * scale)))
        image = image.resize(size, Image.Resampling.LANCZOS)
        notes.append(f"large condition ({w}x{h} px) downscaled to {size[0]}x{size[1]}")
    return image


def _bomb_message(label: str) -> str:
    return (
        f"{label}: image too large (over Pillow's limit of {Image.MAX_IMAGE_PIXELS:,} pixels, "
        "a guard against decompression bombs)"
    )


def _open_file(path: Path, notes: list[str]) -> tuple[Image.Image, str]:
    label = f"condition {path}"
    try:
        info = path.stat()
    except FileNotFoundError:
        raise InputError(f"{label}: no such file") from None
    except OSError as exc:
        raise InputError(f"{label}: cannot be read ({exc.strerror or exc})") from None
    if stat.S_ISDIR(info.st_mode):
        raise InputError(f"{label}: is a folder, not an image file")
    if not stat.S_ISREG(info.st_mode):
        raise InputError(f"{label}: not a regular file (a device, pipe or socket)")
    if info.st_size == 0:
        raise InputError(f"{label}: empty file")
    if info.st_size > MAX_FILE_BYTES:
        raise InputError(f"{label}: {info.st_size:,} bytes is over the {MAX_FILE_BYTES:,}-byte limit for a condition")
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise InputError(f"{label}: cannot be read ({exc.strerror or exc})") from None
    digest = hashlib.sha256(data).hexdigest()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data))
            frames = getattr(image, "n_frames", 1)
            if frames > 1:
                notes.append(f"first of {frames} frames used")
            if image.format == "JPEG" and max(image.size) > MAX_WORKING_SIDE:
                image.draft("RGB", (MAX_WORKING_SIDE, MAX_WORKING_SIDE))
            image.load()
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise InputError(_bomb_message(label)) from None
    except UnidentifiedImageError:
        raise InputError(f"{label}: not an image file Pillow can read") from None
    except (OSError, SyntaxError, ValueError, EOFError, IndexError, TypeError) as exc:
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise InputError(f"{label}: corrupt or truncated image ({reason})") from None
    except MemoryError:
        raise InputError(f"{label}: not enough memory to decode this image") from None
    return image, digest


def load_condition(source: Path | str | Image.Image) -> LoadedCondition:
    """Read a visual condition from a file or an in-memory image.

    Returns the 8-bit RGB image, the mask taken from its alpha channel (or None), the
    SHA-256 of the file's bytes (of the pixels for an in-memory image) and the notes of
    the conversions applied. Raises :class:`InputError` with one line for anything else.
    """
    notes: list[str] = []
    if isinstance(source, Image.Image):
        image, label = source, "condition image"
        limit = Image.MAX_IMAGE_PIXELS  # None when the user switched Pillow's guard off
        if limit is not None and image.width * image.height > limit:
            raise InputError(_bomb_message(label))
        digest = hashlib.sha256(image.tobytes()).hexdigest()
    else:
        path = Path(source)
        label = f"condition {path}"
        image, digest = _open_file(path, notes)
    try:
        orientation = image.getexif().get(0x0112, 1)
        if orientation not in (None, 1):
            image = ImageOps.exif_transpose(image)
            notes.append(f"EXIF orientation {orientation} applied")
    except Exception:  # a malformed EXIF block: the pixels are still fine
        notes.append("EXIF block unreadable: orientation not applied")
    image, mask = _to_rgb_and_mask(image, notes)
    resized = _check_size(image, label, notes)
    if resized is not image and mask is not None:
        mask = mask.resize(resized.size, Image.Resampling.NEAREST)
    return LoadedCondition(image=resized, mask=mask, sha256=digest, notes=notes)
