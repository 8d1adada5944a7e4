"""The columns of an eval: :class:`Method` and :func:`resolve_methods` (built-ins, ablation rows, the grid).

``sow``      the planner and stages of :attr:`EvalConfig.sow_stages` (DAM by default).
``cow``      Cyclic One-Way Diffusion: modulator ``none``, adaptive position and prompt
             intensification off, the baseline planner.
ablations    rows of :attr:`EvalConfig.ablations` (named) and :attr:`EvalConfig.grid`
             (every combination), each a change on top of ``sow``.
``inpaint``  Stable Diffusion inpainting of everything but the pasted condition
             (:mod:`sow.eval.inpainting`).
``paste``    the seeded canvas itself: the bound on ID fidelity, no generation at all.
``controlnet`` ControlNet on the canny edges of the seeded canvas (:mod:`sow.eval.controlnet`).
"""

from __future__ import annotations

import itertools
import json
import math
from dataclasses import dataclass, field
from typing import Any, Literal

from sow.errors import InputError
from sow.eval.config import EvalConfig
from sow.io.outputs import safe_name
from sow.schemas import _deep_merge

BUILTIN_METHODS = ("sow", "cow", "inpaint", "paste", "controlnet")
MAX_GRID_ROWS = 256
"""Grid combinations at most: each is one more method, a generation per spec item."""


@dataclass(frozen=True)
class Method:
    """One column of the comparison."""

    name: str
    kind: Literal["generate", "paste", "inpaint", "controlnet"]
    stages: dict[str, str] = field(default_factory=dict)
    overrides: dict[str, Any] = field(default_factory=dict)


def _dotted(key: str, value: Any) -> dict[str, Any]:
    out: dict[str, Any] = value
    for part in reversed(key.split(".")):
        out = {part: out}
    return out


def _row_overrides(base_stages: dict[str, str], change: dict[str, Any]) -> tuple[dict[str, str], dict[str, Any]]:
    change = json.loads(json.dumps(change))
    stages = {**base_stages, **change.pop("stages", {})}
    return stages, change


def resolve_methods(config: EvalConfig) -> list[Method]:
    """The methods the config asks for, in column order; unknown names are an error."""
    available: dict[str, Method] = {
        "sow": Method("sow", "generate", dict(config.sow_stages)),
        "cow": Method(
            "cow",
            "generate",
            {"planner": config.baseline_planner, "modulator": "none"},
            {"ablation": {"adaptive_position": False, "prompt_intensification": False}},
        ),
    }
    ablation_names: list[str] = []
    taken = set(BUILTIN_METHODS) & set(config.ablations)
    if taken:
        raise InputError(f"ablation row {sorted(taken)[0]!r} takes the name of a built-in method; rename it")
    for name, change in config.ablations.items():
        stages, overrides = _row_overrides(config.sow_stages, change)
        available[name] = Method(name, "generate", stages, overrides)
        ablation_names.append(name)
    if config.grid:
        keys = list(config.grid)
        rows = math.prod(len(config.grid[k]) for k in keys)
        if rows > MAX_GRID_ROWS:
            raise InputError(f"grid: {rows:,} combinations; at most {MAX_GRID_ROWS} (each is a full run per item)")
        for values in itertools.product(*(config.grid[k] for k in keys)):
            change: dict[str, Any] = {}
            for key, value in zip(keys, values):
                _deep_merge(change, _dotted(key, value))
            name = "sow[" + ",".join(f"{k}={json.dumps(v)}" for k, v in zip(keys, values)) + "]"
            stages, overrides = _row_overrides(config.sow_stages, change)
            available[name] = Method(name, "generate", stages, overrides)
            ablation_names.append(name)
    available["inpaint"] = Method("inpaint", "inpaint")
    available["paste"] = Method("paste", "paste")
    available["controlnet"] = Method("controlnet", "controlnet")
    if config.methods is None:
        names = ["sow", "cow", *ablation_names, *(["inpaint"] if config.inpaint.model else []),
                 *(["controlnet"] if config.controlnet.model else []), "paste"]
    else:
        names = list(dict.fromkeys(config.methods))
    unknown = [n for n in names if n not in available]
    if unknown:
        raise InputError(f"unknown method {unknown[0]!r}; available: {', '.join(available)}")
    if "inpaint" in names and not config.inpaint.model:
        raise InputError("method 'inpaint' needs an inpainting model: set inpaint.model (or --inpaint-model)")
    if "controlnet" in names and not config.controlnet.model:
        raise InputError("method 'controlnet' needs a canny ControlNet: set controlnet.model (or --controlnet-model)")
    chosen = [available[n] for n in names]
    folders: dict[str, str] = {}
    for method in chosen:  # each method's images in a folder of its own, also on a case-insensitive filesystem
        key = method_folder(method.name).casefold()
        if key in folders:
            raise InputError(
                f"methods {folders[key]!r} and {method.name!r} would write to one folder ({method_folder(method.name)}); rename one"
            )
        folders[key] = method.name
    return chosen


def method_folder(name: str) -> str:
    """The folder (under ``images/``) of a method's images."""
    return safe_name(name, 80)
