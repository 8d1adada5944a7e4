"""What every picture sow draws shares: a scalable font sized to the picture, labels on a
dark tag (readable over any photo), a legend row, a colour scale, an upscale for small canvases.

The font is Pillow's own scalable default (``ImageFont.load_default(size=...)``, Pillow
>= 10.1 with FreeType): no font file to ship. Without FreeType Pillow falls back to its
fixed bitmap font; the pictures stay correct, only the text is small.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from functools import lru_cache

from PIL import Image, ImageDraw, ImageFont

MIN_PICTURE_SIDE = 512
"""Canvases smaller than this are upscaled (whole factors, nearest neighbour) before labels are drawn."""
TAG = (20, 20, 20)
"""The dark background of a label."""


@lru_cache(maxsize=16)
def font(size: int) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    """Pillow's scalable default font at ``size`` pixels."""
    try:
        return ImageFont.load_default(size=size)
    except (TypeError, OSError, ImportError):  # old Pillow or no FreeType: the bitmap font
        return ImageFont.load_default()


def font_size(side: int) -> int:
    """Text height for a picture whose short side is ``side`` pixels (16 px at 512)."""
    return max(12, round(side / 32))


def upscale_factor(width: int, height: int, min_side: int = MIN_PICTURE_SIDE) -> int:
    """The whole factor that brings the longer side to at least ``min_side`` (1 for large canvases)."""
    return max(1, math.ceil(min_side / max(width, height)))


def upscaled(image: Image.Image, factor: int) -> Image.Image:
    if factor == 1:
        return image.copy()
    return image.resize((image.width * factor, image.height * factor), Image.Resampling.NEAREST)


def text_width(text: str, face) -> int:
    left, _, right, _ = face.getbbox(text)
    return int(right - left)


def tag(draw: ImageDraw.ImageDraw, xy: tuple[float, float], text: str, face, color=(255, 255, 255), pad: int = 3) -> tuple[int, int]:
    """``text`` in ``color`` on a dark tag whose top-left is ``xy``; returns the tag's (width, height)."""
    left, top, right, bottom = draw.textbbox((xy[0] + pad, xy[1] + pad), text, font=face)
    draw.rectangle([xy[0], xy[1], right + pad, bottom + pad], fill=TAG)
    draw.text((xy[0] + pad, xy[1] + pad), text, fill=color, font=face)
    return int(right + pad - xy[0]), int(bottom + pad - xy[1])


def wrap(text: str, face, width: int) -> list[str]:
    """``text`` broken at spaces into lines no wider than ``width`` pixels (a long word stays whole)."""
    lines: list[str] = []
    for paragraph in text.splitlines() or [""]:
        line = ""
        for word in paragraph.split(" "):
            candidate = f"{line} {word}" if line else word
            if line and text_width(candidate, face) > width:
                lines.append(line)
                line = word
            else:
                line = candidate
        lines.append(line)
    return lines


def legend(draw: ImageDraw.ImageDraw, xy: tuple[int, int], items: Sequence[tuple[tuple[int, int, int], str]], face, width: int, fill="black") -> int:
    """Colour swatches with their names, left to right, wrapping at ``width``; returns the height used."""
    x0, y = xy
    x = x0
    line_h = face.size if hasattr(face, "size") else 11
    for color, name in items:
        need = line_h + 6 + text_width(name, face) + 2 * line_h
        if x > x0 and x + need > x0 + width:
            x, y = x0, y + line_h + 8
        draw.rectangle([x, y + 1, x + line_h, y + line_h + 1], fill=color, outline=(0, 0, 0))
        draw.text((x + line_h + 6, y), name, fill=fill, font=face)
        x += need
    return y + line_h + 8 - xy[1]


def colour_bar(
    size: tuple[int, int], colormap: Callable[[float], tuple[int, int, int]], low: float, high: float, face, label: str
) -> Image.Image:
    """A horizontal colour scale ``size`` (w, h) from ``low`` to ``high`` with five ticks and a label, on white."""
    width, height = size
    bar_h = max(8, height // 3)
    image = Image.new("RGB", size, "white")
    draw = ImageDraw.Draw(image)
    margin = 10
    span = width - 2 * margin
    for i in range(span):
        draw.line([(margin + i, 0), (margin + i, bar_h)], fill=colormap(i / max(1, span - 1)))
    draw.rectangle([margin, 0, margin + span - 1, bar_h], outline=(0, 0, 0))
    for k in range(5):
        x = margin + round(k * (span - 1) / 4)
        draw.line([(x, bar_h), (x, bar_h + 4)], fill=(0, 0, 0))
        text = f"{low + (high - low) * k / 4:.3g}"
        w = text_width(text, face)
        draw.text((min(max(0, x - w / 2), width - w), bar_h + 5), text, fill="black", font=face)
    draw.text((margin, bar_h + 7 + (face.size if hasattr(face, "size") else 11)), label, fill="black", font=face)
    return image
