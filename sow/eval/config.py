"""What an eval compares, as one validated JSON file: :class:`EvalConfig` (``sow eval --config eval.json``)."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from sow.errors import InputError
from sow.eval.controlnet import ControlNetSettings
from sow.io.json_files import read_json
from sow.schemas import _deep_merge, validated

PAPER_ABLATIONS: dict[str, dict[str, Any]] = {
    "sow-no-ap": {"ablation": {"adaptive_position": False}},
    "sow-no-pi": {"ablation": {"prompt_intensification": False}},
    "sow-no-dam": {"stages": {"modulator": "none"}},
}
"""The paper's module ablations: SOW without adaptive position, prompt intensification, DAM."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class InpaintSettings(_Strict):
    """The ``inpaint`` baseline."""

    model: str | None = Field(None, description="Inpainting model: 'tiny', a folder, a .safetensors file or a hub id.")
    steps: int = Field(50, ge=1, le=1000, description="Inpainting denoising steps (diffusers' default; at most 1000, the timesteps SD was trained with).")


class EvalConfig(_Strict):
    """Everything an eval run compares, as one JSON file (``sow eval --config eval.json``)."""

    model: str = Field("tiny", description="The Stable Diffusion model every method shares.")
    device: str = Field("auto", description="auto (a CUDA GPU when there is one, else the CPU), cpu, cuda or cuda:N; as `sow generate`.")
    dtype: str = Field("auto", description="auto (bf16 on GPUs that have it, fp16 on others, fp32 on CPU), fp32, fp16 or bf16; as `sow generate`.")
    seed: int = Field(0, ge=0, lt=2**63, description="The seed of every method on every item (0 .. 2**63-1, what torch's generator takes).")
    metric: str = Field("dlib", description="Face metric plugin (see `sow plugins`).")
    metric_options: dict[str, Any] = Field(default_factory=dict, description="Options passed to the metric.")
    region_margin: float = Field(0.25, ge=0, le=2, description="How far the face search extends past box_v (share of its sides).")
    generation: dict[str, Any] = Field(default_factory=dict, description="GenerationConfig overrides for every method (canvas, cycles...).")
    sow_stages: dict[str, str] = Field(
        default_factory=lambda: {"modulator": "dam"},
        description="Stage names of the `sow` method (StageNames fields); unset ones keep their defaults.",
    )
    stage_options: dict[str, dict[str, Any]] = Field(
        default_factory=dict, description="Options per stage kind (e.g. {'planner': {...}}), as SOWPipeline takes them."
    )
    baseline_planner: str = Field("fixed", description="Planner of cow, paste and inpaint (where the condition goes).")
    strict_stages: bool = Field(False, description="Fail on a stage name that is not installed (off: run with the default and say so).")
    ablations: dict[str, dict[str, Any]] = Field(
        default_factory=lambda: json.loads(json.dumps(PAPER_ABLATIONS)),
        description="Named rows: GenerationConfig overrides (and 'stages') applied on top of `sow`.",
    )
    grid: dict[str, list[Any]] = Field(
        default_factory=dict,
        description="Dotted GenerationConfig keys -> values; every combination is a row on top of `sow`.",
    )
    inpaint: InpaintSettings = Field(default_factory=InpaintSettings)
    controlnet: ControlNetSettings = Field(default_factory=ControlNetSettings)
    methods: list[str] | None = Field(
        None, description="Methods to run, in column order (default: sow, cow, the ablation rows, inpaint and controlnet if a model is named, paste)."
    )
    sheet_rows: int = Field(24, ge=1, le=1000, description="Items shown in the contact sheet (at most 1000: one picture must stay a size an image viewer opens).")

    def fingerprint(self) -> str:
        """What makes two runs' rows comparable: everything but the method list and the sheet size."""
        data = self.model_dump(exclude={"methods", "sheet_rows"})
        return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()[:16]


def load_eval_config(path: Path | None, **overrides: Any) -> EvalConfig:
    """An :class:`EvalConfig` from a JSON file (or the defaults), then non-None ``overrides``."""
    data: dict[str, Any] = {}
    if path is not None:
        data = read_json(path, "eval config")
        if not isinstance(data, dict):
            raise InputError(f"eval config {path}: expected a JSON object")
    for key, value in overrides.items():
        if value is None:
            continue
        if isinstance(value, dict) and isinstance(data.get(key), dict):
            _deep_merge(data[key], value)
        else:
            data[key] = value
    return validated(EvalConfig, data, f"eval config{f' {path}' if path else ''}")
