"""What one ``sow bench`` measures: :class:`BenchSettings` (the reports are in :mod:`sow.bench.reports`).

The CLI builds the settings from its options; Python callers build them directly::

    from sow.bench import BenchSettings, run_bench
    report = run_bench(BenchSettings(model="tiny", device="cpu", smoke=True))
    print(report.runs[0].seconds_per_image.median)
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from sow.errors import InputError

SMOKE: dict[str, Any] = {
    "size": 64, "steps": 4, "cycles": 1, "warmup": 0, "repeats": 1, "baseline_repeats": 1, "ddim_steps": 2,
}  # fmt: skip
"""``smoke=True``: the settings of a CPU smoke run (seconds on the tiny model); fields set explicitly win."""


class BenchSettings(BaseModel):
    """The benchmark's settings; the defaults are the paper's (512 px, S=10, N=10) on the tiny model."""

    model_config = ConfigDict(extra="forbid")

    model: str = Field("tiny", description="'tiny', a diffusers folder, a config folder (with random_weights), a .safetensors file or a hub id.")
    random_weights: bool = Field(False, description="Build a folder of configs (e.g. SD 2.1-base's) with random weights.")
    device: str = Field("auto", description="auto, cpu, cuda or cuda:N.")
    dtype: Literal["auto", "fp32", "fp16", "bf16"] = Field("auto", description="Fast-path precision (auto: bf16 on GPUs that have it, fp32 on CPU).")
    batch: list[int] = Field(default_factory=lambda: [1], description="Images per run (batched through each UNet call); several sizes allowed.")
    warmup: int = Field(1, description="Untimed runs before timing (per batch size and variant).")
    repeats: int = Field(3, description="Timed runs per batch size.")
    baseline_repeats: int | None = Field(None, description="Timed runs of each baseline (None: repeats).")
    size: int = Field(512, description="Canvas side in pixels (square, a multiple of 8).")
    steps: int = Field(10, description="DDIM levels S (paper: 10).")
    cycles: int = Field(10, description="Cycles N (paper: 10).")
    seed: int = Field(0, description="The seed of every run.")
    modulator: str = Field("auto", description="Attention modulator: 'auto' (dam if installed, else none), or a name.")
    gate: bool = Field(False, description="Keep DAM's gate (default: forced open, so DAM's cost is always paid).")
    attention: Literal["sdpa", "math"] = Field("sdpa", description="Attention kernel of unmodulated layers.")
    channels_last: bool | None = Field(None, description="channels_last layout (None: on for CUDA).")
    compile: bool = Field(False, description="torch.compile the UNet's resnet and feed-forward blocks.")
    compile_mode: Literal["default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs"] = Field("default", description="torch.compile mode.")
    vae_slicing: bool = Field(False, description="Decode batched images one at a time.")
    vae_tiling: bool | None = Field(None, description="Tiled VAE (None: on from 1024x1024).")
    offload: bool = Field(False, description="Model CPU offload (small GPUs): one model on the GPU at a time.")
    ddim_steps: int = Field(50, description="Steps of the plain DDIM text-to-image baseline (0: skip it).")
    no_reference: bool = Field(False, description="Skip the fp32 reference-settings runs.")
    condition: Path | None = Field(None, description="Condition image (None: the bundled sample face).")
    smoke: bool = Field(False, description="A CPU smoke run in seconds: SMOKE's values for every field not set explicitly.")

    @model_validator(mode="before")
    @classmethod
    def _smoke(cls, data: Any) -> Any:
        if isinstance(data, dict) and data.get("smoke"):
            data = {**SMOKE, **{k: v for k, v in data.items() if v is not None}}
        return data

    @model_validator(mode="after")
    def _check(self) -> BenchSettings:
        for name, low in (("warmup", 0), ("cycles", 0), ("size", 1), ("steps", 1), ("repeats", 1), ("ddim_steps", 0)):
            if getattr(self, name) < low:
                raise InputError(f"--{name.replace('_', '-')} must be >= {low}, got {getattr(self, name)}")
        if self.baseline_repeats is not None and self.baseline_repeats < 1:
            raise InputError(f"--baseline-repeats must be >= 1, got {self.baseline_repeats}")
        if not self.batch or any(b < 1 for b in self.batch):
            raise InputError(f"--batch sizes must be >= 1, got {self.batch}")
        if self.size % 8:
            raise InputError(f"--size must be a multiple of 8, got {self.size}")
        return self

    def config_overrides(self, modulator: str) -> dict[str, Any]:
        """The :class:`sow.schemas.GenerationConfig` fields these settings set for a run with ``modulator``."""
        overrides: dict[str, Any] = {
            "canvas": {"width": self.size, "height": self.size},
            "num_inference_steps": self.steps,
            "cycles": self.cycles,
            "stages": {"modulator": modulator},
        }
        if self.steps < 7:  # keep t1 < t2 <= S and t3 < t1 for short schedules
            t2 = max(2, self.steps * 7 // 10)
            t1 = max(1, min(t2 - 1, self.steps // 2))
            overrides.update(t1=t1, t2=t2, t3=[k for k in (4, 3) if k < t1] or [])
        if modulator != "none":
            overrides["modulation"] = {"use_gate": bool(self.gate)}
        return overrides

    def runs(self) -> int:
        """Pipeline runs (SOW and DDIM) the benchmark makes: the total of its progress."""
        baseline = self.baseline_repeats or self.repeats
        total = sum(1 + self.warmup + self.repeats for _ in self.batch)  # one counted run per batch size
        if self.ddim_steps > 0 and not self.offload:
            total += self.warmup + baseline
        if not self.no_reference:  # the interleaved ladder: its rungs, and the fast path at each batch (not under offload)
            variants = REFERENCE_RUNGS + (0 if self.offload else len(self.batch))
            total += variants * (self.warmup + baseline)
        return total


REFERENCE_RUNGS = 3
"""Variants of the reference ladder (:data:`sow.bench.benchmark.REFERENCE_LADDER`; a test keeps them equal)."""
