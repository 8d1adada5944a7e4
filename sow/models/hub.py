"""Is the Hugging Face hub reachable? Asked once per process, so an offline load fails at once.

Without this, ``from_pretrained`` on a hub id that is not in the local cache retries the
connection for a minute or more ("Retrying in 8s" ...) before it gives up. With
:func:`offline_reason` the loaders pass ``local_files_only=True`` when the hub cannot be
reached and name the reason in their error.
"""

from __future__ import annotations

import os
import socket
import threading
from urllib.parse import urlparse

PROBE_SECONDS = 2.0
"""How long the one reachability check may take (DNS and TCP connect together)."""

_TRUE = {"1", "on", "yes", "true"}
_cached: list[str | None] = []


# Kept by hand: huggingface_hub's is_offline_mode() reads HF_HUB_OFFLINE once, at import; this reads it at every call and names it.
def _env_offline() -> str | None:
    for name in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"):
        if os.environ.get(name, "").strip().lower() in _TRUE:
            return f"{name}={os.environ[name]}"
    return None


# Kept by hand: huggingface_hub has no reachability check (is_offline_mode() reads HF_HUB_OFFLINE only, and its
# timeouts bound one request, not http_backoff's retries), and the loaders need the reason for their error line.
def _probe(host: str, port: int, timeout: float) -> bool:
    """A TCP connection to ``host:port`` within ``timeout`` seconds (DNS included: it runs in a thread)."""
    result: list[bool] = []

    def connect() -> None:
        try:
            with socket.create_connection((host, port), timeout=timeout):
                result.append(True)
        except OSError:
            result.append(False)

    thread = threading.Thread(target=connect, daemon=True)
    thread.start()
    thread.join(timeout)
    return bool(result and result[0])


def offline_reason() -> str | None:
    """Why the hub cannot be used now (``"HF_HUB_OFFLINE=1"``, ``"huggingface.co unreachable"``), or None.

    The environment is read at every call; the network is probed once per process.
    """
    reason = _env_offline()
    if reason is not None:
        return reason
    if not _cached:
        endpoint = urlparse(os.environ.get("HF_ENDPOINT") or "https://huggingface.co")
        host = endpoint.hostname or "huggingface.co"
        port = endpoint.port or (80 if endpoint.scheme == "http" else 443)
        _cached.append(None if _probe(host, port, PROBE_SECONDS) else f"{host} unreachable")
    return _cached[0]


def forget_probe() -> None:
    """Probe the network again at the next :func:`offline_reason` (tests, long-lived servers)."""
    _cached.clear()
