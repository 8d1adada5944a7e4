"""Time and peak memory of one cycle-phase UNet evaluation with and without DAM.

    python scripts/dam_cost.py --model tiny --canvas 512 --repeat 5
    python scripts/dam_cost.py --model ../shared/data/sd21-base-config --device cuda --dtype fp16

Variants: ``none`` (plain attention, COW), ``dam`` (the default gate; on a model with
random weights it stays closed, so this is the cost of computing R_c), ``dam-open``
(``use_gate=False``: every self-attention layer modulated). Each evaluation is the cycle
phase's batch of 4 (background guidance). Peak memory: ``torch.cuda.max_memory_allocated``
on a GPU; on the CPU, the running total of the allocations the torch profiler records.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from types import SimpleNamespace

import torch

from sow.engine.context import LatentRegion, Step
from sow.attention.dam import DynamicAttentionModulator
from sow.engine.models import load_components
from sow.planners.fixed import body_box
from sow.schemas import Box, GenerationConfig, Plan

VARIANTS = {"none": None, "dam": {}, "dam-open": {"use_gate": False}}


def bench_context(canvas: int, modulation: dict) -> SimpleNamespace:
    """What the modulator reads from a RunContext: a face box at the top centre, the body under it."""
    cfg = GenerationConfig.from_preset("normal", canvas={"width": canvas, "height": canvas}, modulation=modulation)
    side = cfg.side_limits()[1] // 8 * 8
    box_v = Box(x=(canvas - side) // 2 // 8 * 8, y=0, w=side, h=side)
    plan = Plan(canvas=cfg.canvas, box_v=box_v, box_r=body_box(box_v, cfg.canvas), prompt="a person")
    region = LatentRegion.from_box(box_v, cfg.canvas, 8, torch.ones(1, 1, side // 8, side // 8))
    return SimpleNamespace(config=cfg, plan=plan, region=region, step=Step("cycle", 7, 0), trace=[], artifacts={})


def cpu_peak_bytes(call) -> int:
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        call()
    running = peak = 0  # each op's own allocations (children excluded) and the loose frees, in time order
    for event in sorted(prof.events(), key=lambda e: e.time_range.start):
        running += event.cpu_memory_usage if event.name == "[memory]" else event.self_cpu_memory_usage
        peak = max(peak, running)
    return peak


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="tiny")
    parser.add_argument("--canvas", type=int, default=512)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="fp32")
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()

    comp = load_components(args.model, device=args.device, dtype=args.dtype, random_weights=True)
    unet, device, dtype = comp.unet, comp.device, comp.dtype
    latent = args.canvas // comp.vae_scale_factor
    torch.manual_seed(0)
    latents = torch.randn(4, unet.config.in_channels, latent, latent, device=device, dtype=dtype)
    text = torch.randn(4, 77, unet.config.cross_attention_dim, device=device, dtype=dtype)
    t = torch.tensor(500, device=device)

    def call():
        with torch.no_grad():
            unet(latents, t, encoder_hidden_states=text)
        if device.type == "cuda":
            torch.cuda.synchronize()

    def attached(name):
        modulation = VARIANTS[name]
        if modulation is None:
            return None
        modulator = DynamicAttentionModulator()
        modulator.attach(unet, bench_context(args.canvas, modulation))
        return modulator

    # Rounds interleave the variants so that a busy machine slows them alike.
    times: dict[str, list[float]] = {name: [] for name in VARIANTS}
    for round_ in range(args.repeat + 1):
        for name in VARIANTS:
            modulator = attached(name)
            try:
                start = time.perf_counter()
                call()
                if round_:  # round 0 warms up
                    times[name].append(time.perf_counter() - start)
            finally:
                if modulator is not None:
                    modulator.detach(unet)
    results = {}
    for name in VARIANTS:
        modulator = attached(name)
        try:
            if device.type == "cuda":
                torch.cuda.reset_peak_memory_stats()
                base = torch.cuda.memory_allocated()
                call()
                peak = torch.cuda.max_memory_allocated() - base
            else:
                peak = cpu_peak_bytes(call)
        finally:
            if modulator is not None:
                modulator.detach(unet)
        results[name] = {
            "ms_min": round(1000 * min(times[name]), 2),
            "ms_median": round(1000 * statistics.median(times[name]), 2),
            "peak_mib": round(peak / 2**20, 1),
        }
    base = results["none"]
    for name, row in results.items():
        row["time_overhead_pct_min"] = round(100 * (row["ms_min"] / base["ms_min"] - 1), 1)
        row["time_overhead_pct_median"] = round(100 * (row["ms_median"] / base["ms_median"] - 1), 1)
        row["peak_overhead_mib"] = round(row["peak_mib"] - base["peak_mib"], 1)
    print(json.dumps({"model": args.model, "canvas": args.canvas, "device": str(device), "dtype": args.dtype, "batch": 4, "results": results}, indent=1))


if __name__ == "__main__":
    main()
