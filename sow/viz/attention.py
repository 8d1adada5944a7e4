"""The attention picture of ``--save-attention``: DAM's masks and the captured attention of one layer.

Drawn from an :class:`sow.attention.capture.AttentionCapture` (what the ``dam`` modulator measured)
and the seeded canvas; used by ``sow.io.results`` (the run's files) and the web page.
"""

from __future__ import annotations

import torch
from PIL import Image, ImageDraw

from sow.attention.capture import AttentionCapture


_HEAT = [(0.0, (0, 0, 0)), (0.35, (120, 20, 110)), (0.7, (240, 100, 30)), (1.0, (255, 240, 120))]


def _heat_color(value: float) -> tuple[int, int, int]:
    for (x0, c0), (x1, c1) in zip(_HEAT, _HEAT[1:]):
        if value <= x1:
            t = (value - x0) / (x1 - x0)
            return tuple(round(a + (b - a) * t) for a, b in zip(c0, c1))
    return _HEAT[-1][1]


def attention_picture(capture: AttentionCapture, seeded: Image.Image) -> Image.Image:
    """Two panels, each the canvas (upscaled below 512 px): the layer's masks over the seeded
    canvas (condition green, related region orange), and the mean attention from the
    condition region (heat map, with its colour scale). Titles above, legends below."""
    from sow.viz.pictures import colour_bar, font, font_size, legend, tag, upscale_factor, upscaled, wrap

    width, height = seeded.size
    factor = upscale_factor(width, height)
    pw, ph = width * factor, height * factor
    h, w = capture.attention.shape
    masks = Image.new("RGB", (w, h))
    cond, rel = capture.condition_mask.tolist(), capture.related_mask.tolist()
    masks.putdata([(0, 200, 80) if cond[i][j] else (255, 140, 0) if rel[i][j] else (40, 40, 40) for i in range(h) for j in range(w)])
    left = Image.blend(upscaled(seeded.convert("RGB"), factor), masks.resize((pw, ph), Image.Resampling.NEAREST), 0.45)

    values = capture.attention
    peak = float(values.max()) or 1.0
    heat = Image.new("RGB", (w, h))
    heat.putdata([_heat_color(float(v) / peak) for v in values.flatten()])
    right = heat.resize((pw, ph), Image.Resampling.NEAREST)

    face = font(font_size(min(pw, ph)))
    line_h = face.size if hasattr(face, "size") else 11
    state = "fired" if capture.fired else "closed"
    step = f"cycle {capture.cycle + 1}" if capture.cycle is not None else "final"
    titles = (
        wrap(f"DAM's masks at the layer's {w}x{h} grid, over the seeded canvas", face, pw - 16),
        wrap(f"mean attention from the condition region, {step}, level {capture.level}; "
             f"gate R_c {capture.r_c:.3f} ({state})", face, pw - 16),
    )
    layer = capture.layer.removesuffix(".processor")
    header_h = 8 + max(len(t) for t in titles) * (line_h + 4) + line_h + 8
    bar = colour_bar((pw, 3 * line_h + 16), _heat_color, 0.0, peak, face, "attention weight (0 to the peak of this map)")
    footer_h = bar.height + 10
    out = Image.new("RGB", (2 * pw, header_h + ph + footer_h), "white")
    draw = ImageDraw.Draw(out)
    for x, lines in ((0, titles[0]), (pw, titles[1])):
        for k, line in enumerate(lines):
            draw.text((x + 8, 8 + k * (line_h + 4)), line, fill="black", font=face)
    draw.text((pw + 8, header_h - line_h - 8), f"layer {layer}", fill=(90, 90, 90), font=face)
    out.paste(left, (0, header_h))
    out.paste(right, (pw, header_h))
    for mask, color in ((capture.related_mask, (255, 140, 0)), (capture.condition_mask, (0, 200, 80))):
        cells = torch.nonzero(mask)
        if len(cells):
            (top, lft), (bot, rgt) = cells.min(0).values.tolist(), cells.max(0).values.tolist()
            box = [pw + lft * pw / w, header_h + top * ph / h, pw + (rgt + 1) * pw / w - 1, header_h + (bot + 1) * ph / h - 1]
            draw.rectangle(box, outline=color, width=max(2, pw // 200))
    tag(draw, (4, header_h + 4), f"canvas {width}x{height} px" + (f", shown x{factor}" if factor > 1 else ""), face)
    legend(draw, (10, header_h + ph + 8), [((0, 200, 80), "condition region"), ((255, 140, 0), "related region (box_r)"), ((40, 40, 40), "rest")], face, pw - 20)
    out.paste(bar, (pw, header_h + ph + 6))
    return out
