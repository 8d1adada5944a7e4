"""What ``sow bench`` reports, typed: :class:`BenchReport` (a timed run) and :class:`CostReport` (``--count-only``).

Every field is declared (unknown ones are refused), so a renamed or missing number fails where
the report is built, not in a reader of its JSON. ``as_dict()`` is the JSON ``--json`` writes
(fields that are None, such as a baseline that was not measured, are left out).
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid")


class _Report(_Model):
    def as_dict(self) -> dict[str, Any]:
        """The report as JSON-ready data, None fields left out."""
        return self.model_dump(mode="json", exclude_none=True)


class Spread(_Model):
    """Seconds per image over the timed runs."""

    median: float
    min: float
    max: float


class CallFlops(_Model):
    """FLOPs of one module called with one set of input shapes."""

    module: str = Field(description="unet, vae_encoder, vae_decoder, text_encoder or text_encoder_2.")
    shapes: list[list[int]] = Field(description="Input shapes of the call (sample, then text context, pooled text).")
    calls: int
    tflop_per_call: float


class FlopCount(_Model):
    """FLOPs of the standard models, counted on meta-device copies (:func:`sow.bench.flops.count_flops`)."""

    per_call: list[CallFlops]
    tflop: dict[str, float] = Field(description="TFLOP per module over the run.")
    total_tflop: float


class CountedRun(FlopCount):
    """FLOPs of one whole run at one batch size: the standard models, and what the modulation adds."""

    batch: int
    run_tflop: float = Field(description="Every FLOP of the run (FlopCounterMode), DAM included.")
    standard_models_tflop: float
    modulation_extra_tflop: float


class DeviceInfo(_Model):
    type: str
    name: str
    torch: str
    python: str
    capability: str | None = Field(None, description="CUDA compute capability.")
    threads: int | None = Field(None, description="Torch threads on the CPU.")


class PeakMemory(_Model):
    kind: str = Field(description="cuda_max_allocated, or the process's max RSS on the CPU.")
    bytes: int


class BenchConfig(_Model):
    canvas: int
    steps: int
    cycles: int
    t1: int
    t2: int
    guidance_scale: float
    background_guidance: bool
    modulator: str
    dam_gate: bool | None = Field(None, description="DAM's gate kept (True) or forced open (False); None without DAM.")


class PlanSeconds(_Model):
    median: float
    runs: list[float]


class PlanTiming(_Model):
    """The plan, made and timed on its own, then passed to every timed run."""

    planner: str
    seconds: PlanSeconds
    note: str


class RunTiming(_Model):
    """The fast path at one batch size."""

    batch: int
    seconds_per_image: Spread
    images_per_second: float
    stages_seconds_per_image: dict[str, float] = Field(description="Median seconds per image of each stage (plan, encode, ...).")
    unet_evaluations: int
    tflop_per_image: float
    unet_tflop_per_image: float
    effective_tflops: float
    peak_memory: PeakMemory
    seconds_per_run: list[float]
    speedup_vs_reference: float | None = None


class DamShare(_Model):
    """DAM's measured share of one cycle-phase UNet call (:func:`sow.bench.dam_share.dam_unet_call`)."""

    unet_call_seconds: dict[str, float] = Field(description="Median seconds of the call with ('dam') and without ('none').")
    ratio: float
    dam_share_of_call: float
    modulated_rows: float
    attention_batch: int
    gate: str
    clock: str
    seconds: dict[str, list[float]]


class DdimBaseline(_Model):
    steps: int
    seconds_per_image: Spread
    sow_over_ddim: float
    note: str


class LadderRung(_Model):
    """One variant of the interleaved ladder from the reference settings to the fast path."""

    variant: str
    dtype: str
    batch: int
    attention: str | None = None
    cache_text_embeddings: bool | None = None
    seconds_per_image: Spread
    stages_seconds_per_image: dict[str, float]
    unet_evaluations: int
    speedup_vs_reference: float = 0.0


class ReferenceBaseline(_Model):
    note: str
    ladder: list[LadderRung]
    same_unet_evaluations: bool


class Baselines(_Model):
    ddim: DdimBaseline | None = None
    reference: ReferenceBaseline | None = None


class BenchReport(_Report):
    """A timed benchmark: what :func:`sow.bench.benchmark.run_bench` returns (``--json`` writes it)."""

    sow_version: str
    created: str = Field(description="UTC time the report was made (ISO 8601).")
    device: DeviceInfo
    model: str
    model_load_seconds: float
    weights_bytes: int
    dtype: str
    settings: dict[str, Any] = Field(description="The PerformanceSettings used and what was applied.")
    attention_processors: dict[str, int]
    config: BenchConfig
    warmup: int
    repeats: int
    unet_calls_per_phase: dict[str, int]
    unet_evaluations: int
    flops: CountedRun = Field(description="The counted run at the first batch size.")
    plan: PlanTiming
    runs: list[RunTiming] = Field(description="One entry per batch size.")
    dam: DamShare | None = None
    baselines: Baselines = Field(default_factory=Baselines)
    not_measured: list[str] = Field(default_factory=list)


class CostConfig(_Model):
    canvas: int
    steps: int
    cycles: int
    t1: int
    t2: int
    kind: str | None = Field(None, description="Flow models: the model kind whose defaults were used (sd3, flux1-schnell, ...).")
    branches: dict[str, int] | None = Field(None, description="Flow models: batch items (prompt branches) of one call, per phase.")
    condition: int | None = Field(None, description="Flow models: the condition's side in pixels.")


class CostReport(_Report, FlopCount):
    """The cost model alone: what :func:`sow.bench.cost_model.cost_model` returns (``--count-only``)."""

    model: str
    batch: int
    config: CostConfig
    unet_calls_per_phase: dict[str, int]
    unet_evaluations: int
    note: str
