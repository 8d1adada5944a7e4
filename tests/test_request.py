"""The request model (sow/request.py): one request that the CLI, the web app and the batch build, checked
by the library before any model loads; and the library prints nothing."""

from __future__ import annotations

import ast
import json
from pathlib import Path

import pytest

from sow.errors import InputError
from sow.request import GenerationRequest, check_plan, latent_grid_of, run_stages
from sow.schemas import Plan

ROOT = Path(__file__).resolve().parents[1]


def two_people(first: tuple[int, int, int, int], second: tuple[int, int, int, int]) -> Plan:
    return Plan.model_validate({
        "canvas": {"width": 256, "height": 128}, "prompt": "two friends",
        "conditions": [{"image": i, "box_v": list(b), "box_r": list(b)} for i, b in enumerate((first, second))],
    })


APART_ON_8_TOUCHING_ON_16 = ((8, 0, 60, 64), (69, 0, 56, 56))
"""Apart in pixels and on the 8-pixel grid; overlapping once snapped to 16-pixel cells."""
TOUCHING_ON_8_ONLY = ((4, 0, 60, 64), (65, 0, 56, 56))
"""Overlapping once snapped to 8-pixel cells, apart on 4- and 16-pixel cells."""


@pytest.mark.parametrize("boxes, grid, refused", [
    (APART_ON_8_TOUCHING_ON_16, 8, False), (APART_ON_8_TOUCHING_ON_16, 16, True),
    (TOUCHING_ON_8_ONLY, 4, False), (TOUCHING_ON_8_ONLY, 8, True), (TOUCHING_ON_8_ONLY, 16, False),
])  # fmt: skip
def test_box_overlap_is_checked_on_the_models_grid_not_a_fixed_8(boxes, grid, refused, face_path):
    request = GenerationRequest([face_path, face_path], "two friends", plan=two_people(*boxes))
    if refused:
        with pytest.raises(InputError, match=f"overlap once snapped to the {grid}-pixel latent grid"):
            request.check(grid=grid, preflight=False)
    else:
        assert request.check(grid=grid, preflight=False).plan == request.plan


def _folder(tmp_path: Path, blocks: int, unet: bool = True) -> Path:
    folder = tmp_path / f"model-{blocks}"
    (folder / "vae").mkdir(parents=True)
    if unet:
        (folder / "unet").mkdir()
    (folder / "vae" / "config.json").write_text(json.dumps({"block_out_channels": [32] * blocks}))
    return folder


def test_the_grid_is_read_from_the_models_configs_before_it_loads(tmp_path, face_path):
    assert latent_grid_of("tiny") == 8 and latent_grid_of("tiny-sdxl") == 8
    assert latent_grid_of(str(_folder(tmp_path, 3))) == 4 and latent_grid_of(str(_folder(tmp_path, 5))) == 16
    assert latent_grid_of(str(_folder(tmp_path / "flow", 4, unet=False))) is None  # a transformer family may pack: its own check
    assert latent_grid_of("stabilityai/stable-diffusion-2-1-base") is None  # a hub id: checked once loaded
    # a 4-pixel model runs the boxes the 8-pixel grid would have refused
    plan = two_people(*TOUCHING_ON_8_ONLY)
    request = GenerationRequest([face_path, face_path], "two friends", plan=plan)
    request.check(grid=lambda: latent_grid_of(str(_folder(tmp_path / "small", 3))), preflight=False)
    with pytest.raises(InputError, match="8-pixel latent grid"):
        request.check(grid=lambda: latent_grid_of(str(_folder(tmp_path / "sd", 4))), preflight=False)


def test_the_plan_must_use_exactly_the_images_given():
    plan = two_people(*APART_ON_8_TOUCHING_ON_16)
    with pytest.raises(InputError, match="plan condition 2 uses image 2, but 1 condition image was given"):
        check_plan(plan, 1, None)
    with pytest.raises(InputError, match="condition image 3 not used by the plan"):
        check_plan(plan, 3, None)


@pytest.mark.parametrize("stages, preset", [({"modulator": "none"}, "normal"), ({}, "cow-reference"), ({"modulator": "dam"}, "cow-reference")])
def test_attention_needs_the_modulator_the_run_will_use(stages, preset, face_path):
    """As the pipeline resolves the stages: cow-reference turns the modulator off unless another than the default is chosen."""
    request = GenerationRequest([face_path], "a chef", stages=stages, preset=preset, attention=True,
                                labels={"attention": "--save-attention", "modulator": "--modulator"})
    with pytest.raises(InputError, match=r"^--save-attention needs attention modulation; the modulator is off \(use --modulator dam\)$"):
        request.check(preflight=False)
    assert GenerationRequest([face_path], "a chef", attention=True).check(preflight=False).attention


def test_run_stages_follow_the_pipelines_precedence():
    assert run_stages({}, "cow-reference")["modulator"] == "none"
    assert run_stages({"modulator": "dam"}, "cow-reference")["modulator"] == "none"  # the default does not override the preset
    assert run_stages({"planner": "fixed"}, "normal", {"planner": "heuristic"})["planner"] == "heuristic"  # the config's own wins


def test_attention_with_several_conditions_is_refused(face_path):
    with pytest.raises(InputError, match="draws one condition's attention; this run has several conditions"):
        GenerationRequest([face_path, face_path], "two", attention=True).check(preflight=False)


@pytest.mark.parametrize("planner_options, plan, count", [
    ({}, None, 1), ({"max_people": 3}, None, 3), ({"pick": [1, 3]}, None, 2),
    ({}, two_people(*APART_ON_8_TOUCHING_ON_16), 2),
])  # fmt: skip
def test_the_condition_count_comes_from_the_request(planner_options, plan, count, face_path):
    conditions = [face_path] * (2 if plan is not None else 1)
    assert GenerationRequest(conditions, "x", planner_options=planner_options, plan=plan).condition_count == count
    assert GenerationRequest([face_path] * 3, "x").condition_count == 3


def test_bad_inputs_are_named_in_the_callers_words(face_path, tmp_path):
    with pytest.raises(InputError, match=r"^--seed -1: must lie in 0 \.\. 2\*\*63-1$"):
        GenerationRequest([face_path], "x", seed=-1, labels={"seed": "--seed"}).check()
    with pytest.raises(InputError, match="^seed 18446744073709551616"):
        GenerationRequest([face_path], "x", seed=2**64).check()
    with pytest.raises(InputError, match="condition 2 of 2: .*missing.jpg"):
        GenerationRequest([face_path, tmp_path / "missing.jpg"], "x").check(preflight=False)
    with pytest.raises(InputError, match="--pick chooses faces in one group photo; this run has 2 photos"):
        GenerationRequest([face_path, face_path], "x", planner_options={"pick": [1]}, labels={"pick": "--pick"}).check()


def test_hand_made_boxes_become_a_plan_fitted_to_the_condition(face_path):
    request = GenerationRequest([face_path], "a chef", boxes=("8,8,64,48", "0,56,128,72"), overrides={"canvas": {"width": 128, "height": 128}})
    checked = request.check(grid=8)
    assert checked.plan is not None and checked.plan.planner == "manual" and checked.plan.canvas.width == 128
    with pytest.raises(InputError, match="a box is \\[x, y, w, h\\]; got 3 numbers"):
        GenerationRequest([face_path], "a chef", boxes=("8,8,64", "0,56,128,72")).check(grid=8)
    with pytest.raises(InputError, match="invalid boxes"):
        GenerationRequest([face_path], "a chef", boxes=("8,8,64,48", "0,56,999,72"), overrides={"canvas": {"width": 128, "height": 128}}).check(grid=8)


def test_the_web_app_and_the_batch_build_the_same_request(face_path, tmp_path):
    from sow.batch.runner import read_batch_file
    from sow.schemas import GenerationConfig
    from sow.ui.session import Choices, request_of

    choices = Choices(model="tiny", prompt="a chef", planner="heuristic", modulator="none", preset="normal", seed=3, attention=True)
    config = GenerationConfig.from_preset("normal", stages={"modulator": "none"})
    web = request_of(face_path, choices, config, None)
    assert isinstance(web, GenerationRequest) and web.conditions == [face_path] and web.seed == 3 and web.config is config
    with pytest.raises(InputError, match="^the attention picture needs attention modulation"):
        web.check(preflight=False)

    (tmp_path / "jobs").mkdir()
    (tmp_path / "jobs" / "face.jpg").write_bytes(Path(face_path).read_bytes())
    batch = tmp_path / "jobs" / "batch.jsonl"
    batch.write_text(json.dumps({"condition": "face.jpg", "prompt": "an astronaut", "seed": 5, "preset": "style"}) + "\n")
    [item] = read_batch_file(batch)
    job = item.request({"cycles": 1})
    assert isinstance(job, GenerationRequest)
    assert job.conditions == [tmp_path / "jobs" / "face.jpg"] and (job.prompt, job.seed, job.preset) == ("an astronaut", 5, "style")
    assert job.overrides == {"cycles": 1} and job.check(grid=8, preflight=False).plan is None


def _calls_print_or_makes_a_console(path: Path) -> list[str]:
    found = []
    tree = ast.parse(path.read_text(encoding="utf-8"))
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id in ("print", "Console"):
            found.append(f"{path.relative_to(ROOT)}:{node.lineno} {node.func.id}()")
        if isinstance(node, ast.ImportFrom) and node.module == "rich.console":
            found.append(f"{path.relative_to(ROOT)}:{node.lineno} imports rich.console")
    return found


CONSOLE_FACTORY = "sow/safety/security.py"
"""Makes the CLI's redacting console (``redacting_console``); it never prints, the CLI does."""


def test_the_library_prints_nothing():
    """Outside sow/cli the library returns data, logs, or calls callbacks: no print(), no rich console."""
    offenders = [
        hit
        for path in sorted((ROOT / "sow").rglob("*.py"))
        if not path.relative_to(ROOT).as_posix().startswith("sow/cli/") and path.relative_to(ROOT).as_posix() != CONSOLE_FACTORY
        for hit in _calls_print_or_makes_a_console(path)
    ]
    assert offenders == []
