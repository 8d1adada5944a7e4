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


class PlannerSetupError(ModelLoadError):
    """A planner that cannot start as configured (no API key, a local model path that holds no
    model): a configuration error (exit 2), found before any model loads; with
    ``--on-planner-error heuristic`` the heuristic plans instead, as for a model that cannot load."""


class PlannerError(SowError):
    """A planner that could not produce a plan."""


class NumericalError(SowError):
    """NaN or inf appeared in the latents (usually fp16 overflow)."""


class EnvironmentProblem(SowError):
    """What the machine lacks or refuses (disk space, a port, a reachable peer): exit 1, not sow's fault.

    Its message says what the environment lacks; the CLI prints it without "a bug in sow".
    """


ENVIRONMENT_ERRNOS = {
    "ENOSPC": "no space left on the device; free some space or choose another --out",
    "EDQUOT": "the disk quota is used up; free some space or choose another --out",
    "EROFS": "the file system is read-only; choose another --out",
    "EMFILE": "this process has too many open files; raise the limit (ulimit -n)",
    "ENFILE": "the system has too many open files",
    "EIO": "an input/output error (a failing disk or network share?)",
    "EFBIG": "a file size limit stopped the write (ulimit -f)",
    "EADDRINUSE": "the port is already in use; choose another --port",
}
"""OSError numbers that are the machine's problem, with what to do about each."""


def environment_problem(exc: BaseException) -> EnvironmentProblem | None:
    """``exc`` as an :class:`EnvironmentProblem` (one line saying what the machine lacks), or None if it is not one."""
    import errno

    if isinstance(exc, EnvironmentProblem):
        return exc
    if isinstance(exc, MemoryError) or type(exc).__name__ == "OutOfMemoryError":  # torch.OutOfMemoryError (a GPU's)
        where = "GPU" if type(exc).__name__ == "OutOfMemoryError" else "system"
        return EnvironmentProblem(f"out of {where} memory; use a smaller canvas or model, fewer images, or --dtype fp16")
    if isinstance(exc, OSError) and exc.errno is not None:
        name = errno.errorcode.get(exc.errno, "")
        advice = ENVIRONMENT_ERRNOS.get(name)
        if advice is not None:
            target = f"{exc.filename}: " if getattr(exc, "filename", None) else ""
            return EnvironmentProblem(f"{target}{advice}")
    cause = exc.__cause__ or exc.__context__
    if cause is not None and cause is not exc:
        return environment_problem(cause)
    return None
