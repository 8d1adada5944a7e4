"""What the web app does, without the web: load a model once, plan, redraw an edited plan, generate.

Everything here goes through the library's public API (``SOWPipeline``, ``Plan``, ``Box``,
``GenerationConfig``, the plan picture of :mod:`sow.viz.plan`), so the page can do nothing
that Python cannot. Errors are :class:`sow.errors.SowError`; :func:`one_line` renders any
exception as the line the CLI would print.
"""

from __future__ import annotations

import tempfile
import threading
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from PIL import Image

from sow.errors import InputError, SowError
from sow.request import GenerationRequest
from sow.schemas import GenerationConfig, Plan
from sow.ui.limits import UiLimits, condition_paths  # noqa: F401 - condition_paths: part of this module's API

def one_line(exc: BaseException) -> str:
    """The message the CLI prints for ``exc``: ``error: ...`` on one line, secrets redacted."""
    from sow.safety.security import redact

    from sow.errors import environment_problem

    problem = environment_problem(exc)
    if isinstance(exc, SowError):
        text = f"error: {exc}"
    elif problem is not None:  # out of memory, a full disk: the machine's, not a bug
        text = f"error: {problem}"
    else:
        first = str(exc).splitlines()[0] if str(exc) else ""
        text = f"error: unexpected {type(exc).__name__}: {first} (a bug in sow or a plugin)"
    return redact(" ".join(text.split()))


class ModelCache:
    """The pipelines of the models the operator offers, loaded on first use, at most ``limits.max_loaded`` at once.

    A name the operator did not offer is refused before anything is read from disk (the page's
    model field is a visitor's text); loading one more than ``max_loaded`` evicts the model used
    longest ago (its memory is freed once no running job holds it).
    """

    def __init__(
        self, device: str = "auto", dtype: str = "auto", loader: Callable[..., Any] | None = None, limits: UiLimits | None = None
    ) -> None:
        self.device, self.dtype = device, dtype
        self.loader = loader
        self.limits = limits or UiLimits()
        self.loads = 0
        """How many models were loaded (the page reuses them: one load per model name while it stays loaded)."""
        self._pipes: OrderedDict[str, Any] = OrderedDict()
        self._lock = threading.Lock()

    @property
    def loaded(self) -> list[str]:
        """The names in memory, the one used longest ago first."""
        return list(self._pipes)

    def get(self, model: str) -> Any:
        if model is None or (isinstance(model, str) and not model.strip()):
            raise InputError("choose a model (e.g. tiny)")
        model = self.limits.model(model)
        with self._lock:
            if model in self._pipes:
                self._pipes.move_to_end(model)
                return self._pipes[model]
            while len(self._pipes) >= self.limits.max_loaded:
                self._pipes.popitem(last=False)
                _free_memory()
            if self.loader is not None:
                pipe = self.loader(model)
            else:
                from sow.pipeline import SOWPipeline

                pipe = SOWPipeline.from_pretrained(model, device=self.device, dtype=self.dtype)
            self._pipes[model] = pipe
            self.loads += 1
            return pipe


def _free_memory() -> None:
    """Give an evicted model's memory back (Python's cycles, then CUDA's cache)."""
    import gc

    gc.collect()
    try:
        import torch

        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    except ImportError:  # pragma: no cover - torch is a core dependency
        pass


@dataclass
class Choices:
    """What the page's controls say, for one plan or one generation."""

    model: str
    prompt: str
    planner: str
    modulator: str
    preset: str
    seed: int
    num_images: int = 1
    attention: bool = False


def the_condition(paths: list[Path]) -> Path | list[Path]:
    """One path, or the list when several photos were uploaded (a pipeline that takes one says so)."""
    return paths[0] if len(paths) == 1 else paths


def make_config(choices: Choices, overrides: dict[str, Any], pipe: Any = None) -> GenerationConfig:
    """The run's config from the page's choices over the file's ``overrides``; with ``pipe``, its model
    family's own defaults (a flow model's S, t1, t2, t3 and guidance: docs/models.md) under both."""
    if not isinstance(choices.seed, int) or not 0 <= choices.seed < 2**63:
        raise InputError(f"seed {choices.seed!r}: must be a whole number in 0 .. 2**63-1")
    stages = {**overrides.get("stages", {}), "planner": choices.planner, "modulator": choices.modulator}
    extra = {"trace_attention": True} if choices.attention else {}
    family_defaults = getattr(getattr(pipe, "backbone", None), "config_defaults", None)
    base = family_defaults(overrides) if family_defaults is not None else {}
    return GenerationConfig.from_preset(choices.preset, **{**base, **overrides, **extra, "stages": stages})


def load_image(path: Path) -> Image.Image:
    from sow.io.images import load_condition

    return load_condition(path).image


def seeded_picture(plan: Plan, condition: Path | list[Path], scale: int = 8) -> Image.Image:
    """The seeded canvas: each condition (its planned crop) pasted at its box_v (as the run pastes it) on gray.

    ``condition``: the uploaded photo, or the list of them (one per condition image).
    """
    from sow.engine.seeding import apply_crop, fit_condition, paste_all_on_gray
    from sow.io.images import load_condition

    paths = condition if isinstance(condition, list) else [condition]
    loaded = [load_condition(p) for p in paths]
    pasted = []
    for cond in plan.conditions:
        one = loaded[min(cond.image, len(loaded) - 1)]
        image, mask = apply_crop(one.image, one.mask, cond.crop)
        box_v = cond.box_v.aligned(scale, plan.canvas)
        pasted.append((fit_condition(image, box_v, mask)[0], box_v))
    return paste_all_on_gray(pasted, plan.canvas)


def picture(plan: Plan, condition: Path | list[Path], scale: int = 8) -> Image.Image:
    """The plan picture (:func:`sow.viz.plan.draw_plan`) over :func:`seeded_picture`: every box drawn, numbered."""
    from sow.viz.plan import draw_plan

    return draw_plan(plan, seeded_picture(plan, condition, scale))


def preview(files: Any) -> list[tuple[Image.Image, str]]:
    """The uploaded photos for the page's preview, each captioned ``N: file name``; nothing uploaded: [].

    Each photo is read as a run reads it (a bad upload raises the CLI's one-line error here).
    """
    if not files:
        return []
    out = []
    for i, path in enumerate(condition_paths(files)):
        image = load_image(path)
        image.thumbnail((256, 256))
        out.append((image, f"{i + 1}: {path.name}"))
    return out


def edited_plan(plan_json: dict | None, prompt: str) -> Plan | None:
    """The plan of the page: the boxes as the page holds them (dragged or typed), the prompt as its field says."""
    if not plan_json:
        return None
    if not (prompt or "").strip():
        raise InputError("the plan's prompt is empty; write what the scene should show")
    try:
        return Plan.model_validate({**dict(plan_json), "prompt": prompt})
    except ValueError as exc:
        from sow.schemas import first_error

        raise InputError(f"invalid plan: {first_error(exc)}") from None


def canvas_overrides(width: Any, height: Any, overrides: dict[str, Any]) -> dict[str, Any]:
    """``overrides`` with the page's canvas fields (both empty: the overrides' or the model's canvas)."""
    if width in (None, "") and height in (None, ""):
        return overrides
    try:
        width, height = int(width), int(height)
    except (TypeError, ValueError):
        raise InputError("canvas width and height must both be whole numbers of pixels") from None
    if width % 8 or height % 8 or not (64 <= width <= 4096 and 64 <= height <= 4096):
        raise InputError(f"canvas {width}x{height}: each side must be a multiple of 8 in 64..4096")
    return {**overrides, "canvas": {"width": width, "height": height}}


WEB_LABELS = {
    "seed": "seed", "attention": "the attention picture", "modulator": "the modulator", "plan": "the plan",
}
"""How the page names a request's fields in its messages."""


def request_of(condition: Path | list[Path], choices: Choices, config: GenerationConfig, plan: Plan | None) -> GenerationRequest:
    """The :class:`~sow.request.GenerationRequest` of the page's choices (the same request the CLI and the batch build)."""
    return GenerationRequest(
        conditions=condition if isinstance(condition, list) else [condition],
        prompt=choices.prompt,
        seed=choices.seed,
        num_images=choices.num_images,
        preset=choices.preset,
        config=config,
        plan=plan,
        attention=choices.attention,
        labels=WEB_LABELS,
    )


@dataclass
class Generated:
    images: list[Image.Image]
    plan_picture: Image.Image
    attention_picture: Image.Image | None
    plan_file: Path
    record_file: Path
    plan: Plan
    summary: str


def generate(
    pipe: Any,
    condition: Path | list[Path],
    choices: Choices,
    config: GenerationConfig,
    plan: Plan | None,
    progress: Callable[[dict[str, Any]], None] | None = None,
    out_dir: Path | None = None,
) -> Generated:
    """One generation as the page runs it: the page's request checked by the library (:meth:`GenerationRequest.check`,
    the boxes on this model's grid) and run; the plan JSON and the run record are written to ``out_dir``."""
    from sow.viz.plan import draw_plan
    from sow.io.outputs import save_json_atomic

    result = request_of(condition, choices, config, plan).check(grid=pipe.backbone.vae_scale_factor).run(pipe, progress)
    aligned = [c.aligned_box_v for c in result.record.conditions] or [result.record.aligned_box_v]
    attention = None
    if choices.attention:
        from sow.attention.capture import ATTENTION_ARTIFACT
        from sow.viz.attention import attention_picture

        capture = result.artifacts.get(ATTENTION_ARTIFACT)
        attention = attention_picture(capture, result.seeded_canvas) if capture is not None else None
    out_dir = Path(out_dir or tempfile.mkdtemp(prefix="sow-ui-"))
    out_dir.mkdir(parents=True, exist_ok=True)
    plan_file, record_file = out_dir / "plan.json", out_dir / "record.json"
    save_json_atomic(result.plan, plan_file)
    from sow.io.masks import mask_paths
    from sow.io.outputs import write_bytes_atomic
    from sow.io.results import mask_files

    masks = mask_paths(record_file, len(result.artifacts.get("masks") or []))
    for role, data in mask_files(result, masks).items():  # the page's masks, named in the record (sow.io.masks)
        write_bytes_atomic(masks[role], data)
    save_json_atomic(result.record, record_file)
    seconds = sum(t.seconds for t in result.record.timings)
    summary = f"{len(result.images)} image(s), {result.record.unet_evaluations} UNet evaluations, {seconds:.1f} s"
    notes = [*result.record.warnings, *result.plan.notes]
    return Generated(
        images=result.images,
        plan_picture=draw_plan(result.plan, result.seeded_canvas, aligned),
        attention_picture=attention,
        plan_file=plan_file,
        record_file=record_file,
        plan=result.plan,
        summary="; ".join([summary, *notes]),
    )
