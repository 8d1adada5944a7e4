"""``sow generate``, step by step: parse the options, build the request, call the library, render.

:func:`sow.cli.commands.generate` strings these together; each step here is small and does one of
the four things. Every check of the inputs that needs no model is the library's
(:meth:`sow.request.GenerationRequest.check`); what stays here is how options are spelled (which
flags go together) and what the terminal shows.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sow.cli.canvas_options import with_canvas, with_plan_canvas
from sow.cli.choices import value
from sow.cli.inputs import CLI_LABELS, people_options, planner_options, split_conditions
from sow.errors import InputError
from sow.request import GenerationRequest, check_seed


@dataclass(frozen=True)
class Options:
    """``sow generate``'s options as given (enums already read as their values where it matters)."""

    arguments: list[str] | None
    condition_opt: list[Path] | None
    seed: int
    num_images: int
    replay: Path | None
    out_dir: Path
    name: str | None
    overwrite: bool
    save_attention: bool
    quiet: bool
    json_output: bool
    plan_file: Path | None
    box_v: str | None
    box_r: str | None
    max_people: int | None
    pick: str | None
    planner_option: list[str] | None
    quantize: Any
    on_planner_error: Any
    no_cache: bool
    model: str
    family: str | None
    vae: str | None
    lora: list[str] | None
    device: str
    dtype: Any
    random_weights: bool
    allow_pickle: bool
    preset: Any
    config_file: Path | None
    width: int | None
    height: int | None
    paste: str | None
    paste_band: int | None
    batch: Path | None
    resume: bool
    ray: str | None
    workers: int | None
    gpus_per_worker: float | None

    @property
    def quiet_bar(self) -> bool:
        return self.quiet or self.json_output

    def config_overrides(self) -> dict[str, Any]:
        """The config fields of ``--config``, ``--width/--height`` and ``--paste/--paste-band`` (checked with the
        rest of the config, before the model loads); the output folder and the seed checked first."""
        from sow.io.json_files import load_config_file

        if self.out_dir.exists() and not self.out_dir.is_dir():
            raise InputError(f"--out {self.out_dir} is a file, not a folder")
        check_seed(self.seed, "--seed")
        overrides = with_canvas(load_config_file(self.config_file), self.width, self.height)
        paste = {k: v for k, v in {"paste": self.paste, "paste_band": self.paste_band}.items() if v is not None}
        return {**overrides, **paste}

    def planner_options(self, planner: str | None) -> dict[str, Any]:
        """``--planner-option`` items, ``--quantize`` and ``--max-people``/``--pick`` (a malformed KEY=VALUE,
        or --max-people with another planner, fails before anything else)."""
        return {**planner_options(self.planner_option, self.quantize),
                **people_options(self.max_people, self.pick, planner)}


def pipeline_spec(options: Options, stages: dict[str, str]) -> Any:
    """The recipe of the pipeline (:class:`sow.pipeline.PipelineSpec`): the model, its companions, the stages.

    A LoRA file that is missing, or a scale of nan/inf, is refused here, before the model loads.
    """
    from sow.batch.workers import PipelineSpec
    from sow.safety.security import load_policy

    if options.lora:
        from sow.models.lora import parse_lora

        for item in options.lora:
            parse_lora(item)
    return PipelineSpec(
        model=options.model,
        device=options.device,
        dtype=value(options.dtype),
        random_weights=options.random_weights,
        allow_pickle=options.allow_pickle or load_policy().allow_pickle,
        family=options.family,
        vae=options.vae,
        loras=tuple(options.lora or ()),
        stages=tuple(stages.items()),
        planner_options=tuple(options.planner_options(stages.get("planner")).items()),
        on_planner_error=value(options.on_planner_error),
        plan_cache=not options.no_cache,
    )


def build_request(options: Options, overrides: dict[str, Any], stages: dict[str, str]) -> GenerationRequest:
    """The :class:`GenerationRequest` the options describe (the options that go together checked here)."""
    from sow.io.json_files import load_plan_file

    if options.ray is not None or options.workers is not None or options.gpus_per_worker is not None:
        raise InputError("--ray, --workers and --gpus-per-worker go with --batch FILE")
    conditions, prompt = split_conditions(options.arguments, options.condition_opt)
    if not conditions or prompt is None:
        raise InputError("Missing arguments CONDITION... and PROMPT (or pass --batch FILE); see sow generate --help")
    if (options.box_v is None) != (options.box_r is None):
        raise InputError("--box-v and --box-r go together (or pass --plan FILE)")
    if options.plan_file and options.box_v:
        raise InputError("--plan FILE holds the boxes: drop --box-v/--box-r, or drop --plan")
    plan = load_plan_file(options.plan_file) if options.plan_file else None
    return GenerationRequest(
        conditions=conditions,
        prompt=prompt,
        seed=options.seed,
        num_images=options.num_images,
        preset=value(options.preset),
        overrides=with_plan_canvas(overrides, plan, options.plan_file),  # the plan's canvas, or a clash refused now
        plan=plan,
        boxes=(options.box_v, options.box_r) if options.box_v is not None else None,
        stages=stages,
        planner_options=options.planner_options(stages.get("planner")),
        attention=options.save_attention,
        on_planner_error=value(options.on_planner_error),
        labels=CLI_LABELS,
    )


def output_paths_of(request: GenerationRequest, options: Options) -> dict[str, Path]:
    """Every file the run writes, checked free (or ``--overwrite``) and writable before the long work."""
    from sow.io.outputs import safe_name
    from sow.io.results import output_paths, prepare_outputs

    stem = safe_name(options.name) if options.name else f"{safe_name(request.prompt, 40)}-s{request.seed}"
    paths = output_paths(options.out_dir, stem, num_images=request.num_images, attention=request.attention,
                         masks=request.condition_count)
    prepare_outputs(options.out_dir, paths, options.overwrite)
    return paths


def run_request(request: GenerationRequest, options: Options, spec: Any, console: Any) -> tuple[Any, dict[str, Path]]:
    """Say what the check changed, claim the output files, load the model (``spec()``: the pipeline's recipe, made
    only now, since it imports torch), run with a progress bar."""
    from sow.cli.progress import unet_progress
    from sow.stages import RunInputs

    if request.boxes is not None and request.plan is not None:  # hand-made boxes: the condition's aspect kept
        say(console, *(f"box changed: {line}" for line in request.plan.repairs))
    paths = output_paths_of(request, options)
    pipe = spec().load()
    config = request.config_for(pipe)
    total = pipe.unet_evaluations(config, RunInputs(conditions=request.condition_count))
    with unet_progress(total, disable=options.quiet_bar, console=console) as callback:
        result = request.run(pipe, callback, config)
    return result, paths


def render_result(request: GenerationRequest, result: Any, paths: dict[str, Path], options: Options, console: Any, out: Any) -> None:
    """Write the files, then the lines a user reads: snapped boxes, the planner's notes, warnings, what was written."""
    from sow.io.results import write_outputs

    if result.record.aligned_box_v != result.plan.box_v:
        say(console, f"box_v {result.plan.box_v} snapped to the latent grid: pasted at {result.record.aligned_box_v}")
    write_outputs(result, paths, overwrite=options.overwrite)  # never replaces a file another run placed meanwhile
    if request.plan is None:  # the planner ran: say what was repaired, or that another planner stood in
        config = result.record.config
        fell_back = result.plan.planner != config.stages.planner and result.plan.notes
        say(console, *([result.plan.notes[0]] if fell_back else []), *(f"plan repaired: {r}" for r in result.plan.repairs))
    total = sum(t.seconds for t in result.record.timings)
    say(console, *(f"warning: {w}" for w in result.record.warnings))
    if options.json_output:
        from sow.safety.security import redact_data

        event = {"event": "done", "outputs": result.record.outputs, "seconds": round(total, 3), "warnings": result.record.warnings}
        out.print(json.dumps(redact_data(event)), markup=False, highlight=False, soft_wrap=True)
        return
    first = paths["image"] if request.num_images == 1 else paths["image_0"]
    more = f" and {request.num_images - 1} more" if request.num_images > 1 else ""
    console.print(f"wrote {first}{more} ({result.record.unet_evaluations} UNet evaluations, {total:.1f} s)")


def say(console: Any, *lines: str) -> None:
    for line in lines:
        console.print(line, markup=False, highlight=False, soft_wrap=True)


def run_replay(options: Options, console: Any, out: Any) -> None:
    """``--replay RECORD``: everything from the record (:mod:`sow.cli.replay`); options that would change it refused."""
    from sow.cli.replay import check_replay_alone, replay_generate

    check_replay_alone(**{
        "CONDITION and PROMPT": options.arguments or options.condition_opt, "--plan": options.plan_file,
        "--box-v/--box-r": options.box_v or options.box_r, "--config": options.config_file,
        "--batch": options.batch or options.resume, "--overwrite (a replay never replaces a file)": options.overwrite,
        "--seed": options.seed != 0, "--num-images": options.num_images != 1, "--preset": value(options.preset) != "normal",
        "--model": options.model != "tiny", "--lora": options.lora, "--vae": options.vae, "--family": options.family,
        "--dtype": value(options.dtype) != "auto", "--ray": options.ray is not None,
        "--paste/--paste-band": options.paste is not None or options.paste_band is not None,
        "--width/--height": options.width is not None or options.height is not None,
    })
    replay_generate(options.replay, options.out_dir, options.name, device=options.device, allow_pickle=options.allow_pickle,
                    quiet=options.quiet, json_output=options.json_output, console=console, out=out)


def run_batch_command(options: Options, overrides: dict[str, Any], spec: Any, console: Any) -> None:
    """``--batch FILE [--resume]``: the jobs come from the file (:mod:`sow.cli.batch`)."""
    from sow.cli.batch import generate_batch
    from sow.cli.scale_options import ray_settings
    from sow.io.outputs import check_writable

    if options.batch is None:
        raise InputError("--resume goes with --batch FILE")
    if options.num_images > 1:
        raise InputError("--num-images applies to one generation, not to --batch (give each job its own line)")
    if options.arguments or options.condition_opt or options.plan_file or options.box_v or options.box_r or options.name:
        raise InputError("--batch takes the jobs from the file: drop CONDITION, PROMPT, --plan, --box-v/--box-r and --name")
    check_writable(options.out_dir)
    generate_batch(
        options.batch, options.out_dir, overrides, spec=spec, ray=ray_settings(options.ray, options.workers, options.gpus_per_worker),
        resume=options.resume, overwrite=options.overwrite, quiet=options.quiet_bar, json_output=options.json_output, console=console,
    )
