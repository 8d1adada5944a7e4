"""A disk cache of plans, so a re-run does not ask a (slow, paid) multimodal model again.

The key is a SHA-256 over everything a plan depends on: the condition's pixels, the prompt,
the planner's name, its settings (its options), its model (the planner's ``model``
attribute, if any), the canvas and box_v's side limits, and sow's version. The seed is not
part of it: planners are expected to plan the same for every seed.

Where: ``$SOW_CACHE_DIR`` if set, else ``$XDG_CACHE_HOME/sow``, else ``~/.cache/sow``
(``%LOCALAPPDATA%\\sow`` on Windows), in a ``plans/`` folder, one JSON file per plan.
Entries are written atomically (a temporary file renamed into place), so a crash mid-write
leaves no entry rather than a corrupt one. An entry that does not validate anyway (edited by
hand, older format, not a regular file, another canvas, a crop outside the condition)
counts as a miss: the planner is asked again, the plan's notes say why, and the entry is
replaced. A cache that cannot be written is a warning, never a failure: the plan the
(possibly paid) planner made is used all the same.

Planners opt out with a class attribute ``cacheable = False`` (the built-in heuristic planner
does: it is faster than the cache). The CLI uses the cache unless ``--no-cache``; the API
only when ``pipe.plan_cache`` is set.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from sow.errors import InputError
from sow.io.files import parse_json, read_regular_bytes
from sow.io.outputs import json_bytes, write_bytes_atomic
from sow.schemas import Plan, first_error
from sow.version import __version__
from sow.stages import Planner, PlanRequest

MAX_ENTRY_BYTES = 1024 * 1024
"""Cache entries larger than this are misses (a plan is a few hundred bytes)."""

CACHE_FORMAT = 1
"""Bump when the key or the entry format changes: old entries then miss."""


def default_cache_dir() -> Path:
    """The user's cache folder for sow (see the module docstring for the order)."""
    if os.environ.get("SOW_CACHE_DIR"):
        return Path(os.environ["SOW_CACHE_DIR"]).expanduser()
    if os.environ.get("XDG_CACHE_HOME"):
        return Path(os.environ["XDG_CACHE_HOME"]).expanduser() / "sow"
    if sys.platform == "win32" and os.environ.get("LOCALAPPDATA"):
        return Path(os.environ["LOCALAPPDATA"]) / "sow"
    return Path.home() / ".cache" / "sow"


def condition_digest(request: PlanRequest) -> str:
    """SHA-256 of the condition's pixels (mode, size, bytes) and of its mask, if the caller gave one."""
    digest = hashlib.sha256()
    image = request.condition
    digest.update(f"{image.mode} {image.width}x{image.height}\n".encode())
    digest.update(image.tobytes())
    mask = request.extras.get("mask") if request.extras else None
    if mask is not None and hasattr(mask, "tobytes"):
        digest.update(b"mask")
        digest.update(mask.tobytes())
    return digest.hexdigest()


class PlanCache:
    """Plans on disk under :func:`default_cache_dir` (or ``root``)."""

    def __init__(self, root: Path | str | None = None) -> None:
        self.root = Path(root) if root is not None else default_cache_dir()
        self.folder = self.root / "plans"

    def key(self, request: PlanRequest, planner: Planner, settings: Mapping[str, Any]) -> str | None:
        """The cache key of this request for this planner, or None when the planner opts out."""
        if not getattr(planner, "cacheable", True):
            return None
        config = request.config
        parts = {
            "format": CACHE_FORMAT,
            "sow": __version__,
            "condition": condition_digest(request),
            "prompt": request.prompt,
            "planner": getattr(planner, "name", type(planner).__name__),
            "settings": dict(settings),
            "model": getattr(planner, "model", None),
            "canvas": [config.canvas.width, config.canvas.height],
            "side_limits": list(config.side_limits()),
        }
        if len(request.conditions) > 1:  # several people: every image counts (one image: the key as before)
            parts["conditions"] = [hashlib.sha256(im.tobytes()).hexdigest() + f"{im.size}" for im in request.conditions]
        if request.options:
            parts["options"] = dict(request.options)
        if getattr(planner, "constrained", None) is not None:  # a local model's decoding (constrained="auto" resolves by install)
            parts["constrained"] = bool(planner.constrained)
        text = json.dumps(parts, sort_keys=True, default=str)
        return hashlib.sha256(text.encode("utf-8")).hexdigest()

    def path(self, key: str) -> Path:
        return self.folder / f"{key}.json"

    def get(self, key: str) -> Plan | None:
        """The cached plan, or None (missing, unreadable or invalid entries are misses)."""
        return self.lookup(key)[0]

    def lookup(self, key: str) -> tuple[Plan | None, str | None]:
        """(the cached plan or None, why an entry that is there was not usable, or None)."""
        path = self.path(key)
        if not path.exists() and not path.is_symlink():
            return None, None
        try:
            data = parse_json(read_regular_bytes(path, "plan cache entry", MAX_ENTRY_BYTES), "plan cache entry")
            return Plan.model_validate(data), None
        except InputError as exc:
            return None, str(exc).rsplit(": ", 1)[-1]
        except ValueError as exc:
            return None, first_error(exc)

    def put(self, key: str, plan: Plan) -> Path:
        path = self.path(key)
        write_bytes_atomic(path, json_bytes(plan))  # redacted before serialising: an answer may quote the API key
        return path
