"""The tiny Qwen-Image and Z-Image models for tests, built once per session, and their diffusers pipelines."""

from __future__ import annotations

from functools import lru_cache

import diffusers

from sow.engine.flow.qwen_image import QwenImageBackbone
from sow.engine.flow.z_image import ZImageBackbone
from sow.models.flow.tiny import build_tiny_flow
from sow.models.flow.tiny_qwen import TINY_QWEN_TEXT_LENGTH

PROMPT = "a chef in a busy kitchen"


@lru_cache(maxsize=None)
def qwen_backbone(name: str):
    """The backbone over tiny model ``name`` (``tiny-qwen-image`` or ``tiny-z-image``), one build per session."""
    parts = build_tiny_flow(name)
    cls = QwenImageBackbone if name == "tiny-qwen-image" else ZImageBackbone
    return cls(parts, TINY_QWEN_TEXT_LENGTH[name])


def qwen_pipeline_for(name: str, backbone):
    """(diffusers pipeline over the backbone's very modules, the call kwargs that match sow's text length)."""
    cls = diffusers.QwenImagePipeline if name == "tiny-qwen-image" else diffusers.ZImagePipeline
    pipe = cls(**backbone.components)
    pipe.set_progress_bar_config(disable=True)
    return pipe, {"max_sequence_length": TINY_QWEN_TEXT_LENGTH[name]}
