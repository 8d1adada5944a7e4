"""The tiny flow models for tests, built once per session, and their diffusers pipelines."""

from __future__ import annotations

from functools import lru_cache

import diffusers

from sow.engine.flow.flux1 import Flux1Backbone
from sow.engine.flow.flux2 import Flux2Backbone
from sow.engine.flow.sd3 import SD3Backbone
from sow.engine.flow.tiny import TINY_QWEN_LAYERS, TINY_TEXT_LENGTH, build_tiny_flow

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
