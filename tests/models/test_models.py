"""Model loading: the tiny model, diffusers folders, config folders, refusals with one line."""

from __future__ import annotations

import json

import pytest
import torch

from sow.errors import InputError, ModelLoadError
from sow.models.loading import build_tiny, load_components, tiny_configs

pytestmark = pytest.mark.usefixtures("isolated_registry")  # built-in stages only, whatever the venv holds


def test_tiny_model_is_sd_shaped_and_deterministic(tiny_components):
    c = tiny_components
    assert c.vae_scale_factor == 8
    assert c.unet.config.cross_attention_dim == c.text_encoder.config.hidden_size
    assert any(k.endswith("attn1.processor") for k in c.unet.attn_processors)
    assert any(k.endswith("attn2.processor") for k in c.unet.attn_processors)
    # the real CLIP BPE: known ids of a known phrase
    assert c.tokenizer("a photo of a cat").input_ids == [49406, 320, 1125, 539, 320, 2368, 49407]
    assert c.tokenizer.model_max_length == 77
    again = build_tiny()
    for a, b in zip(c.unet.parameters(), again.unet.parameters()):
        assert torch.equal(a, b)


def test_a_diffusers_folder_loads_through_from_pretrained(tmp_path, tiny_components):
    folder = tmp_path / "model"
    c = tiny_components
    for name, module in (("unet", c.unet), ("vae", c.vae), ("text_encoder", c.text_encoder)):
        module.save_pretrained(folder / name)
    c.tokenizer.save_pretrained(folder / "tokenizer")
    c.scheduler.save_pretrained(folder / "scheduler")
    (folder / "model_index.json").write_text(json.dumps({"_class_name": "StableDiffusionPipeline"}))
    with pytest.raises(ModelLoadError, match="cannot tell the model family .* pass --family"):
        load_components(str(folder))  # the tiny model's toy widths name no family
    loaded = load_components(str(folder), family="sd2")
    assert loaded.source == str(folder) and loaded.family.name == "sd2"
    for a, b in zip(c.unet.parameters(), loaded.unet.parameters()):
        assert torch.equal(a, b)
    assert loaded.tokenizer("a photo").input_ids == c.tokenizer("a photo").input_ids


def test_a_config_folder_needs_random_weights_to_be_asked_for(tmp_path):
    configs = tiny_configs()
    for name in ("unet", "vae", "text_encoder"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "config.json").write_text(json.dumps(configs[name]))
    (tmp_path / "scheduler").mkdir()
    (tmp_path / "scheduler" / "scheduler_config.json").write_text(json.dumps(configs["scheduler"]))
    with pytest.raises(ModelLoadError, match="holds configs but no weights; pass --random-weights"):
        load_components(str(tmp_path))
    built = load_components(str(tmp_path), random_weights=True, family="sd2")
    assert "random weights" in built.source and built.vae_scale_factor == 8


def test_refusals_are_one_line(tmp_path):
    with pytest.raises(ModelLoadError, match="not found"):
        load_components(str(tmp_path / "missing.safetensors"))
    ckpt = tmp_path / "model.ckpt"
    ckpt.write_bytes(b"not really")
    with pytest.raises(InputError, match="only .safetensors checkpoints load by default"):
        load_components(str(ckpt))
    with pytest.raises(ModelLoadError, match="not 'tiny', a folder"):
        load_components("sd-latest")
    with pytest.raises(InputError, match="unknown dtype"):
        load_components("tiny", dtype="fp64")
    if not torch.cuda.is_available():
        with pytest.raises(InputError, match="sees no CUDA GPU"):
            load_components("tiny", device="cuda")


def test_bf16_runs_on_cpu(tiny_components, face_path):
    from sow.pipeline import SOWPipeline

    components = load_components("tiny", dtype="bf16")
    assert components.dtype == torch.bfloat16
    result = SOWPipeline(components)(face_path, "a chef", canvas={"width": 128, "height": 128}, cycles=1)
    assert result.record.dtype == "bfloat16" and result.image.size == (128, 128)
