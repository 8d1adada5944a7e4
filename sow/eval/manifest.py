"""``eval.json``: what an eval folder holds, beside its rows, so that the reports need nothing else.

Written when a run starts (after the check that the folder holds no eval with other settings):
the config and its fingerprint, the methods in column order, the spec's items with the folder
their relative paths start from, the metric's threshold and the notes. :mod:`sow.eval.report`
reads it with ``rows.jsonl``; nothing in it is needed to resume (the rows are the state).
"""

from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field

from sow.errors import InputError
from sow.eval.config import EvalConfig
from sow.eval.spec import SpecItem
from sow.io.json_files import read_json
from sow.io.outputs import save_json_atomic
from sow.schemas import validated

MANIFEST_FILE = "eval.json"
MAX_MANIFEST_BYTES = 16 * 1024 * 1024


class EvalManifest(BaseModel):
    """The settings of the eval in a folder (``eval.json``)."""

    model_config = ConfigDict(extra="forbid")

    fingerprint: str = Field(description="EvalConfig.fingerprint(): rows of another fingerprint are not comparable.")
    config: EvalConfig
    methods: list[str] = Field(description="The methods, in column order.")
    items: list[SpecItem] = Field(description="The spec items of this run, in spec order.")
    spec_base: str = Field(description="The folder the items' relative condition paths start from.")
    threshold: float | None = Field(None, description="The metric's same-person threshold (None: the metric has none).")
    notes: list[str] = Field(default_factory=list)


def previous_fingerprint(out_dir: Path) -> str | None:
    """The fingerprint of the eval already in ``out_dir`` (None: none, or an unreadable manifest)."""
    path = out_dir / MANIFEST_FILE
    if not path.is_file():
        return None
    try:
        data = read_json(path, "eval manifest", MAX_MANIFEST_BYTES)
    except InputError:
        return None
    return data.get("fingerprint") if isinstance(data, dict) else None


def write_manifest(manifest: EvalManifest, out_dir: Path) -> None:
    """Start (or resume) the eval in ``out_dir``; an eval with other settings there is refused."""
    path = out_dir / MANIFEST_FILE
    if path.is_file() and previous_fingerprint(out_dir) != manifest.fingerprint:
        raise InputError(
            f"{out_dir} holds an eval with other settings (model, seed, metric or generation); "
            "choose another --out to start a new one"
        )
    save_json_atomic(manifest.model_dump(mode="json"), path)


def read_manifest(out_dir: Path) -> EvalManifest:
    """The manifest of the eval in ``out_dir`` (one line naming the problem when it is missing or bad)."""
    path = out_dir / MANIFEST_FILE
    if not path.is_file():
        raise InputError(f"{out_dir} holds no eval ({MANIFEST_FILE} not found)")
    return validated(EvalManifest, read_json(path, "eval manifest", MAX_MANIFEST_BYTES), f"eval manifest {path}")
