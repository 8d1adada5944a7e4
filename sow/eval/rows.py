"""The rows of an eval: one :class:`EvalRow` per (item, method), appended to ``rows.jsonl``.

The rows file is the run's state and the reports' only source: the runner appends a row as soon
as its image is made and measured (a killed eval resumes from the rows it finds), and
:mod:`sow.eval.report` reads the file back to write the table and the contact sheet. A row is
written with the fields that were set (a failed item has no image, an item of one person no
``people``), so the file reads as before the rows were typed.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from sow.eval.spec import SpecItem
from sow.io.journal import Journal, repair_journal
from sow.schemas import validated

ROWS_FILE = "rows.jsonl"


class _Row(BaseModel):
    model_config = ConfigDict(extra="forbid")


class KeptRow(_Row):
    """One condition's kept pixels (:mod:`sow.eval.kept_region`) before and after sow's paste."""

    condition: int = Field(description="The condition's number, from 1.")
    psnr_before: float | None = None
    max_abs_before: float | None = None
    seam_before: float | None = None
    psnr_after: float | None = None
    max_abs_after: float | None = None
    seam_after: float | None = None
    id_before: float | None = Field(None, description="The condition's ID-distance before the paste (where one happened).")


class PersonRow(_Row):
    """One person of an item of several people (:func:`sow.eval.face_metrics.measure_people`)."""

    condition: int = Field(description="The condition's number, from 1.")
    detected: bool
    face: list[int] | None = Field(None, description="The face found in its box_v region: [x, y, w, h].")
    id_distance: float | None = Field(None, description="To its own reference face.")
    other_distance: float | None = Field(None, description="To the nearest other condition's reference face.")
    swapped: bool = Field(False, description="Nearer another condition's reference than its own.")
    same_person: bool | None = None
    note: str = ""


class EvalRow(_Row):
    """What one (item, method) made and measured; ``error`` says why a row has no image."""

    id: str = Field(description="The spec item's id.")
    item_key: str = Field(description="Hash of the item's condition, prompt, setting and people: a changed item's rows are stale.")
    method: str
    setting: str
    prompt: str
    condition: str | list[str]
    seed: int
    seconds: float = Field(description="Wall time to make the image (planning + generation, no metric).")
    error: str | None = Field(None, description="The one-line error of a failed generation (then no image).")
    image: str | None = Field(None, description="The image, relative to the eval's folder.")
    box_v: list[int] | list[list[int]] | None = Field(None, description="box_v as used (on the latent grid); one per condition with several.")
    faces: int = Field(0, description="Faces found in the box_v region(s).")
    detected: bool = False
    face: list[int] | None = None
    id_distance: float | None = Field(None, description="ID-distance to the reference face (several people: the mean of each own distance).")
    same_person: bool | None = None
    note: str | None = None
    id_before: float | None = Field(None, description="The ID-distance before sow's paste (set where a paste happened).")
    psnr: float | None = None
    ssim: float | None = None
    seam: float | None = None
    seam_border: float | None = None
    seam_inside: float | None = None
    kept: list[KeptRow] | None = None
    kept_max_before: float | None = None
    kept_max_after: float | None = None
    kept_psnr_before: float | None = None
    kept_psnr_after: float | None = None
    seam_before: float | None = None
    seam_after: float | None = None
    people: list[PersonRow] | None = None
    swaps: int | None = Field(None, description="Identity swaps among the people of the item.")
    stages: dict[str, str] | None = Field(None, description="The stage names a generating method ran with.")
    unet_evaluations: int | None = None
    prompt_used: str | None = None
    inpaint_model: str | None = None
    controlnet_model: str | None = None

    def as_json(self) -> str:
        """One line of the rows file (the fields that were set; ``inf`` PSNR as JSON's ``Infinity``)."""
        return json.dumps(self.to_dict(), sort_keys=True)

    def to_dict(self) -> dict[str, Any]:
        return self.model_dump(exclude_unset=True)

    @classmethod
    def from_dict(cls, data: Any, what: str = "eval row") -> EvalRow:
        return validated(cls, data, what)


def item_key(item: SpecItem) -> str:
    """Changes when an item's condition, prompt or setting changes (its rows are then stale)."""
    people = f"\n{item.people}" if item.people is not None else ""  # one-person items keep their keys
    return hashlib.sha256(f"{item.condition}\n{item.prompt}\n{item.setting}{people}".encode()).hexdigest()[:12]


def read_rows(path: Path) -> list[EvalRow]:
    """The rows of ``rows.jsonl`` (a :mod:`sow.io.journal`); a torn last line (a kill mid-write) is dropped from the file."""
    return [EvalRow.from_dict(data, f"eval rows file {path}: line {n}") for n, data in enumerate(repair_journal(path, "eval rows file"), 1)]


def append_row(path: Path, row: EvalRow) -> None:
    """Append one row and flush it to disk before the next item starts."""
    journal = Journal(path, "eval rows file")
    with journal.open():
        journal.append(row.to_dict(), sort_keys=True)


def current_rows(rows: list[EvalRow], items: list[SpecItem], methods: list[str]) -> list[EvalRow]:
    """The latest row of each (item, method) of this eval, in spec and method order (whatever order
    the rows were made in); rows of changed items or of other methods are left out."""
    keys = {(i.id, item_key(i)) for i in items}
    names = set(methods)
    latest: dict[tuple[str, str], EvalRow] = {}
    for row in rows:
        if (row.id, row.item_key) in keys and row.method in names:
            latest[(row.id, row.method)] = row
    item_order = {item.id: n for n, item in enumerate(items)}
    method_order = {m: n for n, m in enumerate(methods)}
    return sorted(latest.values(), key=lambda r: (item_order[r.id], method_order[r.method]))
