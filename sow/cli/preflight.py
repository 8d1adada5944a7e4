"""Checks that need no model, run before any model loads (a missing LoRA file, a planner that
cannot start), so that a bad input costs a second, not the minutes of building Stable Diffusion."""

from __future__ import annotations

from typing import Any


def check_loras(specs: list[str] | None) -> None:
    """Every ``--lora PATH[:SCALE]`` names a readable ``.safetensors`` file (:func:`sow.engine.lora.parse_lora`)."""
    from sow.engine.lora import parse_lora

    for spec in specs or ():
        parse_lora(spec)


def check_planner(name: str, options: dict[str, Any], on_error: str) -> None:
    """The planner made with its options (an unknown or bad option is refused), and its
    ``preflight()`` run when it has one (a missing API key, a local model path that holds no model).

    With ``--on-planner-error heuristic`` a planner that cannot start is left to the run, where the
    heuristic plans instead and a note says why.
    """
    from sow.plugins import get_registry

    planner = get_registry().create("planner", name, **options)
    preflight = getattr(planner, "preflight", None)
    if callable(preflight) and on_error == "fail":
        from sow.errors import ModelLoadError
        from sow.planners.policy import FALLBACK_HINT

        try:
            preflight()
        except ModelLoadError as exc:  # as the run would say it: with the way to plan offline instead
            raise type(exc)(f"{exc}; or {FALLBACK_HINT}") from None
