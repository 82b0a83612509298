"""Ports for the servers a test starts: sipp, Kamailio, c4 serve."""

from __future__ import annotations

import random
import socket
from pathlib import Path


def _ephemeral_range() -> tuple[int, int]:
    try:
        low, high = Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()
        return int(low), int(high)
    except (OSError, ValueError):
        return 32768, 60999


_handed_out: set[int] = set()


def _free_port(address: str, kind: int) -> int:
    """A port that is free now and that the kernel will not hand to anyone else.

    A port the kernel picked (bind to 0) is ephemeral: once released, any
    process's next outgoing socket (a resolver query, a sipp or libcurl socket)
    may get it before sipp or Kamailio binds it, and the test then fails on
    EADDRINUSE. So pick at random below the ephemeral range, never twice in a
    run, and check it binds.
    """
    low = 10000
    high = max(low + 1000, _ephemeral_range()[0] - 1)
    family = socket.AF_INET6 if ":" in address else socket.AF_INET
    for _ in range(1000):
        port = random.randint(low, high)
        if port in _handed_out:
            continue
        try:
            with socket.socket(family, kind) as sock:
                sock.bind((address, port))
        except OSError:
            continue
        _handed_out.add(port)
        return port
    raise RuntimeError(f"no free port on {address} between {low} and {high}")


def free_udp_port(address: str) -> int:
    return _free_port(address, socket.SOCK_DGRAM)


def free_tcp_port(address: str = "127.0.0.1") -> int:
    return _free_port(address, socket.SOCK_STREAM)
