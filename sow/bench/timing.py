"""Timing pipeline runs for ``sow bench``: warm-up, timed repeats, interleaved variants, the DDIM baseline.

Every timer synchronises the device around a run, so GPU work is inside the measured span;
``tick(label)`` after each run drives a progress bar. Nothing here prints.
"""

from __future__ import annotations

import platform
import resource
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from sow.bench.reports import DeviceInfo, PeakMemory, Spread

Progress = Callable[[int, int, str], None]
"""``progress(done, total, label)``: called after each pipeline run of the benchmark."""

STAGES = ("plan", "encode", "inversion", "cycles", "final", "decode", "paste")
"""The stages of a run, in order, as :class:`sow.schemas.RunRecord` times them."""

BENCH_PROMPT = "a chef in a busy kitchen"
"""The prompt of every benchmark run."""


@dataclass
class Timed:
    """Seconds of the timed runs of one variant, and the stage times of each run."""

    seconds: list[float]
    stages: list[dict[str, float]]
    images_per_run: int

    def per_image(self) -> Spread:
        values = [s / self.images_per_run for s in self.seconds]
        return Spread(median=statistics.median(values), min=min(values), max=max(values))

    def stage_medians(self) -> dict[str, float]:
        names = [n for n in STAGES if any(n in s for s in self.stages)]
        names += sorted({n for s in self.stages for n in s} - set(names))
        return {n: statistics.median(s.get(n, 0.0) for s in self.stages) / self.images_per_run for n in names}


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def peak_memory(device: torch.device) -> PeakMemory:
    if device.type == "cuda":
        return PeakMemory(kind="cuda_max_allocated", bytes=int(torch.cuda.max_memory_allocated(device)))
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux reports KiB
    return PeakMemory(kind="process_max_rss (whole process lifetime, not this run alone)", bytes=int(rss))


class Ticker:
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
        sync(device)
        start = time.perf_counter()
        result = pipe(condition, BENCH_PROMPT, seed=args.seed, config=config, num_images=batch, plan=plan)
        sync(device)
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
            sync(pipe.device)
            start = time.perf_counter()
            result = pipe(condition, BENCH_PROMPT, seed=args.seed, config=config, num_images=variant["batch"], plan=plan)
            sync(pipe.device)
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
        sync(device)
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
        sync(device)
        if tick is not None:
            tick(f"DDIM-{steps}")
        return time.perf_counter() - start

    for _ in range(args.warmup):
        once()
    return Timed([once() for _ in range(repeats)], [], 1)


def _attention_during_run(pipe) -> dict[str, int]:
    from sow.models.performance import attention_kinds

    return attention_kinds(pipe.components.unet)


def device_info(device: torch.device) -> DeviceInfo:
    info = {"type": device.type, "torch": torch.__version__, "python": platform.python_version()}
    if device.type == "cuda":
        info["name"] = torch.cuda.get_device_name(device)
        info["capability"] = ".".join(map(str, torch.cuda.get_device_capability(device)))
    else:
        info["name"] = platform.processor() or platform.machine()
        info["threads"] = torch.get_num_threads()
    return DeviceInfo(**info)


