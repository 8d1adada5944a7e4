"""JSON files a user hands in (plans, configs): read once, size-capped, errors naming the file."""

from __future__ import annotations

from pathlib import Path

from sow.errors import InputError
from sow.io.files import parse_json, read_regular_text
from sow.schemas import Plan, validated

MAX_JSON_BYTES = 16 * 1024 * 1024
"""Plan and config files larger than this are refused."""


def read_json(path: Path, what: str, max_bytes: int = MAX_JSON_BYTES) -> object:
    """A JSON file, regular files only and size-capped (:mod:`sow.io.files`); errors name ``what`` and the file."""
    return parse_json(read_regular_text(path, what, max_bytes), f"{what} {path}")


def load_plan_file(path: Path) -> Plan:
    """A plan file, validated; errors name the field."""
    return validated(Plan, read_json(path, "plan file"), f"plan file {path}")


def load_config_file(path: Path | None) -> dict:
    if path is None:
        return {}
    data = read_json(path, "config file")
    if not isinstance(data, dict):
        raise InputError(f"config file {path}: expected a JSON object of GenerationConfig fields")
    return data
