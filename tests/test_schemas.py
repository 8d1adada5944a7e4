"""Schemas: the JSON exports match the models; invalid values are named in one line."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from pydantic import ValidationError

from sow.errors import InputError
from sow.schemas import Box, GenerationConfig, Plan, first_error, validated

ROOT = Path(__file__).resolve().parents[1]


def test_exported_json_schemas_match_the_models():
    import importlib.util

    spec = importlib.util.spec_from_file_location("export_schemas", ROOT / "scripts" / "export_schemas.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    for filename, text in module.rendered().items():
        path = ROOT / "schemas" / filename
        assert path.is_file(), f"schemas/{filename} missing: run python scripts/export_schemas.py"
        assert json.loads(path.read_text()) == json.loads(text), f"schemas/{filename} drifted: run python scripts/export_schemas.py"


def test_box_accepts_a_list_or_an_object_and_names_bad_fields():
    assert Box.model_validate([1, 2, 3, 4]) == Box(x=1, y=2, w=3, h=4)
    with pytest.raises(ValidationError) as info:
        Box.model_validate([0, 0, 0, 10])
    assert first_error(info.value).startswith("w:")
    with pytest.raises(ValidationError) as info:
        Box.model_validate([0, 0, 5])
    assert "[x, y, w, h]" in first_error(info.value)
    with pytest.raises(InputError, match="box '1,2,x,4'"):
        Box.parse("1,2,x,4")


def test_plan_boxes_must_lie_on_the_canvas():
    with pytest.raises(InputError, match="invalid plan: box_v .* reaches outside the 512x512 canvas"):
        validated(Plan, {"box_v": [400, 0, 200, 200], "box_r": [0, 0, 10, 10], "prompt": "p"}, "plan")
    with pytest.raises(InputError, match="invalid plan: surprise: Extra inputs are not permitted"):
        validated(Plan, {"box_v": [0, 0, 200, 200], "box_r": [0, 0, 10, 10], "prompt": "p", "surprise": 1}, "plan")


def test_presets_carry_the_papers_values():
    normal = GenerationConfig.from_preset("normal")
    assert (normal.t1, normal.t2, normal.cycles, normal.num_inference_steps) == (5, 7, 10, 10)
    assert normal.t3 == [4, 3] and normal.cycle_eta == 0.0 and normal.final_eta == 0.1
    assert normal.guidance_scale == 7.5 and normal.background_guidance
    assert GenerationConfig.from_preset("attribute").t3 == [4]
    assert GenerationConfig.from_preset("attribute").cycle_eta == 0.1
    assert GenerationConfig.from_preset("style").cycle_eta == 1.0
    with pytest.raises(InputError, match="unknown preset 'fancy'"):
        GenerationConfig.from_preset("fancy")


def test_overrides_merge_and_bad_levels_are_named():
    config = GenerationConfig.from_preset("style", cycles=3, modulation={"tau": 0.5})
    assert config.cycles == 3 and config.modulation.tau == 0.5 and config.modulation.w_plus == 0.145
    with pytest.raises(InputError, match="t1 < t2"):
        GenerationConfig.from_preset("normal", t1=7, t2=7)
    with pytest.raises(InputError, match="t3 levels must lie in 1..t1-1"):
        GenerationConfig.from_preset("normal", t3=[5])
    with pytest.raises(InputError, match="invalid config: canvas.width"):
        GenerationConfig.from_preset("normal", canvas={"width": 500})


def test_side_limits_scale_with_the_canvas():
    assert GenerationConfig().side_limits() == (180, 256)
    assert GenerationConfig(canvas={"width": 1024, "height": 768}).side_limits() == (270, 384)
    assert GenerationConfig(canvas={"width": 256, "height": 256}).side_limits() == (90, 128)


def test_box_alignment_and_clipping():
    canvas = GenerationConfig().canvas
    assert Box(x=61, y=30, w=99, h=97).aligned(8).as_list() == [64, 32, 96, 96]  # the nearest grid lines, not the ones below
    assert Box(x=500, y=10, w=40, h=600).clipped(canvas).as_list() == [500, 10, 12, 502]


def test_a_field_name_with_a_newline_stays_on_one_line():
    with pytest.raises(InputError) as info:
        validated(GenerationConfig, {"\n": None}, "config")
    assert "\n" not in str(info.value) and "\\n" in str(info.value)
