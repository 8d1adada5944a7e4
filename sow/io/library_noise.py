"""Third-party log lines that say nothing to a sow user, filtered out for every caller (API and CLI).

Each entry names the logger and a piece of the message, and why it is noise. Only those exact
lines are dropped (a logging filter on that one logger): everything else the library logs, at
any level, still reaches the caller's handlers.
"""

from __future__ import annotations

import logging

KNOWN_NOISE: dict[str, tuple[str, str]] = {
    "bitsandbytes.backends.cpu.ops": (
        "kernels-community",
        "bitsandbytes, imported by diffusers whenever it is installed, warns on CPUs with AVX512-BF16 "
        "that an optional faster 4-bit kernel (the `kernels` package) is missing; sow quantizes only "
        "MLLM planners, on request, and this printed on every run of the Python API",
    ),
}
"""logger name -> (a piece of the message, why it is noise)."""


class _DropMessage(logging.Filter):
    def __init__(self, piece: str) -> None:
        super().__init__()
        self.piece = piece

    def filter(self, record: logging.LogRecord) -> bool:
        return self.piece not in record.getMessage()


def silence_known_noise() -> None:
    """Install the filters of :data:`KNOWN_NOISE` (idempotent; cheap: imports nothing)."""
    for name, (piece, _why) in KNOWN_NOISE.items():
        logger = logging.getLogger(name)
        if not any(isinstance(f, _DropMessage) and f.piece == piece for f in logger.filters):
            logger.addFilter(_DropMessage(piece))
