"""Hand-made boxes keep the condition's aspect, keep the face crop, and every change is said."""

from __future__ import annotations

import json

import pytest

from sow.cli.commands import main
from sow.errors import InputError
from sow.planners.manual import fit_inside
from sow.schemas import Box


def run(argv: list[str]) -> int:
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    return exit_info.value.code


@pytest.mark.parametrize(
    ("room", "aspect", "expected"),
    [
        # 100x40 room, square condition: 40x40, centred at x 60 -> 40; y cannot stay in 10..50 on the grid: 8
        (Box(x=10, y=10, w=100, h=40), 1.0, Box(x=40, y=8, w=40, h=40)),
        # 64x128 room, 1:2 condition: fills it
        (Box(x=0, y=0, w=64, h=128), 0.5, Box(x=0, y=0, w=64, h=128)),
        # 100x100 room, 4:3 condition: 100x75 -> 96x72 on the grid, centred: x round(2/8)=0, y round(14/8)*8=16
        (Box(x=0, y=0, w=100, h=100), 4 / 3, Box(x=0, y=16, w=96, h=72)),
    ],
)
def test_fit_inside_keeps_the_aspect(room, aspect, expected):
    assert fit_inside(room, aspect) == expected


def test_a_box_too_thin_for_the_condition_is_refused_naming_the_ratios():
    with pytest.raises(InputError) as info:
        fit_inside(Box(x=0, y=0, w=100, h=7), 0.5)  # 3.5 x 7 at 1:2: under a latent cell
    assert "14.29:1" in str(info.value) and "0.50:1" in str(info.value)


def test_generate_with_hand_made_boxes(face_path, tmp_path, capsys):
    config = tmp_path / "fast.json"
    config.write_text(json.dumps({"canvas": {"width": 128, "height": 128}, "cycles": 1}))
    code = run(["generate", str(face_path), "a chef", "-q", "--config", str(config), "-o", str(tmp_path), "--name", "run",
                "--box-v", "10,10,100,40", "--box-r", "0,56,128,72"])  # fmt: skip
    err = capsys.readouterr().err
    assert code == 0
    record = json.loads((tmp_path / "run.json").read_text())
    plan = record["plan"]["conditions"][0]  # the one condition of this run
    crop, box_v = plan["crop"], plan["box_v"]
    assert crop is not None  # the face crop the heuristic planner would use
    crop_aspect = crop[2] / crop[3] if isinstance(crop, list) else crop["w"] / crop["h"]
    w, h = (box_v[2], box_v[3]) if isinstance(box_v, list) else (box_v["w"], box_v["h"])
    assert abs(w / h - crop_aspect) < 8 / h  # the aspect is kept up to one latent cell
    assert w % 8 == 0 and h % 8 == 0 and h <= 40
    assert "box changed: box_v 10,10,100,40 ->" in err and "aspect" in err


def test_a_snapped_plan_box_is_reported(face_path, tmp_path, capsys):
    plan = {
        "canvas": {"width": 128, "height": 128}, "box_v": [8, 8, 100, 100], "box_r": [0, 0, 128, 128],
        "prompt": "a chef", "planner": "manual",
    }  # fmt: skip
    (tmp_path / "plan.json").write_text(json.dumps(plan))
    config = tmp_path / "fast.json"
    config.write_text(json.dumps({"canvas": {"width": 128, "height": 128}, "cycles": 1}))
    code = run(["generate", str(face_path), "a chef", "-q", "--config", str(config), "-o", str(tmp_path), "--name", "run",
                "--plan", str(tmp_path / "plan.json")])  # fmt: skip
    assert code == 0
    # 100 / 8 = 12.5 cells, rounded half to even: 12 cells = 96 px
    assert "box_v 8,8,100,100 snapped to the latent grid: pasted at 8,8,96,96" in capsys.readouterr().err
