"""``sow bench``: what one SOW image costs, per stage, against plain DDIM and against the reference settings.

The orchestration; its parts are modules of their own: the settings (:mod:`sow.bench.settings`),
the typed reports (:mod:`sow.bench.reports`), timing (:mod:`sow.bench.timing`), FLOP counting
(:mod:`sow.bench.flops`), the meta-device cost model (:mod:`sow.bench.cost_model`), DAM's share
of a UNet call (:mod:`sow.bench.dam_share`), and rendering (:mod:`sow.bench.render`, rich
tables; :mod:`sow.viz.bench_chart`, the PNG). Nothing here prints: ``sow bench`` (:mod:`sow.cli.bench`)
prints what :func:`run_bench` returns.

One run of the benchmark:

1. builds the model (``tiny``, a config folder with ``--random-weights``, or real weights)
   in the fast path's precision and applies :class:`sow.models.performance.PerformanceSettings`;
2. for each ``--batch`` size: ``--warmup`` untimed runs, then ``--repeats`` timed runs of
   ``num_images = batch``; reports median / min / max seconds per image, the per-stage
   times (plan, encode, inversion, cycles, final, decode), UNet evaluations per phase,
   peak memory, and effective TFLOP/s from FLOPs counted on the shapes the run used;
3. in the same process: plain DDIM text-to-image with the same model at ``--ddim-steps``
   (diffusers' ``StableDiffusionPipeline``), and the engine with every optimisation off
   (fp32, prompts re-encoded at every UNet call, math attention), then with caching and
   with SDPA turned back on one at a time, so each optimisation's gain shows.
"""

from __future__ import annotations

import statistics
import time
from collections import Counter
from pathlib import Path

import torch

from sow.bench.cost_model import SAMPLE_FACE
from sow.bench.flops import CallShapes, count_flops, flop_counter, modules_to_watch
from sow.bench.reports import (
    Baselines, BenchConfig, BenchReport, CountedRun, DamShare, DdimBaseline, LadderRung, PlanSeconds, PlanTiming,
    ReferenceBaseline, RunTiming,
)
from sow.bench.settings import BenchSettings
from sow.bench.timing import (
    BENCH_PROMPT, Progress, Ticker, device_info, peak_memory, time_ddim, time_interleaved, time_sow,
)
from sow.models.performance import PerformanceSettings
from sow.errors import InputError
from sow.version import __version__

REFERENCE_LADDER = (
    ("reference", {"attention": "math", "cache_text_embeddings": False}),
    ("+ cached text embeddings", {"attention": "math", "cache_text_embeddings": True}),
    ("+ sdpa attention", {"attention": "sdpa", "cache_text_embeddings": True}),
)
"""fp32 variants at batch 1, from the reference code's habits towards the fast path, one switch at a time."""


def performance_settings(args: BenchSettings) -> PerformanceSettings:
    """The fast path's performance settings from the benchmark's."""
    return PerformanceSettings(
        attention=args.attention,
        channels_last=args.channels_last,
        compile=args.compile,
        compile_mode=args.compile_mode,
        vae_slicing=args.vae_slicing,
        vae_tiling=args.vae_tiling,
        offload=args.offload,
    )




def run_bench(args: BenchSettings, progress: Progress | None = None) -> BenchReport:
    """Run the benchmark ``args`` describes; ``progress(done, total, label)`` after each pipeline run."""
    from sow.models.loading import load_components, resolve_device, resolve_dtype
    from sow.pipeline import SOWPipeline
    from sow.plugins import get_registry

    device = resolve_device(args.device)
    dtype = resolve_dtype(args.dtype, device)
    registry = get_registry()
    modulator = pick_modulator(args.modulator, registry)
    condition = args.condition or SAMPLE_FACE
    if not Path(condition).is_file():
        raise InputError(f"condition {condition}: no such file")
    settings = performance_settings(args)
    baseline_repeats = args.baseline_repeats or args.repeats
    tick = Ticker(args.runs(), progress)

    # 1. The fast path, alone in memory (so peak memory is its own).
    load_start = time.perf_counter()
    components = load_components(args.model, device=device, dtype=dtype, random_weights=args.random_weights)
    load_seconds = time.perf_counter() - load_start
    pipe = SOWPipeline(components, {"modulator": modulator}, registry=registry)
    canvas_pixels = args.size * args.size
    pipe.optimize(settings.model_copy(update={"compile": False}), canvas_pixels)  # FLOPs are counted eagerly
    config = pipe.make_config(None, "normal", **args.config_overrides(modulator))
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
        shapes = CallShapes(modules_to_watch(components))
        try:
            with flop_counter() as counter:
                pipe(condition, BENCH_PROMPT, seed=args.seed, config=config, num_images=batch, plan=plan,
                     callback=lambda info: phase_counts.update([info["phase"]]))
        finally:
            shapes.remove()
        tick(f"count FLOPs, batch {batch}")
        run_tflop = counter.get_total_flops() / 1e12
        standard = count_flops(components, shapes.calls)
        counted_runs[batch] = CountedRun(
            batch=batch, run_tflop=run_tflop, standard_models_tflop=standard.total_tflop,
            modulation_extra_tflop=max(0.0, run_tflop - standard.total_tflop), **dict(standard),
        )
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
        flop_per_image = counted.run_tflop / batch
        runs.append(RunTiming(
            batch=batch,
            seconds_per_image=per_image,
            images_per_second=1 / per_image.median,
            stages_seconds_per_image=timed.stage_medians(),
            unet_evaluations=records[-1].unet_evaluations,
            tflop_per_image=flop_per_image,
            unet_tflop_per_image=counted.tflop.get("unet", 0.0) / batch,
            effective_tflops=flop_per_image / per_image.median,
            peak_memory=peak_memory(device),
            seconds_per_run=timed.seconds,
        ))
    flops = counted_runs[args.batch[0]]

    dtype_name = str(dtype).removeprefix("torch.")
    report = BenchReport(
        sow_version=__version__,
        created=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        device=device_info(device),
        model=components.source,
        model_load_seconds=load_seconds,
        weights_bytes=weights_bytes,
        dtype=dtype_name,
        settings={**settings.model_dump(), "applied": pipe.applied_performance},
        attention_processors=attention_during_run(pipe),
        config=BenchConfig(
            canvas=args.size, steps=config.num_inference_steps, cycles=config.cycles, t1=config.t1, t2=config.t2,
            guidance_scale=config.guidance_scale, background_guidance=config.background_guidance, modulator=modulator,
            dam_gate=bool(args.gate) if modulator != "none" else None,
        ),
        warmup=args.warmup,
        repeats=args.repeats,
        unet_calls_per_phase=phases,
        unet_evaluations=runs[0].unet_evaluations,
        flops=flops,
        plan=PlanTiming(
            planner=config.stages.planner,
            seconds=PlanSeconds(median=statistics.median(plan_seconds), runs=plan_seconds),
            note="made once and passed to every timed run; the runs' 'plan' stage is then only the prompt checks",
        ),
        runs=runs,
    )
    not_measured = report.not_measured
    if modulator == "none":
        not_measured.append("DAM: no 'dam' attention modulator is installed; ran plain COW (modulator 'none')")
    elif modulator == "dam":
        from sow.bench.dam_share import dam_unet_call

        report.dam = DamShare(**dam_unet_call(pipe, config, plan, args.batch[0], max(3, args.repeats)))

    # 2. Plain DDIM text-to-image, same model and fast settings.
    fast_first = runs[0].seconds_per_image.median
    if args.ddim_steps > 0 and settings.offload:
        not_measured.append("DDIM baseline: skipped under --offload (diffusers' pipeline does not see sow's offload hooks)")
    elif args.ddim_steps > 0:
        ddim = time_ddim(components, args, args.ddim_steps, baseline_repeats, tick=tick)
        report.baselines.ddim = DdimBaseline(
            steps=args.ddim_steps,
            seconds_per_image=ddim.per_image(),
            sow_over_ddim=fast_first / ddim.per_image().median,
            note=f"ratio = SOW seconds per image (batch {args.batch[0]}) / DDIM-{args.ddim_steps} seconds per image",
        )

    # 3. The reference settings (fp32, re-encoding, math attention), then one switch at a time,
    #    and the fast path again: all interleaved round by round, so a busy machine (or a
    #    warming GPU) slows every variant alike and the ratios hold.
    if not args.no_reference:
        report.baselines.reference = reference_ladder(args, components, pipe, settings, dtype, device, modulator,
                                                      registry, condition, config, plan, baseline_repeats, tick, report)
    if device.type != "cuda":
        not_measured.append(
            "GPU timings: this report ran on CPU; peak memory is the process's max RSS, not GPU memory"
        )
    return report


def reference_ladder(args, components, pipe, settings, dtype, device, modulator, registry, condition, config, plan,
                     repeats: int, tick, report: BenchReport) -> ReferenceBaseline:
    """The reference settings and the fast path, interleaved round by round; sets each run's speed-up too."""
    from sow.models.loading import load_components
    from sow.pipeline import SOWPipeline

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
            variants.append({"variant": f"fast path ({report.dtype}), batch {batch}", "pipe": pipe,
                             "settings": settings if same else None,  # shared models: re-apply the fast settings
                             "batch": batch, "switches": {}})
    else:
        report.not_measured.append("fast path in the interleaved ladder: skipped under --offload (its own runs above)")
    timed = time_interleaved(variants, condition, args, config, plan, repeats, tick=tick)
    ladder = [
        LadderRung(
            variant=variant["variant"], dtype="float32" if variant["switches"] else report.dtype, batch=variant["batch"],
            **variant["switches"], seconds_per_image=times.per_image(), stages_seconds_per_image=times.stage_medians(),
            unet_evaluations=records[-1].unet_evaluations,
        )
        for variant, (times, records) in zip(variants, timed)
    ]
    ref_median = ladder[0].seconds_per_image.median
    for rung in ladder:
        rung.speedup_vs_reference = ref_median / rung.seconds_per_image.median
    for run, rung in zip(report.runs, ladder[len(REFERENCE_LADDER):]):
        run.speedup_vs_reference = rung.speedup_vs_reference
    for run in report.runs:
        if run.speedup_vs_reference is None:
            run.speedup_vs_reference = ref_median / run.seconds_per_image.median
    return ReferenceBaseline(
        note="fp32, prompts re-encoded at every UNet call, math attention; batch 1; same model, config and plan; "
        "every variant (the fast path too) measured in the same interleaved rounds",
        ladder=ladder,
        same_unet_evaluations=ladder[0].unet_evaluations == report.runs[0].unet_evaluations,
    )


def pick_modulator(requested: str, registry) -> str:
    """``auto``: ``dam`` when installed, else ``none``; a name: checked against the registry (one-line error)."""
    if requested != "auto":
        registry.get("modulator", requested)
        return requested
    names = {e.name for e in registry.all_entries() if e.kind == "modulator"}
    return "dam" if "dam" in names else "none"


def attention_during_run(pipe) -> dict[str, int]:
    from sow.models.performance import attention_kinds

    return attention_kinds(pipe.components.unet)
