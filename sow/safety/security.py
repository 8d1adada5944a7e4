"""Safe-loading policy and secret redaction.

**Loading policy.** Two things can run code an attacker wrote, and both are off unless
the user says otherwise:

- pickled checkpoints (``.ckpt``, ``.bin``, ``.pt``): only ``.safetensors`` load unless
  ``allow_pickle`` (``--allow-pickle``);
- ``trust_remote_code`` of transformers (model repositories that ship Python, as some
  multimodal planners' do): off unless ``--trust-remote-code`` (a global CLI option) or
  ``SOW_TRUST_REMOTE_CODE=1``.

A plugin that loads a model reads the policy instead of hard-coding a value::

    from sow.safety.security import load_policy
    model = AutoModel.from_pretrained(repo, trust_remote_code=load_policy().trust_remote_code)

or spreads :func:`safe_load_kwargs` into its ``from_pretrained`` calls (safetensors only
unless pickles are allowed, and the remote-code switch), or calls
:func:`require_remote_code` to fail with a one-line hint when a model needs it.

**Redaction.** API keys live in environment variables (``GEMINI_API_KEY``...). Any
environment value whose *name* looks secret (has a KEY, TOKEN, SECRET, PASSWORD,
CREDENTIAL or AUTH part, like ``GEMINI_API_KEY`` or ``HF_TOKEN``) and that is at least :data:`MIN_SECRET_LENGTH` characters long is
replaced by ``***`` in everything sow prints, logs or writes as JSON (run records, plans,
batch manifests): :func:`redact` on text, :func:`redact_data` on values *before* they are
serialised (JSON escapes ``"`` and ``\\``, and an escaped key no longer matches).

**Remote text.** Answers of models and APIs can hold terminal escape sequences (clear the
screen, set the window title): :func:`clean_text` removes them and every other control
character; the CLI's consoles, the plan and record schemas and the batch manifest apply it. Plugins should still never put a key in a message;
this is the net under them.
"""

from __future__ import annotations

import logging
import os
import re
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace

from sow.errors import InputError

SECRET_NAME = re.compile(
    r"(?:^|_)(?:API_?KEY|KEY|TOKEN|SECRET|PASSWORD|PASSWD|CREDENTIALS?|AUTH)(?:_|$)", re.IGNORECASE
)
"""Environment variable names whose values are treated as secrets."""

MIN_SECRET_LENGTH = 8
"""Shorter values are not redacted (they would match ordinary words)."""

MASK = "***"


@dataclass(frozen=True)
class LoadPolicy:
    """What model loading may do. Both switches off by default."""

    allow_pickle: bool = False
    """Load pickled checkpoints (they can run code when unpickled)."""
    trust_remote_code: bool = False
    """Let transformers run Python shipped inside a model repository."""


def _env_flag(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() in ("1", "true", "yes", "on")


_policy: LoadPolicy | None = None


def load_policy() -> LoadPolicy:
    """The policy in force: set by the CLI (:func:`set_load_policy`), else from the environment."""
    if _policy is not None:
        return _policy
    return LoadPolicy(allow_pickle=_env_flag("SOW_ALLOW_PICKLE"), trust_remote_code=_env_flag("SOW_TRUST_REMOTE_CODE"))


def set_load_policy(**changes: bool) -> LoadPolicy:
    """Change the process-wide policy (the CLI's global options call this); returns the new one."""
    global _policy
    _policy = replace(load_policy(), **changes)
    return _policy


def reset_load_policy() -> None:
    global _policy
    _policy = None


def safe_load_kwargs() -> dict[str, bool]:
    """Keyword arguments for a Hugging Face ``from_pretrained`` call that obey the policy.

    ``use_safetensors=True`` (refuse pickled ``.bin`` weights) unless pickles are allowed,
    and ``trust_remote_code`` as the user set it. MLLM planners spread these into their
    ``from_pretrained(model_id, **safe_load_kwargs(), ...)`` calls.
    """
    policy = load_policy()
    kwargs = {"trust_remote_code": policy.trust_remote_code}
    if not policy.allow_pickle:
        kwargs["use_safetensors"] = True
    return kwargs


def require_remote_code(what: str) -> None:
    """Raise :class:`InputError` unless the user allowed ``trust_remote_code`` for ``what``."""
    if not load_policy().trust_remote_code:
        raise InputError(
            f"{what} needs to run code shipped with the model (trust_remote_code); "
            "pass --trust-remote-code (or set SOW_TRUST_REMOTE_CODE=1) if you trust its source"
        )


# -- redaction -----------------------------------------------------------------------------


def secret_values() -> list[str]:
    """The values of secret-looking environment variables, longest first."""
    values = {
        value
        for name, value in os.environ.items()
        if SECRET_NAME.search(name) and len(value.strip()) >= MIN_SECRET_LENGTH
    }
    return sorted(values, key=len, reverse=True)


def redact_data(data: object) -> object:
    """``data`` (dicts, lists, strings, numbers) with secrets redacted in every string, keys too.

    Redact *before* serialising: a secret holding ``"`` or ``\\`` is escaped by ``json.dumps``
    and would no longer match :func:`redact` afterwards.
    """
    if not secret_values():
        return data
    if isinstance(data, str):
        return redact(data)
    if isinstance(data, dict):
        return {redact_data(k) if isinstance(k, str) else k: redact_data(v) for k, v in data.items()}
    if isinstance(data, (list, tuple)):
        return [redact_data(v) for v in data]
    return data


CONTROL_CHARACTERS = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\u200e\u200f\u202a-\u202e\u2066-\u2069]")
"""C0 and C1 control characters (ESC starts terminal escape sequences) and bidi overrides; tab and newline stay."""


ESCAPE_SEQUENCES = re.compile(
    "\x1b\\][^\x07\x1b\x9c]*(?:\x07|\x1b\\\\|\x9c)?"  # OSC (a window title...), ended by BEL or ST
    "|(?:\x1b\\[|\x9b)[0-?]*[ -/]*[@-~]?"  # CSI (clear screen, colours, cursor moves)
    "|\x1b[ -/]*[0-~]?"  # any other escape
)
"""Whole terminal escape sequences, removed before the single control characters."""


def clean_text(text: str) -> str:
    """``text`` without escape sequences and control characters: for anything remote (a model's answer, an API's error) before it is shown or recorded."""
    if not CONTROL_CHARACTERS.search(text):
        return text
    return CONTROL_CHARACTERS.sub("", ESCAPE_SEQUENCES.sub("", text))


def format_traceback(exc: BaseException) -> str:
    """The traceback of ``exc`` with secrets redacted and control characters removed (``SOW_DEBUG=1``)."""
    import traceback

    return clean_text(redact("".join(traceback.format_exception(type(exc), exc, exc.__traceback__))))


def redact(text: str) -> str:
    """``text`` with every secret value from the environment replaced by ``***``."""
    for value in secret_values():
        if value in text:
            text = text.replace(value, MASK)
        stripped = value.strip()
        if stripped != value and stripped in text:
            text = text.replace(stripped, MASK)
    return text


class RedactingFilter(logging.Filter):
    """A logging filter that redacts secrets from a record's formatted message."""

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except Exception:  # a record whose args do not match its format: keep it as is
            return True
        clean = redact(message)
        if record.exc_info:
            import traceback

            clean = redact(clean + "\n" + "".join(traceback.format_exception(*record.exc_info)).rstrip())
            record.exc_info = None
            record.exc_text = None
        record.msg, record.args = clean_text(clean), None
        return True


class _StderrHandler(logging.StreamHandler):
    """A stream handler that always writes to the *current* ``sys.stderr``."""

    @property
    def stream(self):  # type: ignore[override]
        return sys.stderr

    @stream.setter
    def stream(self, value) -> None:
        pass


@contextmanager
def cli_logging(level: int = logging.WARNING) -> Iterator[logging.Handler]:
    """While the CLI runs, route the ``sow`` loggers to stderr through :class:`RedactingFilter`.

    Records stop propagating to the root logger meanwhile (so no unredacted copy is printed
    by another handler); everything is restored on exit, so embedding code is unaffected.
    """
    logger = logging.getLogger("sow")
    handler = _StderrHandler()
    handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
    handler.addFilter(RedactingFilter())
    handler.setLevel(level)
    saved = (logger.level, logger.propagate)
    logger.addHandler(handler)
    if logger.level == logging.NOTSET or logger.level > level:
        logger.setLevel(level)
    logger.propagate = False
    try:
        yield handler
    finally:
        logger.removeHandler(handler)
        logger.setLevel(saved[0])
        logger.propagate = saved[1]


def redacting_console(**kwargs):
    """A rich ``Console`` whose ``print`` redacts secrets from its string arguments and strips control characters (the CLI's consoles)."""
    from rich.console import Console

    class RedactingConsole(Console):
        def print(self, *objects, **options):  # type: ignore[override]
            return super().print(*(clean_text(redact(o)) if isinstance(o, str) else o for o in objects), **options)

    return RedactingConsole(**kwargs)
