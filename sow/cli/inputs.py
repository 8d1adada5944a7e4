"""How the CLI reads its inputs: the conditions and the prompt, the planner's options, and how messages name them.

Shared by ``sow generate`` (:mod:`sow.cli.generation`) and ``sow plan`` (:mod:`sow.cli.commands`).
"""

from __future__ import annotations

from pathlib import Path

from sow.cli.choices import value
from sow.errors import InputError

CLI_LABELS = {
    "seed": "--seed", "boxes": "--box-v/--box-r", "plan": "--plan", "attention": "--save-attention",
    "modulator": "--modulator", "max_people": "--max-people", "pick": "--pick",
}
"""How the CLI names a :class:`sow.request.GenerationRequest`'s fields in its messages."""


def split_conditions(arguments: list[str] | None, conditions: list[Path] | None) -> tuple[list[Path], str | None]:
    """``(condition paths, prompt)`` from the positional arguments (conditions first, prompt last) and ``--condition``."""
    arguments = list(arguments or [])
    if conditions:
        if len(arguments) > 1:
            raise InputError(f"with --condition give only the prompt as an argument; got {len(arguments)} arguments")
        return list(conditions), (arguments[0] if arguments else None)
    if not arguments:
        return [], None
    if len(arguments) == 1:
        raise InputError("Missing argument PROMPT: give the condition image(s) first and the prompt last, e.g. sow generate face.jpg \"a chef\"")
    refuse_path_as_prompt(arguments[-1])
    return [Path(a) for a in arguments[:-1]], arguments[-1]


def refuse_path_as_prompt(prompt: str) -> None:
    """A last positional that names an image file is a forgotten prompt, not a prompt (exit 2, not a silent run)."""
    from sow.io.images import looks_like_image_path

    if looks_like_image_path(prompt):
        raise InputError(
            f"the last argument {prompt!r} is an image file, not a prompt: give the prompt last, "
            "e.g. sow generate a.jpg b.jpg \"two friends at a cafe\""
        )


def people_options(max_people: int | None, pick: str | None, planner: str | None, photos: int = 1) -> dict:
    """``--max-people`` / ``--pick`` as heuristic-planner options; they conflict with each other and with several photos."""
    options: dict = {}
    if max_people is None and pick is None:
        return options
    if (planner or "heuristic") != "heuristic":
        raise InputError("--max-people and --pick choose the faces of one group photo with the heuristic planner (--planner heuristic)")
    if max_people is not None and pick is not None:
        raise InputError("--pick chooses the faces by number and --max-people by size: give one of them, not both")
    if photos > 1:
        which = "--max-people" if max_people is not None else "--pick"
        raise InputError(f"{which} chooses faces in one group photo; this run has {photos} photos (one person each): drop {which}")
    if max_people is not None:
        options["max_people"] = max_people
    if pick is not None:
        try:
            options["pick"] = [int(p) for p in pick.split(",")]
        except ValueError:
            raise InputError(f"--pick {pick!r}: expected face numbers like 1,3") from None
    return options


def planner_options(items: list[str] | None, quantize: str | None) -> dict:
    """``--planner-option`` items plus the ``--quantize`` shortcut."""
    options = parse_options(items)
    if quantize is not None:
        options["quantize"] = value(quantize)
    return options


def parse_options(items: list[str] | None) -> dict:
    """``["model=gemini-2.5-pro", "retries=2"]`` -> ``{"model": "gemini-2.5-pro", "retries": 2}``."""
    from sow.io.options import parse_key_values

    return parse_key_values(items, "--planner-option")
