"""The flow families through ``register_model_families``: claimed, detected from configs, loaded as Backbones."""

from __future__ import annotations

import json

import pytest
import torch

from sow.engine.backbone import Backbone, LoadRequest
from sow.models.flow.families import build_from_config_folder
from sow.models.flow.tokenizers import qwen_tokenizer, t5_tokenizer
from sow.plugins import build_registry
from tests.conftest import SD21_CONFIG

DATA = SD21_CONFIG.parent
CONFIGS = {"sd3": "sd35-medium-config", "flux1": "flux1-schnell-config", "flux2": "flux2-klein-4b-config"}


def request(spec: str, **kw) -> LoadRequest:
    return LoadRequest(spec=spec, device=torch.device("cpu"), dtype=torch.float32, **kw)


@pytest.fixture(scope="module")
def registry():
    return build_registry(load_entry_points=False)


@pytest.mark.parametrize(("spec", "family"), [("tiny-sd3", "sd3"), ("tiny-flux", "flux1"), ("tiny-flux-dev", "flux1"), ("tiny-flux2", "flux2"), ("tiny", "sd2")])
def test_each_tiny_model_is_claimed_by_its_family(registry, spec, family):
    assert registry.family_for(request(spec)).name == family


@pytest.mark.parametrize("family", list(CONFIGS))
def test_the_real_config_folders_are_claimed_and_detected(registry, family):
    folder = DATA / CONFIGS[family]
    assert registry.family_for(request(str(folder))).name == family
    transformer = json.loads((folder / "transformer" / "config.json").read_text())
    detected = [name for name, entry in registry.families.items() if entry.family.detect({"transformer": transformer})]
    assert detected == [family]


def test_a_config_folder_without_weights_needs_random_weights(registry):
    from sow.errors import ModelLoadError

    with pytest.raises(ModelLoadError, match="--random-weights"):
        registry.family("flux1").family.load(request(str(DATA / CONFIGS["flux1"])))


@pytest.mark.parametrize("spec", ["tiny-sd3", "tiny-flux", "tiny-flux2"])
def test_a_loaded_flow_model_is_a_backbone_with_joint_attention(registry, spec):
    backbone = registry.family_for(request(spec)).family.load(request(spec))
    assert isinstance(backbone, Backbone)
    assert backbone.parameterization == "flow"
    positions = {layer.image_position for layer in backbone.attention.layers}
    assert positions <= {"first", "alone"} if spec == "tiny-sd3" else positions == {"last"}
    # every double- and single-stream block is listed
    blocks = backbone.transformer.config.num_layers + backbone.transformer.config.get("num_single_layers", 0)
    assert len([layer for layer in backbone.attention.layers if layer.image_position != "alone"]) == blocks


def test_the_offline_tokenizers_are_deterministic_and_fit_their_models():
    t5 = t5_tokenizer(16)
    ids = t5("a chef in a busy kitchen", padding="max_length", max_length=16, truncation=True).input_ids
    assert ids[:6] == t5("a chef in a busy kitchen").input_ids[:6] and ids[-1] == t5.pad_token_id
    assert t5.convert_ids_to_tokens(ids[1]) == "\u2581chef"  # real words are real pieces
    qwen = qwen_tokenizer(64)
    chat = qwen.apply_chat_template([{"role": "user", "content": "hé"}], tokenize=False, add_generation_prompt=True, enable_thinking=False)
    assert chat.startswith("<|im_start|>user\nhé<|im_end|>") and chat.endswith("<think>\n\n</think>\n\n")
    assert qwen.decode(qwen(chat).input_ids) == chat  # byte-level: lossless


@pytest.mark.slow
def test_a_config_folder_builds_on_the_meta_device():
    """The real FLUX.1 schnell architecture from its configs (meta device: no memory for weights)."""
    with torch.device("meta"):
        parts = build_from_config_folder(DATA / CONFIGS["flux1"], "flux1")
    params = sum(p.numel() for p in parts["transformer"].parameters())
    assert abs(params - 11_891_178_560) < 1e6


def test_the_levels_scale_with_the_paper_fractions():
    from sow.engine.flow.readings import scaled_levels

    assert scaled_levels(10) == {"num_inference_steps": 10, "t1": 5, "t2": 7, "t3": [4, 3]}  # the paper's
    assert scaled_levels(4) == {"num_inference_steps": 4, "t1": 2, "t2": 3, "t3": [1]}  # schnell / klein
    assert scaled_levels(28) == {"num_inference_steps": 28, "t1": 14, "t2": 20, "t3": [11, 8]}
    for steps in range(3, 60):
        levels = scaled_levels(steps)
        assert 1 <= levels["t1"] < levels["t2"] <= steps
        assert all(1 <= t < levels["t1"] for t in levels["t3"]) and (levels["t3"] or levels["t1"] == 1)


@pytest.mark.parametrize(("spec", "kind", "cfg", "background"), [
    ("tiny-sd3", "sd3", 7.0, True), ("tiny-flux", "flux1-schnell", 1.0, False),
    ("tiny-flux-dev", "flux1-dev", 1.0, False), ("tiny-flux2", "flux2-klein", 1.0, False)])
def test_each_model_kind_has_its_guidance_defaults(registry, spec, kind, cfg, background):
    from sow.engine.flow.readings import config_overrides, model_kind
    from sow.schemas import GenerationConfig

    backbone = registry.family_for(request(spec)).family.load(request(spec))
    assert model_kind(backbone) == kind
    overrides = config_overrides(backbone)
    assert overrides["guidance_scale"] == cfg and overrides["background_guidance"] is background
    GenerationConfig.from_preset("normal", **overrides)  # a valid config


def test_a_flow_folder_too_big_for_the_memory_is_refused_before_it_is_built(registry, monkeypatch):
    """The size door of the UNet families holds for flow folders too: the components are counted on the
    meta device (SD 3.5 Medium: transformer, three text encoders and the VAE) against the memory at hand."""
    import sow.models.checks as checks
    from sow.errors import ModelLoadError

    monkeypatch.setattr(checks, "available_memory", lambda device: (2**30, "of available memory"))
    with pytest.raises(ModelLoadError, match=r"has 7\.91 billion parameters: 29\.5 GiB of weights in float32, but 1\.0 GiB"):
        registry.family("sd3").family.load(request(str(DATA / CONFIGS["sd3"]), random_weights=True))


def test_a_flow_config_asking_for_absurd_depth_is_refused_before_the_meta_build(registry, tmp_path):
    import shutil

    from sow.errors import ModelLoadError

    folder = tmp_path / "deep"
    shutil.copytree(DATA / CONFIGS["flux2"], folder)
    config = json.loads((folder / "transformer" / "config.json").read_text())
    config["num_single_layers"] = 10**7
    (folder / "transformer" / "config.json").write_text(json.dumps(config))
    with pytest.raises(ModelLoadError, match="transformer/config.json"):
        registry.family("flux2").family.load(request(str(folder), random_weights=True))
