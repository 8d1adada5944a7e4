"""Batch generation: many jobs, one model load, a manifest that survives ``kill -9``.

A batch file is JSON Lines, one job per line (blank lines and lines starting with ``#``
are skipped)::

    {"condition": "faces/ada.jpg", "prompt": "a chef in a busy kitchen", "seed": 7}
    {"condition": "faces/bob.png", "prompt": "an astronaut", "preset": "style", "plan": "bob.plan.json"}

Relative ``condition`` and ``plan`` paths are read from the batch file's folder. Several
people: ``condition`` is a list of images (``{"condition": ["a.jpg", "b.jpg"], ...}``), one
condition each (docs/several-people.md). Every
output goes into the one output folder, named ``<id>.png`` / ``.plan.png`` / ``.json``
where the id is the job's ``name`` (a plain file name: no folders, no ``..``) or
``<line>-<prompt>-s<seed>``; nothing in a batch file can write anywhere else.

The whole file is validated before the model loads (a bad line is a usage error naming
the line and the field). Then each job runs in turn; an item that fails (a corrupt
image, a planner error, NaN latents) is recorded with its error and the batch goes on.

**The manifest** ``<out>/manifest.jsonl`` is append-only: a ``start`` line before an
item runs, a ``done`` line (with its outputs and the image's SHA-256) after its files
were written atomically, or a ``failed`` line with the error. Each line is flushed and
fsynced. Killed at any moment, the folder holds finished items (in the manifest), at most
one unfinished item (a ``start`` without ``done``; its files, if any were renamed into
place, are overwritten when it reruns) and never a half-written file. ``resume=True``
runs only the jobs without a matching ``done`` line (same id, same job content, outputs
present); failed items are retried.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from sow.errors import InputError, SowError
from sow.io.files import jsonl_lines, parse_json, read_regular_text
from sow.io.journal import Journal
from sow.io.outputs import check_free, check_unique, safe_name
from sow.io.results import output_paths, write_outputs
from sow.safety.security import clean_text, redact
from sow.request import GenerationRequest
from sow.schemas import Plan, Preset, first_error
from sow.batch.workers import WorkerIdentity, merge_parts, part_files, parts_dir, run_of, shard

MANIFEST_NAME = "manifest.jsonl"
MAX_BATCH_BYTES = 64 * 1024 * 1024
"""Batch files larger than this are refused (64 MiB: about a million jobs)."""


class BatchJob(BaseModel):
    """One line of a batch file."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    condition: str | list[str] = Field(description="Image file, or a list of them for several people (relative paths: from the batch file's folder).")
    prompt: str = Field(description="What the scene should show.")
    plan: str | Plan | None = Field(None, description="A plan file path or an inline plan: skips the planner.")
    seed: int = Field(0, ge=0, lt=2**63, description="Random seed (0 .. 2**63-1, what torch's generator takes).")
    preset: Preset = Field("normal", description="normal, attribute, style or cow-reference.")
    name: str | None = Field(None, description="Output file stem (a plain name); default <line>-<prompt>-s<seed>.")

    @field_validator("condition")
    @classmethod
    def _some_condition(cls, value: str | list[str]) -> str | list[str]:
        from sow.schemas import MAX_CONDITIONS

        names = [value] if isinstance(value, str) else value
        if not names or any(not n for n in names):
            raise ValueError("give an image file (or a non-empty list of them)")
        if len(names) > MAX_CONDITIONS:
            raise ValueError(f"{len(names)} images: a run takes at most {MAX_CONDITIONS} people")
        return value

    @field_validator("prompt")
    @classmethod
    def _not_empty(cls, value: str) -> str:
        from sow.safety.prompt_checks import require_prompt

        try:
            require_prompt(value, "the prompt")
        except InputError as exc:
            raise ValueError(str(exc)) from None
        return value

    @field_validator("name")
    @classmethod
    def _plain_name(cls, value: str | None) -> str | None:
        if value is None:
            return None
        if not value.strip() or "/" in value or "\\" in value or value.strip() in (".", "..") or ":" in value:
            raise ValueError(f"{value!r} must be a plain file name (no folders): outputs stay in the output folder")
        return value


@dataclass(frozen=True)
class BatchItem:
    """A validated job with its id, line number and content hash."""

    id: str
    line: int
    job: BatchJob
    job_sha256: str
    base: Path
    """The batch file's folder (relative paths start here)."""

    def outputs(self, out_dir: Path) -> dict[str, Path]:
        paths = output_paths(out_dir, self.id)
        root = out_dir.resolve()
        for path in paths.values():  # safe_name makes this impossible; keep the guard anyway
            if path.resolve().parent != root:
                raise InputError(f"batch line {self.line}: output {path} would leave {out_dir}")
        return paths

    def resolve(self, value: str) -> Path:
        path = Path(value).expanduser()
        return path if path.is_absolute() else self.base / path

    def request(self, overrides: dict[str, Any] | None = None) -> GenerationRequest:
        """The job as a :class:`~sow.request.GenerationRequest` (the request the CLI and the web app build too):
        paths read from the batch file's folder, a plan file read now, the batch's config ``overrides``."""
        from sow.io.json_files import load_plan_file  # the one plan-file reader

        job = self.job
        plan = load_plan_file(self.resolve(job.plan)) if isinstance(job.plan, str) else job.plan
        names = [job.condition] if isinstance(job.condition, str) else job.condition
        return GenerationRequest(
            conditions=[self.resolve(name) for name in names], prompt=job.prompt, seed=job.seed, preset=job.preset,
            overrides=dict(overrides or {}), plan=plan,
        )


def read_batch_file(path: Path) -> list[BatchItem]:
    """Parse and validate a batch file; :class:`InputError` names the line and the field."""
    label = f"batch file {path}"
    text = read_regular_text(path, "batch file", MAX_BATCH_BYTES)
    items: list[BatchItem] = []
    seen: dict[str, int] = {}
    for number, raw in enumerate(jsonl_lines(text), start=1):  # \n only: U+2028 may sit inside a string
        line = raw.strip(" \t\r")
        if not line or line.startswith("#"):
            continue
        data = parse_json(line, f"{label} line {number}")
        if not isinstance(data, dict):
            raise InputError(f"{label} line {number}: expected a JSON object with condition and prompt")
        try:
            job = BatchJob.model_validate(data)
        except ValidationError as exc:
            raise InputError(f"{label} line {number}: {first_error(exc)}") from None
        item_id = safe_name(job.name) if job.name else f"{number:04d}-{safe_name(job.prompt, 40)}-s{job.seed}"
        if item_id.casefold() in seen:
            raise InputError(f"{label} line {number}: output name {item_id!r} is already used by line {seen[item_id.casefold()]}")
        seen[item_id.casefold()] = number
        digest = hashlib.sha256(job.model_dump_json().encode()).hexdigest()
        items.append(BatchItem(item_id, number, job, digest, path.parent))
    if not items:
        raise InputError(f"{label}: no jobs (one JSON object per line)")
    check_outputs_unique(items, path.parent)
    return items


def check_outputs_unique(items: list[BatchItem], out_dir: Path) -> None:
    """Every output of every job is its own file (job ``foo.plan``'s image is not job ``foo``'s plan picture)."""
    labelled = {f"line {item.line} {role}": p for item in items for role, p in output_paths(out_dir, item.id).items()}
    labelled[MANIFEST_NAME] = out_dir / MANIFEST_NAME
    try:
        check_unique(labelled, "output file")
    except InputError as exc:
        raise InputError(f"batch: {exc}") from None


# -- the manifest ----------------------------------------------------------------------------


class Manifest:
    """The append-only record of a batch in ``<out>/manifest.jsonl`` (see the module docstring).

    A :class:`sow.io.journal.Journal` (locked while a batch runs): a torn last line is not an
    entry and is cut off before the next append.
    """

    def __init__(self, out_dir: Path, part: str | None = None) -> None:
        """The batch manifest of ``out_dir``, or with ``part`` one worker's part of it (:mod:`sow.batch.workers`)."""
        self.out_dir = out_dir
        self.path = out_dir / MANIFEST_NAME if part is None else parts_dir(out_dir) / part
        self.run = None if part is None else run_of(self.path)
        """A part's run: every entry it writes carries it, so that siblings know each other after a merge."""
        self.journal = Journal(self.path, "batch manifest", lock=True, owner="batch")

    def exists(self) -> bool:
        """Whether an earlier batch is recorded here: in the manifest or in any worker's part."""
        return Journal(self.out_dir / MANIFEST_NAME).exists() or bool(part_files(self.out_dir))

    def entries(self) -> list[dict[str, Any]]:
        """Every complete entry of the manifest and of every worker's part (a line cut short by a kill is none)."""
        entries = []
        for path in [self.out_dir / MANIFEST_NAME, *part_files(self.out_dir)]:
            entries.extend(_entries_of(path))
        return entries

    def state(self) -> dict[str, dict[str, Any]]:
        """Each item id's deciding entry: its last ``done`` if any worker finished it, else its last ``start`` / ``failed``."""
        last: dict[str, dict[str, Any]] = {}
        for entry in self.entries():
            if entry.get("event") in ("start", "done", "failed") and isinstance(entry.get("id"), str):
                if last.get(entry["id"], {}).get("event") == "done" and entry["event"] != "done":
                    continue  # another worker's later start or failure does not undo a finished item
                last[entry["id"]] = entry
        return last

    @contextmanager
    def open(self, fresh: bool) -> Iterator[Manifest]:
        """Hold the manifest for appending (exclusively, where the OS can lock files)."""
        for _ in range(100):
            with self.journal.open(fresh=fresh):
                if self.run is not None and not _same_file(self.journal._handle, self.path):
                    continue  # a merge folded and removed this part between our open and our lock: open anew
                yield self
                return
        raise SowError(f"{self.path}: could not hold the manifest part (it kept being merged away)")

    def append(self, **entry: Any) -> None:
        if self.run is not None:
            entry.setdefault("run", self.run)
        self.journal.append(entry, stamp=True)


def _same_file(handle, path: Path) -> bool:
    try:
        return os.stat(path).st_ino == os.fstat(handle.fileno()).st_ino
    except FileNotFoundError:
        return False


def _remove_stale_temporaries(out_dir: Path, items: list[BatchItem]) -> None:
    """Temporary files of atomic writes interrupted by a kill (``.<name>.<random>.tmp``)."""
    names = {p.name for item in items for p in item.outputs(out_dir).values()}
    for tmp in out_dir.glob(".*.tmp"):
        if any(tmp.name.startswith(f".{name}.") for name in names):
            tmp.unlink(missing_ok=True)


# -- the settings a batch runs with ---------------------------------------------------------

SETTINGS_NOT_RECORDED = ("device", "threads")
"""Pipeline fields that do not change an image's content (a rank's GPU, torch's threads): a resume may differ in them."""


def batch_settings(spec: Any = None, overrides: dict[str, Any] | None = None) -> dict[str, Any]:
    """What decides every item's image besides its own line: the config overrides and the pipeline (model, stages...).

    Recorded in the manifest when a batch starts; a resume compares its own with them
    (:func:`check_resume_settings`).
    """
    import dataclasses

    data: dict[str, Any] = {"config": overrides or {}}
    if spec is not None:
        data["pipeline"] = {f.name: getattr(spec, f.name) for f in dataclasses.fields(spec) if f.name not in SETTINGS_NOT_RECORDED}
    return json.loads(json.dumps(data, sort_keys=True, default=str))  # tuples as lists: as the manifest will hold them


def batch_digest(items: list[BatchItem], settings: dict[str, Any]) -> str:
    """A batch's identity: the digest of its jobs (in order) and its settings."""
    digest = hashlib.sha256()
    for item in items:
        digest.update(item.job_sha256.encode())
    digest.update(json.dumps(settings, sort_keys=True).encode())
    return digest.hexdigest()


def _flat(data: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(data, dict):
        out: dict[str, Any] = {}
        for key, value in data.items():
            out.update(_flat(value, f"{prefix}.{key}" if prefix else str(key)))
        return out
    return {prefix: data}


def settings_differences(recorded: dict[str, Any], now: dict[str, Any]) -> list[str]:
    """``"config.canvas.width: 256 at the start, 512 now"`` for each setting that differs."""
    before, after = _flat(recorded), _flat(now)
    missing = object()

    def show(value: Any) -> str:
        return "unset" if value is missing else json.dumps(value)[:60]

    return [
        f"{key}: {show(before.get(key, missing))} at the start, {show(after.get(key, missing))} now"
        for key in sorted(set(before) | set(after))
        if before.get(key, missing) != after.get(key, missing)
    ]


def batch_start(out_dir: Path) -> dict[str, Any] | None:
    """The first ``batch`` entry that recorded settings in ``out_dir`` (the batch's start), or None."""
    for entry in Manifest(out_dir).entries():
        if entry.get("event") == "batch" and isinstance(entry.get("settings"), dict):
            return entry
    return None


def check_resume_settings(out_dir: Path, settings: dict[str, Any], hint: str = "") -> None:
    """Refuse a resume whose settings differ from those the batch started with, naming what differs.

    The refusal repeats the resume command recorded at the start (``hint`` where none was).
    """
    start = batch_start(out_dir)
    if start is None:
        return
    recorded = {k: v for k, v in start["settings"].items() if k in settings}  # a library caller may not know the pipeline
    differences = settings_differences(recorded, settings)
    if differences:
        more = f" (and {len(differences) - 2} more)" if len(differences) > 2 else ""
        command = start.get("resume_command") or hint
        again = f"; resume it with: {command}" if command else "; resume with the options it started with"
        raise InputError(f"--resume with other settings than the batch started with: {'; '.join(differences[:2])}{more}{again}")


# -- running ----------------------------------------------------------------------------------


@dataclass
class BatchSummary:
    done: int = 0
    failed: int = 0
    skipped: int = 0
    total: int = 0
    seconds: float = 0.0
    manifest: str = ""
    failures: list[dict[str, Any]] = field(default_factory=list)

    def count(self, event: dict[str, Any]) -> None:
        """Add one finished item's event (``done`` or ``failed``) to the totals."""
        if event["event"] == "failed":
            self.failed += 1
            self.failures.append({k: event[k] for k in ("id", "line", "error") if k in event})
        else:
            self.done += 1

    def as_dict(self) -> dict[str, Any]:
        return {
            "done": self.done,
            "failed": self.failed,
            "skipped": self.skipped,
            "total": self.total,
            "seconds": round(self.seconds, 3),
            "manifest": self.manifest,
            "failures": self.failures,
        }


def plan_work(
    items: list[BatchItem], out_dir: Path, resume: bool, overwrite: bool, worker: WorkerIdentity | None = None,
    settings: dict[str, Any] | None = None,
) -> tuple[list[BatchItem], list[BatchItem], bool]:
    """(items to run, items already done, whether the manifest starts afresh); refuses to clobber.

    With ``worker``, only that worker's share of ``items`` (:func:`~sow.batch.workers.shard`)
    is considered, and the parts of its own run are siblings, not an earlier batch. With
    ``settings`` (:func:`batch_settings`), a resume whose settings differ from the start's is refused.
    """
    mine = items if worker is None else shard(items, worker.rank, worker.world_size)
    check_outputs_unique(items, out_dir)
    manifest = Manifest(out_dir)
    if not resume:
        earlier = _earlier_batch(out_dir, worker)
        if earlier and not overwrite:
            raise InputError(
                f"{earlier} records an earlier batch; pass --resume to finish it, or --overwrite to start again"
            )
        check_free([p for item in mine for p in item.outputs(out_dir).values()], overwrite)
        return list(mine), [], True
    if settings is not None:
        check_resume_settings(out_dir, settings)
    state = manifest.state()
    todo, done = [], []
    for item in mine:
        last = state.get(item.id)
        paths = item.outputs(out_dir)
        if last and last.get("event") == "done" and last.get("job") == item.job_sha256 and all(
            p.exists() for p in paths.values()
        ):
            done.append(item)
            continue
        if last is None:  # never started by this batch: its files, if any, are someone else's
            check_free(list(paths.values()), overwrite)
        todo.append(item)
    return todo, done, False


def _earlier_batch(out_dir: Path, worker: WorkerIdentity | None) -> Path | None:
    """The manifest (or part) of an earlier batch in ``out_dir``, if any; a worker's siblings do not count."""
    own = None if worker is None else run_of(Path(worker.part_name))
    main = out_dir / MANIFEST_NAME
    if main.is_file() and main.stat().st_size > 0:
        if own is None or any(entry.get("run") != own for entry in _entries_of(main)):
            return main  # a sibling that finished first and merged its part is no earlier batch
    for part in part_files(out_dir):
        if own is None or run_of(part) != own:
            return part
    return None


def _entries_of(path: Path) -> list[dict[str, Any]]:
    """The entries of one manifest file; a part a merge removed meanwhile has none."""
    try:
        return Journal(path, "batch manifest").entries()
    except InputError:
        if path.exists():
            raise
        return []


def _start_afresh(out_dir: Path, worker: WorkerIdentity | None) -> None:
    """Forget an earlier batch (``--overwrite``): the manifest and the parts of other runs.

    Under several workers only the first rank does this, before its own work starts.
    """
    if worker is not None and worker.rank != 0:
        return
    main = out_dir / MANIFEST_NAME
    if main.is_file():
        main.write_bytes(b"")
    own = None if worker is None else run_of(Path(worker.part_name))
    for part in part_files(out_dir):
        if run_of(part) != own:
            part.unlink(missing_ok=True)


def run_item(
    pipe, item: BatchItem, out_dir: Path, manifest: Manifest, overrides: dict[str, Any] | None = None, *, redo: bool | None = None
) -> dict[str, Any]:
    """Run one job and journal it in ``manifest``: ``start``, then ``done`` or ``failed``.

    ``redo``: the item's existing files may be replaced (``--overwrite``, or the item was
    started before by this batch); None reads it from the manifest (a worker that joined
    late, an actor that retries a dead one's item). Returns the event (``done`` with
    ``seconds`` and ``warnings``, or ``failed`` with ``error``). A ``KeyboardInterrupt``
    propagates with the item left unfinished.
    """
    if redo is None:
        redo = item.id in Manifest(out_dir).state()
    manifest.append(event="start", id=item.id, line=item.line, job=item.job_sha256, worker=os.getpid())
    t0 = time.perf_counter()
    try:
        # the job's request, checked as every request is (its images read, its plan's boxes on this model's
        # grid; a bad item is this item's failure), then run
        request = item.request(overrides).check(grid=pipe.backbone.vae_scale_factor, preflight=False)
        result = request.run(pipe)
        paths = write_outputs(result, item.outputs(out_dir), overwrite=redo)
    except KeyboardInterrupt:
        raise
    except (Exception, SystemExit) as exc:  # noqa: BLE001 - a failed item (even a plugin's sys.exit) must not stop the batch
        message, code = _describe(exc)
        manifest.append(event="failed", id=item.id, line=item.line, job=item.job_sha256, error=message, exit_code=code)
        return {"event": "failed", "id": item.id, "line": item.line, "error": message}
    seconds = round(time.perf_counter() - t0, 3)
    image_sha = hashlib.sha256(paths["image"].read_bytes()).hexdigest()
    manifest.append(
        event="done",
        id=item.id,
        line=item.line,
        job=item.job_sha256,
        outputs={role: p.name for role, p in paths.items()},
        image_sha256=image_sha,
        seconds=seconds,
        warnings=result.record.warnings,
    )
    return {"event": "done", "id": item.id, "line": item.line, "seconds": seconds, "warnings": result.record.warnings}


def run_batch(
    pipe,
    items: list[BatchItem],
    out_dir: Path,
    *,
    overrides: dict[str, Any] | None = None,
    resume: bool = False,
    overwrite: bool = False,
    on_event: Callable[[dict[str, Any]], None] | None = None,
    worker: WorkerIdentity | None = None,
    settings: dict[str, Any] | None = None,
    resume_command: str = "",
) -> BatchSummary:
    """Run ``items`` on ``pipe`` (a :class:`~sow.pipeline.SOWPipeline`, loaded once), writing to ``out_dir``.

    ``on_event`` receives a dict per item (``event``: ``skipped`` / ``start`` / ``done`` /
    ``failed``, with ``id``, ``index``, ``todo``...). A ``KeyboardInterrupt`` propagates
    after the manifest is consistent (the interrupted item stays unfinished). With
    ``worker`` (one rank of a torchrun / accelerate launch) only that rank's share runs,
    journalled in its own manifest part; the parts are merged when the last rank ends.
    """
    started = time.perf_counter()
    emit = on_event or (lambda event: None)
    settings = settings if settings is not None else batch_settings(None, overrides)
    todo, done_before, fresh = plan_work(items, out_dir, resume, overwrite, worker, settings)
    ours = set() if fresh else set(Manifest(out_dir).state())  # items this batch started: their files may be redone
    mine = items if worker is None else shard(items, worker.rank, worker.world_size)
    summary = BatchSummary(skipped=len(done_before), total=len(mine), manifest=str(out_dir / MANIFEST_NAME))
    for item in done_before:
        emit({"event": "skipped", "id": item.id, "line": item.line})
    if fresh and overwrite:
        _start_afresh(out_dir, worker)
    manifest = Manifest(out_dir, part=None if worker is None else worker.part_name)
    with manifest.open(fresh=fresh and worker is None):
        _remove_stale_temporaries(out_dir, mine)
        manifest.append(event="batch", resume=resume, items=len(mine), todo=len(todo), settings=settings,
                        **({"resume_command": redact(resume_command)} if resume_command else {}),
                        **({} if worker is None else {"rank": worker.rank, "world_size": worker.world_size}))
        for index, item in enumerate(todo):
            emit({"event": "start", "id": item.id, "line": item.line, "index": index, "todo": len(todo)})
            event = run_item(pipe, item, out_dir, manifest, overrides, redo=overwrite or item.id in ours)
            summary.count(event)
            emit({**event, "index": index, "todo": len(todo)})
        summary.seconds = time.perf_counter() - started
        manifest.append(event="summary", **{k: v for k, v in summary.as_dict().items() if k != "failures"})
    merge_parts(out_dir, out_dir / MANIFEST_NAME)
    return summary


def _describe(exc: BaseException) -> tuple[str, int]:
    """One redacted line and the exit code the error would have had on its own."""
    if isinstance(exc, SowError):
        return clean_text(redact(str(exc).splitlines()[0] if str(exc) else type(exc).__name__)), exc.exit_code
    if isinstance(exc, SystemExit):
        return f"a plugin called sys.exit({exc.code!r}) during this item", 1
    from sow.errors import environment_problem

    problem = environment_problem(exc)
    if problem is not None:  # a full disk, no memory: the machine's, said as such
        return clean_text(redact(str(problem))), problem.exit_code
    text = str(exc).splitlines()[0] if str(exc) else ""
    return clean_text(redact(f"unexpected {type(exc).__name__}: {text}".rstrip(": "))), 1


__all__ = [
    "run_item",
    "BatchItem",
    "BatchJob",
    "BatchSummary",
    "Manifest",
    "read_batch_file",
    "run_batch",
]
