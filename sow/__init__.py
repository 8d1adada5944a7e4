"""sow: Selective One-Way Diffusion on a frozen Stable Diffusion model.

The root holds the contract a plugin author reads: `hookspecs` (the registration hooks),
`stages` (the stage Protocols), `schemas` (pydantic models), `errors`, `plugins` (the
registry) and `pipeline` (Algorithm 1, the only place that knows the order of the
stages), with the two shared toolkits the stages use: `geometry` (box geometry: the grid,
clipping, overlap, pixel <-> latent cells) and `faces` (the one face detector). The
subpackages are `engine`, `models`, `attention`, `planners`, `safety`, `io`, `viz` (every
picture), `eval`, `bench`, `batch`, `cli` and `ui` (the web app); each one's docstring says
what it may import.
"""

from __future__ import annotations

from sow.version import __version__  # noqa: E402

from sow.errors import InputError, SowError  # noqa: E402
from sow.hookspecs import hookimpl  # noqa: E402
from sow.schemas import Box, GenerationConfig, Plan, RunRecord  # noqa: E402
from sow.io.library_noise import silence_known_noise  # noqa: E402

silence_known_noise()  # e.g. bitsandbytes' kernel warning on every import of diffusers (sow.io.library_noise)


def __getattr__(name: str):
    # the pipeline imports torch and diffusers: load it only when asked for
    if name in ("SOWPipeline", "SOWOutput", "PipelineSpec"):
        from sow import pipeline

        return getattr(pipeline, name)
    raise AttributeError(f"module 'sow' has no attribute {name!r}")


__all__ = ["Box", "GenerationConfig", "InputError", "PipelineSpec", "Plan", "RunRecord", "SOWPipeline", "SOWOutput", "SowError", "hookimpl"]
