"""Reading a file a user (or a cache) names: regular files only, never more than a cap.

Every path that comes in (plans, configs, batch files, specs, templates, cache entries,
journals) is read through :func:`read_regular_bytes`: it opens without blocking (a FIFO
never hangs the run), refuses anything that is not a regular file (``/dev/zero``, a pipe,
a socket, a folder) and reads at most ``max_bytes`` (a file that grows while it is read is
refused too). :func:`parse_json` turns every way ``json`` can refuse a text (bad syntax,
nesting, integers over Python's digit limit) into one :class:`InputError`.
"""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

from sow.errors import InputError


def read_regular_bytes(path: Path, what: str, max_bytes: int) -> bytes:
    """The bytes of the regular file ``path``; :class:`InputError` names ``what`` and the reason."""
    label = f"{what} {path}"
    flags = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_BINARY", 0)
    try:
        fd = os.open(path, flags)
    except FileNotFoundError:
        raise InputError(f"{label}: no such file") from None
    except IsADirectoryError:
        raise InputError(f"{label}: is a folder, not a file") from None
    except OSError as exc:
        raise InputError(f"{label}: cannot be read ({exc.strerror or exc})") from None
    try:
        info = os.fstat(fd)
        if stat.S_ISDIR(info.st_mode):
            raise InputError(f"{label}: is a folder, not a file")
        if not stat.S_ISREG(info.st_mode):
            raise InputError(f"{label}: not a regular file (a device, pipe or socket)")
        if info.st_size > max_bytes:
            raise InputError(f"{label}: {info.st_size:,} bytes is over the {max_bytes:,}-byte limit")
        if hasattr(os, "set_blocking"):
            os.set_blocking(fd, True)
        chunks, total = [], 0
        while True:
            chunk = os.read(fd, min(1 << 20, max_bytes + 1 - total))
            if not chunk:
                break
            chunks.append(chunk)
            total += len(chunk)
            if total > max_bytes:
                raise InputError(f"{label}: over the {max_bytes:,}-byte limit")
        return b"".join(chunks)
    except OSError as exc:
        raise InputError(f"{label}: cannot be read ({exc.strerror or exc})") from None
    finally:
        os.close(fd)


def read_regular_text(path: Path, what: str, max_bytes: int) -> str:
    """:func:`read_regular_bytes` decoded as UTF-8 (a byte-order mark is dropped)."""
    try:
        return read_regular_bytes(path, what, max_bytes).decode("utf-8-sig")
    except UnicodeDecodeError:
        raise InputError(f"{what} {path}: not UTF-8 text") from None


def parse_json(text: str | bytes, label: str) -> object:
    """``json.loads`` with every refusal (syntax, nesting, 4300-digit integers, lone surrogates) as one :class:`InputError`.

    JSON's ``\\ud800`` escapes can spell a lone UTF-16 surrogate, which is no character: Python
    reads it into a ``str`` that cannot be written out again (every record, manifest and log line
    would fail later), so it is refused here, where every JSON input enters.
    """
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise InputError(f"{label}: not valid JSON ({exc.msg} at line {exc.lineno} column {exc.colno})") from None
    except RecursionError:
        raise InputError(f"{label}: not valid JSON (nested too deeply)") from None
    except ValueError as exc:  # e.g. "Exceeds the limit (4300 digits) for integer string conversion"
        reason = str(exc).splitlines()[0] if str(exc) else "a value Python cannot read"
        raise InputError(f"{label}: not valid JSON ({reason})") from None
    where = _lone_surrogate(data)
    if where is not None:
        raise InputError(f"{label}: {where} holds a lone UTF-16 surrogate escape (like \\ud800), which is not a character")
    return data


def _lone_surrogate(data: object, path: str = "") -> str | None:
    """Where in ``data`` (a JSON value) a string or key holds a lone surrogate, or None."""
    stack: list[tuple[object, str]] = [(data, path)]
    while stack:
        value, where = stack.pop()
        if isinstance(value, str):
            if not value.isascii():
                try:
                    value.encode("utf-8")
                except UnicodeEncodeError:
                    return where or "a value"
        elif isinstance(value, dict):
            for key, item in value.items():
                name = f"{where}.{key}" if where else str(key)
                if not key.isascii():
                    try:
                        key.encode("utf-8")
                    except UnicodeEncodeError:
                        return f"a key of {where or 'the object'}"
                stack.append((item, name))
        elif isinstance(value, list):
            stack.extend((item, f"{where}[{i}]") for i, item in enumerate(value))
    return None


def jsonl_lines(text: str) -> list[str]:
    """The lines of a JSON Lines text: split on ``\\n`` only (U+2028, U+0085 are valid inside strings)."""
    lines = text.split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    return [line[:-1] if line.endswith("\r") else line for line in lines]
