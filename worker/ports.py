"""TCP port checks for ``billow up``.

``billow up`` checks every port it is about to bind *before* starting anything,
so a busy port gives one clear line naming the setting to change instead of a
half-started stack and a traceback from whichever child lost the race.
"""

from __future__ import annotations

import contextlib
import errno
import socket
from dataclasses import dataclass

import psutil  # type: ignore[import-untyped, unused-ignore]  # types-psutil is a test extra


@dataclass(frozen=True)
class PortClaim:
    """A port a service of the stack will listen on, and how to move it."""

    port: int
    host: str
    service: str
    env_var: str


def port_is_free(host: str, port: int) -> bool:
    """True if a server could bind ``host:port`` right now.

    SO_REUSEADDR mirrors what the real servers do (Go's net.Listen, asyncio's
    create_server): a port only held by sockets in TIME_WAIT after a previous
    run is free for them, so it must count as free here too; a listener on the
    same port (on this address or the wildcard) still makes the bind fail.
    """
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError as exc:
            if exc.errno in (errno.EADDRINUSE, errno.EACCES):
                return False
            raise
    return True


def port_holder(port: int) -> str | None:
    """Best effort "name, pid N" of the process listening on ``port``.

    Only for the error message: it usually points at a forgotten earlier
    ``billow up`` or another dev server. Unprivileged users cannot see other
    users' sockets, hence ``None`` rather than an error.
    """
    with contextlib.suppress(psutil.Error, OSError):
        for conn in psutil.net_connections(kind="inet"):
            if conn.laddr and conn.laddr.port == port and conn.status == psutil.CONN_LISTEN:
                if conn.pid is None:
                    return None
                try:
                    name = psutil.Process(conn.pid).name()
                except psutil.Error:
                    name = "?"
                return f"{name}, pid {conn.pid}"
    return None


def port_conflicts(claims: list[PortClaim]) -> list[str]:
    """One message line per claim that cannot be satisfied; empty if all ports are usable."""
    problems: list[str] = []
    claimed_by: dict[int, PortClaim] = {}
    for claim in claims:
        other = claimed_by.get(claim.port)
        if other is not None:
            problems.append(
                f"port {claim.port} is configured for both {other.service} ({other.env_var}) "
                f"and {claim.service} ({claim.env_var}); set one of them to another port"
            )
            continue
        claimed_by[claim.port] = claim
        try:
            free = port_is_free(claim.host, claim.port)
        except OSError as exc:  # e.g. an api_host that is not an address of this machine
            problems.append(
                f"cannot listen on {claim.host}:{claim.port} for {claim.service}: "
                f"{exc.strerror or exc}"
            )
            continue
        if not free:
            holder = port_holder(claim.port)
            held_by = f" (held by {holder})" if holder else ""
            problems.append(
                f"port {claim.port} on {claim.host} is already in use{held_by}: {claim.service} "
                f"needs it; stop the other process or set {claim.env_var} to a free port"
            )
    return problems


def free_port(host: str = "127.0.0.1") -> int:
    """A port the OS considers free right now (for tests and ad-hoc stacks)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        port: int = sock.getsockname()[1]
        return port
