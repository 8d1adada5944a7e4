"""``sow eval``: run the methods of a comparison on a benchmark spec and measure them.

Every method (:mod:`sow.eval.methods`) runs every spec item with the same seed and the same
model; each image is made (:mod:`sow.eval.making`), measured right away (:mod:`sow.eval.measuring`:
a face metric, the pixel fidelity of the condition region, each condition's kept pixels before
and after sow's paste) and one typed row per (item, method) is appended to ``rows.jsonl``
(:mod:`sow.eval.rows`). The rows file is the run's state: a killed eval restarted with the same
``--out`` skips the rows it finds and computes only the rest. At the end the reports
(:mod:`sow.eval.report`: ``results.md``, ``results.csv``, ``contact_sheet.png``) are written from
the files alone: the rows and ``eval.json`` (:mod:`sow.eval.manifest`).

This module is the orchestration; the names below the imports are re-exported for the callers
that know them from here.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sow.errors import InputError, SowError
from sow.eval.config import PAPER_ABLATIONS, EvalConfig, InpaintSettings, load_eval_config
from sow.eval.making import make_image
from sow.eval.manifest import MANIFEST_FILE, EvalManifest, write_manifest
from sow.eval.measuring import ReferenceFaces, measure
from sow.eval.methods import BUILTIN_METHODS, MAX_GRID_ROWS, Method, method_folder, resolve_methods
from sow.eval.rows import ROWS_FILE, EvalRow, append_row, current_rows, item_key, read_rows
from sow.eval.spec import SpecItem, item_file_name
from sow.io.outputs import save_image_atomic
from sow.plugins import Registry, get_registry
from sow.schemas import GenerationConfig, StageNames, _deep_merge
from sow.stage_kinds import label as kind_label

__all__ = [
    "BUILTIN_METHODS", "MANIFEST_FILE", "MAX_GRID_ROWS", "PAPER_ABLATIONS", "ROWS_FILE", "EvalConfig", "EvalResult",
    "EvalRow", "Evaluation", "InpaintSettings", "Method", "item_key", "load_eval_config", "method_folder",
    "read_rows", "resolve_methods",
]


@dataclass
class EvalResult:
    """What :meth:`Evaluation.run` did."""

    out_dir: Path
    rows: list[EvalRow]
    """Every row of the spec's items and the chosen methods (finished earlier or now), in spec and method order."""
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
            f"{kind_label(kind)} {name!r} is not installed: {', '.join(users)} ran with {fallback!r}"
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
        _ = self.metric  # a metric that cannot load fails here, before any image is made
        self._references = ReferenceFaces(self.metric, spec_base)

    def _checked_stages(self, method: Method) -> StageNames:
        """The method's stage names; a name nobody registered falls back to the default (noted)."""
        defaults = StageNames()
        chosen = {**method.stages} if method.kind == "generate" else {"planner": self.config.baseline_planner}
        unknown_fields = set(chosen) - set(StageNames.model_fields)
        if unknown_fields:
            raise InputError(f"method {method.name!r}: unknown stage field {sorted(unknown_fields)[0]!r}; use {', '.join(StageNames.model_fields)}")
        from sow.stages import STAGE_FIELDS

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

    def run_one(self, item: SpecItem, method: Method) -> EvalRow:
        """Make, save and measure one image; return its row (a per-item SowError becomes the row's error)."""
        image_path = self.out_dir / "images" / method_folder(method.name) / f"{item_file_name(item.id)}.png"
        base = {
            "id": item.id, "item_key": item_key(item), "method": method.name, "setting": item.setting,
            "prompt": item.prompt, "condition": item.condition, "seed": self.config.seed,
        }
        start = time.perf_counter()
        try:
            made = make_image(self, item, method, self.generation_config(item, method, self.pipe), self.spec_base)
        except SowError as exc:
            return EvalRow(**base, seconds=round(time.perf_counter() - start, 4), error=str(exc), faces=0, detected=False,
                           id_distance=None, same_person=None)
        seconds = round(time.perf_counter() - start, 4)
        save_image_atomic(made.image, image_path)
        measured = measure(made, item, self.metric, self._references, self.config.region_margin)
        return EvalRow(**base, seconds=seconds, **measured, **made.fields, image=image_path.relative_to(self.out_dir).as_posix())

    # -- the whole run -----------------------------------------------------------------

    def manifest(self) -> EvalManifest:
        """What ``eval.json`` says about this eval (the reports read it with the rows)."""
        return EvalManifest(
            fingerprint=self.config.fingerprint(), config=self.config, methods=[m.name for m in self.methods],
            items=self.items, spec_base=str(self.spec_base.resolve()), threshold=getattr(self.metric, "threshold", None), notes=self.notes,
        )

    def pending(self, rows: list[EvalRow]) -> list[tuple[SpecItem, Method]]:
        done = {(r.id, r.method, r.item_key) for r in rows}
        return [(i, m) for i in self.items for m in self.methods if (i.id, m.name, item_key(i)) not in done]

    def run(
        self,
        on_row: Callable[[EvalRow], None] | None = None,
        progress: Callable[[int, int, str], None] | None = None,
        compute: Callable[[list[tuple[SpecItem, Method]]], Iterator[EvalRow]] | None = None,
    ) -> EvalResult:
        """Compute every missing (item, method) row, then write the reports.

        ``on_row`` sees each new row after it is on disk; ``progress(done, total, label)``
        is called before each pair (``label`` = ``"item · method"``) and once at the end.
        With ``compute``, ``progress`` is called after each row instead. ``compute`` makes the rows of the pending pairs elsewhere (e.g. on a Ray actor
        pool: :func:`sow.batch.ray_engine.eval_compute_on_ray`), yielding them as they
        finish, in any order; this process alone appends them to the rows file.
        """
        self.out_dir.mkdir(parents=True, exist_ok=True)
        write_manifest(self.manifest(), self.out_dir)
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
            computed.append((row.id, row.method))
            if on_row:
                on_row(row)
        if progress:
            progress(len(todo), len(todo), "reports")
        from sow.eval.report import write_reports

        outputs = write_reports(self.out_dir)
        current = current_rows(rows, self.items, [m.name for m in self.methods])
        return EvalResult(self.out_dir, current, computed, self.notes, outputs)

    def _rows_of(self, todo, progress, compute) -> Iterator[EvalRow]:
        """The rows of the pending pairs: here, one after another, or from ``compute`` as they finish."""
        if compute is None:
            for index, (item, method) in enumerate(todo):
                if progress:
                    progress(index, len(todo), f"{item.id} · {method.name}")
                yield self.run_one(item, method)
        elif todo:
            for index, row in enumerate(compute(todo), start=1):
                if progress:
                    progress(index, len(todo), f"{row.id} · {row.method}")
                yield row
