"""How many CPU threads torch should use: the rule alone, without importing torch.

The command line applies it before torch is loaded (``sow --help`` and a missing file must not
pay for importing torch); :func:`sow.models.performance.set_cpu_threads` applies it to torch.
"""

from __future__ import annotations

THREADS_ENV = "SOW_THREADS"
"""The environment variable :func:`cpu_threads` reads when no count is passed."""
MAX_DEFAULT_THREADS = 8
"""The default thread count never exceeds this (more threads buy little for SD-sized ops on a CPU)."""


def default_threads() -> int:
    """Half the cores this process may use (at least 1, at most :data:`MAX_DEFAULT_THREADS`).

    PyTorch's own default, one thread per core, is fastest on an idle machine but collapses
    on a shared one: on 2 cores busy with other work a 128-px tiny-model run took 26–49 s
    with two threads and 2.1 s with one (docs/performance.md). Half the cores keeps most of
    the idle speed and none of the collapse.
    """
    import os

    try:
        cores = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        cores = os.cpu_count() or 1
    return max(1, min(MAX_DEFAULT_THREADS, cores // 2))


def cpu_threads(threads: int | None = None) -> int:
    """The intra-op thread count to use: ``threads``, else ``$SOW_THREADS``, else :func:`default_threads`.

    Raises :class:`~sow.errors.InputError` for a count below 1 or an unreadable variable.
    """
    import os

    from sow.errors import InputError

    source = "--threads"
    if threads is None and os.environ.get(THREADS_ENV, "").strip():
        source, raw = THREADS_ENV, os.environ[THREADS_ENV].strip()
        try:
            threads = int(raw)
        except ValueError:
            raise InputError(f"{THREADS_ENV}={raw!r}: expected a whole number of threads (1 or more)") from None
    if threads is None:
        return default_threads()
    if threads < 1:
        raise InputError(f"{source} {threads}: needs at least 1 thread")
    return threads
