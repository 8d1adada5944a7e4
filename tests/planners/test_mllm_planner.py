"""The shared MLLM planner loop: three stages, one retry with the error fed back, repair, fallback."""

from __future__ import annotations

import pytest
from PIL import Image

from sow.errors import InputError, ModelLoadError, PlannerError
from sow.planners.mllm.base import MLLMPlanner, cached_model, clear_model_cache, load_kwargs, MLLMOptions, quantization_config
from sow.planners.toolkit.prompts import SYSTEM, stage_messages
from sow.planners.policy import plan_with_policy
from sow.schemas import GenerationConfig
from sow.stages import PlanRequest


class ScriptedPlanner(MLLMPlanner):
    """An MLLMPlanner whose 'model' replies from a script and records what it was asked."""

    name = "scripted"
    family = "Scripted"
    default_model = "script"

    def __init__(self, replies, **options):
        super().__init__(**options)
        self.replies = list(replies)
        self.asked: list[list[dict]] = []

    def load(self):
        return "loaded"

    def chat(self, loaded, messages, image):
        assert loaded == "loaded" and isinstance(image, Image.Image)
        self.asked.append(messages)
        return self.replies.pop(0)


@pytest.fixture
def request_():
    image = Image.new("RGB", (300, 400), (120, 90, 80))
    return PlanRequest(condition=image, prompt="a chef in a busy kitchen", config=GenerationConfig())


GOOD = [
    'Sure!\n```json\n{"description": "a man with glasses", "prompt": "a man with glasses, a chef in a busy kitchen"}\n```',
    '{"box_v": [0.35, 0.05, 0.3, 0.4]}',
    "{'box_r': [120, 220, 280, 300],}",
]


def test_three_stages_make_a_repaired_plan(request_):
    planner = ScriptedPlanner(GOOD)
    plan = planner.plan(request_)
    assert plan.planner == "scripted" and plan.description == "a man with glasses"
    assert plan.prompt == "a man with glasses, a chef in a busy kitchen" and plan.user_prompt == request_.prompt
    # normalized box converted, then scaled by repair_plan to the side limits (180..256 on 512)
    assert 180 <= max(plan.box_v.w, plan.box_v.h) <= 256
    assert any("normalized 0-1" in r for r in plan.repairs)
    assert any("box_r" in r and "clipped" in r for r in plan.repairs)  # 220 + 300 > 512
    assert plan.box_r.bottom <= 512
    asked = [m[-1]["content"][-1]["text"] for m in planner.asked]
    assert "a chef in a busy kitchen" in asked[0]
    assert "between 180 and 256 pixels" in asked[1] and "300x400 photo" in asked[1]
    assert "box_v = [179, 26, 154, 205]" in asked[2]


def test_timings_belong_to_the_call_not_the_planner(request_):
    planner = ScriptedPlanner(GOOD + ['{"description": "a man"}', *GOOD])
    before = set(vars(planner))
    plan, timings = planner.plan_timed(request_)
    assert plan.planner == "scripted"
    assert list(timings) == ["load", "intensify#0", "position#0", "refine#0"]
    assert all(isinstance(v, float) and v >= 0 for v in timings.values())
    _, again = planner.plan_timed(request_)  # a retry in stage 1 this time: its own dict, both tries
    assert list(again) == ["load", "intensify#0", "intensify#1", "position#0", "refine#0"]
    assert set(vars(planner)) == before  # no per-run state left on the stage object


def test_a_bad_answer_is_retried_once_with_the_error_fed_back(request_):
    planner = ScriptedPlanner(['{"description": "a man"}', GOOD[0], *GOOD[1:]])
    plan = planner.plan(request_)
    retry = planner.asked[1]
    assert retry[-2] == {"role": "assistant", "content": [{"type": "text", "text": '{"description": "a man"}'}]}
    assert "prompt: Field required" in retry[-1]["content"][0]["text"]
    assert any("retry 1" in r and "prompt: Field required" in r for r in plan.repairs)


def test_garbage_twice_is_a_planner_error_and_the_policy_decides(request_):
    garbage = ["busO smiling 40 phoI Akit4", "descry woman"]
    with pytest.raises(PlannerError, match="intensify answer unusable after 2 tries: no JSON object"):
        ScriptedPlanner(garbage).plan(request_)
    with pytest.raises(PlannerError, match="--on-planner-error heuristic"):
        plan_with_policy(ScriptedPlanner(garbage), request_, on_error="fail")
    plan = plan_with_policy(ScriptedPlanner(garbage), request_, on_error="heuristic")
    assert plan.planner == "heuristic" and "'scripted' failed" in plan.notes[0]


def test_retries_option_and_unknown_options(request_):
    with pytest.raises(PlannerError, match="after 1 tries"):
        ScriptedPlanner(["no"], retries=0).plan(request_)
    with pytest.raises(InputError, match="temperature"):
        ScriptedPlanner([], temperature=0.7)
    with pytest.raises(InputError, match="quantize"):
        ScriptedPlanner([], quantize="3bit")


def test_templates_without_a_system_role_get_the_instructions_in_the_user_turn():
    with_system = stage_messages("intensify", prompt="p")
    folded = stage_messages("intensify", system_role=False, prompt="p")
    assert with_system[0]["role"] == "system" and len(folded) == 1
    assert folded[0]["content"][1]["text"].startswith(SYSTEM)
    assert folded[0]["content"][0] == {"type": "image"}


def test_models_are_loaded_once_per_process():
    clear_model_cache()
    calls = []
    for _ in range(3):
        cached_model(("k",), lambda: calls.append(1) or object())
    assert len(calls) == 1
    clear_model_cache()


def test_quantization_configs_are_nf4_with_bf16_compute_and_int8():
    pytest.importorskip("bitsandbytes")
    import torch

    q4 = quantization_config("4bit")
    assert q4.load_in_4bit and q4.bnb_4bit_quant_type == "nf4" and q4.bnb_4bit_compute_dtype == torch.bfloat16
    assert quantization_config("8bit").load_in_8bit
    kwargs = load_kwargs(MLLMOptions(device="cpu", quantize="8bit"))
    assert kwargs["device_map"] == {"": "cpu"}


def test_missing_bitsandbytes_is_a_clear_error(monkeypatch):
    import builtins

    real_import = builtins.__import__

    def no_bnb(name, *args, **kwargs):
        if name == "bitsandbytes":
            raise ImportError("No module named 'bitsandbytes'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_bnb)
    with pytest.raises(ModelLoadError, match=r"quantize=4bit needs bitsandbytes.*\[quantize\] extra"):
        quantization_config("4bit")


@pytest.mark.parametrize("page", ["llava.md", "qwen-vl.md"])
def test_docs_show_the_prompts_in_full(page):
    from pathlib import Path

    from sow.planners.toolkit import prompts as mllm_prompts

    text = (Path(__file__).resolve().parents[2] / "docs" / page).read_text(encoding="utf-8")
    for template in (mllm_prompts.SYSTEM, mllm_prompts.INTENSIFY, mllm_prompts.POSITION, mllm_prompts.REFINE):
        assert template in text


def test_generation_stops_once_the_first_json_object_closes():
    import torch

    from sow.planners.toolkit.answers import json_object_closed

    pieces = {1: '"box_v": [1, 2,', 2: " 3, 4]", 3: "}", 4: " and more prose {"}

    class Tok:
        def decode(self, ids, skip_special_tokens=True):
            return "".join(pieces.get(int(i), "") for i in ids)

    planner = ScriptedPlanner([], constrained="off")  # free decoding: the answer is prefilled with '{'
    criteria = planner.generate_kwargs(Tok(), prompt_length=2)["stopping_criteria"]
    prompt = [7, 7]
    assert not criteria(torch.tensor([prompt + [1, 2]]), None).any()  # prefill '{' + '"box_v": [1, 2, 3, 4]'
    assert criteria(torch.tensor([prompt + [1, 2, 3]]), None).all()
    assert planner.generate_kwargs(Tok(), 2)["do_sample"] is False
    assert json_object_closed('```json\n{"a": "}"}') and not json_object_closed('{"a": "}"')
    assert ScriptedPlanner([], prefill_json=False, constrained="off").prefill == ""


def test_only_load_options_make_a_new_model():
    a = ScriptedPlanner([], max_new_tokens=50, retries=0, prefill_json=False)
    assert a.cache_key() == ScriptedPlanner([]).cache_key()
    assert a.cache_key() != ScriptedPlanner([], quantize="8bit").cache_key()
    assert a.cache_key() != ScriptedPlanner([], model="other").cache_key()


def test_device_map_auto_only_where_accelerate_helps(monkeypatch):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    pytest.importorskip("accelerate")
    assert load_kwargs(MLLMOptions())["device_map"] == "auto"
    assert load_kwargs(MLLMOptions())["dtype"] == torch.bfloat16
    assert "device_map" not in load_kwargs(MLLMOptions(device="cuda:0"))  # an explicit device is exact
    assert load_kwargs(MLLMOptions(device="cuda", device_map="balanced"))["device_map"] == "balanced"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert "device_map" not in load_kwargs(MLLMOptions())
    with pytest.raises(InputError, match="CUDA is not available"):
        load_kwargs(MLLMOptions(device="cuda"))
