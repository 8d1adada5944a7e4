"""What a visitor of the web app may ask for: every field of a request is hostile until checked here.

``sow ui`` may listen on a network (``--host 0.0.0.0``, ``--share``), so the page is a door for
anyone who reaches the port. The operator decides at start which models the page offers
(``--model``, repeatable) and how many may be in memory at once (``--max-loaded``); a visitor
chooses among those by name and can name nothing else: no server path, no hub id. Uploads are
capped in size and count (Gradio refuses a larger upload before it is stored; the handlers check
again, in case a file reaches them another way), and every other field (planner, modulator,
preset, seed, image count, prompt) is checked against what the page offers before any model
work. The checks raise :class:`~sow.errors.InputError`, which the page shows as one line.

The limits, with their reasons, are listed in docs/limits.md.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sow.errors import InputError
from sow.schemas import MAX_CONDITIONS

MAX_LOADED_MODELS = 1
"""Models the web app keeps in memory at once by default (an SD 2.1 pipeline is ~2.5 GiB in fp16):
loading another evicts the one used longest ago. ``sow ui --max-loaded N`` raises it."""

MAX_UPLOAD_BYTES = 20 * 1024 * 1024
"""Largest upload the page accepts by default (20 MiB: a full-resolution phone photo is 3-12 MiB).
``sow ui --max-upload-mb`` changes it."""

MAX_UPLOAD_FILES = MAX_CONDITIONS
"""Most photos in one request: a run takes at most :data:`sow.schemas.MAX_CONDITIONS` people."""

MAX_IMAGES = 4
"""The page's largest ``num_images`` (each image is a full run's memory in one batch)."""

MAX_SHOWN_NAME = 60
"""Characters of a refused value echoed back in an error line."""


def shown(value: object) -> str:
    """A visitor's value as an error line may quote it: cleaned of control characters, cut short."""
    from sow.safety.security import clean_text

    text = clean_text(str(value))
    return repr(text if len(text) <= MAX_SHOWN_NAME else text[: MAX_SHOWN_NAME - 3] + "...")


@dataclass(frozen=True)
class UiLimits:
    """The operator's choices at start: the models offered, how many stay loaded, the upload caps."""

    models: tuple[str, ...] = ("tiny",)
    """The model names the page offers (as given to ``--model``); nothing else can be loaded."""
    max_loaded: int = MAX_LOADED_MODELS
    max_upload_bytes: int = MAX_UPLOAD_BYTES
    max_files: int = MAX_UPLOAD_FILES
    max_images: int = MAX_IMAGES
    upload_roots: tuple[Path, ...] = field(default_factory=tuple)
    """Folders uploads must lie in (Gradio's upload cache); empty: not checked (tests, the Python API)."""

    def __post_init__(self) -> None:
        if not self.models:
            raise InputError("the web app needs at least one --model to offer")
        if len(set(self.models)) != len(self.models):
            raise InputError(f"--model {', '.join(self.models)}: a model is named twice")
        if self.max_loaded < 1:
            raise InputError(f"--max-loaded {self.max_loaded}: must be at least 1")
        if self.max_upload_bytes < 1:
            raise InputError(f"--max-upload-mb: must be above 0 (got {self.max_upload_bytes} bytes)")

    def model(self, name: Any) -> str:
        """``name`` if the operator offers it, else :class:`InputError` (the page never loads a visitor's path)."""
        if not isinstance(name, str) or name.strip() not in self.models:
            raise InputError(f"model {shown(name)} is not offered here; choose one of: {', '.join(self.models)}")
        return name.strip()

    def uploads(self, paths: Sequence[Path]) -> list[Path]:
        """The uploaded files, if their count and sizes are within the caps and they lie in the upload cache."""
        if len(paths) > self.max_files:
            raise InputError(f"{len(paths)} photos uploaded; the limit is {self.max_files} (a run takes at most {MAX_CONDITIONS} people)")
        checked = []
        for path in paths:
            resolved = Path(path).resolve()
            if self.upload_roots and not any(resolved.is_relative_to(root) for root in self.upload_roots):
                raise InputError(f"{shown(Path(path).name)}: not an uploaded file; upload the photo")
            try:
                size = resolved.stat().st_size
            except OSError:
                raise InputError(f"{shown(Path(path).name)}: the upload is gone; upload the photo again") from None
            if size > self.max_upload_bytes:
                raise InputError(f"{shown(Path(path).name)}: {size:,} bytes is over the upload limit of {self.max_upload_bytes:,} bytes")
            checked.append(Path(path))
        return checked

    def image_count(self, count: Any) -> int:
        """The number of images asked for: a whole number in 1 .. ``max_images``."""
        try:
            number = float(count)
        except (TypeError, ValueError):
            raise InputError(f"images {shown(count)}: must be a whole number in 1 .. {self.max_images}") from None
        if not number.is_integer() or not 1 <= number <= self.max_images:
            raise InputError(f"images {shown(count)}: must be a whole number in 1 .. {self.max_images}")
        return int(number)


def one_of(what: str, value: Any, allowed: Iterable[str]) -> str:
    """``value`` if it is one of ``allowed`` (a dropdown's choices), else :class:`InputError` naming them."""
    allowed = list(allowed)
    if not isinstance(value, str) or value not in allowed:
        raise InputError(f"{what} {shown(value)} is not offered here; choose one of: {', '.join(allowed)}")
    return value


def gradio_upload_roots() -> tuple[Path, ...]:
    """Where Gradio stores uploads (``GRADIO_TEMP_DIR`` or its default), resolved."""
    from gradio.utils import get_upload_folder

    return (Path(get_upload_folder()).resolve(),)


def condition_paths(files: Any) -> list[Path]:
    """The uploaded files as paths (gradio hands over paths, file objects or dicts, by version)."""
    if not files:
        raise InputError("upload a condition photo (a face) first")
    items = files if isinstance(files, (list, tuple)) else [files]
    paths = []
    for item in items:
        name = item if isinstance(item, (str, Path)) else getattr(item, "name", None) or (item or {}).get("path")
        if not isinstance(name, (str, Path)) or not str(name):
            raise InputError("an upload is not a file; upload the photo again")
        paths.append(Path(name))
    return paths


def checked_request(
    limits: UiLimits, registry: Any, files: Any, model: Any, prompt: Any, planner: Any, modulator: Any, preset: Any,
    seed: Any, count: Any, attention: Any,
) -> tuple[list[Path], dict[str, Any]]:
    """(the uploaded paths, the fields of a :class:`~sow.ui.session.Choices`) from one request, every field checked.

    The page's dropdowns offer only valid values, but a visitor can post anything to Gradio's API:
    the model must be one the operator offers, the planner, modulator and preset ones the page
    lists, the seed and image count whole numbers in range, the prompt within the prompt limit.
    """
    from sow.safety.prompt_checks import require_prompt
    from sow.schemas import PRESETS

    paths = limits.uploads(condition_paths(files))
    model = limits.model(model)
    planner = one_of("planner", planner, registry.names("planner"))
    modulator = one_of("modulator", modulator, registry.names("modulator"))
    preset = one_of("preset", preset, PRESETS)
    prompt = require_prompt(prompt)
    seed_int = whole_seed(seed)
    if not isinstance(attention, bool):
        raise InputError(f"attention picture {shown(attention)}: must be true or false")
    return paths, {"model": model, "prompt": prompt, "planner": planner, "modulator": modulator, "preset": preset,
                   "seed": seed_int, "num_images": limits.image_count(count), "attention": attention}


def whole_seed(seed: Any) -> int:
    """A seed field's value as an int in 0 .. 2**63-1 (Gradio sends numbers as int or float)."""
    bad = InputError(f"seed {shown(seed)}: must be a whole number in 0 .. 2**63-1")
    if isinstance(seed, bool) or not isinstance(seed, (int, float)):
        raise bad
    if isinstance(seed, float):
        if not seed.is_integer():
            raise bad
        seed = int(seed)
    if not 0 <= seed < 2**63:
        raise bad
    return seed
