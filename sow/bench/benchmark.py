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

STAGES = ("plan", "encode", "inversion", "cycles", "final", "decode")
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
            shapes = tuple(tuple(t.shape) for t in tensors[:1])
            if context is not None:
                shapes += (tuple(context.shape),)
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
    unet.set_attn_processor(AttnProcessor())  # explicit matmuls: counted on any device
    per_call, totals = [], Counter()
    for (name, shapes), n in sorted(calls.items()):
        meta = [torch.zeros(s, device="meta") for s in shapes]
        with FlopCounterMode(display=False) as counter:
            if name == "unet":
                unet(meta[0], torch.zeros((), device="meta"), encoder_hidden_states=meta[1])
            elif name == "vae_encoder":
                vae.encoder(meta[0])
            elif name == "vae_decoder":
                vae.decoder(meta[0])
            elif name == "text_encoder":
                text_encoder(torch.zeros(shapes[0], dtype=torch.long, device="meta"))
        flops = counter.get_total_flops()
        per_call.append({"module": name, "shapes": [list(s) for s in shapes], "calls": n, "tflop_per_call": flops / 1e12})
        totals[name] += flops * n
    return {"per_call": per_call, "tflop": {k: v / 1e12 for k, v in totals.items()}, "total_tflop": sum(totals.values()) / 1e12}


def _modules_to_watch(components) -> dict[str, torch.nn.Module]:
    return {
        "unet": components.unet,
        "vae_encoder": components.vae.encoder,
        "vae_decoder": components.vae.decoder,
        "text_encoder": components.text_encoder,
    }


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


def time_sow(pipe, condition, args, config, batch: int, repeats: int, watch=None, tick: Callable[[str], None] | None = None, label: str = "sow") -> tuple[Timed, list]:
    """Warm-up then timed runs of ``pipe`` at ``num_images = batch``; returns the times and the last record."""
    device = pipe.device
    records = []

    def once():
        _sync(device)
        start = time.perf_counter()
        result = pipe(condition, BENCH_PROMPT, seed=args.seed, config=config, num_images=batch)
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


def time_ddim(components, args, steps: int, repeats: int, tick: Callable[[str], None] | None = None) -> Timed:
    """Plain text-to-image with diffusers' StableDiffusionPipeline and a DDIM scheduler, batch 1."""
    from diffusers import DDIMScheduler
    from transformers.utils import logging as hf_logging

    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()  # its import warns about image processors SD text-to-image never uses
    try:
        from diffusers import StableDiffusionPipeline
    finally:
        hf_logging.set_verbosity(verbosity)

    sd = StableDiffusionPipeline(
        vae=components.vae,
        text_encoder=components.text_encoder,
        tokenizer=components.tokenizer,
        unet=components.unet,
        scheduler=DDIMScheduler.from_config(components.scheduler.config),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
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
    """The models named by ``spec`` (``tiny``, or a folder of configs or weights) on the meta device: shapes only."""
    from types import SimpleNamespace

    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    from sow.errors import ModelLoadError
    from sow.engine.models import tiny_configs

    if spec == "tiny":
        configs = tiny_configs()
        unet_cfg, vae_cfg, text_cfg = configs["unet"], configs["vae"], CLIPTextConfig(**configs["text_encoder"])
    else:
        folder = Path(spec).expanduser()
        if not (folder / "unet" / "config.json").is_file():
            raise ModelLoadError(f"--count-only needs 'tiny' or a folder with unet/, vae/ and text_encoder/ configs; got {spec!r}")
        unet_cfg = UNet2DConditionModel.load_config(folder / "unet")
        vae_cfg = AutoencoderKL.load_config(folder / "vae")
        text_cfg = CLIPTextConfig.from_pretrained(folder / "text_encoder")
    with torch.device("meta"):
        return SimpleNamespace(
            unet=UNet2DConditionModel.from_config(unet_cfg),
            vae=AutoencoderKL.from_config(vae_cfg),
            text_encoder=CLIPTextModel(text_cfg),
        )


@contextmanager
def shape_only(components):
    """Within: the UNet, the VAE's encoder and decoder and the text encoder return zeros of their output shapes.

    Forward pre-hooks (:class:`CallShapes`) still see every call; nothing is computed.
    """
    from diffusers.models.unets.unet_2d_condition import UNet2DConditionOutput

    vae = components.vae
    factor = 2 ** (len(vae.config.block_out_channels) - 1)
    latent, width = vae.config.latent_channels, components.text_encoder.config.hidden_size

    def unet(sample, timestep, encoder_hidden_states=None, **kwargs):
        return UNet2DConditionOutput(sample=torch.zeros_like(sample))

    def encoder(x, *args, **kwargs):
        return x.new_zeros(x.shape[0], 2 * latent, x.shape[2] // factor, x.shape[3] // factor)

    def decoder(z, *args, **kwargs):
        return z.new_zeros(z.shape[0], vae.config.out_channels, z.shape[2] * factor, z.shape[3] * factor)

    def text_encoder(input_ids, *args, **kwargs):
        return (torch.zeros(*input_ids.shape, width),)

    stand_ins = {components.unet: unet, vae.encoder: encoder, vae.decoder: decoder, components.text_encoder: text_encoder}
    for module, forward in stand_ins.items():
        module.forward = forward
    try:
        yield
    finally:
        for module in stand_ins:
            del module.forward  # the class's forward again


def cost_model(args: BenchSettings) -> CostReport:
    """FLOPs of one run of ``args.model``'s architecture at ``args``' settings, without running it.

    The call shapes come from one pass of the pipeline over the tiny model whose UNet, VAE
    and text encoder are replaced by stand-ins that return zeros of the right shape
    (:func:`shape_only`): the schedule, the batches and the latent grid are the real ones,
    no model computes. The text width is swapped for the target's. DAM's extra rows are
    not in it.
    """
    from sow.engine.models import load_components
    from sow.pipeline import SOWPipeline

    target = meta_components(args.model)
    tiny = load_components("tiny", device="cpu")
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
            call_shapes = (call_shapes[0], (*call_shapes[1][:-1], width))
        calls[(name, call_shapes)] += n
    counted = count_flops(target, calls)
    return CostReport(**{
        "model": args.model,
        "batch": args.batch[0],
        "config": {"canvas": args.size, "steps": config.num_inference_steps, "cycles": config.cycles, "t1": config.t1, "t2": config.t2},
        "unet_calls_per_phase": dict(phases),
        "unet_evaluations": sum(phases.values()),
        **counted,
        "note": "standard models only (UNet, VAE, text encoder); DAM's explicit rows are counted by a timed run",
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
    weights_bytes = sum(p.numel() * p.element_size() for m in (components.unet, components.vae, components.text_encoder) for p in m.parameters())

    # One counted run per batch size: every FLOP it does (DAM included), the call shapes, the UNet calls per phase.
    counted_runs, phases = {}, {}
    for batch in args.batch:
        phase_counts: Counter = Counter()
        shapes = CallShapes(_modules_to_watch(components))
        try:
            with flop_counter() as counter:
                pipe(condition, BENCH_PROMPT, seed=args.seed, config=config, num_images=batch,
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
        timed, records = time_sow(pipe, condition, args, config, batch, args.repeats, tick=tick, label=f"fast path, batch {batch}")
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
        "runs": runs,
        "baselines": {},
        "not_measured": not_measured,
    }
    if modulator == "none":
        not_measured.append("DAM: no 'dam' attention modulator is installed; ran plain COW (modulator 'none')")

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

    # 3. The reference settings (fp32, re-encoding, math attention), then one switch at a time.
    if not args.no_reference:
        del pipe
        if settings.offload:
            components.unet.to("cpu")
        # fp32 on the CPU without compile or channels_last: the fast path's models are the reference's (no second load)
        same = dtype == torch.float32 and device.type == "cpu" and not settings.compile and not settings.channels_last
        reference = components if same else load_components(args.model, device=device, dtype="fp32", random_weights=args.random_weights)
        ladder = []
        for name, switches in REFERENCE_LADDER:
            ref_settings = PerformanceSettings(channels_last=False, nan_guard=False, cudnn_benchmark=False, **switches)
            ref_pipe = SOWPipeline(reference, {"modulator": modulator}, registry=registry).optimize(ref_settings)
            timed, records = time_sow(ref_pipe, condition, args, config, 1, baseline_repeats, tick=tick, label=name)
            ladder.append(
                {
                    "variant": name,
                    "dtype": "float32",
                    **switches,
                    "seconds_per_image": timed.per_image(),
                    "stages_seconds_per_image": timed.stage_medians(),
                    "unet_evaluations": records[-1].unet_evaluations,
                }
            )
        ref_median = ladder[0]["seconds_per_image"]["median"]
        for entry in ladder:
            entry["speedup_vs_reference"] = ref_median / entry["seconds_per_image"]["median"]
        for run in runs:
            run["speedup_vs_reference"] = ref_median / run["seconds_per_image"]["median"]
            ladder.append(
                {
                    "variant": f"fast path ({report['dtype']}), batch {run['batch']}",
                    "seconds_per_image": run["seconds_per_image"],
                    "stages_seconds_per_image": run["stages_seconds_per_image"],
                    "speedup_vs_reference": run["speedup_vs_reference"],
                }
            )
        report["baselines"]["reference"] = {
            "note": "fp32, prompts re-encoded at every UNet call, math attention; batch 1; same model and config",
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
