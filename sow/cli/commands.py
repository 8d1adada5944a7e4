"""The ``sow`` command line: parse, call the Python API, render. Nothing here the API cannot do.

Exit codes: 0 ok, 1 runtime failure, 2 usage or input error, 130 interrupted.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Optional

import typer
from rich.table import Table

from sow.cli.canvas_options import HeightOpt, WidthOpt, with_canvas, with_plan_canvas
from sow.cli.choices import DEVICE_METAVAR, Dtype, OnPlannerError, Preset, Quantize, value
from sow.errors import InputError, SowError
from sow.cli.scale_options import GpusPerWorkerOpt, RayOpt, WorkersOpt, ray_settings
from sow.io.json_files import MAX_JSON_BYTES, load_config_file, load_plan_file, read_json as _read_json  # noqa: F401
from sow.schemas import Box, GenerationConfig, Plan, validated

if TYPE_CHECKING:  # the pipeline (torch, diffusers) is imported only when a model loads
    from sow.pipeline import SOWPipeline

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

ModelOpt = Annotated[str, typer.Option("--model", "-m", help="'tiny' or 'tiny-sdxl' (embedded, random weights), a hub id, a diffusers folder or a .safetensors file (SD 1.x, 2.x or SDXL).")]
FamilyOpt = Annotated[Optional[str], typer.Option("--family", help="sd1, sd2 or sdxl: only when the model's configs cannot tell its family (docs/models.md); or a registered family's name, to load the model with it.")]
VaeOpt = Annotated[Optional[str], typer.Option("--vae", help="A replacement VAE (AutoencoderKL folder or hub id), e.g. a fixed fp16 SDXL VAE.")]
LoraOpt = Annotated[Optional[list[str]], typer.Option("--lora", help="PATH[:SCALE] of a .safetensors LoRA (repeatable); recorded with its sha256.")]
DeviceOpt = Annotated[str, typer.Option(metavar=DEVICE_METAVAR, help="auto (a CUDA GPU when there is one, else the CPU), cpu, cuda or cuda:N.")]
DtypeOpt = Annotated[Dtype, typer.Option(help="auto: bf16 on GPUs that have it, fp16 on others, fp32 on CPU.")]
PresetOpt = Annotated[Preset, typer.Option(help="normal, attribute (editing), style (transfer), or cow-reference (every reading as the reference code has it; docs/method.md).")]


def manual_plan(box_v: str | None, box_r: str | None, prompt: str, config: GenerationConfig, image=None) -> Plan | None:
    """The plan of ``--box-v``/``--box-r``; with the condition ``image``, fitted to its aspect (:mod:`sow.planners.manual`)."""
    if box_v is None and box_r is None:
        return None
    if box_v is None or box_r is None:
        raise InputError("--box-v and --box-r go together (or pass --plan FILE)")
    try:
        plan = Plan(canvas=config.canvas, box_v=Box.parse(box_v), box_r=Box.parse(box_r), prompt=prompt, user_prompt=prompt, planner="manual")
        if image is None:
            return plan
        from sow.planners.manual import hand_made_plan

        return hand_made_plan(image, plan.box_v, plan.box_r, prompt, config)
    except ValueError as exc:
        from sow.schemas import first_error

        raise InputError(f"invalid boxes: {first_error(exc)}") from None


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


def split_conditions(arguments: list[str] | None, conditions: list[Path] | None) -> tuple[list[Path], str | None]:
    """``(condition paths, prompt)`` from the positional arguments (conditions first, prompt last) and ``--condition``."""
    arguments = list(arguments or [])
    if conditions:
        if len(arguments) > 1:
            raise InputError(f"with --condition give only the prompt as an argument; got {len(arguments)} arguments")
        return list(conditions), (arguments[0] if arguments else None)
    if not arguments:
        return [], None
    if len(arguments) == 1:
        raise InputError("Missing argument PROMPT: give the condition image(s) first and the prompt last, e.g. sow generate face.jpg \"a chef\"")
    refuse_path_as_prompt(arguments[-1])
    return [Path(a) for a in arguments[:-1]], arguments[-1]


def refuse_path_as_prompt(prompt: str) -> None:
    """A last positional that names an image file is a forgotten prompt, not a prompt (exit 2, not a silent run)."""
    from sow.io.images import looks_like_image_path

    if looks_like_image_path(prompt):
        raise InputError(
            f"the last argument {prompt!r} is an image file, not a prompt: give the prompt last, "
            "e.g. sow generate a.jpg b.jpg \"two friends at a cafe\""
        )


def people_options(max_people: int | None, pick: str | None, planner: str | None, photos: int = 1) -> dict:
    """``--max-people`` / ``--pick`` as heuristic-planner options; they conflict with each other and with several photos."""
    options: dict = {}
    if max_people is None and pick is None:
        return options
    if (planner or "heuristic") != "heuristic":
        raise InputError("--max-people and --pick choose the faces of one group photo with the heuristic planner (--planner heuristic)")
    if max_people is not None and pick is not None:
        raise InputError("--pick chooses the faces by number and --max-people by size: give one of them, not both")
    if photos > 1:
        which = "--max-people" if max_people is not None else "--pick"
        raise InputError(f"{which} chooses faces in one group photo; this run has {photos} photos (one person each): drop {which}")
    if max_people is not None:
        options["max_people"] = max_people
    if pick is not None:
        try:
            options["pick"] = [int(p) for p in pick.split(",")]
        except ValueError:
            raise InputError(f"--pick {pick!r}: expected face numbers like 1,3") from None
    return options


def load_conditions(paths: list[Path]) -> None:
    """Refuse a missing, corrupt or hostile condition before anything loads, naming which one."""
    from sow.io.images import load_condition


    for i, path in enumerate(paths):
        try:
            load_condition(path)
        except InputError as exc:
            if len(paths) == 1:
                raise
            raise type(exc)(f"condition {i + 1} of {len(paths)}: {exc}") from None


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


def planner_options(items: list[str] | None, quantize: str | None) -> dict:
    """``--planner-option`` items plus the ``--quantize`` shortcut."""
    options = parse_options(items)
    if quantize is not None:
        options["quantize"] = value(quantize)
    return options


def parse_options(items: list[str] | None) -> dict:
    """``["model=gemini-2.5-pro", "retries=2"]`` -> ``{"model": "gemini-2.5-pro", "retries": 2}``."""
    from sow.io.options import parse_key_values

    return parse_key_values(items, "--planner-option")


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
    load_conditions(conditions)
    options = {**planner_options(planner_option, quantize), **people_options(max_people, pick, planner, len(conditions))}
    from sow.cli.preflight import check_planner

    check_planner(planner, options, policy)  # a planner that cannot start: said before its model loads
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


@app.command()
def generate(
    arguments: ConditionsArg = None,
    condition_opt: ConditionOpt = None,
    model: ModelOpt = "tiny",
    preset: PresetOpt = Preset.normal,
    seed: Annotated[int, typer.Option(help="Random seed: same seed, same image.")] = 0,
    out_dir: Annotated[Path, typer.Option("--out", "-o", help="Folder for the image, the plan picture and the run record.")] = Path("sow-out"),
    name: Annotated[Optional[str], typer.Option(help="File-name stem (default: from the prompt and seed).")] = None,
    plan_file: Annotated[Optional[Path], typer.Option("--plan", help="A saved plan.json: skips the planner.")] = None,
    box_v: Annotated[Optional[str], typer.Option("--box-v", help="Condition box x,y,w,h in canvas pixels (with --box-r).")] = None,
    box_r: Annotated[Optional[str], typer.Option("--box-r", help="Related-region box x,y,w,h (with --box-v).")] = None,
    config_file: Annotated[Optional[Path], typer.Option("--config", help="JSON file of GenerationConfig fields to override.")] = None,
    width: WidthOpt = None,
    height: HeightOpt = None,
    planner: Annotated[Optional[str], typer.Option(help="Planner plugin name (see `sow plugins`).")] = None,
    max_people: MaxPeopleOpt = None,
    pick: PickOpt = None,
    inverter: Annotated[Optional[str], typer.Option(help="Inverter plugin name.")] = None,
    scheduler: Annotated[Optional[str], typer.Option(help="Scheduler plugin name.")] = None,
    modulator: Annotated[Optional[str], typer.Option(metavar="<name>", help="Attention modulator plugin name: dam or none (plugins may add more; see `sow plugins`).")] = None,
    preserver: Annotated[Optional[str], typer.Option(help="Preserver plugin name.")] = None,
    planner_option: PlannerOptionOpt = None,
    quantize: QuantizeOpt = None,
    on_planner_error: OnPlannerErrorOpt = OnPlannerError.fail,
    no_cache: NoCacheOpt = False,
    device: DeviceOpt = "auto",
    dtype: DtypeOpt = Dtype.auto,
    random_weights: Annotated[bool, typer.Option(help="With a folder of configs only: build it with random weights (benchmarks).")] = False,
    allow_pickle: Annotated[bool, typer.Option(help="Allow pickled .ckpt checkpoints (they can run code).")] = False,
    family: FamilyOpt = None,
    vae: VaeOpt = None,
    lora: LoraOpt = None,
    overwrite: Annotated[bool, typer.Option(help="Replace existing output files.")] = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress bar.")] = False,
    save_attention: Annotated[bool, typer.Option("--save-attention", help="Also write <name>.attention.png (DAM's masks and the condition's mean attention at one layer) and trace the gate in the record.")] = False,
    batch: Annotated[Optional[Path], typer.Option("--batch", help="A JSON Lines file of jobs (condition, prompt, plan, seed, preset, name): see docs/production.md.")] = None,
    resume: Annotated[bool, typer.Option("--resume", help="With --batch: run only the jobs the output folder's manifest does not record as done.")] = False,
    json_output: Annotated[bool, typer.Option("--json", help="Machine-readable output on stdout (one JSON object per line); no progress bar.")] = False,
    num_images: Annotated[int, typer.Option("--num-images", "-n", min=1, max=64, help="Variations to make in one batched run: image i is the one --seed SEED+i would give, with the same plan.")] = 1,
    ray: RayOpt = None,
    workers: WorkersOpt = None,
    gpus_per_worker: GpusPerWorkerOpt = None,
    paste: Annotated[Optional[str], typer.Option("--paste", metavar="<feather|hard|none>", show_default="feather (cow-reference: none)", help="After decoding, put the kept pixels back exactly: feather (seam blended on the generated side), hard (no blend), or none (the model's decode, not exact).")] = None,
    paste_band: Annotated[Optional[int], typer.Option("--paste-band", min=1, max=256, show_default="1/64 of the canvas's short side", help="Width in pixels of the feather band.")] = None,
    replay: Annotated[Optional[Path], typer.Option("--replay", help="A run record (<stem>.json): rerun that run from the record alone; its conditions, masks, LoRAs and model are checked first (docs/production.md).")] = None,
) -> None:
    """Generate an image that keeps each CONDITION's pixels while the scene follows PROMPT (or a --batch of jobs).

    Conditions first, the prompt last: `sow generate a.jpg b.jpg "two friends at a cafe"` keeps both faces, each in its own box (or --condition a.jpg --condition b.jpg "two friends at a cafe").

    A --batch runs on several GPUs or machines with --ray [ADDRESS], or under
    `torchrun --nproc-per-node N -m sow generate --batch ...` (each rank takes its share);
    see docs/scale-out.md.
    """
    from sow.io.outputs import check_writable, safe_name
    from sow.safety.prompt_checks import require_prompt
    from sow.io.results import output_paths, prepare_outputs, write_outputs
    preset, dtype, on_planner_error = value(preset), value(dtype), value(on_planner_error)
    if replay is not None:  # everything from the record (sow.cli.replay)
        from sow.cli.replay import check_replay_alone, replay_generate

        check_replay_alone(**{
            "CONDITION and PROMPT": arguments or condition_opt, "--plan": plan_file, "--box-v/--box-r": box_v or box_r,
            "--config": config_file, "--batch": batch or resume, "--overwrite (a replay never replaces a file)": overwrite,
            "--seed": seed != 0, "--num-images": num_images != 1, "--preset": preset != "normal", "--model": model != "tiny",
            "--lora": lora, "--vae": vae, "--family": family, "--dtype": dtype != "auto", "--ray": ray is not None,
            "--paste/--paste-band": paste is not None or paste_band is not None,
            "--width/--height": width is not None or height is not None,
        })
        replay_generate(replay, out_dir, name, device=device, allow_pickle=allow_pickle, quiet=quiet,
                        json_output=json_output, console=err, out=out)
        return
    overrides = with_canvas(load_config_file(config_file), width, height)
    if paste is not None or paste_band is not None:  # checked with the rest of the config, before the model loads
        overrides.update({k: v for k, v in {"paste": paste, "paste_band": paste_band}.items() if v is not None})
    # a malformed KEY=VALUE (or --max-people with another planner) fails before anything else
    stage_options = {**planner_options(planner_option, quantize), **people_options(max_people, pick, planner)}
    if out_dir.exists() and not out_dir.is_dir():
        raise InputError(f"--out {out_dir} is a file, not a folder")
    if not 0 <= seed < 2**63:
        raise InputError(f"--seed {seed}: must lie in 0 .. 2**63-1")

    from sow.safety.security import load_policy

    if lora:  # a missing file or a scale of nan/inf: refused before the model loads
        from sow.models.lora import parse_lora

        for item in lora:
            parse_lora(item)

    chosen = {"planner": planner, "inverter": inverter, "scheduler": scheduler, "modulator": modulator, "preserver": preserver}

    def pipeline_spec():  # the pipeline module (torch) is imported once the inputs have passed their checks
        from sow.pipeline import PipelineSpec

        return PipelineSpec(
            model=model,
            device=device,
            dtype=dtype,
            random_weights=random_weights,
            allow_pickle=allow_pickle or load_policy().allow_pickle,
            family=family,
            vae=vae,
            loras=tuple(lora or ()),
            stages=tuple((k, v) for k, v in chosen.items() if v is not None),
            planner_options=tuple(stage_options.items()),
            on_planner_error=on_planner_error,
            plan_cache=not no_cache,
        )

    def load_pipe() -> SOWPipeline:
        return pipeline_spec().load()

    if batch is not None or resume:
        if batch is None:
            raise InputError("--resume goes with --batch FILE")
        if num_images > 1:
            raise InputError("--num-images applies to one generation, not to --batch (give each job its own line)")
        if arguments or condition_opt or plan_file or box_v or box_r or name:
            raise InputError("--batch takes the jobs from the file: drop CONDITION, PROMPT, --plan, --box-v/--box-r and --name")
        from sow.cli.batch import generate_batch

        check_writable(out_dir)

        generate_batch(
            batch, out_dir, overrides, spec=pipeline_spec(), ray=ray_settings(ray, workers, gpus_per_worker),
            resume=resume, overwrite=overwrite, quiet=quiet or json_output, json_output=json_output, console=err,
        )
        return
    if ray is not None or workers is not None or gpus_per_worker is not None:
        raise InputError("--ray, --workers and --gpus-per-worker go with --batch FILE")
    conditions, prompt = split_conditions(arguments, condition_opt)
    if not conditions or prompt is None:
        raise InputError("Missing arguments CONDITION... and PROMPT (or pass --batch FILE); see sow generate --help")
    require_prompt(prompt)
    people_options(max_people, pick, planner, len(conditions))  # --max-people/--pick against several photos
    if (plan_file or box_v or box_r) and (max_people is not None or pick is not None):
        raise InputError("--plan / --box-v place the faces themselves: drop --max-people and --pick (they choose faces for the planner)")
    if plan_file and (box_v or box_r):
        raise InputError("--plan FILE holds the boxes: drop --box-v/--box-r, or drop --plan")
    plan_from_file = load_plan_file(plan_file) if plan_file else None
    overrides = with_plan_canvas(overrides, plan_from_file, plan_file)  # the plan's canvas, or a clash refused now
    early = GenerationConfig.from_preset(preset, **overrides)  # bad inputs fail before the model loads
    if save_attention and ((modulator or early.stages.modulator) == "none" or not early.ablation.dynamic_attention):
        raise InputError("--save-attention needs attention modulation; the modulator is off (use --modulator dam)")
    early_plan = plan_from_file or manual_plan(box_v, box_r, prompt, early)  # checked early
    stem = safe_name(name) if name else f"{safe_name(prompt, 40)}-s{seed}"
    expected_masks = len(early_plan.conditions) if early_plan is not None else max(len(conditions), max_people or 1)
    paths = output_paths(out_dir, stem, num_images=num_images, attention=save_attention, masks=expected_masks)
    if save_attention:
        if len(conditions) > 1 or max_people or pick or (early_plan is not None and len(early_plan.conditions) > 1):
            raise InputError("--save-attention draws one condition's attention; this run has several conditions")
        overrides["trace_attention"] = True
    prepare_outputs(out_dir, paths, overwrite)  # writable, unique, free: before the long work
    load_conditions(conditions)  # missing, corrupt, hostile: refused before the model loads (naming which)
    if early_plan is None and len(conditions) > 1:  # more people than fit side by side: refused before the model loads
        from sow.planners.layout import check_fits

        check_fits(len(conditions), early)
    from sow.cli.preflight import check_planner

    if early_plan is None:  # the planner will run: one that cannot start is said now
        check_planner(planner or early.stages.planner, stage_options, on_planner_error)
    manual_image = None
    if early_plan is not None and not plan_file and len(conditions) == 1:  # hand-made boxes: the condition's aspect kept, changes said
        from sow.io.images import load_condition

        manual_image = load_condition(conditions[0]).image
        early_plan = manual_plan(box_v, box_r, prompt, early, manual_image)
        for line in early_plan.repairs:
            err.print(f"box changed: {line}", markup=False, highlight=False, soft_wrap=True)
    if early_plan is not None:
        from sow.pipeline import check_plan_images

        check_plan_images(early_plan, len(conditions))
        for i, j, a, b in early_plan.overlaps(8):
            raise InputError(f"condition {i + 1} box_v and condition {j + 1} box_v overlap once snapped to the 8-pixel latent grid ([{a}] and [{b}])")

    pipe = load_pipe()
    config = pipe.make_config(None, preset, **overrides)
    plan = early_plan
    if plan is not None and not plan_file and plan.canvas != config.canvas:  # --box-v/--box-r on the model's native canvas
        plan = manual_plan(box_v, box_r, prompt, config, manual_image)
    if save_attention and (config.stages.modulator == "none" or not config.ablation.dynamic_attention):
        raise InputError("--save-attention needs attention modulation; the modulator is off (use --modulator dam)")

    from sow.cli.progress import unet_progress

    from sow.stages import RunInputs

    count = len(plan.conditions) if plan is not None else len(conditions) if len(conditions) > 1 else (max_people or (len(pick.split(",")) if pick else 1))
    with unet_progress(pipe.unet_evaluations(config, RunInputs(conditions=count)), disable=quiet or json_output, console=err) as callback:
        given = [str(c) for c in conditions]
        result = pipe(given if len(given) > 1 else given[0], prompt, plan=plan, seed=seed, config=config, callback=callback, num_images=num_images)

    if result.record.aligned_box_v != result.plan.box_v:
        err.print(f"box_v {result.plan.box_v} snapped to the latent grid: pasted at {result.record.aligned_box_v}", markup=False, highlight=False, soft_wrap=True)
    write_outputs(result, paths, overwrite=overwrite)  # never replaces a file another run placed meanwhile
    if plan is None:  # the planner ran: say what was repaired, or that another planner stood in
        fell_back = result.plan.planner != config.stages.planner and result.plan.notes
        for line in ([result.plan.notes[0]] if fell_back else []) + [f"plan repaired: {r}" for r in result.plan.repairs]:
            err.print(line, markup=False, highlight=False, soft_wrap=True)
    total = sum(t.seconds for t in result.record.timings)
    for warning in result.record.warnings:
        err.print(f"warning: {warning}", markup=False, highlight=False, soft_wrap=True)
    if json_output:
        from sow.safety.security import redact_data

        event = {"event": "done", "outputs": result.record.outputs, "seconds": round(total, 3), "warnings": result.record.warnings}
        out.print(json.dumps(redact_data(event)), markup=False, highlight=False, soft_wrap=True)
    else:
        first = paths["image"] if num_images == 1 else paths["image_0"]
        more = f" and {num_images - 1} more" if num_images > 1 else ""
        err.print(f"wrote {first}{more} ({result.record.unet_evaluations} UNet evaluations, {total:.1f} s)")


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
