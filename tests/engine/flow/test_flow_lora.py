"""LoRA on a flow family (issue 25): a random peft LoRA made here for tiny-flux's transformer loads through
``FluxPipeline``'s loader (``--lora PATH[:SCALE]``), changes the model's output by its scale, and is
recorded; scale 0 gives the plain model; a LoRA of another family is refused in one line."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
import torch

import peft  # noqa: F401,E402  (a test dependency, the dev extra: these tests never skip)

from sow.engine.backbone import batch_conditioning  # noqa: E402
from sow.models.lora import LoraError  # noqa: E402
from sow.pipeline import SOWPipeline  # noqa: E402
from tests.support.flow_models import PROMPT, flow_backbone  # noqa: E402


def make_flux_lora(folder: Path, seed: int = 5) -> Path:
    """A rank-4 LoRA on every attention projection of a transformer built from tiny-flux's config (peft),
    random A and B, saved as diffusers' FLUX LoRA file."""
    from diffusers import FluxPipeline, FluxTransformer2DModel
    from peft import LoraConfig
    from peft.utils import get_peft_model_state_dict

    from sow.models.flow.tiny import tiny_flow_configs

    torch.manual_seed(seed)
    transformer = FluxTransformer2DModel.from_config(tiny_flow_configs("tiny-flux")["transformer"])
    transformer.add_adapter(LoraConfig(r=4, lora_alpha=4, target_modules=["to_q", "to_k", "to_v", "to_out.0"], init_lora_weights=False))
    FluxPipeline.save_lora_weights(folder, transformer_lora_layers=get_peft_model_state_dict(transformer), safe_serialization=True)
    return folder / "pytorch_lora_weights.safetensors"


@pytest.fixture(scope="module")
def flux_lora(tmp_path_factory):
    return make_flux_lora(tmp_path_factory.mktemp("flux-lora"))


def velocity(backbone) -> torch.Tensor:
    """The model's velocity on fixed latents with the prompt and the empty prompt (one call, batch 2)."""
    latents = torch.randn(1, backbone.latent_channels, 16, 16, generator=torch.Generator().manual_seed(0))
    prompts = backbone.encode_prompts({"prompt": PROMPT, "empty": ""})
    with torch.no_grad():
        return backbone.predict(latents, torch.tensor(700.0), batch_conditioning(prompts, ["prompt", "empty"], 1)).output


@pytest.fixture(scope="module")
def plain():
    return velocity(flow_backbone("tiny-flux"))


def test_a_flux_lora_changes_the_output_by_its_scale_and_is_recorded(flux_lora, plain):
    pipe = SOWPipeline.from_pretrained("tiny-flux", loras=[f"{flux_lora}:0.0"])
    backbone = pipe.backbone
    assert "lora0" in backbone.transformer.peft_config  # landed in the transformer, through FluxPipeline's loader
    (record,) = backbone.loras
    assert record.scale == 0.0 and Path(record.path) == flux_lora
    assert record.sha256 == hashlib.sha256(flux_lora.read_bytes()).hexdigest()
    assert torch.equal(velocity(backbone), plain)  # scale 0: W x + 0 * B A x is the plain model, bit for bit

    diffusers_pipe = backbone.diffusers_pipeline()
    diffusers_pipe.set_adapters(["lora0"], adapter_weights=[1.0])
    full = velocity(backbone)
    diffusers_pipe.set_adapters(["lora0"], adapter_weights=[0.5])
    half = velocity(backbone)
    assert not torch.allclose(full, plain, atol=1e-4)
    change_full, change_half = (full - plain).norm(), (half - plain).norm()
    # the LoRA's effect grows with its scale (not linear: attention's softmax sits between layers)
    assert 0 < change_half < change_full


def test_the_lora_is_in_the_run_record(flux_lora, face_path):
    pipe = SOWPipeline.from_pretrained("tiny-flux", loras=[f"{flux_lora}:0.8"])
    out = pipe(face_path, PROMPT, seed=1, config=pipe.make_config(None, "normal", canvas={"width": 128, "height": 128}, cycles=1))
    (record,) = out.record.loras
    assert record.scale == 0.8 and record.adapter == "lora0"
    assert out.record.model == "tiny-flux"


def test_a_unet_lora_on_a_flux_model_is_refused_in_one_line(tmp_path):
    from tests.models.test_lora import make_lora
    from sow.models.loading import build_tiny

    unet_lora = make_lora(build_tiny(), tmp_path)
    with pytest.raises(LoraError, match="does not fit this flux1 model") as err:
        SOWPipeline.from_pretrained("tiny-flux", loras=[str(unet_lora)])
    assert "\n" not in str(err.value) and err.value.exit_code == 2
