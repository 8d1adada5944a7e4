"""Which model evaluation is running: the :class:`Step` the denoiser announces before every call.

Its own module so that the denoiser, the per-run context (:mod:`sow.engine.context`) and the NaN
guard (:mod:`sow.engine.numerics`) can all name it without importing each other.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

Phase = Literal["invert_condition", "invert_canvas", "cycle", "final"]


@dataclass(frozen=True)
class Step:
    """The model evaluation about to run."""

    phase: Phase
    level: int
    """Denoising: the level the step starts from. Inversion: the level it arrives at."""
    cycle: int | None = None
    """The cycle index 0..N-1 in the cycle phase, else None."""
