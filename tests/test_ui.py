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


def test_edited_plan_takes_the_fields_and_refuses_bad_ones():
    plan = edited_plan(PLAN, [0, 8, 64, 64], ["16", 72.0, 96, 56], "a chef at work")
    assert isinstance(plan, Plan)
    assert (plan.box_v.x, plan.box_r.x, plan.prompt, plan.user_prompt) == (0, 16, "a chef at work", "a chef")
    assert edited_plan(None, [0] * 4, [0] * 4, "x") is None  # nothing planned yet: the pipeline plans
    with pytest.raises(InputError, match="reaches outside"):
        edited_plan(PLAN, [100, 8, 64, 64], [16, 72, 96, 56], "a chef")
    with pytest.raises(InputError, match="must be numbers"):
        edited_plan(PLAN, [None, 8, 64, 64], [16, 72, 96, 56], "a chef")
    with pytest.raises(InputError, match="prompt is empty"):
        edited_plan(PLAN, [0, 8, 64, 64], [16, 72, 96, 56], "  ")


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
    plan = edited_plan(PLAN, [0, 8, 64, 64], [16, 72, 96, 56], "a chef at work")
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


def test_edited_plan_edits_the_first_condition_of_a_plan_of_several():
    from sow.ui.session import edited_plan

    plan = Plan(canvas={"width": 768, "height": 512}, prompt="two", conditions=[
        {"box_v": [0, 0, 200, 200], "box_r": [0, 200, 300, 312]},
        {"image": 1, "box_v": [400, 0, 200, 200], "box_r": [400, 200, 300, 312]},
    ])
    edited = edited_plan(plan.model_dump(mode="json"), [8, 8, 180, 180], [0, 190, 200, 300], "two friends")
    assert edited.conditions[0].box_v.as_list() == [8, 8, 180, 180] and edited.prompt == "two friends"
    assert edited.conditions[1] == plan.conditions[1]
