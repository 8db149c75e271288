"""The systemd notification protocol (sd_notify), for ``Type=notify`` units.

A datagram to the socket in ``$NOTIFY_SOCKET``; a no-op when not run by systemd.
"""

from __future__ import annotations

import os
import socket


def notify(*lines: str, env: dict[str, str] | None = None) -> bool:
    """Send ``lines`` (such as ``READY=1``) to systemd; False when there is no notify socket."""
    address = (env if env is not None else os.environ).get("NOTIFY_SOCKET")
    if not address:
        return False
    if address.startswith("@"):  # abstract namespace
        address = "\0" + address[1:]
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
        try:
            sock.connect(address)
            sock.sendall("\n".join(lines).encode())
        except OSError:
            return False
    return True


def watchdog_interval(env: dict[str, str] | None = None) -> float | None:
    """The watchdog period in seconds when systemd asked for pings (``WATCHDOG_USEC``), else None."""
    environ = env if env is not None else os.environ
    usec = environ.get("WATCHDOG_USEC")
    pid = environ.get("WATCHDOG_PID")
    if not usec or not usec.isdigit() or int(usec) == 0:
        return None
    if pid and pid.isdigit() and int(pid) != os.getpid():
        return None
    return int(usec) / 1_000_000
