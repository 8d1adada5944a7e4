"""The sow-llava plugin on a tiny random LLaVA built from configs, through its real loading and generate code."""

from __future__ import annotations

import importlib.util
import json

import pytest
from PIL import Image

from sow.errors import ModelLoadError, PlannerError
from sow.planners.mllm.base import clear_model_cache
from sow.planners.policy import plan_with_policy
from sow.plugins import build_registry
from sow.schemas import GenerationConfig, Plan
from sow.stages import PlanRequest
from tests.support.tiny_mllm import tiny_model

sow_llava = pytest.importorskip("sow_llava", reason="install the plugin: pip install -e ./plugins/sow-llava")

FAST = ["--planner-option", "device=cpu", "--planner-option", "max_new_tokens=24", "--no-cache"]
FREE = ["--planner-option", "constrained=off"]
"""Free decoding: the seeded random model then answers garbage, which the repair and fallback paths must survive."""


@pytest.fixture(scope="module")
def llava_dir():
    return tiny_model("llava")


@pytest.fixture
def request_(face_path):
    return PlanRequest(condition=Image.open(face_path).convert("RGB"), prompt="a chef in a busy kitchen", config=GenerationConfig())


def test_discovered_through_its_entry_point():
    entry = build_registry().get("planner", "llava")
    assert entry.distribution == "sow-llava" and entry.factory is sow_llava.LlavaPlanner
    assert sow_llava.LlavaPlanner().model_id == "llava-hf/llava-1.5-7b-hf"


def test_real_generate_path_and_the_model_is_loaded_once(llava_dir, request_, monkeypatch):
    clear_model_cache()
    planner = sow_llava.LlavaPlanner(model=str(llava_dir), device="cpu", max_new_tokens=24, constrained="off")
    loads, answers = [], []
    real_load, real_chat = planner.load, planner.chat
    monkeypatch.setattr(planner, "load", lambda: loads.append(1) or real_load())
    monkeypatch.setattr(planner, "chat", lambda *a: answers.append(real_chat(*a)) or answers[-1])
    plan = plan_with_policy(planner, request_, on_error="heuristic")
    assert isinstance(plan, Plan) and plan.box_v.fits(plan.canvas)
    # the seeded random model answers garbage: asked, retried once, then the fallback planned and says why
    assert all(isinstance(a, str) and a.startswith("{") for a in answers) and len(answers) == 2
    assert plan.planner == "heuristic"
    assert "'llava' failed" in plan.notes[0] and "intensify answer unusable after 2 tries" in plan.notes[0]
    again = sow_llava.LlavaPlanner(model=str(llava_dir), device="cpu", max_new_tokens=24)
    assert again.loaded() is planner.loaded() and len(loads) == 1


def test_llava_next_runs_through_the_same_code(request_):
    planner = sow_llava.LlavaPlanner(model=str(tiny_model("llava-next")), device="cpu", max_new_tokens=16)
    loaded = planner.loaded()
    assert type(loaded.model).__name__ == "LlavaNextForConditionalGeneration"
    from sow.planners.toolkit.prompts import stage_messages

    assert isinstance(planner.chat(loaded, stage_messages("intensify", system_role=False, prompt="a chef"), request_.condition), str)
    plan = plan_with_policy(planner, request_, on_error="heuristic")
    assert plan.box_v.fits(plan.canvas)


def test_garbage_fails_with_one_line_naming_the_stage(llava_dir, request_):
    planner = sow_llava.LlavaPlanner(model=str(llava_dir), device="cpu", max_new_tokens=16, retries=0, constrained="off")
    with pytest.raises(PlannerError) as info:  # the seeded random model's answer is not JSON
        planner.plan(request_)
    assert str(info.value).startswith("LLaVA intensify answer unusable after 1 tries: the JSON object is not valid JSON")
    assert "\n" not in str(info.value)


def test_load_errors_are_one_line(tmp_path):
    with pytest.raises(ModelLoadError, match="could not load LLaVA model .*not a model folder"):
        sow_llava.LlavaPlanner(model=str(tmp_path / "missing"), local_files_only=True).load()
    qwen = tiny_model("qwen2-vl")
    with pytest.raises(ModelLoadError, match="'qwen2_vl' model, not LLaVA.*--planner qwen-vl"):
        sow_llava.LlavaPlanner(model=str(qwen)).load()


@pytest.mark.parametrize("bits", ["4bit", "8bit"])
def test_quantized_loading_on_cpu(llava_dir, request_, bits):
    pytest.importorskip("bitsandbytes", reason="the [quantize] extra is not installed")
    clear_model_cache()
    planner = sow_llava.LlavaPlanner(model=str(llava_dir), device="cpu", quantize=bits, max_new_tokens=8)
    loaded = planner.load()
    kinds = {type(m).__name__ for m in loaded.model.modules()}
    assert ("Linear4bit" if bits == "4bit" else "Linear8bitLt") in kinds
    from sow.planners.toolkit.prompts import stage_messages

    answer = planner.chat(loaded, stage_messages("intensify", system_role=False, prompt="a chef"), request_.condition)
    assert isinstance(answer, str)
    clear_model_cache()


def test_sow_plan_cli_falls_back_or_fails_with_the_hint(llava_dir, face_path, tmp_path, capsys):
    from sow.cli.commands import main

    out = tmp_path / "plan.json"
    args = ["plan", str(face_path), "a chef in a busy kitchen", "--planner", "llava", "--planner-option", f"model={llava_dir}", *FAST, *FREE]
    with pytest.raises(SystemExit) as failed:
        main([*args, "--planner-option", "retries=0", "--out", str(out)])
    assert failed.value.code == 1 and "--on-planner-error heuristic" in capsys.readouterr().err
    with pytest.raises(SystemExit) as ok:
        main([*args, "--on-planner-error", "heuristic", "--out", str(out)])
    assert ok.value.code == 0
    plan = Plan.model_validate_json(out.read_text())
    assert plan.box_v.fits(plan.canvas) and plan.planner == "heuristic" and "'llava' failed" in plan.notes[0]


def test_quantize_shortcut_on_the_cli(llava_dir, face_path, tmp_path, capsys):
    from sow.cli.commands import main

    base = ["plan", str(face_path), "a chef", "--planner", "llava", "--planner-option", f"model={llava_dir}", *FAST]
    with pytest.raises(SystemExit) as bad:
        main([*base, "--quantize", "3bit", "--out", str(tmp_path / "bad.json")])
    assert bad.value.code == 2 and "quantize" in capsys.readouterr().err
    with pytest.raises(SystemExit) as ok:
        main([*base, "--quantize", "8bit", "--on-planner-error", "heuristic", "--out", str(tmp_path / "q.json")])
    if importlib.util.find_spec("bitsandbytes") is None:  # known before the run: refused in one line
        assert ok.value.code == 2 and "needs bitsandbytes" in capsys.readouterr().err
    else:
        assert ok.value.code == 0
        assert Plan.model_validate_json((tmp_path / "q.json").read_text()).box_v.fits(GenerationConfig().canvas)
    clear_model_cache()


def test_sow_generate_with_the_llava_planner(llava_dir, face_path, tmp_path, fast_overrides):
    from sow.cli.commands import main

    config = tmp_path / "fast.json"
    config.write_text(json.dumps(fast_overrides))
    args = [
        "generate", str(face_path), "a chef in a busy kitchen", "--planner", "llava", "--model", "tiny",
        "--planner-option", f"model={llava_dir}", *FAST, "--on-planner-error", "heuristic",
        "--config", str(config), "--out", str(tmp_path), "--name", "chef", "--quiet",
    ]
    with pytest.raises(SystemExit) as done:
        main(args)
    assert done.value.code == 0
    record = json.loads((tmp_path / "chef.json").read_text())
    assert (tmp_path / "chef.png").is_file() and record["config"]["stages"]["planner"] == "llava"
    if importlib.util.find_spec("llguidance"):  # constrained decoding: even the random LLaVA's answers are the stages' JSON
        assert record["plan"]["planner"] == "llava" and record["plan"]["notes"][-1].startswith("decoding: constrained")
    else:  # free decoding: the seeded random LLaVA answers garbage
        assert record["plan"]["planner"] == "heuristic" and "'llava' failed" in record["plan"]["notes"][0]


def test_quantization_the_hardware_cannot_run_is_refused_in_one_line(llava_dir, monkeypatch):
    pytest.importorskip("bitsandbytes")
    import transformers

    def no_backend(*args, **kwargs):
        raise RuntimeError("bitsandbytes: no kernel for this device\ncompiled without GPU support")

    monkeypatch.setattr(transformers.AutoModelForImageTextToText, "from_pretrained", no_backend)
    with pytest.raises(ModelLoadError) as info:
        sow_llava.LlavaPlanner(model=str(llava_dir), device="cpu", quantize="4bit").load()
    message = str(info.value)
    assert "quantize=4bit on cpu" in message and "try without quantize" in message and "\n" not in message
