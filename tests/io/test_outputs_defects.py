"""The defect tests of this room (issue 13's classes by number; issue 12's one journal):

- 3. concurrent runs on one --out
"""

from __future__ import annotations

import json

import pytest

from tests.support.defects import TINIEST, run_cli, write_file


@pytest.fixture(autouse=True)
def _only_builtin_plugins(builtin_plugins_only):
    """The shared venv may hold third-party plugins: load none of them here."""


# -- 3. concurrent runs on one --out ----------------------------------------------------------------


def test_3_placing_a_file_never_replaces_one_that_appeared_meanwhile(tmp_path):
    from sow.io.outputs import OutputExistsError, write_bytes_atomic

    target = tmp_path / "x.png"
    target.write_bytes(b"the other run's image")
    with pytest.raises(OutputExistsError, match="already exists"):
        write_bytes_atomic(target, b"mine", replace=False)
    assert target.read_bytes() == b"the other run's image"
    assert [p.name for p in tmp_path.iterdir()] == ["x.png"]  # no temporary left
    write_bytes_atomic(tmp_path / "y.png", b"mine", replace=False)
    assert (tmp_path / "y.png").read_bytes() == b"mine"


def test_3_a_set_of_files_is_placed_whole_or_not_at_all(tmp_path):
    """What `sow plan` (plan + picture) and write_outputs (a run's files) rely on."""
    from sow.io.outputs import OutputExistsError
    from sow.io.results import place_files

    (tmp_path / "p.png").write_bytes(b"theirs")
    with pytest.raises(OutputExistsError):
        place_files({tmp_path / "p.json": b"mine", tmp_path / "p.png": b"mine"})
    assert sorted(p.name for p in tmp_path.iterdir()) == ["p.png"] and (tmp_path / "p.png").read_bytes() == b"theirs"
    place_files({tmp_path / "p.json": b"mine", tmp_path / "p.png": b"mine"}, overwrite=True)
    assert (tmp_path / "p.png").read_bytes() == b"mine"


def test_3_a_run_that_loses_the_race_fails_in_one_line_and_leaves_the_winners_files(tmp_path, face_path, capsys, monkeypatch):
    """Another run writes the record while this one generates: this one must not replace it, nor leave half a set."""
    import sow.pipeline

    out = tmp_path / "out"
    config = write_file(tmp_path / "c.json", json.dumps(TINIEST))
    real_call = sow.pipeline.SOWPipeline.__call__

    def racing_call(self, *args, **kwargs):
        result = real_call(self, *args, **kwargs)
        out.mkdir(exist_ok=True)
        (out / "x.json").write_text("the winner's record")  # appears after check_free looked
        return result

    monkeypatch.setattr(sow.pipeline.SOWPipeline, "__call__", racing_call)
    code, _, err = run_cli(capsys, ["generate", str(face_path), "a chef", "--name", "x", "-o", str(out), "--config", str(config), "-q"])
    assert code == 2
    assert [line for line in err.splitlines() if line.startswith("error:")] == [
        f"error: {out / 'x.json'} already exists; pass --overwrite to replace it, or choose another --out/--name"
    ]
    assert (out / "x.json").read_text() == "the winner's record"
    assert sorted(p.name for p in out.iterdir()) == ["x.json"]  # the loser's image and plan picture were taken back
