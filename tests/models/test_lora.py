"""LoRA: a random peft LoRA made here changes the output and is recorded; a misfit is refused (exit 2)."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
import torch

import peft  # noqa: F401,E402  (a test dependency, the dev extra: these tests never skip)

from sow.models.lora import LoraError, parse_lora  # noqa: E402
from sow.models.loading import build_tiny, load_components  # noqa: E402
from sow.pipeline import SOWPipeline  # noqa: E402

PROMPT = "a chef in a busy kitchen"
RUN = {"seed": 1, "canvas": {"width": 64, "height": 64}, "cycles": 1}


def make_lora(components, folder: Path, seed: int = 5) -> Path:
    """A rank-4 LoRA on every attention projection of ``components``' UNet, random A and B (peft)."""
    from diffusers import StableDiffusionPipeline
    from peft import LoraConfig
    from peft.utils import get_peft_model_state_dict

    unet = components.unet
    torch.manual_seed(seed)
    unet.add_adapter(LoraConfig(r=4, lora_alpha=4, target_modules=["to_q", "to_k", "to_v", "to_out.0"], init_lora_weights=False))
    state = get_peft_model_state_dict(unet)
    StableDiffusionPipeline.save_lora_weights(folder, unet_lora_layers=state, safe_serialization=True)
    return folder / "pytorch_lora_weights.safetensors"


@pytest.fixture(scope="module")
def lora_file(tmp_path_factory):
    return make_lora(build_tiny(), tmp_path_factory.mktemp("lora"))


@pytest.fixture(scope="module")
def plain(face_path):
    return SOWPipeline(load_components("tiny"))(face_path, PROMPT, **RUN)


def test_parse_lora_spec(lora_file):
    assert parse_lora(f"{lora_file}:0.5") == (lora_file, 0.5)
    assert parse_lora(str(lora_file)) == (lora_file, 1.0)
    assert parse_lora(str(lora_file.parent)) == (lora_file, 1.0)
    with pytest.raises(LoraError, match="no such file"):
        parse_lora("/nonexistent/x.safetensors:0.3")


def test_a_random_lora_changes_the_output_and_is_recorded(lora_file, face_path, plain):
    with_lora = SOWPipeline(load_components("tiny", loras=[f"{lora_file}:0.7"]))(face_path, PROMPT, **RUN)
    assert not torch.equal(plain.latents, with_lora.latents)
    (record,) = with_lora.record.loras
    assert record.scale == 0.7 and Path(record.path) == lora_file
    assert record.sha256 == hashlib.sha256(lora_file.read_bytes()).hexdigest()
    assert plain.record.loras == []


def test_a_zero_scale_lora_gives_the_plain_output(lora_file, face_path, plain):
    zero = SOWPipeline(load_components("tiny", loras=[f"{lora_file}:0"]))(face_path, PROMPT, **RUN)
    assert torch.allclose(plain.latents, zero.latents, atol=1e-5)


def test_a_lora_of_another_family_is_refused_in_one_line(lora_file):
    with pytest.raises(LoraError, match="does not fit this sdxl model") as err:
        load_components("tiny-sdxl", loras=[str(lora_file)])
    assert "\n" not in str(err.value) and err.value.exit_code == 2


def test_cli_refuses_a_misfit_lora_with_exit_2(lora_file, tmp_path, face_path, capsys):
    from sow.cli.commands import main

    with pytest.raises(SystemExit) as exit_info:
        main(["generate", str(face_path), PROMPT, "--model", "tiny-sdxl", "--lora", str(lora_file), "--out", str(tmp_path), "-q"])
    err = capsys.readouterr().err
    assert exit_info.value.code == 2, err
    assert "does not fit this sdxl model" in err and len(err.strip().splitlines()) == 1
    assert not any(tmp_path.iterdir())  # nothing written


def test_an_sdxl_lora_applies_to_the_sdxl_family(tmp_path, face_path):
    from sow.models.loading import build_tiny_sdxl

    lora = make_lora(build_tiny_sdxl(), tmp_path)
    plain = SOWPipeline(load_components("tiny-sdxl"))(face_path, PROMPT, **RUN)
    styled = SOWPipeline(load_components("tiny-sdxl", loras=[str(lora)]))(face_path, PROMPT, **RUN)
    assert not torch.equal(plain.latents, styled.latents)
    assert styled.record.family == "sdxl" and styled.record.loras[0].scale == 1.0
