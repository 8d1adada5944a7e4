"""``sow bench`` reports as rich renderables (tables and lines), for the CLI to print.

:func:`renderables` turns a :class:`~sow.bench.reports.BenchReport` or a
:class:`~sow.bench.reports.CostReport` into a list of rich objects; nothing here prints
(``sow bench`` prints them: :mod:`sow.cli.bench`).
"""

from __future__ import annotations

from typing import Any

from rich.table import Table
from rich.text import Text

from sow.bench.reports import BenchReport, CostReport
from sow.bench.timing import STAGES


def renderables(report: BenchReport | CostReport) -> list[Any]:
    """What to print for ``report``, in order."""
    if isinstance(report, CostReport):
        return cost_model_renderables(report)
    return bench_renderables(report)


def cost_model_renderables(model: CostReport) -> list[Any]:
    """The cost model: the UNet calls per phase and a table of FLOPs per module and input shape."""
    out: list[Any] = [
        Text.from_markup(f"[bold]cost model[/] {model.model} at {model.config.model_dump()}, batch {model.batch}"),
        Text(f"UNet calls per phase: {model.unet_calls_per_phase}  (total {model.unet_evaluations})"),
    ]
    table = Table()
    for col in ("module", "input shapes", "calls", "TFLOP/call", "TFLOP"):
        table.add_column(col, justify="right")
    for call in model.per_call:
        shapes = " ".join("x".join(map(str, s)) for s in call.shapes)
        table.add_row(call.module, shapes, str(call.calls), f"{call.tflop_per_call:.4g}", f"{call.tflop_per_call * call.calls:.4g}")
    table.add_row("total", "", "", "", f"{model.total_tflop:.4g}")
    return [*out, table]


def bench_renderables(report: BenchReport) -> list[Any]:
    """A timed report: the fast path per batch size, per stage, the plan, DAM, the baselines, what was not measured."""
    dev, config = report.device, report.config
    out: list[Any] = [
        Text.from_markup(
            f"[bold]sow bench[/]  {report.model}  on {dev.type} ({dev.name}), {report.dtype}, "
            f"{config.canvas}px, S={config.steps}, N={config.cycles}, modulator={config.modulator}"
        ),
        Text(f"UNet calls per phase: {report.unet_calls_per_phase}  (total {report.unet_evaluations})"),
    ]
    table = Table(title="fast path: seconds per image")
    for col in ("batch", "median", "min", "max", "img/s", "TFLOP/img", "TFLOP/s", "peak MiB", "vs ref"):
        table.add_column(col, justify="right")
    stages = Table(title="fast path: seconds per image by stage (medians)")
    for col in ("batch", *STAGES):
        stages.add_column(col, justify="right")
    for run in report.runs:
        s, st, speedup = run.seconds_per_image, run.stages_seconds_per_image, run.speedup_vs_reference
        table.add_row(
            str(run.batch), f"{s.median:.3f}", f"{s.min:.3f}", f"{s.max:.3f}", f"{run.images_per_second:.2f}",
            f"{run.tflop_per_image:.3g}", f"{run.effective_tflops:.3g}", f"{run.peak_memory.bytes / 2**20:.0f}",
            f"{speedup:.2f}x" if speedup else "-",
        )
        stages.add_row(str(run.batch), *(f"{st.get(n, 0.0):.3f}" for n in STAGES))
    out += [table, stages]
    out.append(Text(f"plan ({report.plan.planner}): {report.plan.seconds.median:.3f} s, made once and reused by every timed run"))
    if report.dam is not None:
        dam, calls = report.dam, report.dam.unet_call_seconds
        out.append(Text(
            f"DAM (gate {dam.gate}, {100 * dam.modulated_rows:.0f}% of the full-resolution rows modulated): one cycle-phase "
            f"UNet call {calls['dam']:.3f} s vs {calls['none']:.3f} s without, {dam.ratio:.3f}x "
            f"({100 * dam.dam_share_of_call:.1f}% of the call; {dam.clock})"
        ))
    ddim = report.baselines.ddim
    if ddim is not None:
        out.append(Text(
            f"DDIM-{ddim.steps} text-to-image: {ddim.seconds_per_image.median:.3f} s/image; "
            f"one SOW image costs {ddim.sow_over_ddim:.2f} DDIM images"
        ))
    reference = report.baselines.reference
    if reference is not None:
        ladder = Table(title="from the reference settings to the fast path (batch 1 unless named)")
        for col in ("variant", "s/image", "speed-up"):
            ladder.add_column(col, justify="right")
        for rung in reference.ladder:
            ladder.add_row(rung.variant, f"{rung.seconds_per_image.median:.3f}", f"{rung.speedup_vs_reference:.2f}x")
        out.append(ladder)
    out += [Text.from_markup(f"[yellow]not measured:[/] ") + Text(line) for line in report.not_measured]
    return out
