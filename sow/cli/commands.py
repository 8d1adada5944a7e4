"""The ``sow`` command line: parse, call the Python API, render. Nothing here the API cannot do.

Exit codes: 0 ok, 1 runtime failure, 2 usage or input error, 130 interrupted.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.table import Table

from sow.cli.canvas_options import HeightOpt, WidthOpt, with_canvas
from sow.cli.choices import DEVICE_METAVAR, Dtype, OnPlannerError, Preset, Quantize, value
from sow.cli.help_sections import SectionedCommand
from sow.cli.inputs import CLI_LABELS, people_options, planner_options, split_conditions
from sow.cli.scale_options import GpusPerWorkerOpt, RayOpt, WorkersOpt
from sow.cli.stage_options import with_stage_options
from sow.errors import InputError, SowError
from sow.io.json_files import MAX_JSON_BYTES, load_config_file, read_json as _read_json  # noqa: F401
from sow.request import latent_grid_of
from sow.schemas import GenerationConfig

app = typer.Typer(
    name="sow",
    help="Selective One-Way Diffusion: an image from a visual condition (a face photo) and a text prompt.\n\n"
    "The options below (--threads, --disable-plugin, --trust-remote-code) go before or after the command.",
    no_args_is_help=True,
    add_completion=True,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,  # click's plain help: option names whole at any width (rich's table cut them at 80 columns)
    context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100},
)
from sow.safety.security import redacting_console  # noqa: E402

err = redacting_console(stderr=True)
out = redacting_console()
"""The CLI's consoles: every string printed has secrets (API keys in the environment) redacted."""

PresetOpt = Annotated[Preset, typer.Option(help="normal, attribute (editing), style (transfer), or cow-reference (every reading as the reference code has it; docs/method.md).")]


def _version(show: bool) -> None:
    if show:
        from sow.version import __version__

        typer.echo(f"sow {__version__}")
        raise typer.Exit(0)


KNOWN_WARNINGS = {
    "bitsandbytes": "imported by transformers/diffusers when installed; on CPUs with AVX512-BF16 it warns that an "
    "optional faster 4-bit kernel (the `kernels` package) is missing. sow quantizes only MLLM planners, on request.",
    "transformers.utils.import_utils": "diffusers' pipelines import CLIP's image processor, which without "
    "torchvision falls back to its PIL version with a warning; sow never uses that processor.",
}
"""Third-party loggers the CLI keeps at ERROR, and why their warnings say nothing to a sow user."""


def quiet_known_warnings() -> None:
    """Raise the loggers of :data:`KNOWN_WARNINGS` to ERROR (the CLI's process only)."""
    import logging

    for name in KNOWN_WARNINGS:
        logging.getLogger(name).setLevel(logging.ERROR)


ConditionsArg = Annotated[
    Optional[list[str]],
    typer.Argument(
        metavar="CONDITION... PROMPT",
        help="The visual condition(s) first, then the prompt LAST: `a.jpg \"a chef\"`, or several people "
        "`a.jpg b.jpg \"two friends at a cafe\"`. With --condition, give only the prompt here.",
    ),
]
ConditionOpt = Annotated[
    Optional[list[Path]],
    typer.Option("--condition", "-c", help="A condition image (repeatable, in order); then the only argument is the prompt."),
]
MaxPeopleOpt = Annotated[
    Optional[int],
    typer.Option("--max-people", min=1, max=16, help="Heuristic planner, one group photo: use its N largest faces, each its own condition."),
]
PickOpt = Annotated[
    Optional[str],
    typer.Option("--pick", help="Heuristic planner, one group photo: the faces to use, by number largest first (e.g. 1,3)."),
]


@app.callback()
def global_options(
    ctx: typer.Context,
    version: Annotated[bool, typer.Option("--version", callback=_version, is_eager=True, help="Print the version and exit.")] = False,
    threads: Annotated[Optional[int], typer.Option("--threads", min=1, envvar="SOW_THREADS", show_envvar=True, help="CPU threads for torch (default: half the cores, at most 8; torch's own default, all cores, is slow on a busy machine).")] = None,
    disable_plugin: Annotated[list[str], typer.Option("--disable-plugin", metavar="NAME", help="Do not load this plugin (entry-point or distribution name); repeatable. Also SOW_DISABLE_PLUGINS=a,b.")] = [],  # noqa: B006
    trust_remote_code: Annotated[bool, typer.Option("--trust-remote-code", help="Let model repositories run their own Python code (some MLLM planners need it). Off by default.")] = False,
) -> None:
    """Selective One-Way Diffusion: an image from a visual condition (a face photo) and a text prompt.

    Global options (--threads, --disable-plugin, --trust-remote-code) go before or after the command.
    """
    from sow.cli.startup import apply_threads
    from sow.plugins import disable_plugins
    from sow.safety.security import set_load_policy

    if not (ctx.obj or {}).get("text_only"):  # help and completion leave torch unimported
        apply_threads(threads)
    quiet_known_warnings()
    if disable_plugin:
        disable_plugins(disable_plugin)
    if trust_remote_code:
        set_load_policy(trust_remote_code=True)


PlannerOptionOpt = Annotated[
    Optional[list[str]],
    typer.Option("--planner-option", help="KEY=VALUE passed to the planner (repeatable; VALUE read as JSON if it parses)."),
]
QuantizeOpt = Annotated[
    Optional[Quantize],
    typer.Option("--quantize", help="Load a local MLLM planner (llava, qwen-vl) with bitsandbytes; same as --planner-option quantize=..."),
]
OnPlannerErrorOpt = Annotated[
    OnPlannerError, typer.Option("--on-planner-error", help="fail (with a hint), or heuristic: plan offline instead (also when a planner's model cannot load).")
]
NoCacheOpt = Annotated[bool, typer.Option("--no-cache", help="Ask the planner again instead of reusing a cached plan.")]


@app.command("plan")
def plan_command(
    arguments: ConditionsArg = None,
    condition_opt: ConditionOpt = None,
    planner: Annotated[str, typer.Option(help="Planner plugin name (see `sow plugins`).")] = "heuristic",
    max_people: MaxPeopleOpt = None,
    pick: PickOpt = None,
    planner_option: PlannerOptionOpt = None,
    quantize: QuantizeOpt = None,
    out: Annotated[Path, typer.Option("--out", "-o", help="The plan file to write; its picture goes beside it as .png.")] = Path("plan.json"),
    preset: PresetOpt = Preset.normal,
    config_file: Annotated[Optional[Path], typer.Option("--config", help="JSON file of GenerationConfig fields (the canvas matters).")] = None,
    width: WidthOpt = None,
    height: HeightOpt = None,
    seed: Annotated[int, typer.Option(help="Seed handed to the planner.")] = 0,
    on_planner_error: OnPlannerErrorOpt = OnPlannerError.fail,
    no_cache: NoCacheOpt = False,
    overwrite: Annotated[bool, typer.Option(help="Replace existing output files.")] = False,
) -> None:
    """Plan only: write the plan (box_v, box_r per condition, prompt) as JSON and a picture of it (every box drawn, numbered); edit it, then `generate --plan`. Conditions first, prompt last."""
    from sow.io.outputs import image_bytes, json_bytes
    from sow.io.results import place_files, prepare_outputs
    from sow.planners.cache import PlanCache
    from sow.planners.policy import check_policy, make_plan

    conditions, prompt = split_conditions(arguments, condition_opt)
    if not conditions or prompt is None:
        raise InputError("Missing CONDITION... PROMPT; see sow plan --help")
    policy = check_policy(value(on_planner_error))
    if out.suffix.lower() != ".json":
        raise InputError(f"--out {out}: the plan file must end in .json")
    picture = out.with_suffix(".png")
    prepare_outputs(out.parent, {"plan": out, "picture": picture}, overwrite)
    config = GenerationConfig.from_preset(value(preset), **with_canvas(load_config_file(config_file), width, height))
    options = {**planner_options(planner_option, quantize), **people_options(max_people, pick, planner)}
    from sow.request import GenerationRequest

    # the conditions read, the people options against the photos, the planner made and its preflight run:
    # the library's checks of a request, before any planner model loads
    GenerationRequest(conditions, prompt, seed=seed, preset=value(preset), config=config, stages={"planner": planner},
                      planner_options=options, on_planner_error=policy, labels=CLI_LABELS).check()
    plan, image = make_plan(
        conditions if len(conditions) > 1 else conditions[0],
        prompt,
        planner=planner,
        options=options,
        config=config,
        seed=seed,
        on_error=policy,
        cache=None if no_cache else PlanCache(),
    )
    place_files({out: json_bytes(plan), picture: image_bytes(image, picture)}, overwrite=overwrite)
    several = len(plan.conditions) > 1
    lines = [
        (f"{i + 1}: " if several else "") + f"box_v [{c.box_v}]  box_r [{c.box_r}]" + (f"  crop [{c.crop}]" if c.crop else "")
        for i, c in enumerate(plan.conditions)
    ]
    lines += [f"prompt: {plan.prompt}", *(f"note: {n}" for n in plan.notes), *(f"repaired: {r}" for r in plan.repairs)]
    for line in [*lines, f"wrote {out} and {picture}"]:
        err.print(line, markup=False, highlight=False, soft_wrap=True)


INPUTS, OUTPUTS, PLANNING, MODEL, METHOD, SCALE = "Inputs", "Outputs", "Planning", "Model", "Method", "Batch and scale-out"
"""The headings ``sow generate --help`` groups its options under (:mod:`sow.cli.help_sections`)."""

@app.command(cls=SectionedCommand)
@with_stage_options
def generate(
    arguments: ConditionsArg = None,
    condition_opt: Annotated[Optional[list[Path]], typer.Option("--condition", "-c", rich_help_panel=INPUTS, help="A condition image (repeatable, in order); then the only argument is the prompt.")] = None,
    seed: Annotated[int, typer.Option(rich_help_panel=INPUTS, help="Random seed: same seed, same image.")] = 0,
    num_images: Annotated[int, typer.Option("--num-images", "-n", min=1, max=64, rich_help_panel=INPUTS, help="Variations to make in one batched run: image i is the one --seed SEED+i would give, with the same plan.")] = 1,
    replay: Annotated[Optional[Path], typer.Option("--replay", rich_help_panel=INPUTS, help="A run record (<stem>.json): rerun that run from the record alone; its conditions, masks, LoRAs and model are checked first (docs/production.md).")] = None,
    out_dir: Annotated[Path, typer.Option("--out", "-o", rich_help_panel=OUTPUTS, help="Folder for the image, the plan picture and the run record.")] = Path("sow-out"),
    name: Annotated[Optional[str], typer.Option(rich_help_panel=OUTPUTS, help="File-name stem (default: from the prompt and seed).")] = None,
    overwrite: Annotated[bool, typer.Option(rich_help_panel=OUTPUTS, help="Replace existing output files.")] = False,
    save_attention: Annotated[bool, typer.Option("--save-attention", rich_help_panel=OUTPUTS, help="Also write <name>.attention.png (DAM's masks and the condition's mean attention at one layer) and trace the gate in the record.")] = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", rich_help_panel=OUTPUTS, help="No progress bar.")] = False,
    json_output: Annotated[bool, typer.Option("--json", rich_help_panel=OUTPUTS, help="Machine-readable output on stdout (one JSON object per line); no progress bar.")] = False,
    plan_file: Annotated[Optional[Path], typer.Option("--plan", rich_help_panel=PLANNING, help="A saved plan.json: skips the planner.")] = None,
    box_v: Annotated[Optional[str], typer.Option("--box-v", rich_help_panel=PLANNING, help="Condition box x,y,w,h in canvas pixels (with --box-r).")] = None,
    box_r: Annotated[Optional[str], typer.Option("--box-r", rich_help_panel=PLANNING, help="Related-region box x,y,w,h (with --box-v).")] = None,
    max_people: Annotated[Optional[int], typer.Option("--max-people", min=1, max=16, rich_help_panel=PLANNING, help="Heuristic planner, one group photo: use its N largest faces, each its own condition.")] = None,
    pick: Annotated[Optional[str], typer.Option("--pick", rich_help_panel=PLANNING, help="Heuristic planner, one group photo: the faces to use, by number largest first (e.g. 1,3).")] = None,
    planner_option: Annotated[Optional[list[str]], typer.Option("--planner-option", rich_help_panel=PLANNING, help="KEY=VALUE passed to the planner (repeatable; VALUE read as JSON if it parses).")] = None,
    quantize: Annotated[Optional[Quantize], typer.Option("--quantize", rich_help_panel=PLANNING, help="Load a local MLLM planner (llava, qwen-vl) with bitsandbytes; same as --planner-option quantize=...")] = None,
    on_planner_error: Annotated[OnPlannerError, typer.Option("--on-planner-error", rich_help_panel=PLANNING, help="fail (with a hint), or heuristic: plan offline instead (also when a planner's model cannot load).")] = OnPlannerError.fail,
    no_cache: Annotated[bool, typer.Option("--no-cache", rich_help_panel=PLANNING, help="Ask the planner again instead of reusing a cached plan.")] = False,
    model: Annotated[str, typer.Option("--model", "-m", rich_help_panel=MODEL, help="'tiny' or 'tiny-sdxl' (embedded, random weights), a hub id, a diffusers folder or a .safetensors file (SD 1.x, 2.x or SDXL).")] = "tiny",
    family: Annotated[Optional[str], typer.Option("--family", rich_help_panel=MODEL, help="sd1, sd2 or sdxl: only when the model's configs cannot tell its family (docs/models.md); or a registered family's name, to load the model with it.")] = None,
    vae: Annotated[Optional[str], typer.Option("--vae", rich_help_panel=MODEL, help="A replacement VAE (AutoencoderKL folder or hub id), e.g. a fixed fp16 SDXL VAE.")] = None,
    lora: Annotated[Optional[list[str]], typer.Option("--lora", rich_help_panel=MODEL, help="PATH[:SCALE] of a .safetensors LoRA (repeatable); recorded with its sha256.")] = None,
    device: Annotated[str, typer.Option(metavar=DEVICE_METAVAR, rich_help_panel=MODEL, help="auto (a CUDA GPU when there is one, else the CPU), cpu, cuda or cuda:N.")] = "auto",
    dtype: Annotated[Dtype, typer.Option(rich_help_panel=MODEL, help="auto: bf16 on GPUs that have it, fp16 on others, fp32 on CPU.")] = Dtype.auto,
    random_weights: Annotated[bool, typer.Option(rich_help_panel=MODEL, help="With a folder of configs only: build it with random weights (benchmarks).")] = False,
    allow_pickle: Annotated[bool, typer.Option(rich_help_panel=MODEL, help="Allow pickled .ckpt checkpoints (they can run code).")] = False,
    preset: Annotated[Preset, typer.Option(rich_help_panel=METHOD, help="normal, attribute (editing), style (transfer), or cow-reference (every reading as the reference code has it; docs/method.md).")] = Preset.normal,
    config_file: Annotated[Optional[Path], typer.Option("--config", rich_help_panel=METHOD, help="JSON file of GenerationConfig fields to override.")] = None,
    width: Annotated[Optional[int], typer.Option("--width", metavar="PX", rich_help_panel=METHOD, help="Canvas width in pixels (a multiple of 8, 64..4096; with --height). Default: a --plan file's canvas where one is given, else the model's native square.")] = None,
    height: Annotated[Optional[int], typer.Option("--height", metavar="PX", rich_help_panel=METHOD, help="Canvas height in pixels (a multiple of 8, 64..4096; with --width).")] = None,
    paste: Annotated[Optional[str], typer.Option("--paste", metavar="<feather|hard|none>", show_default="feather (cow-reference: none)", rich_help_panel=METHOD, help="After decoding, put the kept pixels back exactly: feather (seam blended on the generated side), hard (no blend), or none (the model's decode, not exact).")] = None,
    paste_band: Annotated[Optional[int], typer.Option("--paste-band", min=1, max=256, show_default="1/64 of the canvas's short side", rich_help_panel=METHOD, help="Width in pixels of the feather band.")] = None,
    batch: Annotated[Optional[Path], typer.Option("--batch", rich_help_panel=SCALE, help="A JSON Lines file of jobs (condition, prompt, plan, seed, preset, name): see docs/production.md.")] = None,
    resume: Annotated[bool, typer.Option("--resume", rich_help_panel=SCALE, help="With --batch: run only the jobs the output folder's manifest does not record as done.")] = False,
    ray: Annotated[Optional[str], typer.Option("--ray", metavar="[ADDRESS]", rich_help_panel=SCALE, help=RayOpt.__metadata__[0].help)] = None,
    workers: Annotated[Optional[int], typer.Option("--workers", min=1, rich_help_panel=SCALE, help=WorkersOpt.__metadata__[0].help)] = None,
    gpus_per_worker: Annotated[Optional[float], typer.Option("--gpus-per-worker", min=0, rich_help_panel=SCALE, help=GpusPerWorkerOpt.__metadata__[0].help)] = None,
    stages: dict[str, str] | None = None,
) -> None:
    """Generate an image that keeps each CONDITION's pixels while the scene follows PROMPT (or a --batch of jobs).

    Conditions first, the prompt last: `sow generate a.jpg b.jpg "two friends at a cafe"` keeps both faces, each in its own box (or --condition a.jpg --condition b.jpg "two friends at a cafe").

    A --batch runs on several GPUs or machines with --ray [ADDRESS], or under
    `torchrun --nproc-per-node N -m sow generate --batch ...` (each rank takes its share);
    see docs/scale-out.md.
    """
    # parse: the options as the library's values (sow.cli.generation holds each step)
    from sow.cli.generation import Options, build_request, pipeline_spec, render_result, run_batch_command, run_replay, run_request

    options = Options(**{k: v for k, v in locals().items() if k in Options.__dataclass_fields__})
    if replay is not None:  # everything from the record (sow.cli.replay)
        run_replay(options, console=err, out=out)
        return
    overrides, stages = options.config_overrides(), stages or {}
    if batch is not None or resume:
        run_batch_command(options, overrides, pipeline_spec(options, stages), console=err)
        return
    request = build_request(options, overrides, stages).check(grid=lambda: latent_grid_of(model))  # before any model loads
    result, paths = run_request(request, options, lambda: pipeline_spec(options, stages), console=err)  # load, run
    render_result(request, result, paths, options, console=err, out=out)


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
    for family in registry.families.values():
        table.add_row("model_family", family.name, family.distribution, family.description)
    out.print(table)
    for failure in registry.failures:
        err.print(f"plugin {failure.name} ({failure.distribution}) failed to load: {failure.error}", style="yellow", markup=False, highlight=False, soft_wrap=True)


from sow.cli.eval import eval_command, eval_spec_command  # noqa: E402

app.command("eval")(eval_command)
app.command("eval-spec")(eval_spec_command)

from sow.cli.ui import ui_command  # noqa: E402

app.command("ui")(ui_command)


EXIT_OK, EXIT_FAILURE, EXIT_USAGE, EXIT_INTERRUPTED = 0, 1, 2, 130
"""The documented exit codes (docs/production.md)."""


def _fail(message: str, code: int) -> None:
    from sow.safety.security import redact

    err.print(redact(message), markup=False, highlight=False, soft_wrap=True)
    sys.exit(code)


from sow.cli.bench import bench_command  # noqa: E402

app.command("bench")(bench_command)


COMMANDS = ("generate", "plan", "plugins", "eval", "eval-spec", "ui", "bench")
"""The subcommands (global options written after one of them are moved before it)."""


def usage_line(exc: Exception) -> str:
    """A click usage error as one ``error:`` line, with where to read more."""
    message = " ".join(str(exc.format_message()).split())
    context = getattr(exc, "ctx", None)
    command = getattr(context, "command_path", None) or "sow"
    return f"error: {message} (see {command} --help)"


def main(argv: list[str] | None = None) -> None:
    """Entry point: one-line errors (secrets redacted), documented exit codes.

    0 ok, 1 runtime failure, 2 usage or input error, 130 interrupted. An unexpected
    exception is a bug: one line and exit 1 (``SOW_DEBUG=1`` shows the traceback).
    """
    import os

    from sow.cli.scale_options import optional_ray_address
    from sow.safety.security import cli_logging

    from sow.cli.startup import hoist_global_options, reads_text_only

    argv = optional_ray_address(sys.argv[1:] if argv is None else argv)
    argv = hoist_global_options(argv, COMMANDS)
    from sow.cli import startup

    startup.INVOKED = list(argv)  # the resume hint of an interrupted batch repeats these (sow.cli.batch)
    try:
        with cli_logging():
            result = app(args=argv, prog_name="sow", standalone_mode=False, obj={"text_only": reads_text_only(argv)})
    except typer.Exit as exc:
        if exc.exit_code == EXIT_INTERRUPTED:  # typer turns Ctrl-C into Exit(130)
            _fail("interrupted", EXIT_INTERRUPTED)
        sys.exit(exc.exit_code)
    except (KeyboardInterrupt, typer.Abort):
        _fail("interrupted", EXIT_INTERRUPTED)
    except SowError as exc:
        _fail(f"error: {exc}", exc.exit_code)
    except Exception as exc:
        # usage errors of the (possibly vendored) click: one line, like every other error
        if callable(getattr(exc, "format_message", None)) and isinstance(getattr(exc, "exit_code", None), int):
            _fail(usage_line(exc), exc.exit_code)
        from sow.errors import environment_problem

        problem = environment_problem(exc)  # a full disk, no memory, a port taken: the machine's, not a bug
        if problem is not None:
            _fail(f"error: {problem}", problem.exit_code)
        if os.environ.get("SOW_DEBUG") == "1":  # the traceback, redacted: it ends up in bug reports
            from sow.safety.security import format_traceback

            sys.stderr.write(format_traceback(exc))
        first = str(exc).splitlines()[0] if str(exc) else ""
        _fail(f"error: unexpected {type(exc).__name__}: {first} (a bug in sow or a plugin; SOW_DEBUG=1 shows the traceback)", EXIT_FAILURE)
    if result == EXIT_INTERRUPTED:  # typer returns Ctrl-C as the exit code 130
        _fail("interrupted", EXIT_INTERRUPTED)
    sys.exit(result if isinstance(result, int) else EXIT_OK)


def run() -> None:
    """The ``sow`` executable: :func:`main`, and on Ctrl-C an exit that does not wait.

    By the time "interrupted" is printed every ``finally`` has run; worker threads (torch,
    tokenizers, the hub probe) kept the process alive for another 12-30 s. ``main`` itself
    raises ``SystemExit`` as usual (tests call it).
    """
    try:
        main()
    except SystemExit as exc:
        if exc.code == EXIT_INTERRUPTED:
            import os

            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(EXIT_INTERRUPTED)
        raise


if __name__ == "__main__":
    run()
