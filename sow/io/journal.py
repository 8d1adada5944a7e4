"""Append-only JSON Lines journals: the batch manifest and the eval's rows file share this one.

**The torn-line policy.** Each entry is one line, written in one call, flushed and fsynced
before the next work starts. A kill can therefore only leave the *last* line cut short
(no ``\\n`` at its end): that line is not an entry, and it is cut off the file before the
next append, so a new entry never glues onto it. A complete line that is not a JSON object
is not a kill's doing (an edit, another program): reading the journal refuses it, naming
the line, instead of guessing. Lines split on ``\\n`` only: U+2028 and U+0085 are valid
inside JSON strings. Values are redacted before they are serialised
(:func:`sow.safety.security.redact_data`).
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from pathlib import Path
from typing import Any

from sow.errors import InputError
from sow.io.files import read_regular_bytes
from sow.io.locks import held

MAX_JOURNAL_BYTES = 1024 * 1024 * 1024
"""Journals larger than this are refused (1 GiB: millions of entries)."""


def repair_journal(path: Path, what: str = "journal") -> list[dict[str, Any]]:
    """The entries of ``path``, its torn last line (if any) cut off the file."""
    entries, good = read_journal(path, what)
    if path.is_file() and path.stat().st_size != good:
        with path.open("r+b") as handle:
            handle.truncate(good)
    return entries


def read_journal(path: Path, what: str = "journal") -> tuple[list[dict[str, Any]], int]:
    """(the entries, the byte length of the complete lines); a torn last line is left out."""
    if not path.exists() and not path.is_symlink():
        return [], 0
    data = read_regular_bytes(path, what, MAX_JOURNAL_BYTES)
    entries: list[dict[str, Any]] = []
    good = 0
    lines = data.split(b"\n")
    for number, line in enumerate(lines[:-1], start=1):  # the part after the last \n is torn (or empty)
        good += len(line) + 1
        if not line.strip():
            continue
        try:
            entry = json.loads(line.decode("utf-8"))
        except (ValueError, RecursionError):  # JSONDecodeError, UnicodeDecodeError, digit limit
            entry = None
        if not isinstance(entry, dict):
            raise InputError(f"{what} {path} line {number} is not a JSON row (an object on one line); fix or remove that line to resume")
        entries.append(entry)
    return entries, good


class Journal:
    """One JSON Lines journal file: :meth:`entries` to read, :meth:`open` then :meth:`append` to write."""

    def __init__(self, path: Path, what: str = "journal", *, lock: bool = False, owner: str = "run") -> None:
        self.path = path
        self.what = what
        self.lock = lock
        self.owner = owner
        """Who holds the lock, for the message ("in use by another sow batch")."""
        self._handle = None

    def exists(self) -> bool:
        return self.path.is_file() and self.path.stat().st_size > 0

    def entries(self) -> list[dict[str, Any]]:
        """Every complete entry (a torn last line is not one)."""
        return read_journal(self.path, self.what)[0]

    @contextmanager
    def open(self, fresh: bool = False) -> Iterator[Journal]:
        """Hold the journal for appending (exclusively when ``lock``); ``fresh`` empties it first."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with held(self.path) if self.lock else nullcontext(True) as ours:
            if not ours:  # checked before truncating: never clobber a journal that is in use
                raise InputError(f"{self.path} is in use by another sow {self.owner}; wait for it or choose another --out")
            handle = open(self.path, "a+b")
            try:
                if fresh:
                    handle.truncate(0)
                else:
                    _, good = read_journal(self.path, self.what)
                    if good != os.fstat(handle.fileno()).st_size:
                        handle.truncate(good)  # the torn tail of a kill: a new entry starts on a line of its own
                self._handle = handle
                yield self
            finally:
                self._handle = None
                handle.close()

    def append(self, entry: dict[str, Any], *, stamp: bool = False, sort_keys: bool = False) -> None:
        """Write ``entry`` (redacted) as one line, flushed and fsynced."""
        from sow.safety.security import redact, redact_data

        if self._handle is None:
            raise RuntimeError(f"{self.what} is not open")
        if stamp:
            entry = {**entry, "time": entry.get("time") or time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
        text = redact(json.dumps(redact_data(entry), ensure_ascii=False, sort_keys=sort_keys))
        self._handle.write((text + "\n").encode("utf-8"))
        self._handle.flush()
        os.fsync(self._handle.fileno())

