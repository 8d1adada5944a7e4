"""The benchmark spec of ``sow eval``: JSONL lines of (id, condition, prompt, setting).

The paper's benchmark pairs CelebAMask-HQ faces with prompts in three settings:
``normal`` (a scene around the person), ``style`` (style transfer) and ``attribute``
(attribute editing). sow ships its own prompt templates for the three
(``sow/data/eval_prompts.json``, replaceable with ``--templates``); :func:`make_spec`
pairs them with a folder of face images the user supplies. Nothing is downloaded.

One spec line::

    {"id": "obama-style-0", "condition": "faces/obama.jpg", "prompt": "...", "setting": "style"}

A relative ``condition`` path is read relative to the spec file's folder. Several people
(docs/several-people.md): ``condition`` is a list of images, one person each, or one group
photo with ``people`` (its N largest faces, each its own condition)::

    {"id": "pair-0", "condition": ["faces/obama.jpg", "faces/biden.jpg"], "prompt": "...", "setting": "normal"}
    {"id": "group-0", "condition": "faces/obama_and_biden.jpg", "people": 3, "prompt": "...", "setting": "normal"}
"""

from __future__ import annotations

import json
from importlib import resources
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, field_validator

from sow.errors import InputError
from sow.io.files import jsonl_lines, read_regular_text
from sow.io.outputs import safe_name, write_bytes_atomic
from sow.schemas import Preset, first_error

SETTINGS: tuple[str, ...] = ("normal", "style", "attribute")
"""The paper's three settings; each is also the name of a generation preset."""
IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".webp", ".bmp"}


class SpecItem(BaseModel):
    """One benchmark item: a condition image, a prompt and the setting (= preset) it is run with."""

    model_config = ConfigDict(extra="forbid")

    id: str = Field(min_length=1, description="Unique item id (used in file names).")
    condition: str | list[str] = Field(description="Condition image path, or a list of them for several people (relative: to the spec's folder).")
    prompt: str = Field(min_length=1, description="The text prompt.")
    setting: Preset = Field(description="normal, style or attribute: the preset the item runs with.")
    people: int | None = Field(None, ge=1, le=16, description="One group photo: use its N largest faces, each its own condition (the heuristic planner's max_people).")

    @field_validator("condition")
    @classmethod
    def _paths(cls, value: str | list[str]) -> str | list[str]:
        names = [value] if isinstance(value, str) else value
        if not names or any(not n for n in names):
            raise ValueError("give a condition image path (or a non-empty list of them)")
        return value

    @property
    def conditions(self) -> list[str]:
        """The condition paths as written: one or several."""
        return [self.condition] if isinstance(self.condition, str) else list(self.condition)

    def condition_paths(self, base: Path) -> list[Path]:
        paths = [Path(c).expanduser() for c in self.conditions]
        return [p if p.is_absolute() else base / p for p in paths]

    def condition_path(self, base: Path) -> Path:
        """The first condition's path."""
        return self.condition_paths(base)[0]


MAX_PER_SETTING = 100
"""Prompts per face and setting at most: the templates hold a few dozen; more only repeats them."""

MAX_SPEC_BYTES = 64 * 1024 * 1024
"""Spec and template files larger than this are refused."""


def item_file_name(item_id: str) -> str:
    """The file stem an item's images get (the same for every method)."""
    return safe_name(item_id, 80)


def load_templates(path: Path | None = None) -> dict[str, list[str]]:
    """Prompt templates by setting: the shipped ones, or a JSON file ``{"normal": [...], ...}``."""
    if path is None:
        text = (resources.files("sow") / "data" / "eval_prompts.json").read_text(encoding="utf-8")
        where = "bundled eval_prompts.json"
    else:
        text = read_regular_text(path, "templates", MAX_SPEC_BYTES)
        where = f"templates {path}"
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise InputError(f"{where}: not valid JSON ({exc})") from None
    if not isinstance(data, dict):
        raise InputError(f"{where}: expected an object of setting -> list of prompts")
    templates: dict[str, list[str]] = {}
    for setting, prompts in data.items():
        if setting not in SETTINGS:
            raise InputError(f"{where}: unknown setting {setting!r}; use {', '.join(SETTINGS)}")
        if not isinstance(prompts, list) or not prompts or not all(isinstance(p, str) and p.strip() for p in prompts):
            raise InputError(f"{where}: {setting!r} must be a non-empty list of prompts")
        templates[setting] = prompts
    return templates


def face_images(folder: Path) -> list[Path]:
    """Image files of ``folder`` (not recursive, hidden files skipped), sorted by name."""
    if not folder.is_dir():
        raise InputError(f"faces folder {folder}: not a folder")
    images = sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES and not p.name.startswith("."))
    if not images:
        raise InputError(f"faces folder {folder}: no image files ({', '.join(sorted(IMAGE_SUFFIXES))})")
    return images


def make_spec(
    faces: list[Path],
    templates: dict[str, list[str]],
    settings: tuple[str, ...] = SETTINGS,
    per_setting: int = 1,
    base: Path | None = None,
) -> list[SpecItem]:
    """Pair every face with ``per_setting`` prompts of each setting.

    Prompts rotate through each setting's templates (face i takes templates i, i+1, ...),
    so every template is used about equally and the spec is the same on every machine.
    Condition paths are written relative to ``base`` when they lie under it.
    """
    if not 1 <= per_setting <= MAX_PER_SETTING:
        raise InputError(f"--per-setting {per_setting}: must lie in 1 .. {MAX_PER_SETTING}")
    missing = [s for s in settings if s not in templates]
    if missing:
        raise InputError(f"no prompt templates for setting {missing[0]!r}")
    if per_setting < 1:
        raise InputError("--per-setting must be at least 1")
    items: list[SpecItem] = []
    seen: set[str] = set()
    for i, face in enumerate(faces):
        stem = safe_name(face.stem, 40)
        while stem in seen:  # two files differing only in suffix or unsafe characters
            stem += "_"
        seen.add(stem)
        condition = _relative(face, base)
        for setting in settings:
            prompts = templates[setting]
            for k in range(per_setting):
                prompt = prompts[(i + k) % len(prompts)]
                items.append(SpecItem(id=f"{stem}-{setting}-{k}", condition=condition, prompt=prompt, setting=setting))
    return items


def _relative(path: Path, base: Path | None) -> str:
    resolved = path.resolve()
    if base is not None:
        try:
            return resolved.relative_to(base.resolve()).as_posix()
        except ValueError:
            pass
    return str(resolved)


def write_spec(items: list[SpecItem], path: Path, *, replace: bool = True) -> None:
    """Write the spec (``replace=False``: never replace a file that is there, see :mod:`sow.io.outputs`)."""
    lines = "".join(item.model_dump_json() + "\n" for item in items)
    write_bytes_atomic(path, lines.encode("utf-8"), replace=replace)


def load_spec(path: Path) -> list[SpecItem]:
    """Read and validate a spec; errors name the line and the field. Ids must be unique."""
    text = read_regular_text(path, "spec", MAX_SPEC_BYTES)
    items: list[SpecItem] = []
    ids: set[str] = set()
    files: dict[str, tuple[int, str]] = {}
    for number, line in enumerate(jsonl_lines(text), start=1):  # \n only: U+2028 may sit inside a string
        if not line.strip():
            continue
        try:
            item = SpecItem.model_validate_json(line)
        except ValueError as exc:
            raise InputError(f"spec {path} line {number}: {first_error(exc)}") from None
        if item.id in ids:
            raise InputError(f"spec {path} line {number}: duplicate id {item.id!r}")
        ids.add(item.id)
        written = item_file_name(item.id).casefold()  # what lands on disk, as a case-insensitive filesystem sees it
        if written in files:
            first_line, first_id = files[written]
            raise InputError(
                f"spec {path} line {number}: id {item.id!r} writes the same file ({item_file_name(item.id)}.png) "
                f"as id {first_id!r} on line {first_line}; make the ids differ in letters or digits"
            )
        files[written] = (number, item.id)
        items.append(item)
    if not items:
        raise InputError(f"spec {path}: no items")
    return items
