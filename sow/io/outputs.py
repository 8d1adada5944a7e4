"""Writing results: atomic, never overwriting unless asked, with names safe on every OS.

Without ``overwrite`` a file is *placed* (:func:`write_bytes_atomic` with ``replace=False``):
the finished temporary file is hard-linked to its name, which fails if anything appeared
there meanwhile, so a run never replaces a file another run (or the user) put there after
:func:`check_free` looked. Where the filesystem has no hard links the file is created with
``O_EXCL`` instead. The loser gets :class:`OutputExistsError`, one line.
"""

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


class OutputExistsError(InputError):
    """An output file that exists (or appeared while the run worked) and may not be replaced."""


def taken_message(path: Path, elsewhere: str = "choose another --out/--name") -> str:
    return f"{path} already exists; pass --overwrite to replace it, or {elsewhere}"


def check_unique(paths: dict[str, Path], what: str = "output") -> None:
    """Refuse two roles (or jobs) whose files would be one: same name, or names differing only in case.

    ``paths`` maps a label (``"line 3 image"``) to a path. Names are compared case-folded,
    as a case-insensitive filesystem (macOS, Windows) would see them.
    """
    seen: dict[str, str] = {}
    for label, path in paths.items():
        key = os.path.normcase(os.path.abspath(path)).casefold()
        if key in seen:
            raise InputError(f"{what} {path} of {label} is also the {what} of {seen[key]}; rename one of them")
        seen[key] = label


def check_writable(folder: Path, what: str = "--out") -> None:
    """Prove a file can be made in ``folder`` before any long work starts; leaves nothing behind.

    Folders that do not exist yet are made for the probe and removed again (the run makes
    them when it writes), so a refused input never leaves an empty output folder.
    """
    made: list[Path] = []
    try:
        missing = [p for p in [folder, *folder.parents] if not p.exists()]
        for path in reversed(missing):
            path.mkdir()
            made.append(path)
        fd, probe = tempfile.mkstemp(prefix=".sow-write-check.", suffix=".tmp", dir=folder)
        os.close(fd)
        os.unlink(probe)
    except (FileExistsError, NotADirectoryError):
        raise InputError(f"{what} {folder}: a file is in the way of this folder") from None
    except OSError as exc:
        raise InputError(f"{what} {folder}: cannot write there ({exc.strerror or exc})") from None
    finally:
        for path in reversed(made):
            try:
                path.rmdir()
            except OSError:  # another process put something there meanwhile: leave it
                pass


def check_free(paths: list[Path | None], overwrite: bool, elsewhere: str = "choose another --out/--name") -> None:
    """Refuse to run when an output already exists (unless ``overwrite``); ``None`` entries are skipped."""
    if overwrite:
        return
    taken = [p for p in paths if p is not None and (p.exists() or p.is_symlink())]  # a dangling link is taken too
    if taken:
        raise OutputExistsError(taken_message(taken[0], elsewhere))


def _file_mode() -> int:
    """The mode ``open()`` gives a new file: 0o666 less the process's umask (read once, at import)."""
    mask = os.umask(0)
    os.umask(mask)
    return 0o666 & ~mask


FILE_MODE = _file_mode()
"""Outputs get the permissions any new file would (``mkstemp`` alone makes them owner-only, 0o600)."""


def write_bytes_atomic(path: Path, data: bytes, *, replace: bool = True) -> None:
    """Write to a temporary file in the same folder, then rename it to ``path``.

    ``replace=False``: never replace an existing ``path`` (hard link, else ``O_EXCL``);
    :class:`OutputExistsError` if one is there.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        if hasattr(os, "fchmod"):  # POSIX; on Windows the file keeps its default ACL
            os.fchmod(fd, FILE_MODE)
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        if replace:
            os.replace(tmp, path)
        else:
            _place(tmp, path, data)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _place(tmp: str, path: Path, data: bytes) -> None:
    """Give ``tmp`` the name ``path`` unless that name is taken; ``tmp`` is gone afterwards."""
    try:
        os.link(tmp, path)
    except FileExistsError:
        raise OutputExistsError(taken_message(path)) from None
    except OSError:  # no hard links here (FAT, some network shares): create exclusively, then write
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0), FILE_MODE)
        except FileExistsError:
            raise OutputExistsError(taken_message(path)) from None
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
    os.unlink(tmp)


def image_bytes(image: Image.Image, path: Path) -> bytes:
    """``image`` encoded in the format ``path``'s suffix names (PNG by default)."""
    import io

    buffer = io.BytesIO()
    image.save(buffer, format=(path.suffix.lstrip(".") or "png").upper().replace("JPG", "JPEG"))
    return buffer.getvalue()


def json_bytes(data: object) -> bytes:
    """A pydantic model or plain data as indented JSON: values redacted first, then serialised."""
    from sow.safety.security import redact, redact_data

    plain = data.model_dump(mode="json") if hasattr(data, "model_dump") else data
    text = json.dumps(redact_data(plain), indent=2, ensure_ascii=False)
    return (redact(text) + "\n").encode("utf-8")


def save_image_atomic(image: Image.Image, path: Path, *, replace: bool = True) -> None:
    write_bytes_atomic(path, image_bytes(image, path), replace=replace)


def save_json_atomic(data: object, path: Path, *, replace: bool = True) -> None:
    """Write a pydantic model or plain data as JSON, atomically, with secrets redacted (before serialising)."""
    write_bytes_atomic(path, json_bytes(data), replace=replace)
