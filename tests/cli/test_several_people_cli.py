"""Several people through the CLI, batch jobs and ``sow eval``: files, one-line errors, per-person scores."""

from __future__ import annotations

import json

import pytest
from PIL import Image

from sow.cli.commands import main
from sow.engine.scheduling import CyclicOneWayScheduler
from sow.pipeline import inversion_evaluations
from sow.schemas import Plan, RunRecord
from sow.stages import RunInputs


@pytest.fixture(autouse=True)
def cache_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("SOW_CACHE_DIR", str(tmp_path / "cache"))


@pytest.fixture
def reuse_tiny(monkeypatch, tiny_components):
    monkeypatch.setattr("sow.pipeline.load_components", lambda *args, **kwargs: tiny_components)


@pytest.fixture
def wide_config(tmp_path):
    """A non-square 192x128 canvas, no cycles: the cheapest full run."""
    path = tmp_path / "wide.json"
    path.write_text(json.dumps({"canvas": {"width": 192, "height": 128}, "cycles": 0, "min_side": 64, "max_side": 256}))
    return path


def run(argv, capsys):
    with pytest.raises(SystemExit) as info:
        main(argv)
    return info.value.code, capsys.readouterr().err


def test_generate_two_conditions_then_the_prompt(reuse_tiny, faces_dir, tmp_path, wide_config, capsys):
    a, b = faces_dir / "obama.jpg", faces_dir / "biden.jpg"
    out = tmp_path / "out"
    code, err = run(["generate", str(a), str(b), "two friends at a cafe", "--config", str(wide_config), "--out", str(out), "--name", "pair", "-q"], capsys)
    assert code == 0, err
    assert {p.name for p in out.iterdir()} == {"pair.png", "pair.plan.png", "pair.mask-1.png", "pair.mask-2.png", "pair.json"}
    record = RunRecord.model_validate_json((out / "pair.json").read_text())
    assert [c.source for c in record.conditions] == [str(a), str(b)]
    assert len(record.plan.conditions) == 2 and record.plan.overlaps(8) == []
    inputs = RunInputs(conditions=2)
    counted = inversion_evaluations(record.config, inputs) + CyclicOneWayScheduler().unet_evaluations(record.config, inputs)
    assert record.unet_evaluations == counted == 2 * 7 + 5 + 0 + 5
    assert Image.open(out / "pair.png").size == (192, 128)


def test_plan_command_numbers_every_box(faces_dir, tmp_path, capsys):
    config = tmp_path / "c.json"
    config.write_text(json.dumps({"canvas": {"width": 768, "height": 512}}))
    out = tmp_path / "plan.json"
    code, err = run(["plan", "--condition", str(faces_dir / "obama.jpg"), "--condition", str(faces_dir / "biden.jpg"),
                     "two friends", "--config", str(config), "-o", str(out)], capsys)
    assert code == 0, err
    assert "1: box_v" in err and "2: box_v" in err
    plan = Plan.model_validate_json(out.read_text())
    assert [c.source for c in plan.conditions] == [str(faces_dir / "obama.jpg"), str(faces_dir / "biden.jpg")]
    picture = Image.open(out.with_suffix(".png"))
    assert picture.width == 768 and picture.height > 512  # the canvas, then the legend and the prompt below it


BAD = {
    "overlap": lambda d, f: (["generate", str(f / "obama.jpg"), str(f / "biden.jpg"), "x", "--plan", str(d / "bad.json")],
                             "condition 1 box_v [0,0,96,96] and condition 2 box_v [64,0,96,96] overlap"),
    "too many": lambda d, f: (["generate", *[str(f / "obama.jpg")] * 6, "x"], "6 conditions do not fit side by side"),
    "unreadable": lambda d, f: (["generate", str(f / "obama.jpg"), str(d / "broken.jpg"), "x"], "condition 2 of 2: condition"),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_input_is_one_line_exit_2_and_nothing_written(reuse_tiny, faces_dir, tmp_path, capsys, case):
    (tmp_path / "broken.jpg").write_bytes(b"not a jpeg at all")
    bad = {"canvas": {"width": 192, "height": 128}, "prompt": "x",
           "conditions": [{"box_v": [0, 0, 96, 96], "box_r": [0, 0, 96, 128]}, {"image": 1, "box_v": [64, 0, 96, 96], "box_r": [64, 0, 96, 128]}]}
    (tmp_path / "bad.json").write_text(json.dumps(bad))
    argv, expected = BAD[case](tmp_path, faces_dir)
    out = tmp_path / "out"
    code, err = run([*argv, "--out", str(out), "-q"], capsys)
    assert code == 2, err
    assert expected in err and len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert not out.exists() or not any(out.iterdir())


def test_a_batch_job_with_several_conditions(reuse_tiny, faces_dir, tmp_path, wide_config, capsys):
    jobs = tmp_path / "jobs.jsonl"
    jobs.write_text(json.dumps({"condition": [str(faces_dir / "obama.jpg"), str(faces_dir / "biden.jpg")], "prompt": "two friends", "name": "duo"}) + "\n")
    code, err = run(["generate", "--batch", str(jobs), "--config", str(wide_config), "--out", str(tmp_path / "b"), "-q"], capsys)
    assert code == 0, err
    record = RunRecord.model_validate_json((tmp_path / "b" / "duo.json").read_text())
    assert len(record.conditions) == 2


# -- the face metric on real photos ---------------------------------------------------------


@pytest.mark.slow  # dlib on five faces of real photos: ~10 s
def test_eval_on_paste_assigns_every_face_to_its_own_person(faces_dir, tmp_path, tiny_components):
    pytest.importorskip("dlib")
    from sow.eval.runner import EvalConfig, Evaluation
    from sow.eval.spec import SpecItem

    items = [
        SpecItem(id="group", condition=str(faces_dir / "obama_and_biden.jpg"), people=3, prompt="three people at a rally", setting="normal"),
        SpecItem(id="pair", condition=[str(faces_dir / "obama.jpg"), str(faces_dir / "biden.jpg")], prompt="two friends", setting="normal"),
    ]
    config = EvalConfig(methods=["paste"], generation={"canvas": {"width": 768, "height": 512}})
    result = Evaluation(items, config, tmp_path / "eval", components=tiny_components).run()
    rows = {r.id: r for r in result.rows}
    assert len(rows["group"].people) == 3 and len(rows["pair"].people) == 2
    for row in rows.values():
        assert row.swaps == 0 and row.detected and row.same_person, row
        for person in row.people:
            assert person.id_distance < 0.6 < person.other_distance, person
    table = (tmp_path / "eval" / "results.md").read_text()
    assert "swaps" in table


@pytest.mark.slow  # dlib on real photos: ~6 s
def test_an_identity_swap_counts_as_a_failure(faces_dir):
    pytest.importorskip("dlib")
    from sow.eval.face_metrics import DlibMetric, measure_people, reference_face
    from sow.engine.seeding import fit_condition, paste_all_on_gray
    from sow.schemas import Box, Canvas

    from sow.faces import face_boxes
    from sow.planners.heuristic import DLIB_LONG_SIDE, face_crop

    metric = DlibMetric()
    faces = []
    for name in ("obama.jpg", "biden.jpg"):  # each photo cropped around its face, as the planner does
        photo = Image.open(faces_dir / name).convert("RGB")
        crop = face_crop(face_boxes(photo, "dlib", long_side=DLIB_LONG_SIDE)[0], photo.size)
        faces.append(photo.crop((crop.x, crop.y, crop.right, crop.bottom)))
    obama, biden = faces
    boxes = [Box(x=16, y=16, w=224, h=224), Box(x=288, y=16, w=224, h=224)]
    canvas = Canvas(width=544, height=256)
    # Biden pasted where Obama's condition is, and the other way round
    swapped = paste_all_on_gray([(fit_condition(biden, boxes[0])[0], boxes[0]), (fit_condition(obama, boxes[1])[0], boxes[1])], canvas)
    people = measure_people(metric, swapped, boxes, [reference_face(metric, obama), reference_face(metric, biden)])
    assert all(p.detected and p.swapped and p.same_person is False for p in people)
    assert all(p.distance > 0.6 > p.other_distance for p in people)


def test_plan_command_on_a_group_photo_with_max_people(faces_dir, tmp_path, capsys):
    pytest.importorskip("dlib")
    config = tmp_path / "c.json"
    config.write_text(json.dumps({"canvas": {"width": 768, "height": 512}}))
    out = tmp_path / "group.json"
    code, err = run(["plan", str(faces_dir / "obama_and_biden.jpg"), "three people", "--max-people", "3", "--config", str(config), "-o", str(out)], capsys)
    assert code == 0, err
    plan = Plan.model_validate_json(out.read_text())
    assert len(plan.conditions) == 3 and {c.image for c in plan.conditions} == {0}
    code, err = run(["plan", str(faces_dir / "obama.jpg"), "x", "--max-people", "2", "--planner", "fixed", "-o", str(tmp_path / "f.json")], capsys)
    assert code == 2 and "with the heuristic planner" in err
