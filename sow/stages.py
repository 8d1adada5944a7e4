"""The interfaces of the five stage kinds and of the face metrics ``sow eval`` measures with.

The kinds themselves (names, defaults, hooks, deprecated names) are one table: :mod:`sow.stage_kinds`.

A stage is a small object with one or two methods. Plugins register factories for
them (see :mod:`sow.hookspecs`); the pipeline creates one per run configuration and is
the only code that knows the order in which they are called. Per-run state (latents,
masks, the current step) lives in :class:`sow.engine.context.RunContext`, never in the stage.

Each stage class carries two class attributes, ``name`` and ``description``, used for
registration and for ``sow plugins``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, ClassVar, Protocol, runtime_checkable

from sow.stage_kinds import KINDS, RUN_STAGES, STAGE_TABLE, canonical_kind

if TYPE_CHECKING:
    import numpy as np
    import torch
    from PIL import Image

    from sow.engine.context import LatentRegion, RunContext
    from sow.engine.denoiser import Denoiser
    from sow.schemas import GenerationConfig, Plan


@dataclass
class PlanRequest:
    """What a planner is given."""

    condition: Image.Image
    """The (first) visual condition, RGB."""
    prompt: str
    """The user's prompt."""
    config: GenerationConfig
    """The run's settings: canvas, box_v side limits (:meth:`GenerationConfig.side_limits`), ablations."""
    seed: int = 0
    """The run's seed, for planners that place things at random."""
    extras: dict = field(default_factory=dict)
    """Free-form hints from the caller (e.g. a mask of the condition)."""
    conditions: list[Image.Image] = field(default_factory=list)
    """Every condition image given (several people); ``[condition]`` when one was given.
    A plan's ``conditions[i].image`` indexes this list; one group photo may give several conditions."""
    sources: list[str] = field(default_factory=list)
    """Where each image came from (a path, or "" for an in-memory image), beside ``conditions``."""
    options: dict = field(default_factory=dict)
    """Per-request planner choices (``max_people``, ``pick``: see the heuristic planner)."""

    def __post_init__(self) -> None:
        if not self.conditions:
            self.conditions = [self.condition]
        if len(self.sources) != len(self.conditions):
            self.sources = [""] * len(self.conditions)


@runtime_checkable
class Planner(Protocol):
    """Plans a run: where the condition goes (box_v), what relates to it (box_r), the prompt."""

    name: ClassVar[str]
    description: ClassVar[str]

    def plan(self, request: PlanRequest) -> Plan:
        """Return a valid plan for ``request`` or raise :class:`sow.errors.PlannerError`.

        With several images (``request.conditions``) the plan has a condition per image
        (``conditions[i].image``); a planner that places one condition only may return a
        one-condition plan, and :func:`sow.planners.policy.plan_with_policy` places the
        others side by side (recorded in ``plan.repairs``)."""
        ...


@runtime_checkable
class Inverter(Protocol):
    """Maps clean latents up the noise levels, keeping the trajectory."""

    name: ClassVar[str]
    description: ClassVar[str]

    def invert(self, denoiser: Denoiser, latents: torch.Tensor, start: int, end: int, phase: str) -> list[torch.Tensor]:
        """Return ``[x_start, x_start+1, ..., x_end]`` (``end - start`` UNet evaluations).

        ``phase`` names the inversion (``"invert_condition"`` or ``"invert_canvas"``) for
        the denoiser's step bookkeeping; ``x_start`` is ``latents`` itself.
        """
        ...


@runtime_checkable
class Preserver(Protocol):
    """Puts the condition's latent back into the canvas latent (the one-way constraint)."""

    name: ClassVar[str]
    description: ClassVar[str]

    def preserve(self, latents: torch.Tensor, condition: torch.Tensor, region: LatentRegion) -> torch.Tensor:
        """Return ``latents`` with the condition region set from ``condition`` (its own-size latent).

        Called once per condition of a plan (:meth:`RunContext.preserve`): touch nothing outside ``region``.
        """
        ...


@dataclass(frozen=True)
class RunInputs:
    """What a run is given besides its config, as far as counting its UNet evaluations goes."""

    conditions: int = 1
    """Visual conditions the run inverts (each to level t2, its own trajectory kept)."""


@runtime_checkable
class Scheduler(Protocol):
    """Runs the denoising schedule from the inverted canvas (level t1) down to level 0."""

    name: ClassVar[str]
    description: ClassVar[str]

    def run(self, ctx: RunContext) -> torch.Tensor:
        """Return the level-0 canvas latents. Uses ``ctx.denoiser`` and :meth:`RunContext.preserve`
        (every condition region reset to its own trajectory ``ctx.condition_trajectories[i]``)."""
        ...

    def unet_evaluations(self, config: GenerationConfig, inputs: RunInputs) -> int:
        """How many UNet evaluations :meth:`run` makes for ``config`` and ``inputs`` (its own loop
        only: the pipeline counts the inversions). Progress bars, the denoiser's total and the
        run record's checks use this number, so it must be exact."""
        ...


@runtime_checkable
class Modulator(Protocol):
    """Changes the model's attention while a run denoises (the ``modulator`` kind; formerly ``AttentionModulator``)."""

    name: ClassVar[str]
    description: ClassVar[str]

    def attach(self, unet: torch.nn.Module, ctx: RunContext) -> None:
        """Install attention processors for this run; read the current step from ``ctx.step``."""
        ...

    def detach(self, unet: torch.nn.Module) -> None:
        """Restore the processors that were installed before :meth:`attach`."""
        ...


@dataclass(frozen=True)
class FaceBox:
    """A face found in an image, in that image's pixels (it may reach past the border)."""

    left: int
    top: int
    width: int
    height: int
    score: float = 0.0
    """The detector's confidence (its own scale: compare scores of one detector only)."""

    @property
    def area(self) -> int:
        return self.width * self.height

    @property
    def center(self) -> tuple[float, float]:
        return (self.left + self.width / 2, self.top + self.height / 2)


@runtime_checkable
class FaceMetric(Protocol):
    """Finds faces and tells how alike two of them are: the evaluation's measuring stick.

    ``threshold`` is the backend's same-person convention: two faces whose
    :meth:`distance` is below it count as one person. Images are RGB; a backend that
    needs weights it cannot find raises :class:`sow.errors.SowError` with one line
    saying how to install them, when it is created.
    """

    name: ClassVar[str]
    description: ClassVar[str]
    threshold: float

    def detect(self, image: Image.Image) -> list[FaceBox]:
        """Every face in ``image``, most confident first; ``[]`` when there is none (never raises for that)."""
        ...

    def embed(self, image: Image.Image, face: FaceBox) -> np.ndarray:
        """A 1-D feature vector of ``face`` (a box :meth:`detect` returned for ``image``)."""
        ...

    def distance(self, a: np.ndarray, b: np.ndarray) -> float:
        """How far apart two embeddings are: 0 for the same vector, larger for less alike faces."""
        ...


STAGE_KINDS: dict[str, type] = {kind.name: globals()[kind.protocol] for kind in STAGE_TABLE}
"""Stage kind -> its Protocol, from :data:`sow.stage_kinds.STAGE_TABLE`. The hook of kind ``k`` is ``register_<k>s``."""

STAGE_FIELDS: dict[str, str] = {kind.name: kind.name for kind in RUN_STAGES}
"""The stages a generation chooses: kind -> its field in :class:`sow.schemas.StageNames`. Since the modulator kind
lost its second name (``attention_modulator``) every kind's field is its name; kept for code that reads it."""


def __getattr__(name: str) -> object:
    if name == "AttentionModulator":  # the Protocol's name before the kind had one name
        import warnings

        warnings.warn("sow.stages.AttentionModulator is deprecated; use sow.stages.Modulator", DeprecationWarning, stacklevel=2)
        return Modulator
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def stage_options_by_kind(options: dict[str, dict] | None) -> dict[str, dict]:
    """``stage_options`` keyed by stage kind; a deprecated name of a kind (``attention_modulator``) is read
    as the kind with a :class:`DeprecationWarning`; both names at once for one kind is refused."""
    from sow.errors import InputError

    out: dict[str, dict] = {}
    for key, value in (options or {}).items():
        kind = canonical_kind(key, "stage_options key")
        if kind in out:
            raise InputError(f"stage_options names the {KINDS[kind].label} twice ({key!r} and {kind!r}); use one")
        out[kind] = value
    return out
