"""Rerun a generation from its run record alone: ``sow generate --replay RECORD.json``.

A run record (``<stem>.json``) holds everything a run depends on: the plan, the whole config,
the seed and the number of images, the model (its source and a fingerprint of its weights,
:mod:`sow.engine.fingerprint`), the LoRAs (path, scale, sha256), and every condition by path
and sha256 with its mask (a file beside the image, by sha256: :mod:`sow.io.masks`).
:func:`load_replay` reads a record and checks, before any model loads, that every file it
names is still there and still the same; :func:`check_model` checks the loaded model. Each
refusal is one line naming what differs (an :class:`~sow.errors.InputError`, exit 2).

Relative paths are read from the current folder first, then from the record's folder; the
masks from the record's folder (they are written beside it).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sow.errors import InputError
from sow.schemas import GenerationConfig, Plan, RunRecord, validated

DTYPE_NAMES = {"float32": "fp32", "float16": "fp16", "bfloat16": "bf16"}
"""The record's dtype (torch's name) -> the ``--dtype`` value that loads it."""


@dataclass
class Replay:
    """What a record says to run, checked against the files on disk."""

    record_path: Path
    record: RunRecord
    conditions: list[Path]
    """The condition images in the order the plan's ``image`` indices count them."""
    plan: Plan
    """The record's plan, each condition's ``mask`` pointing at the mask file the run saved."""
    notes: list[str] = field(default_factory=list)

    @property
    def config(self) -> GenerationConfig:
        return self.record.config

    @property
    def prompt(self) -> str:
        """The user's prompt (what the run was given; with PI on the plan's prompt is what runs)."""
        return self.record.plan.user_prompt or self.record.prompt_used or self.record.plan.prompt

    @property
    def dtype(self) -> str:
        return DTYPE_NAMES.get(self.record.dtype, self.record.dtype)

    @property
    def loras(self) -> list[str]:
        return [f"{lora.path}:{lora.scale}" for lora in self.record.loras]

    def call_arguments(self) -> dict[str, Any]:
        """Keyword arguments of :meth:`sow.pipeline.SOWPipeline.__call__` that repeat the run."""
        given = [str(p) for p in self.conditions]
        return {
            "condition": given if len(given) > 1 else given[0],
            "prompt": self.prompt,
            "plan": self.plan,
            "seed": self.record.seed,
            "config": self.config,
            "num_images": self.record.num_images,
        }


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _find(name: str, base: Path) -> Path | None:
    """``name`` as written (absolute, or relative to the current folder), else in the record's folder."""
    path = Path(name).expanduser()
    if path.is_file():
        return path
    if not path.is_absolute() and (base / path).is_file():
        return base / path
    if (base / path.name).is_file():
        return base / path.name
    return None


def read_record(path: Path) -> RunRecord:
    from sow.io.json_files import read_json

    if not path.is_file():
        raise InputError(f"--replay {path}: no such record file")
    return validated(RunRecord, read_json(path, "run record"), f"run record {path}")


def load_replay(path: Path) -> Replay:
    """The run ``path`` records, every condition, mask and LoRA checked against its sha256."""
    record = read_record(path)
    base = path.parent
    plan = record.plan
    entries = record.conditions or []
    count = 1 + max((c.image for c in plan.conditions), default=0)
    images: list[Path | None] = [None] * count
    for k, cond in enumerate(plan.conditions):
        if k < len(entries):
            source, digest = entries[k].source, entries[k].sha256
        elif k == 0:
            source, digest = record.condition, record.condition_sha256
        else:
            raise InputError(f"run record {path}: condition {k + 1} is not recorded; this record cannot be replayed")
        label = f"condition {k + 1}" if len(plan.conditions) > 1 else "the condition"
        if source in ("", "image"):
            raise InputError(f"--replay: {label} was given as an in-memory image, not a file; nothing to replay it from")
        found = _find(source, base)
        if found is None:
            raise InputError(f"--replay: {label} {source} no longer exists")
        actual = sha256_of(found)
        if actual != digest:
            raise InputError(f"--replay: {label} {found} has changed since the run (sha256 {actual[:12]}..., recorded {digest[:12]}...)")
        images[cond.image] = found
    missing = [i + 1 for i, p in enumerate(images) if p is None]
    if missing:
        raise InputError(f"run record {path}: image {missing[0]} is used by no condition; this record cannot be replayed")

    notes: list[str] = []
    replayed = []
    for k, cond in enumerate(plan.conditions):
        entry = entries[k] if k < len(entries) else None
        if entry is None or entry.mask is None:
            notes.append(f"condition {k + 1}: the record names no mask file (a record from before masks were saved); replayed with its plan mask or alpha")
            replayed.append(cond)
            continue
        found = _find(Path(entry.mask).name, base) or _find(entry.mask, base)
        if found is None:
            raise InputError(f"--replay: the mask of condition {k + 1}, {entry.mask}, no longer exists")
        actual = sha256_of(found)
        if actual != entry.mask_sha256:
            raise InputError(f"--replay: the mask of condition {k + 1}, {found}, has changed since the run (sha256 {actual[:12]}..., recorded {(entry.mask_sha256 or '')[:12]}...)")
        replayed.append(cond.model_copy(update={"mask": str(found)}))
    for lora in record.loras:
        lora_path = Path(lora.path).expanduser()
        if not lora_path.is_file():
            raise InputError(f"--replay: LoRA {lora.path} no longer exists")
        actual = sha256_of(lora_path)
        if actual != lora.sha256:
            raise InputError(f"--replay: LoRA {lora.path} has changed since the run (sha256 {actual[:12]}..., recorded {lora.sha256[:12]}...)")
    return Replay(path, record, [p for p in images if p is not None], plan.model_copy(update={"conditions": replayed}), notes)


def check_model(replay: Replay, components: Any) -> None:
    """Refuse (one line) when the loaded model is not the one the record was made with."""
    from sow.engine.fingerprint import weights_fingerprint

    recorded = replay.record.model_fingerprint
    if recorded is None:
        replay.notes.append("the record has no model fingerprint (made before sow recorded one): the model was not checked")
        return
    actual = weights_fingerprint(components)
    if actual != recorded:
        raise InputError(
            f"--replay: model {replay.record.model} no longer matches the record (weights fingerprint {actual[:12]}..., "
            f"recorded {recorded[:12]}...)"
        )
