"""What the web app does, without the web: load a model once, plan, redraw an edited plan, generate.

Everything here goes through the library's public API (``SOWPipeline``, ``Plan``, ``Box``,
``GenerationConfig``, the plan picture of :mod:`sow.io.canvas`), so the page can do nothing
that Python cannot. Errors are :class:`sow.errors.SowError`; :func:`one_line` renders any
exception as the line the CLI would print.
"""

from __future__ import annotations

import tempfile
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from PIL import Image

from sow.errors import InputError, SowError
from sow.schemas import Box, GenerationConfig, Plan

BOX_FIELDS = ("x", "y", "w", "h")
"""The order of a box's number fields in the page."""


def one_line(exc: BaseException) -> str:
    """The message the CLI prints for ``exc``: ``error: ...`` on one line, secrets redacted."""
    from sow.io.security import redact

    if isinstance(exc, SowError):
        text = f"error: {exc}"
    else:
        first = str(exc).splitlines()[0] if str(exc) else ""
        text = f"error: unexpected {type(exc).__name__}: {first} (a bug in sow or a plugin)"
    return redact(" ".join(text.split()))


class ModelCache:
    """One :class:`SOWPipeline` per model name for the life of the process, loaded on first use."""

    def __init__(self, device: str = "auto", dtype: str = "auto", loader: Callable[..., Any] | None = None) -> None:
        self.device, self.dtype = device, dtype
        self.loader = loader
        self.loads = 0
        """How many models were loaded (the page reuses them: one load per model name)."""
        self._pipes: dict[str, Any] = {}
        self._lock = threading.Lock()

    def get(self, model: str) -> Any:
        model = (model or "").strip()
        if not model:
            raise InputError("choose a model (e.g. tiny)")
        with self._lock:
            if model not in self._pipes:
                if self.loader is not None:
                    self._pipes[model] = self.loader(model)
                else:
                    from sow.pipeline import SOWPipeline

                    self._pipes[model] = SOWPipeline.from_pretrained(model, device=self.device, dtype=self.dtype)
                self.loads += 1
            return self._pipes[model]


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


def condition_paths(files: Any) -> list[Path]:
    """The uploaded files as paths (gradio hands over paths, file objects or dicts, by version)."""
    if not files:
        raise InputError("upload a condition photo (a face) first")
    items = files if isinstance(files, (list, tuple)) else [files]
    paths = []
    for item in items:
        name = item if isinstance(item, (str, Path)) else getattr(item, "name", None) or (item or {}).get("path")
        paths.append(Path(name))
    return paths


def the_condition(paths: list[Path]) -> Path | list[Path]:
    """One path, or the list when several photos were uploaded (a pipeline that takes one says so)."""
    return paths[0] if len(paths) == 1 else paths


def make_config(choices: Choices, overrides: dict[str, Any]) -> GenerationConfig:
    if not isinstance(choices.seed, int) or not 0 <= choices.seed < 2**63:
        raise InputError(f"seed {choices.seed!r}: must be a whole number in 0 .. 2**63-1")
    stages = {**overrides.get("stages", {}), "planner": choices.planner, "modulator": choices.modulator}
    extra = {"trace_attention": True} if choices.attention else {}
    return GenerationConfig.from_preset(choices.preset, **{**overrides, **extra, "stages": stages})


def load_image(path: Path) -> Image.Image:
    from sow.io.images import load_condition

    return load_condition(path).image


def picture(plan: Plan, condition: Path | list[Path], scale: int = 8) -> Image.Image:
    """The plan drawn over the seeded canvas: each condition (its planned crop) pasted at its box_v on gray.

    ``condition``: the uploaded photo, or the list of them (a plan of several people: every box
    drawn, numbered).
    """
    from sow.io.canvas import draw_plan, fit_condition, paste_all_on_gray
    from sow.io.images import load_condition
    from sow.io.canvas import apply_crop

    paths = condition if isinstance(condition, list) else [condition]
    loaded = [load_condition(p) for p in paths]
    pasted = []
    for cond in plan.conditions:
        one = loaded[min(cond.image, len(loaded) - 1)]
        image, mask = apply_crop(one.image, one.mask, cond.crop)
        box_v = cond.box_v.aligned(scale)
        if not box_v.fits(plan.canvas):
            box_v = box_v.model_copy(update={"x": plan.canvas.width - box_v.w})
        pasted.append((fit_condition(image, box_v, mask)[0], box_v))
    return draw_plan(plan, paste_all_on_gray(pasted, plan.canvas))


def edited_plan(plan_json: dict | None, box_v: list[Any], box_r: list[Any], prompt: str) -> Plan | None:
    """The plan of the page: the planner's, with the boxes and the prompt as the fields now say."""
    if not plan_json:
        return None
    try:
        values = [[int(round(float(v))) for v in box] for box in (box_v, box_r)]
    except (TypeError, ValueError):
        raise InputError("box fields must be numbers (x, y, w, h in canvas pixels)") from None
    data = dict(plan_json)
    edited = {"box_v": dict(zip(BOX_FIELDS, values[0])), "box_r": dict(zip(BOX_FIELDS, values[1]))}
    if isinstance(data.get("conditions"), list) and data["conditions"]:  # the fields edit the first condition
        data["conditions"] = [{**data["conditions"][0], **edited}, *data["conditions"][1:]]
    else:
        data.update(edited)
    if not (prompt or "").strip():
        raise InputError("the plan's prompt is empty; write what the scene should show")
    data["prompt"] = prompt
    try:
        return Plan.model_validate(data)
    except ValueError as exc:
        from sow.schemas import first_error

        raise InputError(f"invalid plan: {first_error(exc)}") from None


def box_values(box: Box) -> list[int]:
    return [box.x, box.y, box.w, box.h]


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
    """One generation as the page runs it; the plan JSON and the run record are written to ``out_dir``."""
    from sow.io.canvas import draw_plan
    from sow.io.outputs import save_json_atomic

    if choices.attention and (config.stages.modulator == "none" or not config.ablation.dynamic_attention):
        raise InputError("the attention picture needs attention modulation; the modulator is off (choose dam)")
    result = pipe(
        condition, choices.prompt, plan=plan, seed=choices.seed, config=config,
        callback=progress, num_images=choices.num_images,
    )
    used = result.plan.model_copy(update={"box_v": result.record.aligned_box_v})
    attention = None
    if choices.attention:
        from sow.attention.capture import ATTENTION_ARTIFACT, attention_picture

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
        plan_picture=draw_plan(used, result.seeded_canvas),
        attention_picture=attention,
        plan_file=plan_file,
        record_file=record_file,
        plan=result.plan,
        summary="; ".join([summary, *notes]),
    )
