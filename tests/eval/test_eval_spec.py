"""The benchmark spec: prompt templates, pairing faces with them, reading specs back."""

from __future__ import annotations

import json

import pytest

from sow.eval.spec import SETTINGS, face_images, load_spec, load_templates, make_spec, write_spec
from sow.errors import InputError


def test_bundled_templates_cover_the_three_settings():
    templates = load_templates()
    assert set(templates) == set(SETTINGS) == {"normal", "style", "attribute"}
    for prompts in templates.values():
        assert len(prompts) >= 3 and len(set(prompts)) == len(prompts)


def test_spec_pairs_every_face_with_each_setting(tmp_path, faces_dir):
    images = face_images(faces_dir)
    templates = load_templates()
    items = make_spec(images, templates, per_setting=2, base=tmp_path)
    assert len(items) == len(images) * 3 * 2
    assert len({i.id for i in items}) == len(items)
    for item in items:
        assert item.prompt in templates[item.setting]
    # face i starts at template i: the templates rotate instead of all faces sharing the first
    normal_first = [i.prompt for i in items if i.setting == "normal" and i.id.endswith("-0")]
    assert len(set(normal_first)) == min(len(images), len(templates["normal"]))

    path = tmp_path / "spec.jsonl"
    write_spec(items, path)
    again = load_spec(path)
    assert again == items
    assert all(i.condition_path(tmp_path).is_file() for i in again)


def test_relative_conditions_are_read_from_the_spec_folder(tmp_path, faces_dir):
    (tmp_path / "faces").mkdir()
    (tmp_path / "faces" / "a.jpg").write_bytes((faces_dir / "obama.jpg").read_bytes())
    items = make_spec(face_images(tmp_path / "faces"), load_templates(), ("style",), base=tmp_path)
    assert [i.condition for i in items] == ["faces/a.jpg"]
    assert items[0].condition_path(tmp_path) == tmp_path / "faces" / "a.jpg"


@pytest.mark.parametrize(
    ("lines", "message"),
    [
        (['{"id": "a", "condition": "x.jpg", "prompt": "p", "setting": "sepia"}'], "line 1: setting"),
        (['{"id": "a", "condition": "x.jpg", "prompt": "p", "setting": "style"}', '{"id": "a", "condition": "y.jpg", "prompt": "q", "setting": "normal"}'], "line 2: duplicate id 'a'"),
        (['{"id": "a", "condition": "x.jpg", "prompt": "p"'], "line 1:"),
        (['{"id": "a", "condition": "x.jpg", "setting": "style"}'], "line 1: prompt"),
        ([""], "no items"),
    ],
    ids=["bad-setting", "duplicate-id", "torn-json", "missing-prompt", "empty"],
)
def test_bad_spec_lines_are_named(tmp_path, lines, message):
    path = tmp_path / "spec.jsonl"
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(InputError, match=message.replace("(", r"\(")) as info:
        load_spec(path)
    assert "\n" not in str(info.value)


def test_templates_file_is_validated(tmp_path):
    path = tmp_path / "t.json"
    path.write_text(json.dumps({"normal": ["a"], "sepia": ["b"]}))
    with pytest.raises(InputError, match="unknown setting 'sepia'"):
        load_templates(path)
    path.write_text(json.dumps({"normal": []}))
    with pytest.raises(InputError, match="non-empty list"):
        load_templates(path)


def test_cli_eval_spec(tmp_path, faces_dir, capsys):
    from sow.cli.commands import main

    out = tmp_path / "spec.jsonl"
    with pytest.raises(SystemExit) as info:
        main(["eval-spec", str(faces_dir), "-o", str(out), "--limit", "2", "--settings", "normal,style"])
    assert info.value.code == 0
    items = load_spec(out)
    assert [i.setting for i in items] == ["normal", "style", "normal", "style"]
    with pytest.raises(SystemExit) as info:  # no silent overwrite
        main(["eval-spec", str(faces_dir), "-o", str(out)])
    assert info.value.code == 2 and "already exists" in capsys.readouterr().err
    with pytest.raises(SystemExit) as info:
        main(["eval-spec", str(faces_dir), "-o", str(tmp_path / "b.jsonl"), "--settings", "sepia"])
    assert info.value.code == 2 and "unknown setting 'sepia'" in capsys.readouterr().err
    with pytest.raises(SystemExit) as info:
        main(["eval-spec", str(tmp_path / "nowhere"), "-o", str(tmp_path / "c.jsonl")])
    assert info.value.code == 2 and "not a folder" in capsys.readouterr().err
