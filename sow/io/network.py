"""Checks on network addresses before any work: a host that is no address, a port that is taken, a peer that is not there.

The three kinds of failure are told apart, because the user fixes them differently:

- a malformed address or a host name that does not resolve is an **input error** (exit 2);
- a port in use, or one the system does not let this process listen on, is the
  **environment's** (exit 1): nothing is wrong with sow or with the command;
- a cluster address where nothing answers within :data:`CONNECT_TIMEOUT_S` is the
  environment's too (exit 1), said in one line instead of a wait of minutes.
"""

from __future__ import annotations

import errno
import ipaddress
import socket

from sow.errors import EnvironmentProblem, InputError

CONNECT_TIMEOUT_S = 10.0
"""Seconds a connection to a cluster address may take before sow gives up (Ray itself retries for minutes)."""


def split_host_port(address: str, what: str) -> tuple[str, int]:
    """``"host:port"`` (or ``"[v6]:port"``) as (host, port); :class:`InputError` naming ``what`` otherwise."""
    text = address.strip()
    host, sep, port_text = text.rpartition(":")
    if not sep or not host:
        raise InputError(f"{what} {address!r}: expected HOST:PORT (e.g. 10.0.0.5:6379)")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    try:
        port = int(port_text)
    except ValueError:
        raise InputError(f"{what} {address!r}: the port {port_text!r} is not a number") from None
    check_port_number(port, what)
    check_host(host, what)
    return host, port


def check_port_number(port: int, what: str = "--port") -> int:
    if not 0 < port < 65536:
        raise InputError(f"{what} {port}: must lie in 1 .. 65535")
    return port


def check_host(host: str, what: str = "--host") -> str:
    """``host`` if it is an IP address or a name that resolves; :class:`InputError` (exit 2) otherwise."""
    if not host or any(c.isspace() for c in host) or len(host) > 253:
        raise InputError(f"{what} {host!r}: not a host name or IP address")
    try:
        ipaddress.ip_address(host)
        return host
    except ValueError:
        pass
    try:
        socket.getaddrinfo(host, None)
    except (socket.gaierror, UnicodeError, OSError):
        raise InputError(f"{what} {host!r}: no such host (not an IP address, and the name does not resolve)") from None
    return host


def check_port_free(host: str, port: int) -> None:
    """Bind ``host:port`` once and let it go, so that a server started next can listen there.

    A port in use or not allowed raises :class:`EnvironmentProblem` (exit 1); a host that is not
    an address of this machine raises :class:`InputError` (exit 2).
    """
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        try:
            sock.bind((host, port))
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                raise EnvironmentProblem(f"port {port} on {host} is already in use (another server?); choose another --port") from None
            if exc.errno == errno.EACCES:
                raise EnvironmentProblem(f"this process may not listen on port {port} (ports below 1024 need privileges); choose another --port") from None
            if exc.errno in (errno.EADDRNOTAVAIL, errno.EAFNOSUPPORT):
                raise InputError(f"--host {host}: not an address of this machine (use 127.0.0.1, 0.0.0.0 or one of its own addresses)") from None
            raise EnvironmentProblem(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None


def check_reachable(host: str, port: int, what: str, timeout: float = CONNECT_TIMEOUT_S) -> None:
    """Open (and close) a TCP connection to ``host:port`` within ``timeout`` s, or raise :class:`EnvironmentProblem`."""
    try:
        with socket.create_connection((host, port), timeout=timeout):
            pass
    except TimeoutError:
        raise EnvironmentProblem(f"{what} {host}:{port}: nothing answered within {timeout:g} s; is the cluster running there?") from None
    except OSError as exc:
        reason = exc.strerror or type(exc).__name__
        raise EnvironmentProblem(f"{what} {host}:{port}: cannot connect ({reason}); is the cluster running there?") from None
