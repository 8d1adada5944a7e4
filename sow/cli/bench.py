"""The ``sow bench`` command (registered on the app in :mod:`sow.cli.commands`): options -> :class:`BenchSettings`."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated, Optional

import typer

from sow.cli.choices import DEVICE_METAVAR, Attention, CompileMode, Dtype, value
from sow.errors import InputError

TABLE_WIDTH = 160
"""Width of the tables when stdout is not a terminal (rich would cut them to 80 columns)."""


def _sizes(text: str) -> list[int]:
    try:
        return [int(part) for part in text.replace(" ", ",").split(",") if part.strip()]
    except ValueError:
        raise InputError(f"--batch {text!r}: expected sizes separated by commas, e.g. 1,8") from None


def given(ctx: typer.Context, name: str) -> bool:
    """Whether option ``name`` was given (command line or environment), not left at its default.

    Compared by the source's name: Typer vendors its own click, whose ``ParameterSource`` is not
    ``click.core.ParameterSource`` (an identity comparison with that one is never equal, which made
    ``--smoke`` a no-op).
    """
    source = ctx.get_parameter_source(name)
    return source is not None and source.name not in ("DEFAULT", "DEFAULT_MAP")


def bench_command(
    ctx: typer.Context,
    model: Annotated[str, typer.Option("--model", "-m", help="'tiny', a diffusers folder, a config folder (with --random-weights), a .safetensors file or a hub id.")] = "tiny",
    random_weights: Annotated[bool, typer.Option("--random-weights", help="Build a folder of configs (e.g. SD 2.1-base's) with random weights.")] = False,
    device: Annotated[str, typer.Option(metavar=DEVICE_METAVAR, help="auto: a CUDA GPU when there is one, else the CPU.")] = "auto",
    dtype: Annotated[Dtype, typer.Option(help="Fast-path precision (auto: bf16 on GPUs that have it, fp32 on CPU).")] = Dtype.auto,
    batch: Annotated[str, typer.Option(metavar="<N[,N...]>", help="Images per run (batched through each UNet call); several sizes separated by commas.")] = "1",
    warmup: Annotated[int, typer.Option(help="Untimed runs before timing (per batch size and variant).")] = 1,
    repeats: Annotated[int, typer.Option(help="Timed runs per batch size.")] = 3,
    baseline_repeats: Annotated[Optional[int], typer.Option(show_default="--repeats", help="Timed runs of each baseline.")] = None,
    size: Annotated[int, typer.Option(help="Canvas side in pixels (square, a multiple of 8).")] = 512,
    steps: Annotated[int, typer.Option(help="DDIM levels S (the paper: 10).")] = 10,
    cycles: Annotated[int, typer.Option(help="Cycles N (the paper: 10).")] = 10,
    seed: Annotated[int, typer.Option(help="The seed of every run.")] = 0,
    modulator: Annotated[str, typer.Option(metavar="<name>", help="Attention modulator: auto (dam if installed, else none), or a name (see `sow plugins`).")] = "auto",
    gate: Annotated[bool, typer.Option("--gate/--no-gate", help="Keep DAM's gate (default: forced open, so DAM's cost is always paid).")] = False,
    attention: Annotated[Attention, typer.Option(help="Attention kernel of unmodulated layers.")] = Attention.sdpa,
    channels_last: Annotated[Optional[bool], typer.Option("--channels-last/--no-channels-last", show_default="on for CUDA", help="channels_last memory layout.")] = None,
    compile: Annotated[bool, typer.Option("--compile", help="torch.compile the UNet's resnet and feed-forward blocks.")] = False,
    compile_mode: Annotated[CompileMode, typer.Option(help="torch.compile mode.")] = CompileMode.default,
    vae_slicing: Annotated[bool, typer.Option("--vae-slicing", help="Decode batched images one at a time.")] = False,
    vae_tiling: Annotated[Optional[bool], typer.Option("--vae-tiling/--no-vae-tiling", show_default="on from 1024x1024", help="Tiled VAE.")] = None,
    offload: Annotated[bool, typer.Option("--offload", help="Model CPU offload (small GPUs): one model on the GPU at a time.")] = False,
    ddim_steps: Annotated[int, typer.Option(help="Steps of the plain DDIM text-to-image baseline (0: skip it).")] = 50,
    no_reference: Annotated[bool, typer.Option("--no-reference", help="Skip the fp32 reference-settings runs.")] = False,
    condition: Annotated[Optional[Path], typer.Option(show_default="the bundled sample face", help="Condition image.")] = None,
    smoke: Annotated[bool, typer.Option("--smoke", help="A CPU smoke run in seconds: 64 px, S=4, N=1, no warm-up, 1 repeat, DDIM-2 (options given explicitly win).")] = False,
    json_path: Annotated[Optional[Path], typer.Option("--json", help="Write the report as JSON here.")] = None,
    plot: Annotated[Optional[Path], typer.Option(help="Draw the per-stage bar chart here (PNG).")] = None,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace an existing --json or --plot file (refused by default).")] = False,
    count_only: Annotated[bool, typer.Option("--count-only", help="Only the cost model: FLOPs per run of --model's architecture (configs suffice), from the call shapes of a stand-in run that computes nothing; no timing.")] = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress and no table on stdout.")] = False,
) -> None:
    """Time generation per stage against plain DDIM and the reference settings (or --count-only: FLOPs alone)."""
    from rich.console import Console

    from sow.bench import BenchSettings, cost_model, run_bench
    from sow.bench.render import renderables
    from sow.cli.progress import counted_progress
    from sow.safety.security import redacting_console
    from sow.io.outputs import check_free, save_json_atomic

    from sow.bench.settings import SMOKE

    options = {
        "model": model, "random_weights": random_weights, "device": device, "dtype": value(dtype),
        "batch": _sizes(batch), "warmup": warmup, "repeats": repeats, "baseline_repeats": baseline_repeats,
        "size": size, "steps": steps, "cycles": cycles, "seed": seed, "modulator": modulator, "gate": gate,
        "attention": value(attention), "channels_last": channels_last, "compile": compile,
        "compile_mode": value(compile_mode), "vae_slicing": vae_slicing, "vae_tiling": vae_tiling,
        "offload": offload, "ddim_steps": ddim_steps, "no_reference": no_reference, "condition": condition,
        "smoke": smoke,
    }  # fmt: skip
    if smoke:  # --smoke's values, except where an option was given
        options = {k: v for k, v in options.items() if k not in SMOKE or given(ctx, k)}
    settings = BenchSettings(**options)
    check_free([json_path, plot], overwrite, "choose another --json/--plot path")  # before the long run
    err = redacting_console(stderr=True)
    console = Console(width=None if sys.stdout.isatty() else TABLE_WIDTH)
    if count_only:
        report = cost_model(settings)
    else:
        with counted_progress("loading the model", total=settings.runs(), console=err, disable=quiet, transient=True) as progress:
            report = run_bench(settings, progress=progress)
    if not quiet:
        for item in renderables(report):
            console.print(item)
    if json_path is not None:
        save_json_atomic(report.as_dict(), json_path)
    if plot is not None and not count_only:
        from sow.viz.bench_chart import draw_stage_chart

        draw_stage_chart(report, plot)
