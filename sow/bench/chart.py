"""The per-stage bar chart of a ``sow bench`` report, drawn with PIL.

PIL is already a dependency of sow; a stacked horizontal bar per variant needs no
plotting library, so matplotlib stays out of the install.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from PIL import Image, ImageDraw, ImageFont

STAGE_COLORS = {
    "plan": (148, 103, 189),
    "encode": (140, 86, 75),
    "inversion": (31, 119, 180),
    "cycles": (255, 127, 14),
    "final": (44, 160, 44),
    "decode": (214, 39, 40),
}
OTHER_COLOR = (127, 127, 127)


def chart_rows(report: dict[str, Any]) -> list[tuple[str, dict[str, float]]]:
    """(label, stage -> seconds per image) for every variant of the report, slowest reference first."""
    rows: list[tuple[str, dict[str, float]]] = []
    reference = report.get("baselines", {}).get("reference")
    if reference:
        for entry in reference["ladder"]:
            if not entry["variant"].startswith("fast path"):
                rows.append((entry["variant"], entry["stages_seconds_per_image"]))
    for run in report["runs"]:
        rows.append((f"fast {report['dtype']}, batch {run['batch']}", run["stages_seconds_per_image"]))
    return rows


def draw_stage_chart(report: dict[str, Any], path: Path, width: int = 900) -> Path:
    """Write a PNG: one stacked bar per variant, each segment a stage's seconds per image."""
    rows = chart_rows(report)
    font = ImageFont.load_default()
    label_w, bar_h, gap, top, bottom = 230, 26, 12, 40, 60
    height = top + len(rows) * (bar_h + gap) + bottom
    image = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(image)
    longest = max((sum(stages.values()) for _, stages in rows), default=0.0) or 1.0
    plot_w = width - label_w - 90
    dev = report["device"]
    draw.text((10, 10), f"sow bench: seconds per image by stage ({report['model']}, {dev['type']})", fill="black", font=font)
    for i, (label, stages) in enumerate(rows):
        y = top + i * (bar_h + gap)
        draw.text((10, y + bar_h // 3), label[:38], fill="black", font=font)
        x = float(label_w)
        for name, seconds in stages.items():
            w = seconds / longest * plot_w
            draw.rectangle([x, y, x + w, y + bar_h], fill=STAGE_COLORS.get(name, OTHER_COLOR))
            x += w
        draw.text((x + 6, y + bar_h // 3), f"{sum(stages.values()):.3f} s", fill="black", font=font)
    x, y = 10, height - bottom + 20
    for name, color in STAGE_COLORS.items():
        draw.rectangle([x, y, x + 14, y + 14], fill=color)
        draw.text((x + 20, y + 2), name, fill="black", font=font)
        x += 110
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path)
    return path
