"""The tiny flow models for tests, built once per session, and their diffusers pipelines."""

from __future__ import annotations

from functools import lru_cache

import diffusers

from sow.engine.flow.flux1 import Flux1Backbone
from sow.engine.flow.flux2 import Flux2Backbone
from sow.engine.flow.sd3 import SD3Backbone
from sow.models.flow.tiny import TINY_QWEN_LAYERS, TINY_TEXT_LENGTH, build_tiny_flow

PROMPT = "a chef in a busy kitchen"


@lru_cache(maxsize=None)
def flow_backbone(name: str):
    """The backbone over tiny model ``name`` (one build per test session)."""
    parts = build_tiny_flow(name)
    if name == "tiny-sd3":
        return SD3Backbone(parts, TINY_TEXT_LENGTH)
    if name == "tiny-flux2":
        return Flux2Backbone(parts, TINY_TEXT_LENGTH, TINY_QWEN_LAYERS)
    return Flux1Backbone(parts, TINY_TEXT_LENGTH)


def pipeline_for(name: str, backbone):
    """(diffusers pipeline over the backbone's very modules, the call kwargs that match sow's settings)."""
    call = {"max_sequence_length": TINY_TEXT_LENGTH}
    if name == "tiny-sd3":
        pipe = diffusers.StableDiffusion3Pipeline(**backbone.components)
    elif name == "tiny-flux2":
        pipe = diffusers.Flux2KleinPipeline(**backbone.components, is_distilled=True)
        call["text_encoder_out_layers"] = TINY_QWEN_LAYERS
    else:
        pipe = diffusers.FluxPipeline(**backbone.components)
    pipe.set_progress_bar_config(disable=True)
    return pipe, call


TINY_INDEX = {
    "tiny-sd3": {"_class_name": "StableDiffusion3Pipeline", "transformer": ["diffusers", "SD3Transformer2DModel"],
                 "vae": ["diffusers", "AutoencoderKL"], "text_encoder": ["transformers", "CLIPTextModelWithProjection"],
                 "text_encoder_2": ["transformers", "CLIPTextModelWithProjection"], "text_encoder_3": ["transformers", "T5EncoderModel"],
                 "tokenizer": ["transformers", "CLIPTokenizer"], "tokenizer_2": ["transformers", "CLIPTokenizer"],
                 "tokenizer_3": ["transformers", "T5TokenizerFast"], "scheduler": ["diffusers", "FlowMatchEulerDiscreteScheduler"]},
    "tiny-flux": {"_class_name": "FluxPipeline", "transformer": ["diffusers", "FluxTransformer2DModel"], "vae": ["diffusers", "AutoencoderKL"],
                  "text_encoder": ["transformers", "CLIPTextModel"], "text_encoder_2": ["transformers", "T5EncoderModel"],
                  "tokenizer": ["transformers", "CLIPTokenizer"], "tokenizer_2": ["transformers", "T5TokenizerFast"],
                  "scheduler": ["diffusers", "FlowMatchEulerDiscreteScheduler"]},
}


def write_config_folder(name: str, folder):
    """A folder of the tiny model's component configs (no weights), as ``../shared/data/*-config`` are laid out."""
    import json

    from sow.models.flow.tiny import tiny_flow_configs

    configs = tiny_flow_configs(name)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "model_index.json").write_text(json.dumps(TINY_INDEX[name]))
    for key, config in configs.items():
        (folder / key).mkdir(exist_ok=True)
        if key.startswith("text_encoder") and "d_model" in config:
            config = {**config, "vocab_size": 6003}
        (folder / key / ("scheduler_config.json" if key == "scheduler" else "config.json")).write_text(json.dumps(config))
    return folder
