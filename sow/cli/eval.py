"""The ``sow eval`` and ``sow eval-spec`` commands (registered on the app in :mod:`sow.cli.commands`)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from sow.cli.choices import DEVICE_METAVAR, Dtype, value
from sow.cli.scale_options import GpusPerWorkerOpt, RayOpt, WorkersOpt, ray_settings
from sow.errors import InputError
from sow.safety.security import redacting_console

err = redacting_console(stderr=True, soft_wrap=True)
"""Secrets redacted and control characters stripped from every line printed."""


def _csv(text: str | None) -> list[str] | None:
    if text is None:
        return None
    return [part.strip() for part in text.split(",") if part.strip()]


def _options(pairs: list[str] | None) -> dict[str, object] | None:
    """``KEY=VALUE`` pairs (:func:`sow.io.options.parse_key_values`); None when there are none."""
    from sow.io.options import parse_key_values

    return parse_key_values(pairs, "--metric-option") or None


def eval_spec_command(
    faces: Annotated[Path, typer.Argument(metavar="FACES", help="A folder of face images (CelebAMask-HQ or your own).")],
    out: Annotated[Path, typer.Option("--out", "-o", help="The spec file to write (JSONL).")] = Path("spec.jsonl"),
    settings: Annotated[str, typer.Option(help="Comma-separated settings: normal, style, attribute.")] = "normal,style,attribute",
    per_setting: Annotated[int, typer.Option(help="Prompts per face and setting.")] = 1,
    limit: Annotated[Optional[int], typer.Option(help="Use only the first N images (sorted by name).")] = None,
    templates: Annotated[Optional[Path], typer.Option(help="JSON of setting -> prompts (default: sow's own templates).")] = None,
    overwrite: Annotated[bool, typer.Option(help="Replace an existing spec file.")] = False,
) -> None:
    """Pair the face images of FACES with prompt templates into a benchmark spec (JSONL)."""
    from sow.eval.spec import SETTINGS, face_images, load_templates, make_spec, write_spec
    from sow.io.outputs import check_free, check_writable

    check_writable(out.parent)
    check_free([out], overwrite, "choose another --out")
    chosen = tuple(_csv(settings) or ())
    bad = [s for s in chosen if s not in SETTINGS]
    if bad or not chosen:
        raise InputError(f"--settings: unknown setting {bad[0]!r}; use {', '.join(SETTINGS)}" if bad else "--settings is empty")
    images = face_images(faces)
    if limit is not None:
        if limit < 1:
            raise InputError("--limit must be at least 1")
        images = images[:limit]
    items = make_spec(images, load_templates(templates), chosen, per_setting, base=out.resolve().parent)
    write_spec(items, out, replace=overwrite)
    err.print(f"wrote {out}: {len(items)} items ({len(images)} images x {len(chosen)} settings x {per_setting})")


def eval_command(
    spec: Annotated[Path, typer.Argument(metavar="SPEC", help="Benchmark spec (JSONL of id, condition, prompt, setting); see `sow eval-spec`.")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Results folder; an unfinished eval there is resumed.")] = Path("sow-eval"),
    config_file: Annotated[Optional[Path], typer.Option("--config", help="Eval config JSON (EvalConfig fields).")] = None,
    model: Annotated[Optional[str], typer.Option("--model", "-m", show_default="tiny, or --config's", help="'tiny', a hub id, a diffusers folder or a .safetensors file.")] = None,
    methods: Annotated[Optional[str], typer.Option(show_default="sow, cow, ablations, inpaint (with --inpaint-model), controlnet (with --controlnet-model), paste", help="Comma-separated methods: sow, cow, inpaint, controlnet, paste, ablation rows.")] = None,
    metric: Annotated[Optional[str], typer.Option(show_default="dlib, or --config's", help="Face metric plugin: dlib (offline) or facenet.")] = None,
    metric_option: Annotated[Optional[list[str]], typer.Option(help="Metric option KEY=VALUE (repeatable).")] = None,
    inpaint_model: Annotated[Optional[str], typer.Option(help="Inpainting model for the inpaint baseline ('tiny' for the test model).")] = None,
    controlnet_model: Annotated[Optional[str], typer.Option(help="Canny ControlNet for the controlnet baseline: a hub id, a folder, or 'tiny' (random, for tests).")] = None,
    seed: Annotated[Optional[int], typer.Option(show_default="0, or --config's", help="The seed of every method on every item.")] = None,
    canvas: Annotated[Optional[int], typer.Option(show_default="512, the paper's", help="Square canvas side in pixels.")] = None,
    cycles: Annotated[Optional[int], typer.Option(show_default="10, the paper's", help="Number of cycles N.")] = None,
    limit: Annotated[Optional[int], typer.Option(help="Run only the first N spec items.")] = None,
    device: Annotated[Optional[str], typer.Option(metavar=DEVICE_METAVAR, show_default="auto, or --config's", help="auto: a CUDA GPU when there is one, else the CPU (as `sow generate`).")] = None,
    dtype: Annotated[Optional[Dtype], typer.Option(show_default="auto, or --config's", help="auto: bf16 on GPUs that have it, fp16 on others, fp32 on CPU (as `sow generate`).")] = None,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress bar.")] = False,
    ray: RayOpt = None,
    workers: WorkersOpt = None,
    gpus_per_worker: GpusPerWorkerOpt = None,
) -> None:
    """Run the methods on every spec item, measure them, write the table, CSV and contact sheet.

    With --ray [ADDRESS] the images are made and measured on a Ray actor pool; the rows,
    the table and the resume are the same as in one process (docs/scale-out.md).
    """
    from sow.eval.spec import load_spec
    from sow.eval.runner import Evaluation, load_eval_config

    generation: dict[str, object] = {}
    if canvas is not None:
        generation["canvas"] = {"width": canvas, "height": canvas}
    if cycles is not None:
        generation["cycles"] = cycles
    config = load_eval_config(
        config_file,
        model=model,
        methods=_csv(methods),
        metric=metric,
        metric_options=_options(metric_option),
        inpaint={"model": inpaint_model} if inpaint_model else None,
        controlnet={"model": controlnet_model} if controlnet_model else None,
        seed=seed,
        generation=generation or None,
        device=device,
        dtype=value(dtype),
    )
    items = load_spec(spec)
    if limit is not None:
        if limit < 1:
            raise InputError("--limit must be at least 1")
        items = items[:limit]
    from sow.io.outputs import check_writable

    check_writable(out)  # before any model loads
    evaluation = Evaluation(items, config, out, spec_base=spec.resolve().parent)
    for note in evaluation.notes:
        err.print(f"note: {note}", style="yellow", markup=False, highlight=False)

    from sow.cli.progress import counted_progress

    settings = ray_settings(ray, workers, gpus_per_worker)
    compute = None
    if settings is not None:
        from sow.batch.ray_engine import eval_compute_on_ray

        compute = eval_compute_on_ray(evaluation, settings)
    with counted_progress("eval", console=err, disable=quiet) as progress:
        result = evaluation.run(progress=progress, compute=compute)
    skipped = len(result.rows) - len(result.computed)
    err.print(
        f"wrote {result.outputs['markdown']}, {result.outputs['csv']}, {result.outputs['contact_sheet']} "
        f"({len(result.computed)} images made, {skipped} resumed)"
    )
    from sow.safety.security import clean_text

    typer.echo(clean_text(result.outputs["markdown"].read_text(encoding="utf-8")), nl=False)
    failed = [row for row in result.rows if row.error]
    if failed:  # a table with failed rows is no success: say how many, exit 1
        from sow.errors import SowError
        from sow.eval.runner import ROWS_FILE

        raise SowError(f"eval: {len(failed)} of {len(result.rows)} (item, method) rows failed; their errors are in {out / ROWS_FILE}")
