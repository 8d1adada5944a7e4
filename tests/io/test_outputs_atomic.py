"""Outputs: atomic writes leave the old file or the new one, never half of one, and no litter."""

from __future__ import annotations

import os

import pytest
from PIL import Image

from sow.errors import InputError
from sow.io.outputs import check_free, save_image_atomic, save_json_atomic, write_bytes_atomic


def test_failed_rename_keeps_the_old_file_and_no_temporary(tmp_path, monkeypatch):
    target = tmp_path / "result.json"
    target.write_text("old")

    def broken_replace(src, dst):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "replace", broken_replace)
    with pytest.raises(OSError):
        write_bytes_atomic(target, b"new contents")
    assert target.read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["result.json"]


def test_interrupted_write_leaves_no_temporary(tmp_path, monkeypatch):
    real_fsync = os.fsync

    def interrupted(fd):
        raise KeyboardInterrupt

    monkeypatch.setattr(os, "fsync", interrupted)
    with pytest.raises(KeyboardInterrupt):
        write_bytes_atomic(tmp_path / "x.png", b"data")
    monkeypatch.setattr(os, "fsync", real_fsync)
    assert list(tmp_path.iterdir()) == []


def test_writes_create_folders_and_round_trip(tmp_path):
    image = Image.new("RGB", (16, 8), (1, 2, 3))
    save_image_atomic(image, tmp_path / "a" / "b" / "img.png")
    assert Image.open(tmp_path / "a" / "b" / "img.png").getpixel((0, 0)) == (1, 2, 3)
    save_json_atomic({"k": [1, 2]}, tmp_path / "a" / "r.json")
    assert (tmp_path / "a" / "r.json").read_text() == '{\n  "k": [\n    1,\n    2\n  ]\n}\n'


def test_rename_replaces_a_symlink_not_its_target(tmp_path):
    outside = tmp_path / "outside.txt"
    outside.write_text("precious")
    folder = tmp_path / "out"
    folder.mkdir()
    (folder / "img.png").symlink_to(outside)
    with pytest.raises(InputError, match="already exists"):
        check_free([folder / "img.png"], overwrite=False)
    write_bytes_atomic(folder / "img.png", b"new")  # with --overwrite
    assert outside.read_text() == "precious" and not (folder / "img.png").is_symlink()


def test_outputs_get_the_permissions_of_any_new_file(tmp_path):
    """Atomic writes go through mkstemp (owner-only, 0o600); the output must not stay that way."""
    import stat

    plain = tmp_path / "plain.txt"
    plain.write_bytes(b"x")  # what open() gives under this process's umask
    write_bytes_atomic(tmp_path / "out.png", b"x")
    expected = stat.S_IMODE(plain.stat().st_mode)
    assert stat.S_IMODE((tmp_path / "out.png").stat().st_mode) == expected
    mask = os.umask(0)
    os.umask(mask)
    assert expected == 0o666 & ~mask
