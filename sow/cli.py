"""The ``sow`` command line: parse, call the Python API, render. Nothing here the API cannot do.

Exit codes: 0 ok, 1 runtime failure, 2 usage or input error, 130 interrupted.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console
from rich.table import Table

from sow.errors import InputError, SowError
from sow.schemas import Box, GenerationConfig, Plan, validated

app = typer.Typer(
    name="sow",
    help="Selective One-Way Diffusion: an image from a visual condition (a face photo) and a text prompt.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
err = Console(stderr=True)
out = Console()

ModelOpt = Annotated[str, typer.Option("--model", "-m", help="'tiny' (embedded, random weights), a hub id, a diffusers folder or a .safetensors file.")]
DeviceOpt = Annotated[str, typer.Option(help="cpu, cuda, cuda:N or auto.")]
DtypeOpt = Annotated[str, typer.Option(help="auto (bf16 on GPUs that have it, fp16 on others, fp32 on CPU), fp32, fp16 or bf16.")]


def _read_json(path: Path, what: str) -> object:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise InputError(f"{what} {path}: no such file") from None
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise InputError(f"{what} {path}: not valid JSON ({exc})") from None


def load_plan_file(path: Path) -> Plan:
    """A plan file, validated; errors name the field."""
    return validated(Plan, _read_json(path, "plan file"), f"plan file {path}")


def load_config_file(path: Path | None) -> dict:
    if path is None:
        return {}
    data = _read_json(path, "config file")
    if not isinstance(data, dict):
        raise InputError(f"config file {path}: expected a JSON object of GenerationConfig fields")
    return data


def manual_plan(box_v: str | None, box_r: str | None, prompt: str, config: GenerationConfig) -> Plan | None:
    if box_v is None and box_r is None:
        return None
    if box_v is None or box_r is None:
        raise InputError("--box-v and --box-r go together (or pass --plan FILE)")
    try:
        return Plan(canvas=config.canvas, box_v=Box.parse(box_v), box_r=Box.parse(box_r), prompt=prompt, user_prompt=prompt, planner="manual")
    except ValueError as exc:
        from sow.schemas import first_error

        raise InputError(f"invalid boxes: {first_error(exc)}") from None


@app.command()
def generate(
    condition: Annotated[Path, typer.Argument(help="The visual condition: an image file (a face photo).")],
    prompt: Annotated[str, typer.Argument(help="What the scene should show.")],
    model: ModelOpt = "tiny",
    preset: Annotated[str, typer.Option(help="normal, attribute (editing) or style (transfer).")] = "normal",
    seed: Annotated[int, typer.Option(help="Random seed: same seed, same image.")] = 0,
    out_dir: Annotated[Path, typer.Option("--out", "-o", help="Folder for the image, the plan picture and the run record.")] = Path("sow-out"),
    name: Annotated[Optional[str], typer.Option(help="File-name stem (default: from the prompt and seed).")] = None,
    plan_file: Annotated[Optional[Path], typer.Option("--plan", help="A saved plan.json: skips the planner.")] = None,
    box_v: Annotated[Optional[str], typer.Option("--box-v", help="Condition box x,y,w,h in canvas pixels (with --box-r).")] = None,
    box_r: Annotated[Optional[str], typer.Option("--box-r", help="Related-region box x,y,w,h (with --box-v).")] = None,
    config_file: Annotated[Optional[Path], typer.Option("--config", help="JSON file of GenerationConfig fields to override.")] = None,
    planner: Annotated[Optional[str], typer.Option(help="Planner plugin name (see `sow plugins`).")] = None,
    inverter: Annotated[Optional[str], typer.Option(help="Inverter plugin name.")] = None,
    scheduler: Annotated[Optional[str], typer.Option(help="Scheduler plugin name.")] = None,
    modulator: Annotated[Optional[str], typer.Option(help="Attention modulator plugin name.")] = None,
    preserver: Annotated[Optional[str], typer.Option(help="Preserver plugin name.")] = None,
    device: DeviceOpt = "cpu",
    dtype: DtypeOpt = "auto",
    random_weights: Annotated[bool, typer.Option(help="With a folder of configs only: build it with random weights (benchmarks).")] = False,
    allow_pickle: Annotated[bool, typer.Option(help="Allow pickled .ckpt checkpoints (they can run code).")] = False,
    overwrite: Annotated[bool, typer.Option(help="Replace existing output files.")] = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress bar.")] = False,
    save_attention: Annotated[bool, typer.Option("--save-attention", help="Also write <name>.attention.png (DAM's masks and the condition's mean attention at one layer) and trace the gate in the record.")] = False,
) -> None:
    """Generate an image that keeps CONDITION's pixels while the scene follows PROMPT."""
    from sow.outputs import check_free, safe_name, save_image_atomic, save_json_atomic
    from sow.pipeline import SOWPipeline

    overrides = load_config_file(config_file)
    stem = safe_name(name) if name else f"{safe_name(prompt, 40)}-s{seed}"
    paths = {"image": out_dir / f"{stem}.png", "plan_image": out_dir / f"{stem}.plan.png", "record": out_dir / f"{stem}.json"}
    if save_attention:
        paths["attention"] = out_dir / f"{stem}.attention.png"
        overrides["trace_attention"] = True
    check_free(list(paths.values()), overwrite)
    if not condition.is_file():
        raise InputError(f"condition {condition}: no such file")

    pipe = SOWPipeline.from_pretrained(
        model,
        device=device,
        dtype=dtype,
        random_weights=random_weights,
        allow_pickle=allow_pickle,
        planner=planner,
        inverter=inverter,
        scheduler=scheduler,
        modulator=modulator,
        preserver=preserver,
    )
    config = pipe.make_config(None, preset, **overrides)
    plan = load_plan_file(plan_file) if plan_file else manual_plan(box_v, box_r, prompt, config)
    if save_attention and (config.stages.modulator == "none" or not config.ablation.dynamic_attention):
        raise InputError("--save-attention needs attention modulation; the modulator is off (use --modulator dam)")

    from sow.progress import unet_progress

    with unet_progress(config.unet_evaluations(), disable=quiet, console=err) as callback:
        result = pipe(condition, prompt, plan=plan, seed=seed, config=config, callback=callback)

    from sow.canvas import draw_plan

    save_image_atomic(result.image, paths["image"])
    save_image_atomic(draw_plan(result.plan, result.seeded_canvas), paths["plan_image"])
    if save_attention:
        from sow.dam import ATTENTION_ARTIFACT, attention_picture

        capture = result.artifacts.get(ATTENTION_ARTIFACT)
        if capture is None:
            raise SowError(f"modulator {config.stages.modulator!r} captured no attention map for --save-attention")
        save_image_atomic(attention_picture(capture, result.seeded_canvas), paths["attention"])
    result.record.outputs = {role: str(p) for role, p in paths.items()}
    save_json_atomic(result.record, paths["record"])
    total = sum(t.seconds for t in result.record.timings)
    err.print(f"wrote {paths['image']} ({result.record.unet_evaluations} UNet evaluations, {total:.1f} s)")


@app.command()
def plugins() -> None:
    """List installed stage implementations: kind, name, distribution, description."""
    from sow.plugins import get_registry

    registry = get_registry()
    table = Table(title="sow stages")
    for column in ("kind", "name", "distribution", "description"):
        table.add_column(column)
    for entry in registry.all_entries():
        table.add_row(entry.kind, entry.name, entry.distribution, entry.description)
    out.print(table)
    for failure in registry.failures:
        err.print(f"[yellow]plugin {failure.name} ({failure.distribution}) failed to load: {failure.error}[/]")


@app.command(
    context_settings={"allow_extra_args": True, "ignore_unknown_options": True, "help_option_names": []},
    add_help_option=False,
)
def bench(ctx: typer.Context) -> None:
    """Time generation per stage against plain DDIM and the reference settings (options: sow bench --help)."""
    from sow.bench import main as bench_main

    bench_main(list(ctx.args), prog="sow bench")


def main(argv: list[str] | None = None) -> None:
    """Entry point: one-line errors, documented exit codes."""
    try:
        result = app(args=argv, prog_name="sow", standalone_mode=False)
    except typer.Exit as exc:
        sys.exit(exc.exit_code)
    except (KeyboardInterrupt, typer.Abort):
        err.print("interrupted")
        sys.exit(130)
    except SowError as exc:
        err.print(f"error: {exc}", markup=False, highlight=False, soft_wrap=True)
        sys.exit(exc.exit_code)
    except Exception as exc:
        # usage errors of the (possibly vendored) click: print usage and the one-line reason
        if callable(getattr(exc, "show", None)) and isinstance(getattr(exc, "exit_code", None), int):
            exc.show(file=sys.stderr)
            sys.exit(exc.exit_code)
        raise
    sys.exit(result if isinstance(result, int) else 0)


if __name__ == "__main__":
    main()
