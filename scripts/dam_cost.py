"""What DAM costs: per self-attention layer and per cycle-phase UNet call, DAM vs none, before vs after a change.

    python scripts/dam_cost.py --model ../shared/data/sd21-base-config --canvas 256 512 --repeat 3
    python scripts/dam_cost.py --model tiny --canvas 128 --repeat 3            # a quick look
    python scripts/dam_cost.py --model ../shared/data/sd21-base-config --device cuda --dtype bf16
    # before vs after, in one process: an earlier sow/attention package beside the current one
    mkdir -p /tmp/before && git archive OLD_COMMIT sow/attention | tar -x -C /tmp/before
    python scripts/dam_cost.py --model ../shared/data/sd21-base-config --canvas 512 --skip-layers \
        --baseline /tmp/before --unet-variants "none,forced before,forced" --repeat 4

Variants: ``none`` (plain attention, COW); ``gate`` (the default gate at the paper's tau: on
random weights it stays closed, so this is the cost of computing R_c); ``forced``
(``use_gate=False``: every self-attention layer modulated, the worst case). With ``--baseline
DIR``, ``gate before`` and ``forced before`` run the ``sow/attention`` package found under DIR
(loaded under a temporary name, beside the current :mod:`sow.attention`). Each UNet evaluation
is the cycle phase's batch of 4 (background guidance), one image, a face box at the top centre
with the body under it (the fraction of modulated rows is printed). The variants are
interleaved round by round, in reversed order every other round (round 0 warms up), so that a
busy machine slows them alike; the tables show each variant's median ratio to ``none`` of the
same round, with the lowest and highest ratio of the rounds, on process CPU time on the CPU
(wall time on a GPU).
"""

from __future__ import annotations

import argparse
import importlib
import json
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace

import torch
import torch.nn.functional as F

from sow.attention import dam
from sow.attention import equations as eq
from sow.engine.context import LatentRegion, Step
from sow.models.loading import load_components
from sow.planners.fixed import body_box
from sow.schemas import Box, GenerationConfig, Plan

BATCH = 4
BASELINE_PACKAGE = "dam_cost_baseline_attention"


def load_baseline(folder: Path):
    """The ``dam`` module of the ``sow/attention`` package under ``folder``, imported as its own package
    (its ``sow.attention`` imports renamed) so that it runs beside the current one."""
    source = folder / "sow" / "attention"
    if not (source / "dam.py").is_file():
        raise SystemExit(f"--baseline: no sow/attention/dam.py under {folder}")
    target = Path(tempfile.mkdtemp(prefix="dam-cost-")) / BASELINE_PACKAGE
    shutil.copytree(source, target)
    for path in target.glob("*.py"):
        path.write_text(path.read_text().replace("sow.attention", BASELINE_PACKAGE))
    sys.path.insert(0, str(target.parent))
    return importlib.import_module(f"{BASELINE_PACKAGE}.dam")


def variants(baseline) -> dict:
    """Name -> (the dam module, modulation overrides); ``none`` is plain attention."""
    out = {"none": None, "gate": (dam, {}), "forced": (dam, {"use_gate": False})}
    if baseline is not None:
        out |= {"gate before": (baseline, {}), "forced before": (baseline, {"use_gate": False})}
    return out


def bench_context(canvas: int, modulation: dict) -> SimpleNamespace:
    """What the modulator reads from a RunContext: a face box at the top centre, the body under it."""
    cfg = GenerationConfig.from_preset("normal", canvas={"width": canvas, "height": canvas}, modulation=modulation)
    side = cfg.side_limits()[1] // 8 * 8
    box_v = Box(x=(canvas - side) // 2 // 8 * 8, y=0, w=side, h=side)
    plan = Plan(canvas=cfg.canvas, box_v=box_v, box_r=body_box(box_v, cfg.canvas), prompt="a person")
    region = LatentRegion.from_box(box_v, cfg.canvas, 8, torch.ones(1, 1, side // 8, side // 8))
    return SimpleNamespace(config=cfg, plan=plan, region=region, step=Step("cycle", 7, 0), trace=[], artifacts={}, num_images=1)


def clock(device: torch.device) -> float:
    return time.perf_counter() if device.type != "cpu" else time.process_time()


def interleaved(calls: dict, repeat: int, device: torch.device, warmup: bool = True) -> dict[str, list[float]]:
    """Seconds of each call in each of ``repeat`` rounds; a round runs every call once, in turn,
    in reversed order every other round (so that no variant always runs first)."""
    times: dict[str, list[float]] = {name: [] for name in calls}
    names = list(calls)
    for round_ in range(0 if warmup else 1, repeat + 1):
        for name in names if round_ % 2 else names[::-1]:
            start = clock(device)
            calls[name]()
            if device.type == "cuda":
                torch.cuda.synchronize()
            if round_:  # round 0 warms up
                times[name].append(clock(device) - start)
    return times


def summary(times: dict[str, list[float]]) -> dict:
    """Per variant: the median seconds and its ratio to ``none`` of the same round (median, min, max)."""
    out = {}
    for name, values in times.items():
        ratios = [v / n for v, n in zip(values, times["none"])]
        out[name] = {"median_s": statistics.median(values), "seconds": values, "ratio": statistics.median(ratios),
                     "ratio_min": min(ratios), "ratio_max": max(ratios)}
    return out


def layer_rows(unet, canvas: int, repeat: int, device, dtype, chosen: dict) -> list[dict]:
    """One self-attention layer of each attended grid: SDPA vs DAM's attention (each variant)."""
    latent = canvas // 8
    grids = eq.layer_grids(latent, latent, len(unet.config.down_block_types))
    heads = unet.config.num_attention_heads or unet.config.attention_head_dim  # diffusers' naming: heads
    heads = heads if isinstance(heads, (list, tuple)) else [heads] * len(grids)
    channels = unet.config.block_out_channels
    rows = []
    for level, (block, (h, w)) in enumerate(zip(unet.config.down_block_types, grids)):
        if "CrossAttn" not in block:
            continue
        n_heads, dim = heads[level], channels[level] // heads[level]
        torch.manual_seed(level)
        q, k, v = (torch.randn(BATCH, n_heads, h * w, dim, device=device, dtype=dtype) for _ in range(3))
        calls = {"none": lambda: F.scaled_dot_product_attention(q, k, v)}
        for name, spec in chosen.items():
            if spec is None:
                continue
            state = spec[0].DAMState(bench_context(canvas, spec[1]), None, None, False)
            calls[name] = lambda state=state: state.attention("x.attn1.processor", q, k, v, (h, w))
        measured = summary(interleaved(calls, repeat, device))
        regions = dam.DAMState(bench_context(canvas, {})).regions(h, w, device)
        modulated = len(regions.modulated) / (h * w)
        rows.append({"grid": f"{h}x{w}", "heads": n_heads, "modulated_rows": round(modulated, 3), **measured})
    return rows


def unet_row(unet, canvas: int, repeat: int, device, dtype, variants: dict, names: list[str], warmup: bool) -> dict:
    latent = canvas // 8
    torch.manual_seed(0)
    latents = torch.randn(BATCH, unet.config.in_channels, latent, latent, device=device, dtype=dtype)
    text = torch.randn(BATCH, 77, unet.config.cross_attention_dim, device=device, dtype=dtype)
    t = torch.tensor(500, device=device)

    def call(spec):
        modulator = None
        if spec is not None:
            modulator = spec[0].DynamicAttentionModulator()
            modulator.attach(unet, bench_context(canvas, spec[1]))
        try:
            with torch.no_grad():
                unet(latents, t, encoder_hidden_states=text)
        finally:
            if modulator is not None:
                modulator.detach(unet)

    calls = {name: (lambda spec=variants[name]: call(spec)) for name in names}
    return summary(interleaved(calls, repeat, device, warmup))


def table(title: str, rows: list[dict], label: str, names: list[str]) -> str:
    """Markdown: ``none``'s median time, then each variant's median ratio to it [lowest, highest]."""
    lines = [f"### {title}", "", f"| {label} | " + " | ".join(names) + " |", "|---" * (len(names) + 1) + "|"]
    for row in rows:
        cells = [f"{1000 * row['none']['median_s']:.1f} ms"]
        cells += [f"{row[n]['ratio']:.3f}x [{row[n]['ratio_min']:.3f}, {row[n]['ratio_max']:.3f}]" for n in names[1:]]
        lines.append(f"| {row[label]} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="tiny")
    parser.add_argument("--canvas", type=int, nargs="+", default=[256, 512])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="fp32")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    parser.add_argument("--skip-unet", action="store_true", help="per-layer table only")
    parser.add_argument("--skip-layers", action="store_true", help="UNet-call table only")
    parser.add_argument("--baseline", type=Path, default=None,
                        help="a folder holding an earlier sow/attention package (e.g. from git archive): adds 'gate before' and 'forced before'")
    parser.add_argument("--unet-variants", default=None, help="comma-separated variants of the UNet-call table (none first; default: all)")
    parser.add_argument("--unet-warmup", choices=["first", "all", "none"], default="first",
                        help="an untimed UNet round at the first canvas only (default; warms the process), at every canvas, or never")
    parser.add_argument("--json", type=Path, default=None, help="also write the medians here")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    chosen = variants(load_baseline(args.baseline) if args.baseline else None)
    names = [v.strip() for v in args.unet_variants.split(",")] if args.unet_variants else list(chosen)
    if names[0] != "none" or any(v not in chosen for v in names):
        parser.error(f"--unet-variants: names from {list(chosen)}, 'none' first")
    comp = load_components(args.model, device=args.device, dtype=args.dtype, random_weights=True)
    unet, device, dtype = comp.unet, comp.device, comp.dtype
    report = {"model": args.model, "device": str(device), "dtype": args.dtype, "batch": BATCH, "threads": torch.get_num_threads(), "canvases": {}}
    clock_name = "process CPU time" if device.type == "cpu" else "wall time"
    print(f"model {args.model}, {device}, {args.dtype}, batch {BATCH}, {torch.get_num_threads()} threads; {args.repeat} interleaved rounds "
          f"({clock_name}); median ratio to none of the same round [lowest, highest]")
    for index, canvas in enumerate(args.canvas):
        entry = {}
        if not args.skip_layers:
            layers = layer_rows(unet, canvas, args.repeat, device, dtype, chosen)
            for row in layers:
                row["layer"] = f"{row['grid']}, {row['heads']} heads, {100 * row['modulated_rows']:.0f}% rows modulated"
            print()
            print(table(f"{canvas}x{canvas}: one self-attention layer (SDPA = none)", layers, "layer", list(chosen)))
            entry["layers"] = layers
        if not args.skip_unet:
            warm = args.unet_warmup == "all" or (args.unet_warmup == "first" and index == 0)
            call = {"call": f"UNet, cycle phase, batch {BATCH}", **unet_row(unet, canvas, args.repeat, device, dtype, chosen, names, warm)}
            print()
            print(table(f"{canvas}x{canvas}: one UNet call", [call], "call", names))
            entry["unet"] = call
        report["canvases"][str(canvas)] = entry
        sys.stdout.flush()
    if args.json:
        args.json.write_text(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
