"""Writing results: atomic, never overwriting unless asked, with names safe on every OS."""

from __future__ import annotations

import json
import os
import re
import tempfile
from pathlib import Path

from PIL import Image

from sow.errors import InputError

_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")
_RESERVED = {"con", "prn", "aux", "nul", *(f"com{i}" for i in range(1, 10)), *(f"lpt{i}" for i in range(1, 10))}


def safe_name(text: str, max_length: int = 60) -> str:
    """A file-name stem from free text: ASCII letters, digits, ``.``, ``_`` and ``-`` only."""
    stem = _UNSAFE.sub("-", text.strip()).strip("-.").lower()[:max_length].rstrip("-.")
    if not stem or stem.split(".")[0] in _RESERVED:  # Windows reserves CON, CON.png, CON.x.png...
        stem = f"sow-{stem}" if stem else "sow"
    return stem


def check_free(paths: list[Path | None], overwrite: bool, elsewhere: str = "choose another --out/--name") -> None:
    """Refuse to run when an output already exists (unless ``overwrite``); ``None`` entries are skipped."""
    if overwrite:
        return
    taken = [p for p in paths if p is not None and (p.exists() or p.is_symlink())]  # a dangling link is taken too
    if taken:
        raise InputError(f"{taken[0]} already exists; pass --overwrite to replace it, or {elsewhere}")


def _file_mode() -> int:
    """The mode ``open()`` gives a new file: 0o666 less the process's umask (read once, at import)."""
    mask = os.umask(0)
    os.umask(mask)
    return 0o666 & ~mask


FILE_MODE = _file_mode()
"""Outputs get the permissions any new file would (``mkstemp`` alone makes them owner-only, 0o600)."""


def write_bytes_atomic(path: Path, data: bytes) -> None:
    """Write to a temporary file in the same folder, then rename over ``path``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        if hasattr(os, "fchmod"):  # POSIX; on Windows the file keeps its default ACL
            os.fchmod(fd, FILE_MODE)
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def save_image_atomic(image: Image.Image, path: Path) -> None:
    import io

    buffer = io.BytesIO()
    image.save(buffer, format=(path.suffix.lstrip(".") or "png").upper().replace("JPG", "JPEG"))
    write_bytes_atomic(path, buffer.getvalue())


def save_json_atomic(data: object, path: Path) -> None:
    """Write a pydantic model or plain data as JSON, atomically, with secrets redacted."""
    from sow.io.security import redact

    text = data.model_dump_json(indent=2) if hasattr(data, "model_dump_json") else json.dumps(data, indent=2)
    write_bytes_atomic(path, (redact(text) + "\n").encode("utf-8"))
