"""The stage kinds: the one table every list of stages in sow is derived from.

A *stage kind* is one seam of the method that plugins fill (planner, inverter, scheduler,
modulator, preserver) or one tool ``sow eval`` measures with (metric). Its one name is
used everywhere: the hook ``register_<name>s``, the registry's kind, the field of
:class:`sow.schemas.StageNames` (``config.stages.<name>``), the keyword of
``SOWPipeline.from_pretrained``, the ``stage_options`` key and the CLI's ``--<name>`` option.

Derived from :data:`STAGE_TABLE` (``tests/test_stage_kinds.py`` checks that each is):
:data:`sow.stages.STAGE_KINDS` (kind -> Protocol), the hookspecs (:mod:`sow.hookspecs`),
:class:`sow.schemas.StageNames`, the keywords of ``from_pretrained`` / ``from_pipe``, the
``sow generate`` options and the plugin manager's hook calls. Adding a kind is one new row
here plus its Protocol in :mod:`sow.stages`.

Deprecated names: until 0.x the modulator kind was also called ``attention_modulator``
(the hook ``register_attention_modulators``, ``stage_options={"attention_modulator": ...}``,
``registry.get("attention_modulator", ...)``). Those still work and warn
(:class:`DeprecationWarning`): :func:`canonical_kind`.

This module imports nothing from sow, so that the schemas, the hookspecs and the Protocols can
all read it without tying themselves to one another.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass


@dataclass(frozen=True)
class StageKind:
    """One row of the stage table."""

    name: str
    """The kind's one name (``modulator``): hook ``register_<name>s``, field, keyword, option key, ``--<name>``."""
    protocol: str
    """The :mod:`sow.stages` Protocol a stage of this kind satisfies (its class name)."""
    summary: str
    """What a stage of this kind does, after ``Register <name>s:`` in its hook's docstring."""
    builtins: str
    """The hook docstring's ``Built-ins:`` paragraph: each built-in name and the module registering it."""
    default: str | None = None
    """The implementation a run uses unless told otherwise; None: not chosen per run (``metric``)."""
    aliases: tuple[str, ...] = ()
    """Deprecated names of this kind that still work, with a :class:`DeprecationWarning`."""
    note: str = ""
    """A further paragraph for the hook's docstring."""
    words: str = ""
    """How messages name the kind when its name alone says too little (``attention modulator``)."""
    field_help: str = ""
    """The description of the :class:`sow.schemas.StageNames` field (the JSON Schema's)."""

    @property
    def hook(self) -> str:
        """The registration hook's name: ``register_<name>s``."""
        return f"register_{self.name}s"

    @property
    def label(self) -> str:
        """The kind in words, for messages: :attr:`words`, or the name."""
        return self.words or self.name.replace("_", " ")

    @property
    def per_run(self) -> bool:
        """Whether a generation chooses an implementation of this kind (a :class:`StageNames` field)."""
        return self.default is not None


STAGE_TABLE: tuple[StageKind, ...] = (
    StageKind(
        name="planner",
        field_help="Planner plugin name.",
        protocol="Planner",
        summary="(condition image, prompt) -> a plan: where each condition goes, what relates to it, the prompt",
        builtins="Built-ins: ``fixed`` (:mod:`sow.planners.fixed`), ``heuristic`` (:mod:`sow.planners.heuristic`).",
        default="heuristic",
        note="A multimodal-LLM planner builds on the toolkit :mod:`sow.planners.toolkit`.",
    ),
    StageKind(
        name="inverter",
        field_help="Inverter plugin name.",
        protocol="Inverter",
        summary="latents -> their trajectory up the noise levels",
        builtins="Built-ins: ``ddim`` (:mod:`sow.engine.inversion`).",
        default="ddim",
    ),
    StageKind(
        name="scheduler",
        field_help="Scheduler plugin name.",
        protocol="Scheduler",
        summary="the denoising schedule from the inverted canvas to level 0",
        builtins="Built-ins: ``cyclic`` (:mod:`sow.engine.scheduling`).",
        default="cyclic",
    ),
    StageKind(
        name="modulator",
        field_help="Attention modulator plugin name (`none`: plain COW).",
        protocol="Modulator",
        summary="attach to the model's attention for a run (``none``: plain COW)",
        builtins="Built-ins: ``none`` (:mod:`sow.attention.plain`), ``dam`` (:mod:`sow.attention.dam`).",
        default="dam",
        aliases=("attention_modulator",),
        words="attention modulator",
    ),
    StageKind(
        name="preserver",
        field_help="Preserver plugin name.",
        protocol="Preserver",
        summary="put the condition back into the canvas latents",
        builtins="Built-ins: ``replace`` (:mod:`sow.engine.preservation`).",
        default="replace",
    ),
    StageKind(
        name="metric",
        protocol="FaceMetric",
        summary="for ``sow eval``: detect faces, embed them, compare",
        builtins="Built-ins: ``dlib``, ``facenet`` (:mod:`sow.eval.face_metrics`).",
    ),
)
"""Every stage kind, in the order runs call them (the metric last: it is ``sow eval``'s)."""

KINDS: dict[str, StageKind] = {kind.name: kind for kind in STAGE_TABLE}
"""The table by name."""

RUN_STAGES: tuple[StageKind, ...] = tuple(kind for kind in STAGE_TABLE if kind.per_run)
"""The kinds a generation chooses one implementation of (the fields of :class:`sow.schemas.StageNames`)."""

ALIASES: dict[str, str] = {alias: kind.name for kind in STAGE_TABLE for alias in kind.aliases}
"""Deprecated name -> the kind's name."""


def label(kind: str) -> str:
    """A kind's words for messages (an unknown kind: its name with spaces)."""
    row = KINDS.get(ALIASES.get(kind, kind))
    return row.label if row is not None else kind.replace("_", " ")


def canonical_kind(name: str, where: str = "stage kind") -> str:
    """``name`` as the kind's one name: a deprecated alias is translated with a :class:`DeprecationWarning`
    naming ``where`` it was used; any other name is returned as it is (the caller says if it is unknown)."""
    kind = ALIASES.get(name)
    if kind is None:
        return name
    warnings.warn(f"{where} {name!r} is deprecated; use {kind!r}", DeprecationWarning, stacklevel=3)
    return kind
