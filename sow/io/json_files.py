"""JSON files a user hands in (plans, configs): read once, size-capped, errors naming the file."""

from __future__ import annotations

import json
from pathlib import Path

from sow.errors import InputError
from sow.schemas import Plan, validated

MAX_JSON_BYTES = 16 * 1024 * 1024
"""Plan and config files larger than this are refused."""


def read_json(path: Path, what: str) -> object:
    try:
        if path.is_dir():
            raise InputError(f"{what} {path}: is a folder, not a JSON file")
        if path.exists() and path.stat().st_size > MAX_JSON_BYTES:
            raise InputError(f"{what} {path}: over the {MAX_JSON_BYTES:,}-byte limit")
        return json.loads(path.read_text(encoding="utf-8-sig"))
    except FileNotFoundError:
        raise InputError(f"{what} {path}: no such file") from None
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise InputError(f"{what} {path}: not valid JSON ({str(exc).splitlines()[0]})") from None
    except RecursionError:
        raise InputError(f"{what} {path}: not valid JSON (nested too deeply)") from None
    except OSError as exc:
        raise InputError(f"{what} {path}: cannot be read ({exc.strerror or exc})") from None


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
