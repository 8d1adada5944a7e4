"""``sow bench``: what one SOW image costs, per stage, against plain DDIM and against the reference settings.

One run of the benchmark:

1. builds the model (``tiny``, a config folder with ``--random-weights``, or real weights)
   in the fast path's precision and applies :class:`sow.engine.performance.PerformanceSettings`;
2. for each ``--batch`` size: ``--warmup`` untimed runs, then ``--repeats`` timed runs of
   ``num_images = batch``; reports median / min / max seconds per image, the per-stage
   times (plan, encode, inversion, cycles, final, decode), UNet evaluations per phase,
   peak memory, and effective TFLOP/s from FLOPs counted on the shapes the run used;
3. in the same process: plain DDIM text-to-image with the same model at ``--ddim-steps``
   (diffusers' ``StableDiffusionPipeline``), and the engine with every optimisation off
   (fp32, prompts re-encoded at every UNet call, math attention), then with caching and
   with SDPA turned back on one at a time, so each optimisation's gain shows.

The API is three functions over a :class:`~sow.bench.settings.BenchSettings`:
:func:`run_bench` (the timed benchmark, a :class:`~sow.bench.settings.BenchReport`),
:func:`cost_model` (FLOPs only, a :class:`~sow.bench.settings.CostReport`) and :func:`render`
(either as tables). ``sow bench`` (:mod:`sow.cli.bench`) is their command line;
``--plot PATH`` draws the per-stage bars (with PIL: see :mod:`sow.bench.chart`).
"""

from __future__ import annotations

import platform
import resource
import statistics
import time
from collections import Counter
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from sow.version import __version__
from sow.errors import InputError
from sow.engine.performance import PerformanceSettings
from sow.bench.settings import BenchReport, BenchSettings, CostReport

Progress = Callable[[int, int, str], None]
"""``progress(done, total, label)``: called after each pipeline run of the benchmark."""

SAMPLE_FACE = Path(__file__).resolve().parents[1] / "data" / "sample_face.jpg"
"""The shipped sample face, the benchmark's default condition."""

STAGES = ("plan", "encode", "inversion", "cycles", "final", "decode", "paste")
"""The stages of a run, in order, as :class:`sow.schemas.RunRecord` times them."""

BENCH_PROMPT = "a chef in a busy kitchen"
REFERENCE_LADDER = (
    ("reference", {"attention": "math", "cache_text_embeddings": False}),
    ("+ cached text embeddings", {"attention": "math", "cache_text_embeddings": True}),
    ("+ sdpa attention", {"attention": "sdpa", "cache_text_embeddings": True}),
)
"""fp32 variants at batch 1, from the reference code's habits towards the fast path, one switch at a time."""


@dataclass
class Timed:
    """Seconds of the timed runs of one variant, and the stage times of each run."""

    seconds: list[float]
    stages: list[dict[str, float]]
    images_per_run: int

    def per_image(self) -> dict[str, float]:
        values = [s / self.images_per_run for s in self.seconds]
        return {"median": statistics.median(values), "min": min(values), "max": max(values)}

    def stage_medians(self) -> dict[str, float]:
        names = [n for n in STAGES if any(n in s for s in self.stages)]
        names += sorted({n for s in self.stages for n in s} - set(names))
        return {n: statistics.median(s.get(n, 0.0) for s in self.stages) / self.images_per_run for n in names}


# -- options -----------------------------------------------------------------------------


def performance_settings(args: BenchSettings) -> PerformanceSettings:
    return PerformanceSettings(
        attention=args.attention,
        channels_last=args.channels_last,
        compile=args.compile,
        compile_mode=args.compile_mode,
        vae_slicing=args.vae_slicing,
        vae_tiling=args.vae_tiling,
        offload=args.offload,
    )


# -- measuring ---------------------------------------------------------------------------


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class CallShapes:
    """Records the input shapes of every call of a few modules (for FLOP counting)."""

    def __init__(self, modules: dict[str, torch.nn.Module]) -> None:
        self.calls: Counter = Counter()
        self._handles = [m.register_forward_pre_hook(self._hook(name), with_kwargs=True) for name, m in modules.items()]

    def _hook(self, name: str):
        def record(_module, args, kwargs):
            tensors = [a for a in args if isinstance(a, torch.Tensor)]
            context = kwargs.get("encoder_hidden_states")
            added = kwargs.get("added_cond_kwargs") or {}
            shapes = tuple(tuple(t.shape) for t in tensors[:1])
            if context is not None:
                shapes += (tuple(context.shape),)
            if "text_embeds" in added:  # SDXL: the pooled text (time_ids follow from the batch)
                shapes += (tuple(added["text_embeds"].shape),)
            self.calls[(name, shapes)] += 1

        return record

    def remove(self) -> None:
        for handle in self._handles:
            handle.remove()


def flop_counter():
    """``FlopCounterMode`` that also counts CPU SDPA (PyTorch counts only the CUDA attention kernels)."""
    from torch.utils.flop_counter import FlopCounterMode, sdpa_flop_count

    def cpu_sdpa(query, key, value, *args, out_shape=None, **kwargs):
        return sdpa_flop_count(query, key, value)

    mapping = {torch.ops.aten._scaled_dot_product_flash_attention_for_cpu: cpu_sdpa}
    return FlopCounterMode(display=False, custom_mapping=mapping)


def count_flops(components, calls: Counter) -> dict[str, Any]:
    """FLOPs of the recorded calls, counted with ``FlopCounterMode`` on meta-device copies of the models."""
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from diffusers.models.attention_processor import AttnProcessor
    from torch.utils.flop_counter import FlopCounterMode

    with torch.device("meta"):
        unet = UNet2DConditionModel.from_config(components.unet.config)
        vae = AutoencoderKL.from_config(components.vae.config)
        text_encoder = type(components.text_encoder)(components.text_encoder.config)
        second = getattr(components, "text_encoder_2", None)
        text_encoder_2 = type(second)(second.config) if second is not None else None
    unet.set_attn_processor(AttnProcessor())  # explicit matmuls: counted on any device
    per_call, totals = [], Counter()
    for (name, shapes), n in sorted(calls.items()):
        meta = [torch.zeros(s, device="meta") for s in shapes]
        with FlopCounterMode(display=False) as counter:
            if name == "unet" and len(shapes) > 2:  # SDXL's added conditioning: pooled text and 6 time_ids
                added = {"text_embeds": meta[2], "time_ids": torch.zeros((shapes[2][0], 6), device="meta")}
                unet(meta[0], torch.zeros((), device="meta"), encoder_hidden_states=meta[1], added_cond_kwargs=added)
            elif name == "unet":
                unet(meta[0], torch.zeros((), device="meta"), encoder_hidden_states=meta[1])
            elif name == "vae_encoder":
                vae.encoder(meta[0])
            elif name == "vae_decoder":
                vae.decoder(meta[0])
            elif name == "text_encoder":
                text_encoder(torch.zeros(shapes[0], dtype=torch.long, device="meta"))
            elif name == "text_encoder_2":
                text_encoder_2(torch.zeros(shapes[0], dtype=torch.long, device="meta"), output_hidden_states=True)
        flops = counter.get_total_flops()
        per_call.append({"module": name, "shapes": [list(s) for s in shapes], "calls": n, "tflop_per_call": flops / 1e12})
        totals[name] += flops * n
    return {"per_call": per_call, "tflop": {k: v / 1e12 for k, v in totals.items()}, "total_tflop": sum(totals.values()) / 1e12}


def _modules_to_watch(components) -> dict[str, torch.nn.Module]:
    modules = {
        "unet": components.unet,
        "vae_encoder": components.vae.encoder,
        "vae_decoder": components.vae.decoder,
        "text_encoder": components.text_encoder,
    }
    if getattr(components, "text_encoder_2", None) is not None:
        modules["text_encoder_2"] = components.text_encoder_2
    return modules


def _peak_memory(device: torch.device) -> dict[str, Any]:
    if device.type == "cuda":
        return {"kind": "cuda_max_allocated", "bytes": int(torch.cuda.max_memory_allocated(device))}
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux reports KiB
    return {"kind": "process_max_rss (whole process lifetime, not this run alone)", "bytes": int(rss)}


class _Ticker:
    """Counts the benchmark's pipeline runs for a :data:`Progress` callback."""

    def __init__(self, total: int, progress: Progress | None) -> None:
        self.done, self.total, self.progress = 0, total, progress

    def __call__(self, label: str) -> None:
        self.done += 1
        if self.progress is not None:
            self.progress(min(self.done, self.total), self.total, label)


def time_sow(pipe, condition, args, config, batch: int, repeats: int, plan=None, tick: Callable[[str], None] | None = None, label: str = "sow") -> tuple[Timed, list]:
    """Warm-up then timed runs of ``pipe`` at ``num_images = batch``; returns the times and the last record.

    ``plan``: made once beforehand and passed to every run (its cost is reported on its own);
    ``tick(label)`` after each run (the progress bar)."""
    device = pipe.device
    records = []

    def once():
        _sync(device)
        start = time.perf_counter()
        result = pipe(condition, BENCH_PROMPT, seed=args.seed, config=config, num_images=batch, plan=plan)
        _sync(device)
        if tick is not None:
            tick(label)
        return time.perf_counter() - start, result.record

    for _ in range(args.warmup):
        once()
    seconds, stages = [], []
    for _ in range(repeats):
        elapsed, record = once()
        seconds.append(elapsed)
        stages.append({t.name: t.seconds for t in record.timings})
        records.append(record)
    return Timed(seconds, stages, batch), records


def time_interleaved(variants: list[dict], condition, args, config, plan, repeats: int, tick: Callable[[str], None] | None = None) -> list[tuple[Timed, list]]:
    """``args.warmup`` untimed rounds, then ``repeats`` rounds that run each variant once, in turn.

    Each variant is a dict with ``pipe``, ``settings`` (applied before each of its runs: the
    reference variants share one set of components) and ``batch``. Returns per variant the
    times and records, in order."""
    seconds: list[list[float]] = [[] for _ in variants]
    stages: list[list[dict[str, float]]] = [[] for _ in variants]
    records: list[list] = [[] for _ in variants]
    for round_ in range(args.warmup + repeats):
        for i, variant in enumerate(variants):
            pipe = variant["pipe"]
            if variant["settings"] is not None:
                pipe.optimize(variant["settings"])
            _sync(pipe.device)
            start = time.perf_counter()
            result = pipe(condition, BENCH_PROMPT, seed=args.seed, config=config, num_images=variant["batch"], plan=plan)
            _sync(pipe.device)
            if tick is not None:
                tick(variant["variant"])
            if round_ >= args.warmup:
                seconds[i].append(time.perf_counter() - start)
                stages[i].append({t.name: t.seconds for t in result.record.timings})
                records[i].append(result.record)
    return [(Timed(seconds[i], stages[i], v["batch"]), records[i]) for i, v in enumerate(variants)]


def time_ddim(components, args, steps: int, repeats: int, tick: Callable[[str], None] | None = None) -> Timed:
    """Plain text-to-image with the family's diffusers pipeline (StableDiffusionPipeline, or
    StableDiffusionXLPipeline for SDXL) and a DDIM scheduler, batch 1."""
    from diffusers import DDIMScheduler
    from transformers.utils import logging as hf_logging

    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()  # its import warns about image processors SD text-to-image never uses
    try:
        import diffusers.pipelines  # noqa: F401
    finally:
        hf_logging.set_verbosity(verbosity)

    sd = components.diffusers_pipeline(DDIMScheduler.from_config(components.scheduler.config))
    sd.set_progress_bar_config(disable=True)
    device = components.device

    def once() -> float:
        generator = torch.Generator(device=device).manual_seed(args.seed)
        _sync(device)
        start = time.perf_counter()
        sd(
            BENCH_PROMPT,
            height=args.size,
            width=args.size,
            num_inference_steps=steps,
            guidance_scale=7.5,
            negative_prompt="a bad quality and low-resolution image, extra fingers, deformed hands",
            generator=generator,
        )
        _sync(device)
        if tick is not None:
            tick(f"DDIM-{steps}")
        return time.perf_counter() - start

    for _ in range(args.warmup):
        once()
    return Timed([once() for _ in range(repeats)], [], 1)


# -- the benchmark -----------------------------------------------------------------------


def _config_overrides(args: BenchSettings, modulator: str) -> dict[str, Any]:
    overrides: dict[str, Any] = {
        "canvas": {"width": args.size, "height": args.size},
        "num_inference_steps": args.steps,
        "cycles": args.cycles,
        "stages": {"modulator": modulator},
    }
    if args.steps < 7:  # keep t1 < t2 <= S and t3 < t1 for short schedules
        t2 = max(2, args.steps * 7 // 10)
        t1 = max(1, min(t2 - 1, args.steps // 2))
        overrides.update(t1=t1, t2=t2, t3=[k for k in (4, 3) if k < t1] or [])
    if modulator != "none":
        overrides["modulation"] = {"use_gate": bool(args.gate)}
    return overrides


def _pick_modulator(requested: str, registry) -> str:
    if requested != "auto":
        registry.get("attention_modulator", requested)  # one-line error naming it when unknown
        return requested
    names = {e.name for e in registry.all_entries() if e.kind == "attention_modulator"}
    return "dam" if "dam" in names else "none"


def meta_components(spec: str):
    """The models named by ``spec`` (``tiny``, ``tiny-sdxl``, or a folder of configs or weights) on the meta
    device: shapes only. A ``text_encoder_2/`` config (SDXL) adds the second encoder."""
    from types import SimpleNamespace

    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    from sow.errors import ModelLoadError
    from sow.engine.models import tiny_configs, tiny_sdxl_configs

    second_cfg = None
    if spec in ("tiny", "tiny-sdxl"):
        configs = tiny_configs() if spec == "tiny" else tiny_sdxl_configs()
        unet_cfg, vae_cfg, text_cfg = configs["unet"], configs["vae"], CLIPTextConfig(**configs["text_encoder"])
        if "text_encoder_2" in configs:
            second_cfg = CLIPTextConfig(**configs["text_encoder_2"])
    else:
        folder = Path(spec).expanduser()
        if not (folder / "unet" / "config.json").is_file():
            raise ModelLoadError(f"--count-only needs 'tiny', 'tiny-sdxl' or a folder with unet/, vae/ and text_encoder/ configs; got {spec!r}")
        unet_cfg = UNet2DConditionModel.load_config(folder / "unet")
        vae_cfg = AutoencoderKL.load_config(folder / "vae")
        text_cfg = CLIPTextConfig.from_pretrained(folder / "text_encoder")
        if (folder / "text_encoder_2" / "config.json").is_file():
            second_cfg = CLIPTextConfig.from_pretrained(folder / "text_encoder_2")
    with torch.device("meta"):
        return SimpleNamespace(
            unet=UNet2DConditionModel.from_config(unet_cfg),
            vae=AutoencoderKL.from_config(vae_cfg),
            text_encoder=CLIPTextModel(text_cfg),
            text_encoder_2=CLIPTextModelWithProjection(second_cfg) if second_cfg is not None else None,
        )


@contextmanager
def shape_only(components):
    """Within: the UNet, the VAE's encoder and decoder and the text encoder return zeros of their output shapes.

    Forward pre-hooks (:class:`CallShapes`) still see every call; nothing is computed.
    """
    from diffusers.models.unets.unet_2d_condition import UNet2DConditionOutput

    vae = components.vae
    factor = 2 ** (len(vae.config.block_out_channels) - 1)
    latent = vae.config.latent_channels

    def unet(sample, timestep, encoder_hidden_states=None, **kwargs):
        return UNet2DConditionOutput(sample=torch.zeros_like(sample))

    def encoder(x, *args, **kwargs):
        return x.new_zeros(x.shape[0], 2 * latent, x.shape[2] // factor, x.shape[3] // factor)

    def decoder(z, *args, **kwargs):
        return z.new_zeros(z.shape[0], vae.config.out_channels, z.shape[2] * factor, z.shape[3] * factor)

    def text_encoder_of(module):
        """Zeros shaped like the encoder's output (last state, pooled or projected, every hidden state), in its order."""
        from transformers.modeling_outputs import BaseModelOutputWithPooling
        from transformers.models.clip.modeling_clip import CLIPTextModelOutput

        config = module.config
        hidden, layers = config.hidden_size, config.num_hidden_layers
        projected = "WithProjection" in type(module).__name__

        def forward(input_ids, *args, output_hidden_states=None, **kwargs):
            zeros = torch.zeros(*input_ids.shape, hidden)
            states = tuple(zeros for _ in range(layers + 1)) if output_hidden_states else None
            if projected:  # SDXL's second encoder: text_embeds first, as CLIPTextModelWithProjection returns
                embeds = torch.zeros(input_ids.shape[0], config.projection_dim)
                return CLIPTextModelOutput(text_embeds=embeds, last_hidden_state=zeros, hidden_states=states)
            return BaseModelOutputWithPooling(last_hidden_state=zeros, pooler_output=torch.zeros(input_ids.shape[0], hidden), hidden_states=states)

        return forward

    stand_ins = {components.unet: unet, vae.encoder: encoder, vae.decoder: decoder}
    for encoder_module in components.text_encoders:
        stand_ins[encoder_module] = text_encoder_of(encoder_module)
    for module, forward in stand_ins.items():
        module.forward = forward
    try:
        yield
    finally:
        for module in stand_ins:
            del module.forward  # the class's forward again


def cost_model(args: BenchSettings) -> CostReport:
    """FLOPs of one run of ``args.model``'s architecture at ``args``' settings, without running it.

    The call shapes come from one pass of the pipeline over the tiny model of the same
    structure (``tiny-sdxl`` for a target with two text encoders) whose UNet, VAE and text
    encoders are replaced by stand-ins that return zeros of the right shape
    (:func:`shape_only`): the schedule, the batches and the latent grid are the real ones,
    no model computes. The text and pooled widths are swapped for the target's. DAM's extra
    rows are not in it.
    """
    from sow.engine.models import load_components
    from sow.pipeline import SOWPipeline

    target = meta_components(args.model)
    tiny = load_components("tiny-sdxl" if target.text_encoder_2 is not None else "tiny", device="cpu")
    pipe = SOWPipeline(tiny, {"modulator": "none"})
    config = pipe.make_config(None, "normal", **_config_overrides(args, "none"))
    phases: Counter = Counter()
    shapes = CallShapes(_modules_to_watch(tiny))
    try:
        with shape_only(tiny):
            pipe(args.condition or SAMPLE_FACE, BENCH_PROMPT, seed=args.seed,
                 config=config, num_images=args.batch[0], callback=lambda info: phases.update([info["phase"]]))
    finally:
        shapes.remove()
    width = target.unet.config.cross_attention_dim
    calls: Counter = Counter()
    for (name, call_shapes), n in shapes.calls.items():
        if name == "unet":
            swapped = (call_shapes[0], (*call_shapes[1][:-1], width))
            if len(call_shapes) > 2:  # the pooled text of SDXL's added conditioning: the target's projection width
                swapped += ((call_shapes[2][0], target.text_encoder_2.config.projection_dim),)
            call_shapes = swapped
        calls[(name, call_shapes)] += n
    counted = count_flops(target, calls)
    return CostReport(**{
        "model": args.model,
        "batch": args.batch[0],
        "config": {"canvas": args.size, "steps": config.num_inference_steps, "cycles": config.cycles, "t1": config.t1, "t2": config.t2},
        "unet_calls_per_phase": dict(phases),
        "unet_evaluations": sum(phases.values()),
        **counted,
        "note": "standard models only (UNet, VAE, text encoder); DAM's extra work is counted by a timed run (flops.modulation_extra_tflop) and timed (report['dam'])",
    })


def render_cost_model(model: CostReport | dict[str, Any], console=None) -> None:
    from rich.console import Console
    from rich.table import Table

    model = model.as_dict() if isinstance(model, CostReport) else model
    console = console or Console()
    console.print(f"[bold]cost model[/] {model['model']} at {model['config']}, batch {model['batch']}")
    console.print(f"UNet calls per phase: {model['unet_calls_per_phase']}  (total {model['unet_evaluations']})")
    table = Table()
    for col in ("module", "input shapes", "calls", "TFLOP/call", "TFLOP"):
        table.add_column(col, justify="right")
    for call in model["per_call"]:
        shapes = " ".join("x".join(map(str, s)) for s in call["shapes"])
        table.add_row(call["module"], shapes, str(call["calls"]), f"{call['tflop_per_call']:.4g}", f"{call['tflop_per_call'] * call['calls']:.4g}")
    table.add_row("total", "", "", "", f"{model['total_tflop']:.4g}")
    console.print(table)


def run_bench(args: BenchSettings, progress: Progress | None = None) -> BenchReport:
    """Run the benchmark ``args`` describes; ``progress(done, total, label)`` after each pipeline run."""
    from sow.engine.models import load_components, resolve_device, resolve_dtype
    from sow.pipeline import SOWPipeline
    from sow.plugins import get_registry

    device = resolve_device(args.device)
    dtype = resolve_dtype(args.dtype, device)
    registry = get_registry()
    modulator = _pick_modulator(args.modulator, registry)
    condition = args.condition or SAMPLE_FACE
    if not Path(condition).is_file():
        raise InputError(f"condition {condition}: no such file")
    settings = performance_settings(args)
    baseline_repeats = args.baseline_repeats or args.repeats
    not_measured: list[str] = []
    tick = _Ticker(args.runs(), progress)

    # 1. The fast path, alone in memory (so peak memory is its own).
    load_start = time.perf_counter()
    components = load_components(args.model, device=device, dtype=dtype, random_weights=args.random_weights)
    load_seconds = time.perf_counter() - load_start
    pipe = SOWPipeline(components, {"modulator": modulator}, registry=registry)
    canvas_pixels = args.size * args.size
    pipe.optimize(settings.model_copy(update={"compile": False}), canvas_pixels)  # FLOPs are counted eagerly
    config = pipe.make_config(None, "normal", **_config_overrides(args, modulator))
    weights_bytes = sum(p.numel() * p.element_size() for m in (components.unet, components.vae, *components.text_encoders) for p in m.parameters())

    # The plan: made and timed on its own, then passed to every run below, so the planner's
    # cost (0.04 s for the heuristic, seconds for an MLLM) is neither hidden in nor repeated
    # across the timed runs.
    plan_seconds = []
    for _ in range(args.repeats):
        start = time.perf_counter()
        plan = pipe.plan(condition, BENCH_PROMPT, config, args.seed)
        plan_seconds.append(time.perf_counter() - start)

    # One counted run per batch size: every FLOP it does (DAM included), the call shapes, the UNet calls per phase.
    counted_runs, phases = {}, {}
    for batch in args.batch:
        phase_counts: Counter = Counter()
        shapes = CallShapes(_modules_to_watch(components))
        try:
            with flop_counter() as counter:
                pipe(condition, BENCH_PROMPT, seed=args.seed, config=config, num_images=batch, plan=plan,
                     callback=lambda info: phase_counts.update([info["phase"]]))
        finally:
            shapes.remove()
        tick(f"count FLOPs, batch {batch}")
        run_tflop = counter.get_total_flops() / 1e12
        standard = count_flops(components, shapes.calls)
        counted_runs[batch] = {
            "batch": batch,
            "run_tflop": run_tflop,
            "standard_models_tflop": standard["total_tflop"],
            "modulation_extra_tflop": max(0.0, run_tflop - standard["total_tflop"]),
            **standard,
        }
        phases = phases or dict(phase_counts)
    if settings.compile:
        pipe.optimize(settings, canvas_pixels)

    runs = []
    for batch in args.batch:
        counted = counted_runs[batch]
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        timed, records = time_sow(pipe, condition, args, config, batch, args.repeats, plan, tick=tick, label=f"fast path, batch {batch}")
        per_image = timed.per_image()
        flop_per_image = counted["run_tflop"] / batch
        runs.append(
            {
                "batch": batch,
                "seconds_per_image": per_image,
                "images_per_second": 1 / per_image["median"],
                "stages_seconds_per_image": timed.stage_medians(),
                "unet_evaluations": records[-1].unet_evaluations,
                "tflop_per_image": flop_per_image,
                "unet_tflop_per_image": counted["tflop"].get("unet", 0.0) / batch,
                "effective_tflops": flop_per_image / per_image["median"],
                "peak_memory": _peak_memory(device),
                "seconds_per_run": timed.seconds,
            }
        )
    flops = counted_runs[args.batch[0]]

    report: dict[str, Any] = {
        "sow_version": __version__,
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "device": _device_info(device),
        "model": components.source,
        "model_load_seconds": load_seconds,
        "weights_bytes": weights_bytes,
        "dtype": str(dtype).removeprefix("torch."),
        "settings": {**settings.model_dump(), "applied": pipe.applied_performance},
        "attention_processors": _attention_during_run(pipe),
        "config": {
            "canvas": args.size,
            "steps": config.num_inference_steps,
            "cycles": config.cycles,
            "t1": config.t1,
            "t2": config.t2,
            "guidance_scale": config.guidance_scale,
            "background_guidance": config.background_guidance,
            "modulator": modulator,
            "dam_gate": bool(args.gate) if modulator != "none" else None,
        },
        "warmup": args.warmup,
        "repeats": args.repeats,
        "unet_calls_per_phase": phases,
        "unet_evaluations": runs[0]["unet_evaluations"],
        "flops": flops,
        "plan": {
            "planner": config.stages.planner,
            "seconds": {"median": statistics.median(plan_seconds), "runs": plan_seconds},
            "note": "made once and passed to every timed run; the runs' 'plan' stage is then only the prompt checks",
        },
        "runs": runs,
        "baselines": {},
        "not_measured": not_measured,
    }
    if modulator == "none":
        not_measured.append("DAM: no 'dam' attention modulator is installed; ran plain COW (modulator 'none')")
    elif modulator == "dam":
        from sow.bench.dam_share import dam_unet_call

        report["dam"] = dam_unet_call(pipe, config, plan, args.batch[0], max(3, args.repeats))

    # 2. Plain DDIM text-to-image, same model and fast settings.
    fast_first = runs[0]["seconds_per_image"]["median"]
    if args.ddim_steps > 0 and settings.offload:
        not_measured.append("DDIM baseline: skipped under --offload (diffusers' pipeline does not see sow's offload hooks)")
    elif args.ddim_steps > 0:
        ddim = time_ddim(components, args, args.ddim_steps, baseline_repeats, tick=tick)
        report["baselines"]["ddim"] = {
            "steps": args.ddim_steps,
            "seconds_per_image": ddim.per_image(),
            "sow_over_ddim": fast_first / ddim.per_image()["median"],
            "note": f"ratio = SOW seconds per image (batch {args.batch[0]}) / DDIM-{args.ddim_steps} seconds per image",
        }

    # 3. The reference settings (fp32, re-encoding, math attention), then one switch at a time,
    #    and the fast path again: all interleaved round by round, so a busy machine (or a
    #    warming GPU) slows every variant alike and the ratios hold.
    if not args.no_reference:
        if settings.offload:
            components.unet.to("cpu")
        # fp32 on the CPU without compile or channels_last: the fast path's models are the reference's (no second load;
        # each variant applies its own settings before each of its runs)
        same = dtype == torch.float32 and device.type == "cpu" and not settings.compile and not settings.channels_last
        reference = components if same else load_components(args.model, device=device, dtype="fp32", random_weights=args.random_weights)
        variants = []
        for name, switches in REFERENCE_LADDER:
            ref_settings = PerformanceSettings(channels_last=False, nan_guard=False, cudnn_benchmark=False, **switches)
            ref_pipe = SOWPipeline(reference, {"modulator": modulator}, registry=registry)
            variants.append({"variant": name, "pipe": ref_pipe, "settings": ref_settings, "batch": 1, "switches": switches})
        if not settings.offload:
            for batch in args.batch:
                variants.append({"variant": f"fast path ({report['dtype']}), batch {batch}", "pipe": pipe,
                                 "settings": settings if same else None,  # shared models: re-apply the fast settings
                                 "batch": batch, "switches": {}})
        else:
            not_measured.append("fast path in the interleaved ladder: skipped under --offload (its own runs above)")
        timed = time_interleaved(variants, condition, args, config, plan, baseline_repeats, tick=tick)
        ladder = []
        for variant, (times, records) in zip(variants, timed):
            ladder.append(
                {
                    "variant": variant["variant"],
                    "dtype": "float32" if variant["switches"] else report["dtype"],
                    "batch": variant["batch"],
                    **variant["switches"],
                    "seconds_per_image": times.per_image(),
                    "stages_seconds_per_image": times.stage_medians(),
                    "unet_evaluations": records[-1].unet_evaluations,
                }
            )
        ref_median = ladder[0]["seconds_per_image"]["median"]
        for entry in ladder:
            entry["speedup_vs_reference"] = ref_median / entry["seconds_per_image"]["median"]
        for run, entry in zip(runs, ladder[len(REFERENCE_LADDER) :]):
            run["speedup_vs_reference"] = entry["speedup_vs_reference"]
        for run in runs:
            run.setdefault("speedup_vs_reference", ref_median / run["seconds_per_image"]["median"])
        report["baselines"]["reference"] = {
            "note": "fp32, prompts re-encoded at every UNet call, math attention; batch 1; same model, config and plan; "
            "every variant (the fast path too) measured in the same interleaved rounds",
            "ladder": ladder,
            "same_unet_evaluations": ladder[0]["unet_evaluations"] == runs[0]["unet_evaluations"],
        }
    if device.type != "cuda":
        not_measured.append(
            "GPU timings: this report ran on CPU; peak memory is the process's max RSS, not GPU memory"
        )
    return BenchReport(**report)


def _attention_during_run(pipe) -> dict[str, int]:
    from sow.engine.performance import attention_kinds

    return attention_kinds(pipe.components.unet)


def _device_info(device: torch.device) -> dict[str, Any]:
    info = {"type": device.type, "torch": torch.__version__, "python": platform.python_version()}
    if device.type == "cuda":
        info["name"] = torch.cuda.get_device_name(device)
        info["capability"] = ".".join(map(str, torch.cuda.get_device_capability(device)))
    else:
        info["name"] = platform.processor() or platform.machine()
        info["threads"] = torch.get_num_threads()
    return info


# -- rendering ---------------------------------------------------------------------------


def render(report: BenchReport | CostReport | dict[str, Any], console=None) -> None:
    """Print a report as tables (rich); a cost model goes to :func:`render_cost_model`."""
    from rich.console import Console
    from rich.table import Table

    if isinstance(report, CostReport):
        return render_cost_model(report, console)
    report = report.as_dict() if isinstance(report, BenchReport) else report
    console = console or Console()
    dev = report["device"]
    console.print(
        f"[bold]sow bench[/]  {report['model']}  on {dev['type']} ({dev.get('name', '')}), {report['dtype']}, "
        f"{report['config']['canvas']}px, S={report['config']['steps']}, N={report['config']['cycles']}, "
        f"modulator={report['config']['modulator']}"
    )
    console.print(f"UNet calls per phase: {report['unet_calls_per_phase']}  (total {report['unet_evaluations']})")
    table = Table(title="fast path: seconds per image")
    for col in ("batch", "median", "min", "max", "img/s", "TFLOP/img", "TFLOP/s", "peak MiB", "vs ref"):
        table.add_column(col, justify="right")
    stages = Table(title="fast path: seconds per image by stage (medians)")
    for col in ("batch", *STAGES):
        stages.add_column(col, justify="right")
    for run in report["runs"]:
        s, st = run["seconds_per_image"], run["stages_seconds_per_image"]
        speedup = run.get("speedup_vs_reference")
        table.add_row(
            str(run["batch"]),
            *(f"{s[k]:.3f}" for k in ("median", "min", "max")),
            f"{run['images_per_second']:.2f}",
            f"{run['tflop_per_image']:.3g}",
            f"{run['effective_tflops']:.3g}",
            f"{run['peak_memory']['bytes'] / 2**20:.0f}",
            f"{speedup:.2f}x" if speedup else "-",
        )
        stages.add_row(str(run["batch"]), *(f"{st.get(n, 0.0):.3f}" for n in STAGES))
    console.print(table)
    console.print(stages)
    plan = report.get("plan")
    if plan:
        console.print(f"plan ({plan['planner']}): {plan['seconds']['median']:.3f} s, made once and reused by every timed run")
    dam = report.get("dam")
    if dam:
        calls = dam["unet_call_seconds"]
        console.print(
            f"DAM (gate {dam['gate']}, {100 * dam['modulated_rows']:.0f}% of the full-resolution rows modulated): one cycle-phase "
            f"UNet call {calls['dam']:.3f} s vs {calls['none']:.3f} s without, {dam['ratio']:.3f}x "
            f"({100 * dam['dam_share_of_call']:.1f}% of the call; {dam['clock']})"
        )
    baselines = report["baselines"]
    if "ddim" in baselines:
        d = baselines["ddim"]
        console.print(
            f"DDIM-{d['steps']} text-to-image: {d['seconds_per_image']['median']:.3f} s/image; "
            f"one SOW image costs {d['sow_over_ddim']:.2f} DDIM images"
        )
    if "reference" in baselines:
        ladder = Table(title="from the reference settings to the fast path (batch 1 unless named)")
        for col in ("variant", "s/image", "speed-up"):
            ladder.add_column(col, justify="right")
        for entry in baselines["reference"]["ladder"]:
            ladder.add_row(entry["variant"], f"{entry['seconds_per_image']['median']:.3f}", f"{entry['speedup_vs_reference']:.2f}x")
        console.print(ladder)
    for line in report["not_measured"]:
        console.print(f"[yellow]not measured:[/] {line}")
