"""The sow-qwen-vl plugin on tiny random Qwen2-VL / Qwen2.5-VL models, without transformers' processor."""

from __future__ import annotations

import importlib.util

import pytest
from PIL import Image

from sow.errors import InputError, ModelLoadError, PlannerError
from sow.planners.mllm.base import clear_model_cache
from sow.planners.toolkit.prompts import stage_messages
from sow.planners.policy import plan_with_policy
from sow.plugins import build_registry
from sow.schemas import GenerationConfig, Plan
from sow.stages import PlanRequest
from tests.support.tiny_mllm import tiny_model

sow_qwen_vl = pytest.importorskip("sow_qwen_vl", reason="install the plugin: pip install -e ./plugins/sow-qwen-vl")

SMALL = {"device": "cpu", "max_new_tokens": 24, "max_pixels": 112 * 112}
FREE = {"constrained": "off"}
"""Free decoding: the seeded random model then answers garbage, which the repair and fallback paths must survive."""


@pytest.fixture
def request_(face_path):
    return PlanRequest(condition=Image.open(face_path).convert("RGB"), prompt="a chef in a busy kitchen", config=GenerationConfig())


@pytest.fixture
def no_processor(monkeypatch):
    """transformers' Qwen-VL processor needs torchvision: make sure the plugin never touches it."""
    import transformers

    def refuse(*args, **kwargs):
        raise ImportError("Qwen2VLVideoProcessor requires the Torchvision library")

    monkeypatch.setattr(transformers.AutoProcessor, "from_pretrained", refuse)
    monkeypatch.setattr(transformers.Qwen2VLProcessor, "from_pretrained", refuse)


def test_discovered_through_its_entry_point():
    entry = build_registry().get("planner", "qwen-vl")
    assert entry.distribution == "sow-qwen-vl" and entry.factory is sow_qwen_vl.QwenVLPlanner
    assert sow_qwen_vl.QwenVLPlanner().model_id == "Qwen/Qwen2.5-VL-7B-Instruct"


@pytest.mark.parametrize("family", ["qwen2-vl", "qwen2.5-vl"])
def test_real_generate_path_without_the_processor(family, request_, no_processor, monkeypatch):
    clear_model_cache()
    planner = sow_qwen_vl.QwenVLPlanner(model=str(tiny_model(family)), **SMALL, **FREE)
    loaded = planner.loaded()
    assert type(loaded.model).__name__.startswith("Qwen2_5_VL" if family == "qwen2.5-vl" else "Qwen2VL")
    seen = {}
    generate = loaded.model.generate

    def spy(**inputs):
        seen.update(inputs)
        return generate(**inputs)

    monkeypatch.setattr(loaded.model, "generate", spy)
    answer = planner.chat(loaded, stage_messages("intensify", prompt="a chef", width=512, height=512), request_.condition)
    assert isinstance(answer, str) and answer.startswith("{")  # the answer is prefilled with '{'
    # one <|image_pad|> per merged 2x2 patch of the image grid, as the model's vision tower expects
    pad = loaded.tokenizer.convert_tokens_to_ids("<|image_pad|>")
    grid = seen["image_grid_thw"][0]
    assert int((seen["input_ids"] == pad).sum()) == int(grid.prod()) // 4
    assert int(grid[1] * grid[2]) * 14 * 14 <= SMALL["max_pixels"]
    plan = plan_with_policy(planner, request_, on_error="heuristic")
    assert isinstance(plan, Plan) and plan.box_v.fits(plan.canvas)
    assert plan.planner == "heuristic" and "'qwen-vl' failed" in plan.notes[0]  # the random model answers garbage


def test_garbage_fails_with_one_line(request_):
    planner = sow_qwen_vl.QwenVLPlanner(model=str(tiny_model("qwen2-vl")), retries=0, **SMALL, **FREE)
    with pytest.raises(PlannerError) as info:  # the seeded random model's answer is not JSON
        planner.plan(request_)
    assert str(info.value).startswith("Qwen-VL intensify answer unusable after 1 tries: the JSON object is not valid JSON")
    assert "\n" not in str(info.value)


def test_options_and_load_errors(tmp_path):
    with pytest.raises(InputError, match="max_pixels"):
        sow_qwen_vl.QwenVLPlanner(max_pixels=10)
    with pytest.raises(ModelLoadError, match="'llava' model, not Qwen-VL.*--planner llava"):
        sow_qwen_vl.QwenVLPlanner(model=str(tiny_model("llava"))).load()
    with pytest.raises(ModelLoadError, match="could not load Qwen-VL model"):
        sow_qwen_vl.QwenVLPlanner(model=str(tmp_path / "missing"), local_files_only=True).load()


def test_quantized_4bit_loading_on_cpu(request_):
    clear_model_cache()
    pytest.importorskip("bitsandbytes", reason="the [quantize] extra is not installed")
    planner = sow_qwen_vl.QwenVLPlanner(model=str(tiny_model("qwen2.5-vl")), quantize="4bit", **{**SMALL, "max_new_tokens": 8})
    loaded = planner.load()
    assert "Linear4bit" in {type(m).__name__ for m in loaded.model.modules()}
    assert isinstance(planner.chat(loaded, stage_messages("intensify", prompt="a chef"), request_.condition), str)
    clear_model_cache()


def test_sow_plan_cli_with_qwen_vl(face_path, tmp_path):
    from sow.cli.commands import main

    out = tmp_path / "plan.json"
    args = [
        "plan", str(face_path), "a chef in a busy kitchen", "--planner", "qwen-vl", "--planner-option",
        f"model={tiny_model('qwen2.5-vl')}", "--planner-option", "max_pixels=12544", "--planner-option", "device=cpu",
        "--planner-option", "max_new_tokens=24", "--on-planner-error", "heuristic", "--no-cache", "--out", str(out),
    ]
    with pytest.raises(SystemExit) as done:
        main(args)
    assert done.value.code == 0
    plan = Plan.model_validate_json(out.read_text())
    assert plan.box_v.fits(plan.canvas) and out.with_suffix(".png").is_file()
    if importlib.util.find_spec("llguidance"):  # constrained decoding: the random model's answers are read, no fallback
        assert plan.planner == "qwen-vl" and "decoding: constrained to the answer schema (llguidance)" in plan.notes
