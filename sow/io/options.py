"""``KEY=VALUE`` options from the command line (``--planner-option``, ``--metric-option``): one parser."""

from __future__ import annotations

import json

from sow.errors import InputError


def parse_key_values(items: list[str] | None, flag: str = "--planner-option") -> dict[str, object]:
    """``["model=gemini-2.5-pro", "retries=2"]`` -> ``{"model": "gemini-2.5-pro", "retries": 2}``.

    A VALUE is read as JSON when it parses (numbers, true/false, lists), else kept as text;
    a JSON value Python cannot hold (an integer over the 4300-digit limit) is kept as text too.
    """
    options: dict[str, object] = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise InputError(f"{flag} {item!r}: expected KEY=VALUE")
        try:
            options[key.strip()] = json.loads(value)
        except (ValueError, RecursionError):  # JSONDecodeError is a ValueError
            options[key.strip()] = value
    return options
