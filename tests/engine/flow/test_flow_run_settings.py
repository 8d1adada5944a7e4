"""The seams' gaps closed for the flow families (issue 25): each family's defaults readable through the
Backbone Protocol (``config_defaults``), and FLUX.1 dev's guidance input a run setting
(``GenerationConfig.embedded_guidance``), not a constant fixed when the model was loaded."""

from __future__ import annotations

import pytest
import torch

from sow.engine.backbone import Backbone, batch_conditioning
from sow.engine.flow.flux1 import Flux1Backbone
from sow.models.flow.tiny import TINY_TEXT_LENGTH
from sow.pipeline import SOWPipeline
from tests.support.flow_models import PROMPT, flow_backbone


@pytest.mark.parametrize("name, expected", [
    ("tiny-sd3", {"num_inference_steps": 10, "t1": 5, "t2": 7, "t3": [4, 3], "guidance_scale": 7.0, "background_guidance": True}),
    ("tiny-flux", {"num_inference_steps": 4, "t1": 2, "t2": 3, "t3": [1], "guidance_scale": 1.0, "background_guidance": False}),
    ("tiny-flux-dev", {"num_inference_steps": 10, "t1": 5, "t2": 7, "t3": [4, 3], "guidance_scale": 1.0, "embedded_guidance": 3.5}),
    ("tiny-flux2", {"num_inference_steps": 4, "t1": 2, "t2": 3, "t3": [1], "guidance_scale": 1.0, "background_guidance": False}),
])
def test_each_family_says_its_defaults_through_the_protocol(name, expected):
    backbone = flow_backbone(name)
    assert isinstance(backbone, Backbone)
    defaults = backbone.config_defaults()
    assert {k: defaults[k] for k in expected} == expected
    assert ("embedded_guidance" in defaults) == (name == "tiny-flux-dev")  # only a model with a guidance input has one
    # the user's S moves the levels with it
    assert backbone.config_defaults({"num_inference_steps": 20})["t2"] == 14


def test_the_unet_families_keep_the_presets(tiny_components):
    from sow.engine.unet_family import UNetBackbone

    backbone = UNetBackbone(tiny_components)
    assert isinstance(backbone, Backbone) and backbone.config_defaults() == {}


def _velocity(backbone, settings: dict) -> torch.Tensor:
    latents = torch.randn(1, backbone.latent_channels, 16, 16, generator=torch.Generator().manual_seed(0))
    prompts = backbone.encode_prompts({"prompt": PROMPT, "empty": ""})
    extra = backbone.run_conditioning(settings)
    prompts = {name: {**cond, **extra} for name, cond in prompts.items()}
    with torch.no_grad():
        return backbone.predict(latents, torch.tensor(600.0), batch_conditioning(prompts, ["prompt", "empty"], 1)).output


def test_the_dev_guidance_input_is_a_run_setting():
    dev = flow_backbone("tiny-flux-dev")
    assert dev.guidance == "embedded"
    at_5 = _velocity(dev, {"embedded_guidance": 5.0})
    # the same as a model loaded with 5.0 as its constant (the path the diffusers oracle checks) ...
    loaded_at_5 = Flux1Backbone(dev.components, TINY_TEXT_LENGTH, embedded_guidance=5.0)
    assert torch.equal(at_5, _velocity(loaded_at_5, {}))
    # ... unlike the default, which None asks for
    default = _velocity(dev, {"embedded_guidance": None})
    assert torch.equal(default, _velocity(dev, {}))
    assert not torch.allclose(at_5, default, atol=1e-5)
    # schnell has no guidance input: nothing is added, whatever the setting
    assert flow_backbone("tiny-flux").run_conditioning({"embedded_guidance": 5.0}) == {}


def test_the_pipeline_hands_the_run_value_to_every_call():
    pipe = SOWPipeline(flow_backbone("tiny-flux-dev"))
    config = pipe.make_config(None, "normal", canvas={"width": 128, "height": 128}, embedded_guidance=2.0)
    assert config.embedded_guidance == 2.0 and pipe.make_config(None, "normal").embedded_guidance == 3.5
    embeddings = pipe.encode_prompts(PROMPT, config)
    for name in ("prompt", "negative", "empty"):
        assert embeddings.conditioning(name)["guidance"].tolist() == [2.0]
