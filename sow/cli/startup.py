"""What the command line does before Typer parses it: where global options may stand, and
whether a run only reads text (help, completion, version) and so needs no torch.

Global options belong to the ``sow`` group (``sow --threads 1 plan ...``); users also write
them after the command (``sow plan --threads 1 ...``), as any other option. Click accepts a
group's options only before the command, so :func:`hoist_global_options` moves them there.

A help screen, a completion answer or ``--version`` must not cost the two seconds (CPU) of
importing torch: :func:`reads_text_only` tells the group callback to leave torch alone, and
:func:`apply_threads` sets the thread count without importing torch when torch is not loaded
yet (through ``OMP_NUM_THREADS``, which torch reads when it starts).
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterable

INVOKED: list[str] | None = None
"""This process's ``sow`` arguments, as parsed (set by :func:`sow.cli.commands.main`): the resume
hint of an interrupted batch repeats them (:func:`sow.cli.batch.resume_command`). Kept here, not in
``sow.cli.batch``, whose import pulls in the pipeline (torch) before any option is read."""

GLOBAL_OPTIONS: dict[str, bool] = {"--threads": True, "--disable-plugin": True, "--trust-remote-code": False}
"""The group's options that may also follow the command: name -> whether it takes a value."""

HELP_FLAGS = ("--help", "-h")


def hoist_global_options(argv: list[str], commands: Iterable[str]) -> list[str]:
    """``argv`` with every global option written after the command moved before it.

    ``["plan", "a.jpg", "x", "--threads", "1"]`` -> ``["--threads", "1", "plan", "a.jpg", "x"]``.
    Arguments after ``--`` are left alone; so is everything when no command is named.
    """
    commands = set(commands)
    position = _command_position(argv, commands)
    if position is None:
        return list(argv)
    before, after = list(argv[: position + 1]), list(argv[position + 1 :])
    hoisted: list[str] = []
    kept: list[str] = []
    i = 0
    while i < len(after):
        arg = after[i]
        if arg == "--":
            kept.extend(after[i:])
            break
        name = arg.split("=", 1)[0]
        if name in GLOBAL_OPTIONS:
            takes_value = GLOBAL_OPTIONS[name] and "=" not in arg
            hoisted.extend(after[i : i + (2 if takes_value else 1)])
            i += 2 if takes_value else 1
            continue
        kept.append(arg)
        i += 1
    return [*before[:position], *hoisted, before[position], *kept]


def _command_position(argv: list[str], commands: set[str]) -> int | None:
    """Index of the command's name in ``argv`` (skipping the group's own options and their values)."""
    i = 0
    while i < len(argv):
        arg = argv[i]
        if arg in commands:
            return i
        if arg == "--":
            return None
        name = arg.split("=", 1)[0]
        i += 2 if GLOBAL_OPTIONS.get(name) and "=" not in arg else 1
    return None


def reads_text_only(argv: list[str], environ: dict[str, str] | None = None) -> bool:
    """True when this run only prints text: no arguments, ``--help``/``-h`` or ``--version``
    anywhere before ``--``, or a shell-completion request (``_SOW_COMPLETE``)."""
    environ = os.environ if environ is None else environ
    if any(key.startswith("_SOW_COMPLETE") or key == "_TYPER_COMPLETE_ARGS" for key in environ):
        return True
    head = argv[: argv.index("--")] if "--" in argv else argv
    return not head or any(a in HELP_FLAGS or a == "--version" for a in head)


def apply_threads(threads: int | None) -> None:
    """Torch's intra-op threads from ``--threads``/``$SOW_THREADS`` (default: half the cores).

    With torch already imported (a test, an embedding program) it is set at once; otherwise
    ``OMP_NUM_THREADS`` is set, which torch reads when it is first imported, so a command that
    fails on a missing file never pays for importing torch.
    """
    if "torch" in sys.modules:
        from sow.models.performance import set_cpu_threads

        set_cpu_threads(threads)
        return
    from sow.engine.threads import cpu_threads

    os.environ["OMP_NUM_THREADS"] = str(cpu_threads(threads))
