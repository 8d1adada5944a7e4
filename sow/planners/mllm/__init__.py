"""What multimodal-LLM planner plugins share: prompts, answer parsing, a base class.

Public API for plugin authors: `MLLMPlanner` (the three-stage planning of the paper over
a `generate` method a plugin supplies) and `describe_load_error`. May import the root
contract, `sow.io` and `sow.planners`.
"""
from sow.planners.mllm.base import MLLMPlanner, describe_load_error

__all__ = ["MLLMPlanner", "describe_load_error"]
