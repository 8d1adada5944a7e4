"""The fixed choices of the CLI's options, as enums so that ``--help`` lists them.

Stage names (``--planner``, ``--modulator`` ...) are not here: plugins add to them, so they
stay free text checked against the registry (``sow plugins`` lists them).
"""

from __future__ import annotations

from enum import Enum

from sow.schemas import PRESETS


class _Choice(str, Enum):
    def __str__(self) -> str:  # rendered as its value in messages
        return self.value


Preset = _Choice("Preset", {name: name for name in PRESETS})  # type: ignore[misc]
"""normal, attribute (editing), style (transfer): :data:`sow.schemas.PRESETS`."""


class Dtype(_Choice):
    auto = "auto"
    fp32 = "fp32"
    fp16 = "fp16"
    bf16 = "bf16"


class OnPlannerError(_Choice):
    fail = "fail"
    heuristic = "heuristic"


class Quantize(_Choice):
    four = "4bit"
    eight = "8bit"


class Attention(_Choice):
    sdpa = "sdpa"
    math = "math"


class CompileMode(_Choice):
    default = "default"
    reduce_overhead = "reduce-overhead"
    max_autotune = "max-autotune"
    max_autotune_no_cudagraphs = "max-autotune-no-cudagraphs"


DEVICE_METAVAR = "<auto|cpu|cuda|cuda:N>"
"""The device is free text (``cuda:N`` has any N); its metavar lists the forms."""


def value(choice: Enum | str | None) -> str | None:
    """The plain string of an enum choice (what the library takes)."""
    return choice.value if isinstance(choice, Enum) else choice
