"""The web app's logic without a browser (sow.ui.session), and the `sow ui` command's refusals."""

from __future__ import annotations

import builtins
import json

import pytest
from typer.testing import CliRunner

from sow.errors import InputError
from sow.schemas import Plan
from sow.ui.session import Choices, ModelCache, edited_plan, make_config, one_line

PLAN = {
    "canvas": {"width": 128, "height": 128},
    "box_v": {"x": 32, "y": 8, "w": 64, "h": 64},
    "box_r": {"x": 16, "y": 72, "w": 96, "h": 56},
    "prompt": "a chef, detailed",
    "user_prompt": "a chef",
    "planner": "heuristic",
}


def test_edited_plan_takes_the_page_plan_and_its_prompt():
    plan = edited_plan(PLAN, "a chef at work")
    assert isinstance(plan, Plan)
    assert (plan.box_v.x, plan.box_r.x, plan.prompt, plan.user_prompt) == (32, 16, "a chef at work", "a chef")
    assert edited_plan(None, "x") is None  # nothing planned yet: the pipeline plans
    with pytest.raises(InputError, match="prompt is empty"):
        edited_plan(PLAN, "  ")
    with pytest.raises(InputError, match="invalid plan"):
        edited_plan({**PLAN, "box_v": {"x": 100, "y": 8, "w": 64, "h": 64}}, "a chef")


def test_one_line_is_the_cli_line():
    assert one_line(InputError("condition x.png: not an image")) == "error: condition x.png: not an image"
    line = one_line(RuntimeError("boom\n  at frame 1\n  at frame 2"))
    assert line == "error: unexpected RuntimeError: boom (a bug in sow or a plugin)"


def test_model_cache_loads_each_model_once():
    made = []
    from sow.ui.limits import UiLimits

    cache = ModelCache(loader=lambda name: made.append(name) or object(), limits=UiLimits(models=("tiny", "other"), max_loaded=2))
    first = cache.get("tiny")
    assert cache.get(" tiny ") is first and cache.get("other") is not first
    assert made == ["tiny", "other"] and cache.loads == 2
    with pytest.raises(InputError, match="choose a model"):
        cache.get("")


def test_make_config_takes_the_page_choices_over_the_file():
    choices = Choices("tiny", "a chef", "fixed", "none", "style", 5, 2, False)
    config = make_config(choices, {"cycles": 1, "stages": {"planner": "heuristic"}})
    assert (config.stages.planner, config.stages.modulator, config.preset, config.cycles) == ("fixed", "none", "style", 1)
    with pytest.raises(InputError, match="seed"):
        make_config(Choices("tiny", "a chef", "fixed", "none", "normal", -1), {})


def test_generate_writes_the_plan_it_was_given(tiny_pipe, face_path, tmp_path):
    from sow.ui.session import generate

    choices = Choices("tiny", "a chef", "heuristic", "dam", "normal", 1, 1, True)
    config = make_config(choices, {"canvas": {"width": 128, "height": 128}, "cycles": 1})
    plan = edited_plan({**PLAN, "box_v": {"x": 0, "y": 8, "w": 64, "h": 64}}, "a chef at work")
    seen = []
    done = generate(tiny_pipe, face_path, choices, config, plan, progress=seen.append, out_dir=tmp_path)
    assert [info["evaluations"] for info in seen] == list(range(1, 20))  # the progress bar's feed: every UNet call
    assert {info["total"] for info in seen} == {19}
    assert json.loads(done.plan_file.read_text())["conditions"][0]["box_v"] == {"x": 0, "y": 8, "w": 64, "h": 64}
    assert json.loads(done.record_file.read_text())["prompt_used"] == "a chef at work"
    assert done.images[0].size == (128, 128) and done.attention_picture is not None
    assert "19 UNet evaluations" in done.summary


def test_sow_ui_without_gradio_says_how_to_install_it(monkeypatch, capsys):
    from sow.cli import main

    real_import = builtins.__import__

    def no_gradio(name, *args, **kwargs):
        if name == "gradio" or name.startswith("gradio."):
            raise ImportError("No module named 'gradio'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_gradio)
    with pytest.raises(SystemExit) as exit_info:
        main(["ui", "--model", "tiny"])
    assert exit_info.value.code == 2
    assert capsys.readouterr().err.strip() == 'error: the web app needs gradio: pip install "sow[ui]"'


def test_sow_ui_refusals_are_one_line(capsys):
    from sow.cli import main

    with pytest.raises(SystemExit) as exit_info:
        main(["ui", "--port", "70000"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err == "error: --port 70000: must lie in 1 .. 65535"


def test_sow_ui_help_names_the_gradio_options():
    from sow.cli import app

    result = CliRunner().invoke(app, ["ui", "--help"])
    assert result.exit_code == 0
    for option in ("--model", "--host", "--port", "--share", "--config"):
        assert option in result.output


TWO = Plan(canvas={"width": 256, "height": 128}, prompt="two", conditions=[
    {"box_v": [8, 8, 48, 48], "box_r": [0, 56, 96, 72]},
    {"image": 1, "box_v": [136, 8, 48, 48], "box_r": [128, 56, 96, 72]},
])


def test_every_person_has_a_labelled_box_v_and_box_r():
    from sow.ui.boxes import annotation_boxes, parse_label, table_rows

    boxes = annotation_boxes(TWO)
    assert sorted(b["label"] for b in boxes) == ["person 1 box_r", "person 1 box_v", "person 2 box_r", "person 2 box_v"]
    second_v = next(b for b in boxes if b["label"] == "person 2 box_v")
    # corners on the page: the 256x128 canvas shown x2 under a 24-px label band
    assert (second_v["xmin"], second_v["ymin"], second_v["xmax"], second_v["ymax"]) == (272, 40, 368, 136)
    assert boxes[-1]["label"].endswith("box_v")  # box_v drawn last: on top of the body box it sits in
    assert table_rows(TWO)[2] == [2, "box_v", 136, 8, 48, 48]
    assert parse_label("person 2 box_r", 2) == (1, "box_r")
    for bad in ("person 3 box_v", "person 0 box_v", "box_v", "person 1 face"):
        with pytest.raises(InputError, match="not one of the plan's boxes"):
            parse_label(bad, 2)


def test_a_dragged_box_snaps_to_the_nearest_latent_cell_on_release():
    from sow.ui.boxes import annotation_boxes, plan_with_annotation

    from sow.ui.boxes import LABEL_MARGIN, display_factor

    k = display_factor(TWO)
    boxes = annotation_boxes(TWO)
    for b in boxes:
        if b["label"] == "person 2 box_v":  # dropped 27 px lower and 3 px left: [133, 35, 48, 48] in canvas pixels
            b.update(xmin=133 * k, ymin=35 * k + LABEL_MARGIN, xmax=181 * k, ymax=83 * k + LABEL_MARGIN)
    moved = plan_with_annotation(TWO, boxes, 8)
    assert moved.conditions[1].box_v.as_list() == [136, 32, 48, 48]  # nearest cell: 35 -> 32 (not 40), 133 -> 136 (not 128)
    assert moved.conditions[0] == TWO.conditions[0] and moved.conditions[1].box_r == TWO.conditions[1].box_r
    assert plan_with_annotation(TWO, annotation_boxes(TWO), 8) == TWO  # the page's own boxes coming back: no change
    off = [{**b, "xmin": 240 * k, "xmax": 300 * k} if b["label"] == "person 1 box_v" else b for b in annotation_boxes(TWO)]
    dragged_off = plan_with_annotation(TWO, off, 8).conditions[0].box_v
    assert dragged_off.right <= 256 and dragged_off.x % 8 == 0  # dragged past the edge: kept on the canvas


def test_typed_numbers_move_the_box_and_bad_ones_are_refused():
    from sow.ui.boxes import plan_with_rows, table_rows

    rows = table_rows(TWO)
    rows[3] = [2, "box_r", 121, 60, 100, 66]
    typed = plan_with_rows(TWO, rows, 8)
    assert typed.conditions[1].box_r.as_list() == [120, 64, 96, 64]  # snapped like a drag
    with pytest.raises(InputError, match="reaches outside"):
        plan_with_rows(TWO, [[1, "box_v", 240, 8, 48, 48]], 8)
    for bad in ("left", float("nan"), float("inf")):
        with pytest.raises(InputError, match="must be numbers"):
            plan_with_rows(TWO, [[1, "box_v", bad, 8, 48, 48]], 8)
    from sow.ui.boxes import annotation_boxes, plan_with_annotation

    hostile = [{**b, "xmin": float("inf")} if b["label"] == "person 1 box_v" else b for b in annotation_boxes(TWO)]
    with pytest.raises(InputError, match="corners are not numbers"):
        plan_with_annotation(TWO, hostile, 8)


def test_preview_and_canvas_fields(face_path, tmp_path):
    from sow.ui.session import canvas_overrides, preview

    shown = preview([str(face_path), str(face_path)])
    assert [caption for _, caption in shown] == [f"1: {face_path.name}", f"2: {face_path.name}"]
    assert max(shown[0][0].size) <= 256
    assert preview(None) == []
    bad = tmp_path / "not-a-photo.png"
    bad.write_bytes(b"text")
    with pytest.raises(InputError, match="not-a-photo.png"):
        preview([str(bad)])
    assert canvas_overrides(None, None, {"cycles": 1}) == {"cycles": 1}
    assert canvas_overrides(256, 128.0, {})["canvas"] == {"width": 256, "height": 128}
    with pytest.raises(InputError, match="multiple of 8"):
        canvas_overrides(250, 128, {})


def test_the_seeded_picture_pastes_each_face_where_its_box_v_is(face_path):
    import numpy as np

    from sow.ui.session import seeded_picture

    seeded = np.asarray(seeded_picture(TWO, [face_path, face_path]))
    assert seeded.shape == (128, 256, 3)
    assert (seeded[100, 250] == 128).all()  # gray outside every box_v
    assert not (seeded[8:56, 136:184] == 128).all()  # the second face at its box_v
