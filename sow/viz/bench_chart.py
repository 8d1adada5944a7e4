"""The per-stage bar chart of a ``sow bench`` report, drawn with PIL.

PIL is already a dependency of sow; a stacked horizontal bar per variant needs no
plotting library, so matplotlib stays out of the install. The chart has a title (model,
device, dtype, canvas, S, N, batch sizes), one bar per variant (the reference ladder, the
fast path per batch size, and the DDIM baseline as a single grey bar), a seconds axis with
ticks and grid lines, and a legend of the stages. Text uses Pillow's scalable font
(:mod:`sow.viz.pictures`).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from PIL import Image, ImageDraw

STAGE_COLORS = {
    "plan": (148, 103, 189),
    "encode": (140, 86, 75),
    "inversion": (31, 119, 180),
    "cycles": (255, 127, 14),
    "final": (44, 160, 44),
    "decode": (214, 39, 40),
    "paste": (188, 189, 34),
}
OTHER_COLOR = (127, 127, 127)
DDIM_COLOR = (170, 170, 170)
"""The DDIM baseline is one bar (diffusers' pipeline has no stages)."""


def chart_rows(report: dict[str, Any]) -> list[tuple[str, dict[str, float]]]:
    """(label, stage -> seconds per image) for every variant of the report, slowest reference first, DDIM last."""
    rows: list[tuple[str, dict[str, float]]] = []
    reference = report.get("baselines", {}).get("reference")
    if reference:
        for entry in reference["ladder"]:
            if not entry["variant"].startswith("fast path"):
                rows.append((entry["variant"], entry["stages_seconds_per_image"]))
    for run in report["runs"]:
        rows.append((f"fast {report['dtype']}, batch {run['batch']}", run["stages_seconds_per_image"]))
    ddim = report.get("baselines", {}).get("ddim")
    if ddim:
        rows.append((f"DDIM-{ddim['steps']} text-to-image", {"ddim": ddim["seconds_per_image"]["median"]}))
    return rows


def nice_ticks(longest: float, count: int = 5) -> list[float]:
    """Round tick values from 0 covering ``longest`` (steps of 1, 2 or 5 times a power of ten)."""
    if longest <= 0:
        return [0.0, 1.0]
    raw = longest / count
    power = 10 ** math.floor(math.log10(raw))
    step = next(m * power for m in (1, 2, 5, 10) if m * power >= raw)
    return [i * step for i in range(math.ceil(longest / step - 1e-9) + 1)]


def draw_stage_chart(report: Any, path: Path, width: int = 1000) -> Path:
    """Write a PNG: one stacked bar per variant, each segment a stage's seconds per image."""
    from sow.viz.pictures import font, legend, text_width, wrap

    report = report.as_dict() if hasattr(report, "as_dict") else report
    rows = chart_rows(report)
    face, small = font(16), font(13)
    config, dev = report["config"], report["device"]
    batches = ", ".join(str(run["batch"]) for run in report["runs"])
    title = (f"sow bench: seconds per image by stage - {report['model']} on {dev['type']} ({dev.get('name', '')}), "
             f"{report['dtype']}, {config['canvas']}x{config['canvas']} px, S={config['steps']}, N={config['cycles']}, "
             f"modulator {config['modulator']}, batch {batches}")  # fmt: skip
    title_lines = wrap(title, face, width - 20)
    label_w = 20 + max((text_width(label, face) for label, _ in rows), default=100)
    bar_h, gap = 26, 12
    top = 14 + len(title_lines) * 22 + 10
    plot_left, plot_right = label_w + 10, width - 90
    plot_w = plot_right - plot_left
    longest = max((sum(stages.values()) for _, stages in rows), default=0.0)
    ticks = nice_ticks(longest)
    scale = plot_w / (ticks[-1] or 1.0)
    bars_bottom = top + len(rows) * (bar_h + gap)
    items = [(c, n) for n, c in STAGE_COLORS.items()] + ([(DDIM_COLOR, "DDIM (whole run)")] if report.get("baselines", {}).get("ddim") else [])
    probe = ImageDraw.Draw(Image.new("RGB", (width, 200)))
    legend_h = legend(probe, (10, 0), items, small, width - 20)
    height = bars_bottom + 50 + legend_h + 10
    image = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(image)
    for k, line in enumerate(title_lines):
        draw.text((10, 14 + k * 22), line, fill="black", font=face)
    for tick in ticks:  # grid lines and the axis
        x = plot_left + tick * scale
        draw.line([(x, top - 4), (x, bars_bottom)], fill=(225, 225, 225))
        draw.line([(x, bars_bottom), (x, bars_bottom + 5)], fill="black")
        text = f"{tick:g}"
        draw.text((x - text_width(text, small) / 2, bars_bottom + 8), text, fill="black", font=small)
    draw.line([(plot_left, bars_bottom), (plot_left + ticks[-1] * scale, bars_bottom)], fill="black")
    axis = "seconds per image"
    draw.text((plot_left + plot_w / 2 - text_width(axis, small) / 2, bars_bottom + 26), axis, fill="black", font=small)
    for i, (label, stages) in enumerate(rows):
        y = top + i * (bar_h + gap)
        draw.text((10, y + 4), label, fill="black", font=face)
        x = float(plot_left)
        for name, seconds in stages.items():
            w = seconds * scale
            color = DDIM_COLOR if name == "ddim" else STAGE_COLORS.get(name, OTHER_COLOR)
            draw.rectangle([x, y, x + w, y + bar_h], fill=color)
            x += w
        draw.text((x + 6, y + 4), f"{sum(stages.values()):.3g} s", fill="black", font=face)
    legend(draw, (10, bars_bottom + 50), items, small, width - 20)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path)
    return path
