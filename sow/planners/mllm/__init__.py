"""The planner toolkit's planner for a local multimodal LLM (transformers): loading and chat.

Public API for plugin authors (docs/plugins.md): `MLLMPlanner` (the toolkit's three-stage
planning, :mod:`sow.planners.toolkit`, over the `load` and `chat` methods a plugin supplies), its options `MLLMOptions`,
`describe_load_error` (a one-line `ModelLoadError`) and `load_kwargs` (the `from_pretrained`
arguments for device, dtype and quantization). May import the root contract, `sow.io`,
`sow.safety` (the load policy), `sow.models.hub` and `sow.planners`.
"""
from sow.planners.mllm.base import MLLMOptions, MLLMPlanner, describe_load_error, load_kwargs

__all__ = ["MLLMOptions", "MLLMPlanner", "describe_load_error", "load_kwargs"]
