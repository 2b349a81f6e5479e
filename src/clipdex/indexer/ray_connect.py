"""Connecting to Ray (or starting a local one), failing fast on an address nobody answers.

`ray.init(address="HOST:PORT")` retries a cluster that is not there for minutes before it
gives up; a TCP connect to the address first answers in milliseconds (refused) or
CONNECT_TIMEOUT_S (unreachable), and the run stops with one line instead.
"""

from __future__ import annotations

import logging
import socket

from clipdex.errors import BackendError

#: How long a cluster's address may take to accept a TCP connection.
CONNECT_TIMEOUT_S = 5.0
#: Addresses Ray resolves itself (a running local cluster, a new one): nothing to probe.
RESOLVED_BY_RAY = (None, "", "auto", "local")


def connect(address: str | None) -> bool:
    """Connect this process to Ray at `address` (see RayOptions), unless it already is;
    True when this call started (or joined) Ray, so the caller shuts it down after."""
    import ray

    if ray.is_initialized():
        return False
    where = f"at {address}" if address else "on this machine"
    check_address(address)
    try:
        ray.init(
            address=address,
            include_dashboard=False,
            log_to_driver=False,
            logging_level=logging.ERROR,
        )
    except (OSError, RuntimeError, ValueError) as exc:
        raise BackendError(f"cannot start or reach Ray {where}: {first_line(exc)}") from exc
    return True


def check_address(address: str | None) -> None:
    """BackendError unless `address` is one Ray resolves itself or answers on TCP: run
    before an index is created, so a wrong address leaves nothing behind."""
    if address not in RESOLVED_BY_RAY:
        check_reachable(address)


def check_reachable(address: str) -> None:
    """BackendError unless HOST:PORT (or ray://HOST:PORT) accepts a TCP connection."""
    hostport = address.removeprefix("ray://").split("/", 1)[0]
    host, _, port = hostport.rpartition(":")
    host = host.strip("[]")  # [::1]:6379
    if not host or not (port.isascii() and port.isdigit()):
        raise BackendError(f"the Ray address '{address}' is not HOST:PORT or ray://HOST:PORT")
    try:
        with socket.create_connection((host, int(port)), timeout=CONNECT_TIMEOUT_S):
            pass
    except OSError as exc:
        reason = exc.strerror or type(exc).__name__
        raise BackendError(f"cannot reach Ray at {address}: {reason.lower()}") from None


def first_line(exc: BaseException) -> str:
    """An exception's first line, at most 300 characters, for a one-line error."""
    text = str(exc).strip()
    return text.splitlines()[0][:300] if text else type(exc).__name__
