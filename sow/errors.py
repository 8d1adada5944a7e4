"""The errors sow raises on purpose.

Every error a user can cause or fix is a :class:`SowError`. Library code raises it once,
where the bad value entered; the CLI prints ``str(error)`` as one line and exits with
``error.exit_code`` (2 for usage and input errors, 1 for failures at run time).
"""

from __future__ import annotations


class SowError(Exception):
    """Base class: a one-line message meant for the user."""

    exit_code = 1


class InputError(SowError):
    """A bad argument, file, plan or config: the user must change the input (exit 2)."""

    exit_code = 2


class UnknownStageError(InputError):
    """A stage name that no installed plugin registered."""


class StageOptionError(InputError):
    """An option (``--planner-option KEY=...``) that the stage does not take."""


class PluginError(SowError):
    """A plugin that could not be loaded or that registered something invalid."""


class ModelLoadError(InputError):
    """Model weights that could not be found or loaded: the user must point --model elsewhere (exit 2)."""


class PlannerError(SowError):
    """A planner that could not produce a plan."""


class NumericalError(SowError):
    """NaN or inf appeared in the latents (usually fp16 overflow)."""


class EnvironmentProblem(SowError):
    """What the machine lacks or refuses (disk space, a port, a reachable peer): exit 1, not sow's fault.

    Its message says what the environment lacks; the CLI prints it without "a bug in sow".
    """
