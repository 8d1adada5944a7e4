"""sow: Selective One-Way Diffusion on a frozen Stable Diffusion model."""

from __future__ import annotations

__version__ = "0.1.0"

from sow.errors import InputError, SowError  # noqa: E402
from sow.hookspecs import hookimpl  # noqa: E402
from sow.schemas import Box, GenerationConfig, Plan, RunRecord  # noqa: E402


def __getattr__(name: str):
    # the pipeline imports torch and diffusers: load it only when asked for
    if name in ("SOWPipeline", "SOWOutput"):
        from sow import pipeline

        return getattr(pipeline, name)
    raise AttributeError(f"module 'sow' has no attribute {name!r}")


__all__ = ["Box", "GenerationConfig", "InputError", "Plan", "RunRecord", "SOWPipeline", "SOWOutput", "SowError", "hookimpl"]
