"""``--planner``, ``--inverter``, ``--scheduler``, ``--modulator``, ``--preserver``: one option per stage kind.

The options are made from the stage table (:data:`sow.stage_kinds.RUN_STAGES`), so a new kind gets
its option without an edit here or in the command. :func:`with_stage_options` adds them to a
command function's signature (typer reads ``__signature__`` and ``__annotations__``) and hands the
chosen names to the function as one ``stages`` dict (kind -> name, only the kinds given).
"""

from __future__ import annotations

import functools
import inspect
import typing
from collections.abc import Callable
from typing import Annotated, Any, Optional

import typer

from sow.stage_kinds import RUN_STAGES, StageKind

PANEL = "Stages (see `sow plugins`)"


def stage_option(kind: StageKind) -> Any:
    """The ``--<kind>`` option of one stage kind: a registered name, free text checked against the registry."""
    return Annotated[
        Optional[str],
        typer.Option(
            f"--{kind.name.replace('_', '-')}",
            metavar="<name>",
            show_default=kind.default,
            rich_help_panel=PANEL,
            help=f"{kind.label.capitalize()} plugin name: {kind.summary.replace('``', '')}.",
        ),
    ]


def with_stage_options(function: Callable[..., Any]) -> Callable[..., Any]:
    """``function`` (which takes ``stages: dict[str, str]``) with one keyword option per stage kind instead."""
    signature = inspect.signature(function)
    hints = typing.get_type_hints(function, include_extras=True)  # the Annotated[..., typer.Option] of each parameter
    parameters = [p.replace(annotation=hints.get(p.name, p.annotation)) for p in signature.parameters.values() if p.name != "stages"]
    added = [
        inspect.Parameter(kind.name, inspect.Parameter.KEYWORD_ONLY, default=None, annotation=stage_option(kind))
        for kind in RUN_STAGES
    ]
    names = [kind.name for kind in RUN_STAGES]

    @functools.wraps(function)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        stages = {name: kwargs.pop(name) for name in names if kwargs.get(name) is not None}
        for name in names:
            kwargs.pop(name, None)
        return function(*args, stages=stages, **kwargs)

    wrapper.__signature__ = signature.replace(parameters=[*parameters, *added])  # type: ignore[attr-defined]
    wrapper.__annotations__ = {**{p.name: p.annotation for p in parameters}, **{p.name: p.annotation for p in added}}
    if "return" in hints:
        wrapper.__annotations__["return"] = hints["return"]
    return wrapper
