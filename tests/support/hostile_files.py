"""Builders of hostile and unusual input files for the robustness tests (not a test module)."""

from __future__ import annotations

import io
import struct
import zlib
from pathlib import Path

import numpy as np
from PIL import Image


def face_like(size: tuple[int, int] = (96, 96), mode: str = "RGB") -> Image.Image:
    """A deterministic colourful picture of ``size`` (w, h)."""
    w, h = size
    yy, xx = np.mgrid[0:h, 0:w]
    rgb = np.stack([(xx * 255 // max(1, w - 1)), (yy * 255 // max(1, h - 1)), ((xx + yy) * 7) % 256], axis=-1)
    image = Image.fromarray(rgb.astype(np.uint8), "RGB")
    return image if mode == "RGB" else image.convert(mode)


def save(image: Image.Image, path: Path, **kwargs) -> Path:
    image.save(path, **kwargs)
    return path


def png_bomb(path: Path, width: int = 100_000, height: int = 100_000) -> Path:
    """A tiny PNG whose header claims ``width`` x ``height`` pixels (Pillow refuses it on open)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    idat = zlib.compress(b"\x00" * 64)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", idat) + chunk(b"IEND", b""))
    return path


def truncated_jpeg(path: Path) -> Path:
    buffer = io.BytesIO()
    face_like((128, 128)).save(buffer, format="JPEG", quality=90)
    data = buffer.getvalue()
    path.write_bytes(data[: len(data) // 2])
    return path


def transparent_png(path: Path, size: tuple[int, int] = (96, 96)) -> Path:
    return save(Image.new("RGBA", size, (10, 20, 30, 0)), path)


def exif_rotated_jpeg(path: Path, orientation: int = 6, size: tuple[int, int] = (120, 80)) -> Path:
    """A JPEG stored ``size`` wide whose EXIF says to rotate it (6: 90 degrees clockwise)."""
    image = face_like(size)
    exif = Image.Exif()
    exif[0x0112] = orientation
    image.save(path, format="JPEG", exif=exif.tobytes())
    return path
