"""Constrained decoding for the local planners: a random model's answer is valid JSON of the stage's schema.

The tiny random models of :mod:`tests.tiny_mllm` answer garbage when they generate freely (the
repair path's tests rely on it); decoded under the stage's schema (llguidance), the same models
answer JSON that the schema allows, every stage, every time, within the token budget.
"""

from __future__ import annotations

import json

import pytest
from PIL import Image

from sow.errors import InputError, PlannerError, PlannerSetupError
from sow.planners.mllm import base as mllm_base
from sow.planners.mllm.base import MLLMPlanner
from sow.planners.toolkit import Question
from sow.planners.toolkit.answers import AnswerError, parse_answer
from sow.planners.toolkit.decoding import decoding_schema, longest_answer
from sow.schemas import Canvas, GenerationConfig
from sow.stages import PlanRequest
from tests.support.tiny_mllm import tiny_model

pytest.importorskip("llguidance", reason="the plugins' [constrained] extra (llguidance) is not installed")
sow_llava = pytest.importorskip("sow_llava", reason="install the plugin: pip install -e ./plugins/sow-llava")
sow_qwen_vl = pytest.importorskip("sow_qwen_vl", reason="install the plugin: pip install -e ./plugins/sow-qwen-vl")

BUDGET = 40
"""A small token budget: the test stays fast, and the schema must still fit its answers into it."""

CANVAS = Canvas(width=512, height=384)
STAGES = {
    "intensify": {"prompt": "a chef in a busy kitchen"},
    "position": {"prompt": "a man, a chef", "image_width": 300, "image_height": 400, "min_side": 180, "max_side": 256},
    "refine": {"prompt": "a man, a chef", "box_v": "[160, 40, 192, 192]"},
    "intensify_several": {"prompt": "two chefs", "count": 2},
    "position_several": {"prompt": "two chefs", "sizes": "1: 300x400, 2: 300x400", "min_side": 150, "max_side": 200, "count": 2},
    "refine_several": {"prompt": "two chefs", "boxes_v": "1: [40, 60, 180, 180]; 2: [300, 60, 180, 180]", "count": 2},
}
FREE_STAGES = ("intensify", "position_several")
"""The stages also asked without the constraint (two, to keep the test short: free answers run to the budget)."""


def planner_of(family: str, **options) -> MLLMPlanner:
    common = {"model": str(tiny_model(family)), "device": "cpu", "max_new_tokens": BUDGET, "retries": 0, **options}
    if family.startswith("qwen"):
        return sow_qwen_vl.QwenVLPlanner(max_pixels=112 * 112, **common)
    return sow_llava.LlavaPlanner(**common)


def question(stage: str) -> Question:
    values = {"canvas": CANVAS, "width": CANVAS.width, "height": CANVAS.height, **STAGES[stage]}
    return Question(stage, values, Image.new("RGB", (48, 64), (150, 110, 90)))


def allowed_by(schema: dict, value) -> bool:
    """``value`` against the subset of JSON Schema that :func:`decoding_schema` writes (by hand, no library)."""
    kind = schema.get("type")
    if kind == "object":
        return isinstance(value, dict) and list(value) == list(schema["properties"]) and all(
            allowed_by(schema["properties"][k], v) for k, v in value.items()
        )
    if kind == "array":
        items = schema.get("prefixItems") or [schema["items"]] * len(value)
        return isinstance(value, list) and schema["minItems"] <= len(value) <= schema["maxItems"] and all(
            allowed_by(s, v) for s, v in zip(items, value)
        )
    if kind == "integer":
        return isinstance(value, int) and schema["minimum"] <= value <= schema["maximum"]
    if kind == "string":
        return isinstance(value, str) and len(value) <= schema["maxLength"] and '"' not in value and "\\" not in value
    return False


@pytest.mark.slow  # 3-17 s here: twelve constrained answers and four free ones (the plan test below is the fast check)
@pytest.mark.parametrize("family", ["llava", "qwen2-vl"])
def test_random_models_answer_the_schema_only_when_constrained(family, monkeypatch):
    free, constrained = planner_of(family, constrained="off"), planner_of(family, constrained="on")
    loaded = constrained.loaded()
    generate, new_tokens = loaded.model.generate, []

    def counting(**inputs):
        out = generate(**inputs)
        new_tokens.append(out.shape[1] - inputs["input_ids"].shape[1])
        return out

    monkeypatch.setattr(loaded.model, "generate", counting)
    for stage in STAGES:
        asked = question(stage)
        schema = decoding_schema(asked.answer_model, asked.values, BUDGET)
        answer = constrained.ask_model(loaded, asked)
        value = json.loads(answer)  # valid JSON, compact, nothing around it
        assert allowed_by(schema, value), (stage, answer)
        assert new_tokens[-1] <= max(BUDGET, longest_answer(schema))  # finished within the budget (it grows only for many boxes)
        parsed = parse_answer(answer, asked.answer_model, CANVAS)
        assert parsed.repairs == [], (stage, parsed.repairs)  # nothing to repair: pixels [x, y, w, h] as asked
        if stage in FREE_STAGES:
            with pytest.raises((AnswerError, json.JSONDecodeError)):  # the same model, free: not the stage's JSON
                garbage = free.ask_model(loaded, asked)
                json.loads(garbage)
                parse_answer(garbage, asked.answer_model, CANVAS)


def test_a_random_llava_plans_on_its_own_when_constrained(face_path):
    request = PlanRequest(condition=Image.open(face_path).convert("RGB"), prompt="a chef in a busy kitchen", config=GenerationConfig())
    planner = planner_of("llava")  # constrained="auto": on, since llguidance is installed
    assert planner.constrained and planner.prefill == ""
    plan, timings = planner.plan_timed(request)
    assert plan.planner == "llava" and plan.box_v.fits(plan.canvas)  # no fallback: every answer was read
    assert list(timings) == ["load", "intensify#0", "position#0", "refine#0"]  # and none was asked twice
    assert plan.notes[-1] == "decoding: constrained to the answer schema (llguidance)"
    assert not any("JSON" in r or "read as" in r for r in plan.repairs)  # no format repair, only geometry
    with pytest.raises(PlannerError, match="intensify answer unusable after 1 tries: the JSON object is not valid JSON"):
        planner_of("llava", constrained="off").plan(request)


def test_without_llguidance_the_repair_path_keeps_working(monkeypatch, face_path):
    monkeypatch.setattr(mllm_base, "constrained_available", lambda: False)
    planner = planner_of("llava")
    assert not planner.constrained and planner.prefill == "{"
    kwargs = planner.generate_kwargs(planner.loaded().processor.tokenizer, 5)
    assert "logits_processor" not in kwargs and kwargs["max_new_tokens"] == BUDGET
    request = PlanRequest(condition=Image.open(face_path).convert("RGB"), prompt="a chef", config=GenerationConfig())
    with pytest.raises(PlannerError, match="not valid JSON"):  # free garbage, read (and refused) by the repairing reader
        planner.plan(request)
    from sow.planners.mllm import constrained

    monkeypatch.setattr(constrained, "constrained_available", lambda: False)
    with pytest.raises(PlannerSetupError) as info:
        planner_of("llava", constrained="on")
    assert "constrained=on needs llguidance" in str(info.value) and "\n" not in str(info.value)
    with pytest.raises(InputError, match="option constrained: Input should be 'auto', 'on' or 'off'"):
        planner_of("llava", constrained="yes")


def test_generate_kwargs_constrain_only_while_a_question_is_asked():
    planner = planner_of("llava")
    tokenizer = planner.loaded().processor.tokenizer
    assert "logits_processor" not in planner.generate_kwargs(tokenizer, 5)
    seen = {}
    planner.chat = lambda loaded, messages, image: seen.update(planner.generate_kwargs(tokenizer, 5)) or "{}"
    planner.ask_model(None, question("position"))
    assert len(seen["logits_processor"]) == 1 and seen["max_new_tokens"] == BUDGET
    assert "logits_processor" not in planner.generate_kwargs(tokenizer, 5)  # reset after the question


def longest_instance(schema: dict):
    """The longest answer ``schema`` allows, built by hand: full strings, the widest numbers, every item."""
    kind = schema["type"]
    if kind == "object":
        return {name: longest_instance(field) for name, field in schema["properties"].items()}
    if kind == "array":
        return [longest_instance(s) for s in schema.get("prefixItems") or [schema["items"]] * schema["maxItems"]]
    if kind == "integer":
        return max(schema["minimum"], schema["maximum"], key=lambda n: len(str(n)))
    return "x" * schema["maxLength"]


@pytest.mark.parametrize("stage", list(STAGES))
@pytest.mark.parametrize("budget", [8, 64, 200, 1000])
def test_the_schema_fits_its_answers_into_the_budget(stage, budget):
    asked = question(stage)
    schema = decoding_schema(asked.answer_model, asked.values, budget)
    longest = json.dumps(longest_instance(schema), separators=(",", ":"))
    assert longest_answer(schema) == len(longest.encode())
    texts = {name: f["maxLength"] for name, f in schema["properties"].items() if f.get("type") == "string"}
    if budget >= 64:
        assert len(longest) <= budget  # generation can always finish the answer
    if texts and budget == 200:  # the text fields share what the structure leaves, to the last character or two
        assert len(longest) == budget and texts["description"] == (budget - 30) // 3  # 30: {"description":"","prompt":""}
    if texts and budget == 1000:
        assert texts == {"description": 160, "prompt": 400}  # the caps
    if texts and budget == 8:
        assert texts == {"description": 8, "prompt": 8}  # the floor (generation's budget grows to fit)
    assert schema["additionalProperties"] is False and schema["required"] == list(schema["properties"])
    boxes = schema["properties"].get("boxes")
    if boxes:
        assert boxes["minItems"] == boxes["maxItems"] == 2
    box = schema["properties"].get("box_v") or schema["properties"].get("box_r")
    if box:
        assert [(i["minimum"], i["maximum"]) for i in box["prefixItems"]] == [(0, 512), (0, 384), (1, 512), (1, 384)]


def test_a_plan_cached_from_free_decoding_is_not_served_to_constrained_decoding(tmp_path, monkeypatch):
    from sow.planners.cache import PlanCache

    request = PlanRequest(condition=Image.new("RGB", (64, 64)), prompt="a chef", config=GenerationConfig())
    cache = PlanCache(tmp_path)
    keys = {mode: cache.key(request, sow_llava.LlavaPlanner(constrained=mode), {}) for mode in ("on", "off", "auto")}
    assert keys["on"] != keys["off"] and keys["auto"] == keys["on"]  # auto: llguidance is installed here
    monkeypatch.setattr(mllm_base, "constrained_available", lambda: False)
    assert cache.key(request, sow_llava.LlavaPlanner(constrained="auto"), {}) == keys["off"]


def test_accents_of_the_prompt_may_be_copied_and_count_their_bytes():
    values = {"canvas": CANVAS, "prompt": "un chef dans un café à Paris"}
    schema = decoding_schema(question("intensify").answer_model, values, 200)
    text = schema["properties"]["prompt"]
    assert "é" in text["pattern"] and "à" in text["pattern"] and "ü" not in text["pattern"]
    widest = {name: "é" * field["maxLength"] for name, field in schema["properties"].items()}
    assert longest_answer(schema) == len(json.dumps(widest, separators=(",", ":"), ensure_ascii=False).encode()) <= 200
    assert sum(f["maxLength"] for f in schema["properties"].values()) == (200 - 30) // 2  # two bytes a character


def test_the_grammar_refuses_what_the_schema_refuses():
    """llguidance's reading of the schema is the one the length bound assumes: compact, no escapes, no extras."""
    import llguidance

    from sow.planners.mllm.constrained import grammar_tokenizer

    tokenizer = grammar_tokenizer(planner_of("llava").loaded().processor.tokenizer)

    def accepts(stage: str, text: str, **values) -> bool:
        asked = question(stage)
        schema = decoding_schema(asked.answer_model, {**asked.values, **values}, 200)
        grammar = llguidance.LLMatcher.grammar_from_json_schema(json.dumps(schema), overrides={"whitespace_flexible": False})
        matcher = llguidance.LLMatcher(tokenizer, grammar, log_level=0)
        tokens = tokenizer.tokenize_str(text)
        return matcher.try_consume_tokens(tokens) == len(tokens) and matcher.is_accepting()

    assert accepts("position", '{"box_v":[0,384,512,1]}')
    assert not accepts("position", '{"box_v":[0,385,512,1]}')  # y below the 384-pixel canvas
    assert not accepts("position", '{"box_v":[0,0,0,10]}')  # an empty side
    assert not accepts("position", '{"box_v":[0.5,0,10,10]}')  # whole pixels only
    assert not accepts("position", '{"box_v": [0,0,10,10]}')  # compact: no free whitespace
    assert not accepts("position", '{"box_v":[0,0,10,10],"x":1}')  # no other field
    assert not accepts("position_several", '{"boxes":[[0,0,10,10]]}')  # one box per condition: two
    assert accepts("intensify", '{"description":"a man à table","prompt":"a chef, à Paris"}', prompt="a chef, à Paris")
    assert not accepts("intensify", '{"description":"a man","prompt":"a chef, à Paris"}')  # the prompt's accents only
    assert not accepts("intensify", '{"description":"a café","prompt":"a chef, à Paris"}', prompt="a chef, à Paris")
    for text in ('a \\"chef\\"', "a\\\\chef", "a\\nchef", "a\\u0041"):  # no escapes: each character is itself
        assert not accepts("intensify", '{"description":"x","prompt":"' + text + '"}')
    assert not accepts("intensify", '{"prompt":"a chef"}')  # the description is asked for too
