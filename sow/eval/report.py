"""The reports of ``sow eval``: the results table (markdown, CSV) and the contact sheet.

Everything here is read from the eval's folder alone: the rows (``rows.jsonl``,
:mod:`sow.eval.rows`) and ``eval.json`` (:mod:`sow.eval.manifest`: the items, the methods,
the metric's threshold). So the reports of a resumed run are the same as those of an
uninterrupted one, and ``write_reports(folder)`` rewrites them from the files of any eval.

Columns of the table, per method and setting (and ``all`` settings):

``count``          rows (items) measured;
``detection``      share of rows with a face found in the box_v region;
``id_mean``, ``id_median``  ID-distance over the rows with a face on both sides;
``same_person``    share of all rows whose ID-distance is under the metric's threshold;
``psnr``, ``ssim``  pixel fidelity of the condition region: the condition as pasted against
                   the image inside the aligned box_v (mean over rows; ``inf`` PSNR for an exact copy);
``seam``           mean luminance step across box_v's border over the mean step inside it;
``kept_max_before``, ``kept_max_after``  the largest absolute difference (0..255) between the
                   condition's kept pixels (as seeded) and the image, before and after sow's paste
                   (worst row and condition; 0 after: exact); methods that do not paste give the
                   same value twice;
``kept_psnr_before`` PSNR of the kept pixels before the paste (mean over rows; after the paste it is inf);
``seam_before``, ``seam_after``  the jump across the kept region's border over the gradients beside
                   it (:mod:`sow.eval.kept_region`; about 1: no edge), mean over rows and conditions;
``id_before``      mean ID-distance of the images before the paste (``id_mean`` is after it);
``sec_per_image``  mean wall time to make one image (planning + generation, no metric);
``errors``         rows whose generation failed (counted as not detected);
``swaps``          identity swaps: a person's face nearer another condition's reference than its own.

An item of several people counts each person: ``detection``, the ID-distances and
``same_person`` are over people (a swapped face is not the same person), ``count`` over items.
"""

from __future__ import annotations

import csv
import io
import statistics
from pathlib import Path
from dataclasses import dataclass, fields
from typing import Any

from PIL import Image, ImageDraw, ImageFont

from sow.eval.manifest import EvalManifest, read_manifest
from sow.eval.rows import ROWS_FILE, EvalRow, current_rows, read_rows
from sow.io.outputs import save_image_atomic, write_bytes_atomic



@dataclass(frozen=True)
class SummaryLine:
    """One line of the results table: a method in a setting (or over ``all`` settings); the columns above."""

    method: str
    setting: str
    count: int
    detection: float
    id_mean: float | None
    id_median: float | None
    same_person: float
    psnr: float | None
    ssim: float | None
    seam: float | None
    kept_max_before: float | None
    kept_max_after: float | None
    kept_psnr_before: float | None
    seam_before: float | None
    seam_after: float | None
    id_before: float | None
    sec_per_image: float | None
    errors: int
    swaps: int


COLUMNS = tuple(f.name for f in fields(SummaryLine))
"""The table's columns, in order."""
THUMB = 160
"""Side of one contact-sheet cell's image in pixels."""
LABEL_WIDTH = 220
CAPTION = 18


def summarize(rows: list[EvalRow], methods: list[str], settings: list[str]) -> list[SummaryLine]:
    """One line per (method, setting) that has rows, plus (method, ``all``)."""
    table: list[SummaryLine] = []
    for method in methods:
        mine = [r for r in rows if r.method == method]
        for setting in [*settings, "all"]:
            chosen = mine if setting == "all" else [r for r in mine if r.setting == setting]
            if not chosen or (setting == "all" and len(settings) < 2):
                continue
            people: list[Any] = [p for r in chosen for p in (r.people or [r])]  # each person, or the row itself
            distances = [p.id_distance for p in people if p.id_distance is not None]
            times = [r.seconds for r in chosen if not r.error]
            fidelity = {c: _values(chosen, c) for c in ("psnr", "ssim", "seam", "kept_psnr_before", "seam_before", "seam_after", "id_before")}
            worst = {c: _values(chosen, c) for c in ("kept_max_before", "kept_max_after")}
            table.append(
                SummaryLine(
                    method=method,
                    setting=setting,
                    count=len(chosen),
                    detection=sum(bool(p.detected) for p in people) / len(people),
                    id_mean=statistics.fmean(distances) if distances else None,
                    id_median=statistics.median(distances) if distances else None,
                    same_person=sum(bool(p.same_person) for p in people) / len(people),
                    **{c: statistics.fmean(v) if v else None for c, v in fidelity.items()},
                    **{c: max(v) if v else None for c, v in worst.items()},
                    sec_per_image=statistics.fmean(times) if times else None,
                    errors=sum(bool(r.error) for r in chosen),
                    swaps=sum(int(r.swaps or 0) for r in chosen),
                )
            )
    return table


def _values(rows: list[EvalRow], column: str) -> list[float]:
    """The rows' values of ``column`` that are set."""
    return [getattr(r, column) for r in rows if getattr(r, column) is not None]


def _cell(value: Any, column: str) -> str:
    if value is None:
        return "-"
    if column in ("detection", "same_person"):
        return f"{value:.1%}"
    if column in ("id_mean", "id_median"):
        return f"{value:.3f}"
    if column in ("kept_max_before", "kept_max_after"):
        return f"{value:.0f}"
    if column in ("id_before",):
        return f"{value:.3f}"
    if column in ("sec_per_image", "psnr", "seam", "kept_psnr_before", "seam_before", "seam_after"):
        return f"{value:.2f}"
    if column == "ssim":
        return f"{value:.4f}"
    return str(value)


def to_markdown(table: list[SummaryLine], header: list[str]) -> str:
    lines = [*header, "", "| " + " | ".join(COLUMNS) + " |", "|" + "|".join("---" for _ in COLUMNS) + "|"]
    lines += ["| " + " | ".join(_cell(getattr(line, c), c) for c in COLUMNS) + " |" for line in table]
    return "\n".join(lines) + "\n"


def to_csv(table: list[SummaryLine]) -> str:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=COLUMNS, lineterminator="\n")
    writer.writeheader()
    for line in table:
        values = {c: getattr(line, c) for c in COLUMNS}
        writer.writerow({c: ("" if v is None else round(v, 6) if isinstance(v, float) else v) for c, v in values.items()})
    return buffer.getvalue()


def _font(size: int):
    try:
        return ImageFont.load_default(size)
    except TypeError:  # Pillow without FreeType sizes
        return ImageFont.load_default()


def _fit(image: Image.Image, side: int) -> Image.Image:
    image = image.convert("RGB")
    image.thumbnail((side, side), Image.Resampling.LANCZOS)
    cell = Image.new("RGB", (side, side), (255, 255, 255))
    cell.paste(image, ((side - image.width) // 2, (side - image.height) // 2))
    return cell


def contact_sheet(manifest: EvalManifest, rows: list[EvalRow], out_dir: Path) -> Image.Image:
    """Rows = items (the first ``sheet_rows``), columns = the condition, then each method.

    Under each image: the ID-distance (green under the metric's threshold, red above) or
    "no face"; the found face is outlined.
    """
    from sow.io.images import load_condition

    items = manifest.items[: manifest.config.sheet_rows]
    methods = manifest.methods
    by_key = {(r.id, r.method): r for r in rows}
    threshold = manifest.threshold
    cols = 1 + len(methods)
    width = LABEL_WIDTH + cols * THUMB
    height = CAPTION + len(items) * (THUMB + CAPTION)
    sheet = Image.new("RGB", (width, height), (255, 255, 255))
    draw = ImageDraw.Draw(sheet)
    font = _font(12)
    for c, title in enumerate(["condition", *methods]):
        draw.text((LABEL_WIDTH + c * THUMB + 4, 3), title[:26], fill=(0, 0, 0), font=font)
    for r, item in enumerate(items):
        top = CAPTION + r * (THUMB + CAPTION)
        label = [item.id, item.setting, *_wrap(item.prompt, 34)[:6]]
        for k, line in enumerate(label):
            draw.text((4, top + 4 + 14 * k), line, fill=(0, 0, 0) if k else (0, 0, 160), font=font)
        try:
            condition = load_condition(item.condition_path(Path(manifest.spec_base))).image
            sheet.paste(_fit(condition, THUMB), (LABEL_WIDTH, top))
        except Exception:  # the sheet shows what it can
            pass
        for c, method in enumerate(methods, start=1):
            left = LABEL_WIDTH + c * THUMB
            row = by_key.get((item.id, method))
            if row is None:
                continue
            caption, color = _caption(row, threshold)
            if row.image:
                image = Image.open(out_dir / row.image).convert("RGB")
                if row.face:
                    x, y, w, h = row.face
                    ImageDraw.Draw(image).rectangle([x, y, x + w - 1, y + h - 1], outline=(0, 220, 0), width=max(2, image.width // 128))
                sheet.paste(_fit(image, THUMB), (left, top))
            draw.text((left + 4, top + THUMB + 2), caption, fill=color, font=font)
    return sheet


def _caption(row: EvalRow, threshold: float | None) -> tuple[str, tuple[int, int, int]]:
    if row.error:
        return "error", (200, 0, 0)
    if not row.detected:
        return "no face", (200, 0, 0)
    distance = row.id_distance
    if distance is None:
        return f"face ({row.note or 'no reference'})"[:24], (120, 120, 120)
    good = threshold is not None and distance < threshold
    return f"d={distance:.3f}", (0, 140, 0) if good else (200, 0, 0)


def _wrap(text: str, width: int) -> list[str]:
    lines, line = [], ""
    for word in text.split():
        if line and len(line) + 1 + len(word) > width:
            lines.append(line)
            line = word
        else:
            line = f"{line} {word}".strip()
    return [*lines, line] if line else lines


def write_reports(out_dir: Path) -> dict[str, Path]:
    """Write ``results.md``, ``results.csv`` and ``contact_sheet.png`` of the eval in ``out_dir``, from its files:
    the latest row of each (item, method) of ``eval.json``'s items and methods."""
    manifest = read_manifest(out_dir)
    rows = current_rows(read_rows(out_dir / ROWS_FILE), manifest.items, manifest.methods)
    settings = list(dict.fromkeys(i.setting for i in manifest.items))
    table = summarize(rows, manifest.methods, settings)
    config = manifest.config
    threshold = "?" if manifest.threshold is None else manifest.threshold
    header = [
        "# sow eval results",
        "",
        f"- model: `{config.model}`, seed {config.seed}, metric `{config.metric}` "
        f"(same person below {threshold}), {len(manifest.items)} items",
        *(f"- note: {note}" for note in manifest.notes),
    ]
    paths = {"markdown": out_dir / "results.md", "csv": out_dir / "results.csv", "contact_sheet": out_dir / "contact_sheet.png"}
    write_bytes_atomic(paths["markdown"], to_markdown(table, header).encode("utf-8"))
    write_bytes_atomic(paths["csv"], to_csv(table).encode("utf-8"))
    save_image_atomic(contact_sheet(manifest, rows, out_dir), paths["contact_sheet"])
    return paths
