"""``sow eval``: run the methods of a comparison on a benchmark spec and measure them.

Every method runs every spec item with the same seed and the same Stable Diffusion
model; each image is measured with a face metric (:mod:`sow.eval.face_metrics`) and for the
pixel fidelity of the condition region (:mod:`sow.eval.fidelity`) right after it is made, and one row per (item, method) is appended to ``rows.jsonl``. The rows file
is the run's state: a killed eval restarted with the same ``--out`` skips the rows it
finds and computes only the rest. At the end the table (``results.md``,
``results.csv``) and the contact sheet (``contact_sheet.png``) are written from the rows.

Methods (:class:`EvalConfig` picks and shapes them):

``sow``      the planner and stages of :attr:`EvalConfig.sow_stages` (DAM by default).
``cow``      Cyclic One-Way Diffusion: modulator ``none``, adaptive position and prompt
             intensification off, the baseline planner.
ablations    rows of :attr:`EvalConfig.ablations` (named) and :attr:`EvalConfig.grid`
             (every combination), each a change on top of ``sow``.
``inpaint``  Stable Diffusion inpainting of everything but the pasted condition
             (:mod:`sow.eval.inpainting`), with the model :attr:`InpaintSettings.model` names.
``paste``    the seeded canvas itself: the bound on ID fidelity, no generation at all.
``controlnet`` ControlNet on the canny edges of the seeded canvas (:mod:`sow.eval.controlnet`),
             the paper's Table I baseline, with the model :attr:`ControlNetSettings.model` names.

Every row also measures each condition's kept pixels before and after sow's paste
(:func:`kept_rows`, :mod:`sow.eval.kept_region`) and, where a paste happened, the ID distance
before it (``id_before``).
"""

from __future__ import annotations

import hashlib
import itertools
import math
import json
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from PIL import Image
from pydantic import BaseModel, ConfigDict, Field

from sow.engine import seeding
from sow.eval.spec import SpecItem, item_file_name
from sow.errors import InputError, SowError
from sow.io.images import load_condition
from sow.io.journal import Journal, repair_journal
from sow.io.json_files import read_json
from sow.io.outputs import safe_name, save_image_atomic, save_json_atomic
from sow.plugins import Registry, get_registry
from sow.eval.controlnet import ControlNetSettings
from sow.schemas import GenerationConfig, StageNames, _deep_merge, validated

ROWS_FILE = "rows.jsonl"
MANIFEST_FILE = "eval.json"
BUILTIN_METHODS = ("sow", "cow", "inpaint", "paste", "controlnet")
MAX_GRID_ROWS = 256
"""Grid combinations at most: each is one more method, a generation per spec item."""

PAPER_ABLATIONS: dict[str, dict[str, Any]] = {
    "sow-no-ap": {"ablation": {"adaptive_position": False}},
    "sow-no-pi": {"ablation": {"prompt_intensification": False}},
    "sow-no-dam": {"stages": {"modulator": "none"}},
}
"""The paper's module ablations: SOW without adaptive position, prompt intensification, DAM."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class InpaintSettings(_Strict):
    """The ``inpaint`` baseline."""

    model: str | None = Field(None, description="Inpainting model: 'tiny', a folder, a .safetensors file or a hub id.")
    steps: int = Field(50, ge=1, le=1000, description="Inpainting denoising steps (diffusers' default; at most 1000, the timesteps SD was trained with).")


class EvalConfig(_Strict):
    """Everything an eval run compares, as one JSON file (``sow eval --config eval.json``)."""

    model: str = Field("tiny", description="The Stable Diffusion model every method shares.")
    device: str = Field("auto", description="auto (a CUDA GPU when there is one, else the CPU), cpu, cuda or cuda:N; as `sow generate`.")
    dtype: str = Field("auto", description="auto (bf16 on GPUs that have it, fp16 on others, fp32 on CPU), fp32, fp16 or bf16; as `sow generate`.")
    seed: int = Field(0, ge=0, lt=2**63, description="The seed of every method on every item (0 .. 2**63-1, what torch's generator takes).")
    metric: str = Field("dlib", description="Face metric plugin (see `sow plugins`).")
    metric_options: dict[str, Any] = Field(default_factory=dict, description="Options passed to the metric.")
    region_margin: float = Field(0.25, ge=0, le=2, description="How far the face search extends past box_v (share of its sides).")
    generation: dict[str, Any] = Field(default_factory=dict, description="GenerationConfig overrides for every method (canvas, cycles...).")
    sow_stages: dict[str, str] = Field(
        default_factory=lambda: {"modulator": "dam"},
        description="Stage names of the `sow` method (StageNames fields); unset ones keep their defaults.",
    )
    stage_options: dict[str, dict[str, Any]] = Field(
        default_factory=dict, description="Options per stage kind (e.g. {'planner': {...}}), as SOWPipeline takes them."
    )
    baseline_planner: str = Field("fixed", description="Planner of cow, paste and inpaint (where the condition goes).")
    strict_stages: bool = Field(False, description="Fail on a stage name that is not installed (off: run with the default and say so).")
    ablations: dict[str, dict[str, Any]] = Field(
        default_factory=lambda: json.loads(json.dumps(PAPER_ABLATIONS)),
        description="Named rows: GenerationConfig overrides (and 'stages') applied on top of `sow`.",
    )
    grid: dict[str, list[Any]] = Field(
        default_factory=dict,
        description="Dotted GenerationConfig keys -> values; every combination is a row on top of `sow`.",
    )
    inpaint: InpaintSettings = Field(default_factory=InpaintSettings)
    controlnet: ControlNetSettings = Field(default_factory=ControlNetSettings)
    methods: list[str] | None = Field(
        None, description="Methods to run, in column order (default: sow, cow, the ablation rows, inpaint and controlnet if a model is named, paste)."
    )
    sheet_rows: int = Field(24, ge=1, le=1000, description="Items shown in the contact sheet (at most 1000: one picture must stay a size an image viewer opens).")

    def fingerprint(self) -> str:
        """What makes two runs' rows comparable: everything but the method list and the sheet size."""
        data = self.model_dump(exclude={"methods", "sheet_rows"})
        return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()[:16]


@dataclass(frozen=True)
class Method:
    """One column of the comparison."""

    name: str
    kind: Literal["generate", "paste", "inpaint", "controlnet"]
    stages: dict[str, str] = field(default_factory=dict)
    overrides: dict[str, Any] = field(default_factory=dict)


def _dotted(key: str, value: Any) -> dict[str, Any]:
    out: dict[str, Any] = value
    for part in reversed(key.split(".")):
        out = {part: out}
    return out


def _row_overrides(base_stages: dict[str, str], change: dict[str, Any]) -> tuple[dict[str, str], dict[str, Any]]:
    change = json.loads(json.dumps(change))
    stages = {**base_stages, **change.pop("stages", {})}
    return stages, change


def resolve_methods(config: EvalConfig) -> list[Method]:
    """The methods the config asks for, in column order; unknown names are an error."""
    available: dict[str, Method] = {
        "sow": Method("sow", "generate", dict(config.sow_stages)),
        "cow": Method(
            "cow",
            "generate",
            {"planner": config.baseline_planner, "modulator": "none"},
            {"ablation": {"adaptive_position": False, "prompt_intensification": False}},
        ),
    }
    ablation_names: list[str] = []
    taken = set(BUILTIN_METHODS) & set(config.ablations)
    if taken:
        raise InputError(f"ablation row {sorted(taken)[0]!r} takes the name of a built-in method; rename it")
    for name, change in config.ablations.items():
        stages, overrides = _row_overrides(config.sow_stages, change)
        available[name] = Method(name, "generate", stages, overrides)
        ablation_names.append(name)
    if config.grid:
        keys = list(config.grid)
        rows = math.prod(len(config.grid[k]) for k in keys)
        if rows > MAX_GRID_ROWS:
            raise InputError(f"grid: {rows:,} combinations; at most {MAX_GRID_ROWS} (each is a full run per item)")
        for values in itertools.product(*(config.grid[k] for k in keys)):
            change: dict[str, Any] = {}
            for key, value in zip(keys, values):
                _deep_merge(change, _dotted(key, value))
            name = "sow[" + ",".join(f"{k}={json.dumps(v)}" for k, v in zip(keys, values)) + "]"
            stages, overrides = _row_overrides(config.sow_stages, change)
            available[name] = Method(name, "generate", stages, overrides)
            ablation_names.append(name)
    available["inpaint"] = Method("inpaint", "inpaint")
    available["paste"] = Method("paste", "paste")
    available["controlnet"] = Method("controlnet", "controlnet")
    if config.methods is None:
        names = ["sow", "cow", *ablation_names, *(["inpaint"] if config.inpaint.model else []),
                 *(["controlnet"] if config.controlnet.model else []), "paste"]
    else:
        names = list(dict.fromkeys(config.methods))
    unknown = [n for n in names if n not in available]
    if unknown:
        raise InputError(f"unknown method {unknown[0]!r}; available: {', '.join(available)}")
    if "inpaint" in names and not config.inpaint.model:
        raise InputError("method 'inpaint' needs an inpainting model: set inpaint.model (or --inpaint-model)")
    if "controlnet" in names and not config.controlnet.model:
        raise InputError("method 'controlnet' needs a canny ControlNet: set controlnet.model (or --controlnet-model)")
    chosen = [available[n] for n in names]
    folders: dict[str, str] = {}
    for method in chosen:  # each method's images in a folder of its own, also on a case-insensitive filesystem
        key = method_folder(method.name).casefold()
        if key in folders:
            raise InputError(
                f"methods {folders[key]!r} and {method.name!r} would write to one folder ({method_folder(method.name)}); rename one"
            )
        folders[key] = method.name
    return chosen


def method_folder(name: str) -> str:
    """The folder (under ``images/``) of a method's images."""
    return safe_name(name, 80)


# -- the rows file -----------------------------------------------------------------------


def item_key(item: SpecItem) -> str:
    """Changes when an item's condition, prompt or setting changes (its rows are then stale)."""
    people = f"\n{item.people}" if item.people is not None else ""  # one-person items keep their keys
    return hashlib.sha256(f"{item.condition}\n{item.prompt}\n{item.setting}{people}".encode()).hexdigest()[:12]


def read_rows(path: Path) -> list[dict[str, Any]]:
    """The rows of ``rows.jsonl`` (a :mod:`sow.io.journal`); a torn last line (a kill mid-write) is dropped from the file."""
    return repair_journal(path, "eval rows file")


def append_row(path: Path, row: dict[str, Any]) -> None:
    """Append one row and flush it to disk before the next item starts."""
    journal = Journal(path, "eval rows file")
    with journal.open():
        journal.append(row, sort_keys=True)


# -- the run -----------------------------------------------------------------------------


@dataclass
class EvalResult:
    """What :meth:`Evaluation.run` did."""

    out_dir: Path
    rows: list[dict[str, Any]]
    """Every row of the spec's items and the chosen methods (finished earlier or now)."""
    computed: list[tuple[str, str]]
    """(item id, method) pairs computed by this call."""
    notes: list[str]
    outputs: dict[str, Path] = field(default_factory=dict)


class Evaluation:
    """One comparison: spec items x methods, measured with one metric, written to ``out_dir``."""

    def __init__(
        self,
        items: list[SpecItem],
        config: EvalConfig,
        out_dir: Path,
        *,
        spec_base: Path = Path("."),
        registry: Registry | None = None,
        components: Any = None,
        metric: Any = None,
    ) -> None:
        """``components`` (a loaded model) and ``metric`` (a created metric) reuse what the caller has."""
        self.items = items
        self.config = config
        self.out_dir = out_dir
        self.spec_base = spec_base
        self.registry = registry or get_registry()
        self._components = components
        self.methods = resolve_methods(config)
        self._fallbacks: dict[tuple[str, str, str], list[str]] = {}
        self._stage_names = {m.name: self._checked_stages(m) for m in self.methods}
        self.notes = [
            f"{kind.replace('_', ' ')} {name!r} is not installed: {', '.join(users)} ran with {fallback!r}"
            for (kind, name, fallback), users in self._fallbacks.items()
        ]
        self.registry.get("metric", config.metric)  # unknown or unavailable metric: fail before any work
        for method in self.methods:  # bad generation settings: fail before any work
            for setting in sorted({i.setting for i in items}):
                self.generation_config(SpecItem(id="check", condition="-", prompt="-", setting=setting), method)
        for item in items:
            for path in item.condition_paths(spec_base):
                if not path.is_file():
                    raise InputError(f"item {item.id!r}: condition {path} not found")
        self._pipe = None
        self._inpaint_pipe = None
        self._controlnet_pipe = None
        self._metric = metric
        self._references: dict[str, Any] = {}
        _ = self.metric  # a metric that cannot load fails here, before any image is made

    def _checked_stages(self, method: Method) -> StageNames:
        """The method's stage names; a name nobody registered falls back to the default (noted)."""
        defaults = StageNames()
        chosen = {**method.stages} if method.kind == "generate" else {"planner": self.config.baseline_planner}
        unknown_fields = set(chosen) - set(StageNames.model_fields)
        if unknown_fields:
            raise InputError(f"method {method.name!r}: unknown stage field {sorted(unknown_fields)[0]!r}; use {', '.join(StageNames.model_fields)}")
        from sow.pipeline import STAGE_FIELDS

        for kind, attr in STAGE_FIELDS.items():
            name = chosen.get(attr)
            if name is None or name in self.registry.entries[kind]:
                continue
            if self.config.strict_stages:
                self.registry.get(kind, name)  # raises the one-line unknown-stage error
            fallback = getattr(defaults, attr)
            self._fallbacks.setdefault((kind, name, fallback), []).append(method.name)
            chosen[attr] = fallback
        return StageNames(**chosen)

    # -- lazily built tools ------------------------------------------------------------

    @property
    def pipe(self):
        if self._pipe is None:
            from sow.pipeline import SOWPipeline

            if self._components is not None:
                self._pipe = SOWPipeline(self._components, stage_options=self.config.stage_options, registry=self.registry)
            else:  # through the model families' door: a flow model (SD 3, FLUX) as well as the UNets
                self._pipe = SOWPipeline.from_pretrained(self.config.model, device=self.config.device, dtype=self.config.dtype,
                                                         stage_options=self.config.stage_options, registry=self.registry)
        return self._pipe

    @property
    def metric(self):
        if self._metric is None:
            self._metric = self.registry.create("metric", self.config.metric, **self.config.metric_options)
        return self._metric

    @property
    def inpaint_pipe(self):
        if self._inpaint_pipe is None:
            from sow.eval.inpainting import load_inpaint_pipeline

            self._inpaint_pipe = load_inpaint_pipeline(self.config.inpaint.model, self.config.device, self.config.dtype)
        return self._inpaint_pipe

    @property
    def controlnet_pipe(self):
        if self._controlnet_pipe is None:
            from sow.eval.controlnet import load_controlnet_pipeline
            from sow.safety.security import load_policy

            self._controlnet_pipe = load_controlnet_pipeline(self.config.controlnet.model, self.pipe.components, load_policy().allow_pickle)
        return self._controlnet_pipe

    def generation_config(self, item: SpecItem, method: Method, pipe: Any = None) -> GenerationConfig:
        """The method's config for ``item``; with ``pipe``, its model family's defaults (a flow model's S,
        t1, t2, t3 and guidance) under the spec's and the method's settings."""
        overrides = json.loads(json.dumps(self.config.generation))
        _deep_merge(overrides, json.loads(json.dumps(method.overrides)))
        overrides["stages"] = self._stage_names[method.name].model_dump()
        family_defaults = getattr(getattr(pipe, "backbone", None), "config_defaults", None)
        if family_defaults is not None:
            overrides = {**family_defaults(overrides), **overrides}
        try:
            return GenerationConfig.from_preset(item.setting, **overrides)
        except InputError as exc:
            raise InputError(f"method {method.name!r}: {exc}") from None

    # -- one (item, method) ------------------------------------------------------------

    def _make_image(self, item: SpecItem, method: Method) -> tuple[Image.Image, Any, dict[str, Any], Image.Image, Any, list[Any], Image.Image]:
        """(image, the plan with each box_v as used (on the latent grid), extra row fields, the seeded
        canvas, the kept pixels of the first box_v or None, every condition's kept pixels
        (:class:`sow.io.paste.KeptCondition`), the image before the paste (the image itself where nothing was pasted))."""
        from sow.engine.seeding import apply_crop

        paths = item.condition_paths(self.spec_base)
        path = paths[0]
        condition = paths[0] if len(paths) == 1 else paths
        config = self.generation_config(item, method, self.pipe)
        seed = self.config.seed
        group = None
        if item.people is not None and item.people > 1:
            from sow.planners.heuristic import HeuristicPlanner

            group = HeuristicPlanner(max_people=item.people)
        if method.kind == "generate":
            result = self.pipe(condition, item.prompt, seed=seed, config=config, planner=group)
            extra = {
                "stages": result.record.config.stages.model_dump(),
                "unet_evaluations": result.record.unet_evaluations,
                "prompt_used": result.plan.prompt if config.ablation.prompt_intensification else item.prompt,
            }
            used = _used(result.plan, [c.aligned_box_v for c in result.record.conditions])
            kept = _kept(path, result.plan.crop, used.box_v) if len(paths) == 1 else None
            unpasted = result.artifacts.get("unpasted") or [result.image]
            return result.image, used, extra, result.seeded_canvas, kept, result.artifacts.get("kept", []), unpasted[0]
        loaded = [load_condition(p) for p in paths]
        plan = self.pipe.plan([one.image for one in loaded] if len(loaded) > 1 else loaded[0].image, item.prompt, config, seed, planner=group)
        scale = self.pipe.backbone.vae_scale_factor
        boxes, pasted = [], []
        for cond in plan.conditions:
            box_v = cond.box_v.aligned(scale)
            if not box_v.fits(config.canvas):
                box_v = box_v.model_copy(update={"x": config.canvas.width - box_v.w})
            one = loaded[cond.image]
            # one condition: the whole image, as before; several: each its planned crop
            image, mask = (one.image, one.mask) if len(plan.conditions) == 1 else apply_crop(one.image, one.mask, cond.crop)
            boxes.append(box_v)
            pasted.append((image, mask, box_v))
        from sow.io.paste import KeptCondition

        fits = [(seeding.fit_condition(im, b, m), b) for im, m, b in pasted]
        layout = [KeptCondition(b, fitted, keep) for (fitted, keep), b in fits]
        seeded = seeding.paste_all_on_gray([(fitted, b) for (fitted, _), b in fits], config.canvas)
        used = _used(plan, boxes)
        first_image, first_mask, first_box = pasted[0]
        kept = seeding.fit_condition(first_image, first_box, first_mask)[1] if first_mask is not None and len(pasted) == 1 else None
        if method.kind == "paste":
            return seeded, used, {}, seeded, kept, layout, seeded
        if method.kind == "controlnet":
            from sow.eval.controlnet import controlnet_image

            image = controlnet_image(
                self.controlnet_pipe, seeded, item.prompt, seed=seed, settings=self.config.controlnet,
                guidance_scale=config.guidance_scale, negative_prompt=config.negative_prompt,
            )
            return image, used, {"controlnet_model": self.config.controlnet.model}, seeded, kept, layout, image
        if len(pasted) > 1:
            raise InputError(f"method {method.name!r}: the inpaint baseline takes one condition; item {item.id!r} has {len(pasted)}")
        from sow.eval.inpainting import inpaint, repaint_mask

        image, mask, box_v = pasted[0]
        _, keep = seeding.fit_condition(image, box_v, mask)
        mask = repaint_mask(seeded.size, box_v.x, box_v.y, keep)
        image = inpaint(
            self.inpaint_pipe, seeded, mask, item.prompt, seed=seed, steps=self.config.inpaint.steps,
            guidance_scale=config.guidance_scale, negative_prompt=config.negative_prompt,
        )
        return image, used, {"inpaint_model": self.config.inpaint.model}, seeded, kept, layout, image

    def _reference(self, item: SpecItem, plan: Any = None, index: int = 0):
        """The reference face of condition ``index``: one condition, the largest face of its image;
        several, the largest face of that condition's planned crop (one group photo gives several)."""
        from sow.eval.face_metrics import reference_face
        from sow.engine.seeding import apply_crop

        paths = item.condition_paths(self.spec_base)
        cond = plan.conditions[index] if plan is not None and len(plan.conditions) > 1 else None
        path = str(paths[cond.image if cond is not None else 0])
        key = f"{path}#{cond.crop}" if cond is not None and cond.crop is not None else path
        if key not in self._references:
            image = load_condition(Path(path)).image
            if cond is not None:
                image = apply_crop(image, None, cond.crop)[0]
            self._references[key] = reference_face(self.metric, image)
        return self._references[key]

    def run_one(self, item: SpecItem, method: Method) -> dict[str, Any]:
        """Make, save and measure one image; return its row (a per-item SowError becomes the row's error).

        An item of several people gets ``people``: one entry per condition (detected, face,
        ID-distance to its own reference, the nearest other's, swapped, same_person); the row's
        ``detected`` / ``same_person`` hold only when they hold for everyone, ``id_distance`` is
        the mean own distance, and ``swaps`` counts identity swaps.
        """
        from sow.eval.face_metrics import measure_identity, measure_people

        image_path = self.out_dir / "images" / method_folder(method.name) / f"{item_file_name(item.id)}.png"
        row: dict[str, Any] = {
            "id": item.id, "item_key": item_key(item), "method": method.name, "setting": item.setting,
            "prompt": item.prompt, "condition": item.condition, "seed": self.config.seed,
        }
        start = time.perf_counter()
        try:
            image, plan, extra, pasted, kept, layout, unpasted = self._make_image(item, method)
        except SowError as exc:
            row.update(seconds=round(time.perf_counter() - start, 4), error=str(exc), faces=0, detected=False, id_distance=None, same_person=None)
            return row
        row["seconds"] = round(time.perf_counter() - start, 4)
        save_image_atomic(image, image_path)
        from sow.eval.fidelity import condition_fidelity

        row.update(condition_fidelity(pasted, image, plan.box_v, kept).as_row())  # the first condition's box
        boxes = [c.box_v for c in plan.conditions]
        row.update(kept_rows(layout, image, unpasted))
        if len(boxes) > 1:
            references = [self._reference(item, plan, i) for i in range(len(boxes))]
            people = measure_people(self.metric, image, boxes, references, self.config.region_margin)
            own = [p.distance for p in people if p.distance is not None]
            if unpasted is not image:  # the ID distance before the paste, person by person
                before = measure_people(self.metric, unpasted, boxes, references, self.config.region_margin)
                for entry, one in zip(row["kept"], before):
                    entry["id_before"] = None if one.distance is None else round(one.distance, 6)
                known = [p.distance for p in before if p.distance is not None]
                row["id_before"] = round(sum(known) / len(known), 6) if known else None
            row.update(
                extra,
                image=image_path.relative_to(self.out_dir).as_posix(),
                box_v=[b.as_list() for b in boxes],
                faces=sum(p.detected for p in people),
                detected=all(p.detected for p in people),
                id_distance=round(sum(own) / len(own), 6) if own else None,
                same_person=all(p.same_person for p in people),
                swaps=sum(p.swapped for p in people),
                people=[
                    {
                        "condition": p.condition + 1,
                        "detected": p.detected,
                        "face": [p.face.left, p.face.top, p.face.width, p.face.height] if p.face else None,
                        "id_distance": None if p.distance is None else round(p.distance, 6),
                        "other_distance": None if p.other_distance is None else round(p.other_distance, 6),
                        "swapped": p.swapped,
                        "same_person": p.same_person,
                        "note": p.note,
                    }
                    for p in people
                ],
            )
            return row
        box_v = boxes[0]
        measured = measure_identity(self.metric, image, box_v, self._reference(item), self.config.region_margin)
        if unpasted is not image:  # the ID distance before the paste
            before = measure_identity(self.metric, unpasted, box_v, self._reference(item), self.config.region_margin).distance
            row["id_before"] = None if before is None else round(before, 6)
            if row.get("kept"):
                row["kept"][0]["id_before"] = row["id_before"]
        face = measured.face
        row.update(
            extra,
            image=image_path.relative_to(self.out_dir).as_posix(),
            box_v=box_v.as_list(),
            faces=measured.faces,
            detected=measured.detected,
            face=[face.left, face.top, face.width, face.height] if face else None,
            id_distance=None if measured.distance is None else round(measured.distance, 6),
            same_person=measured.same_person,
            note=measured.note,
        )
        return row

    # -- the whole run -----------------------------------------------------------------

    def _check_manifest(self) -> None:
        path = self.out_dir / MANIFEST_FILE
        fingerprint = self.config.fingerprint()
        if path.is_file():
            try:
                data = read_json(path, "eval manifest", 16 * 1024 * 1024)
                previous = data.get("fingerprint") if isinstance(data, dict) else None
            except InputError:
                previous = None
            if previous != fingerprint:
                raise InputError(
                    f"{self.out_dir} holds an eval with other settings (model, seed, metric or generation); "
                    "choose another --out to start a new one"
                )
        manifest = {
            "fingerprint": fingerprint,
            "config": self.config.model_dump(),
            "methods": [m.name for m in self.methods],
            "items": len(self.items),
            "notes": self.notes,
        }
        save_json_atomic(manifest, path)

    def pending(self, rows: list[dict[str, Any]]) -> list[tuple[SpecItem, Method]]:
        done = {(r["id"], r["method"], r.get("item_key")) for r in rows}
        return [(i, m) for i in self.items for m in self.methods if (i.id, m.name, item_key(i)) not in done]

    def run(
        self,
        on_row: Callable[[dict[str, Any]], None] | None = None,
        progress: Callable[[int, int, str], None] | None = None,
        compute: Callable[[list[tuple[SpecItem, Method]]], Iterator[dict[str, Any]]] | None = None,
    ) -> EvalResult:
        """Compute every missing (item, method) row, then write the reports.

        ``on_row`` sees each new row after it is on disk; ``progress(done, total, label)``
        is called before each pair (``label`` = ``"item · method"``) and once at the end.
        With ``compute``, ``progress`` is called after each row instead. ``compute`` makes the rows of the pending pairs elsewhere (e.g. on a Ray actor
        pool: :func:`sow.batch.ray_engine.eval_compute_on_ray`), yielding them as they
        finish, in any order; this process alone appends them to the rows file.
        """
        self.out_dir.mkdir(parents=True, exist_ok=True)
        self._check_manifest()
        rows_path = self.out_dir / ROWS_FILE
        rows = read_rows(rows_path)
        todo = self.pending(rows)
        computed: list[tuple[str, str]] = []
        if todo and compute is None:  # load the models now, so that no image's time includes loading them
            _ = self.pipe
            if any(m.kind == "inpaint" for _, m in todo):
                _ = self.inpaint_pipe
            if any(m.kind == "controlnet" for _, m in todo):
                _ = self.controlnet_pipe
        for row in self._rows_of(todo, progress, compute):
            append_row(rows_path, row)
            rows.append(row)
            computed.append((row["id"], row["method"]))
            if on_row:
                on_row(row)
        if progress:
            progress(len(todo), len(todo), "reports")
        from sow.eval.report import write_reports

        current = self._current_rows(rows)
        outputs = write_reports(self, current)
        return EvalResult(self.out_dir, current, computed, self.notes, outputs)

    def _rows_of(self, todo, progress, compute) -> Iterator[dict[str, Any]]:
        """The rows of the pending pairs: here, one after another, or from ``compute`` as they finish."""
        if compute is None:
            for index, (item, method) in enumerate(todo):
                if progress:
                    progress(index, len(todo), f"{item.id} · {method.name}")
                yield self.run_one(item, method)
        elif todo:
            for index, row in enumerate(compute(todo), start=1):
                if progress:
                    progress(index, len(todo), f"{row['id']} · {row['method']}")
                yield row

    def _current_rows(self, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
        keys = {(i.id, item_key(i)) for i in self.items}
        names = {m.name for m in self.methods}
        latest: dict[tuple[str, str], dict[str, Any]] = {}
        for row in rows:
            if (row["id"], row.get("item_key")) in keys and row["method"] in names:
                latest[(row["id"], row["method"])] = row
        # in spec and method order, whatever order the rows were made in (several workers)
        item_order = {item.id: n for n, item in enumerate(self.items)}
        method_order = {m.name: n for n, m in enumerate(self.methods)}
        return sorted(latest.values(), key=lambda r: (item_order[r["id"]], method_order[r["method"]]))


def kept_rows(layout: list[Any], image: Image.Image, unpasted: Image.Image) -> dict[str, Any]:
    """Per condition: PSNR, max abs and seam of its kept pixels before and after the paste
    (:mod:`sow.eval.kept_region`); the row's summary: the worst max abs, the mean seams, the lowest PSNRs."""
    import numpy as np

    from sow.eval.kept_region import kept_measures
    from sow.io.paste import kept_layout
    from sow.schemas import Canvas

    if not layout:
        return {}
    after = np.asarray(image.convert("RGB"))
    before = np.asarray(unpasted.convert("RGB"))
    target, _, each = kept_layout(layout, Canvas(width=after.shape[1], height=after.shape[0]))
    entries = []
    for k, mask in enumerate(each):
        b, a = kept_measures(target, before, mask), kept_measures(target, after, mask)
        entries.append({"condition": k + 1, **{f"{name}_before": _rounded(v) for name, v in b.items()}, **{f"{name}_after": _rounded(v) for name, v in a.items()}})

    def pick(key: str, how) -> float | None:
        values = [e[key] for e in entries if e[key] is not None]
        return how(values) if values else None

    return {
        "kept": entries,
        "kept_max_before": pick("max_abs_before", max), "kept_max_after": pick("max_abs_after", max),
        "kept_psnr_before": pick("psnr_before", min), "kept_psnr_after": pick("psnr_after", min),
        "seam_before": pick("seam_before", lambda v: round(sum(v) / len(v), 6)), "seam_after": pick("seam_after", lambda v: round(sum(v) / len(v), 6)),
    }


def _rounded(value: float | None) -> float | None:
    return None if value is None else value if math.isinf(value) else round(value, 6)


def _kept(path: Path, crop: Any, box_v: Any) -> Image.Image | None:
    """The kept pixels of box_v for a condition with an alpha mask (None: every pixel is kept)."""
    from sow.engine.seeding import apply_crop

    loaded = load_condition(path)
    if loaded.mask is None:
        return None
    image, mask = apply_crop(loaded.image, loaded.mask, crop)
    return seeding.fit_condition(image, box_v, mask)[1]


def _used(plan: Any, boxes: list[Any]) -> Any:
    """``plan`` with each condition's box_v as used (snapped to the latent grid)."""
    return plan.model_copy(update={"conditions": [c.model_copy(update={"box_v": b}) for c, b in zip(plan.conditions, boxes)]})


def load_eval_config(path: Path | None, **overrides: Any) -> EvalConfig:
    """An :class:`EvalConfig` from a JSON file (or the defaults), then non-None ``overrides``."""
    data: dict[str, Any] = {}
    if path is not None:
        data = read_json(path, "eval config")
        if not isinstance(data, dict):
            raise InputError(f"eval config {path}: expected a JSON object")
    for key, value in overrides.items():
        if value is None:
            continue
        if isinstance(value, dict) and isinstance(data.get(key), dict):
            _deep_merge(data[key], value)
        else:
            data[key] = value
    return validated(EvalConfig, data, f"eval config{f' {path}' if path else ''}")
