"""``c4 serve``'s options for the provisioning API and the routing endpoint's callers.

Apart from c4http.server so that building the CLI parser imports no aiohttp.
"""

from __future__ import annotations

import argparse
import ipaddress
import os

__all__ = ["add_api_arguments"]


def add_api_arguments(parser: argparse.ArgumentParser) -> None:
    """``c4 serve``'s flags for the provisioning API and the routing endpoint's callers."""
    try:
        parser.add_argument("--dsn", default=os.environ.get("C4_DSN"),
                            help="PostgreSQL DSN of the provisioning API, served under /api/v1 (default: $C4_DSN; none: no API)")
    except argparse.ArgumentError:
        pass  # c4 serve already takes --dsn (the table from PostgreSQL): the API uses that database
    parser.add_argument("--api-token", default=os.environ.get("C4_API_TOKEN"),
                        help="the API's admin token (default: $C4_API_TOKEN, which keeps it out of ps)")
    parser.add_argument("--api-token-file", default=None, help="or read the admin token from this file (mode 600, first line)")
    parser.add_argument("--dsn-file", default=None, help="read the DSN from this file (mode 600, first line) instead of --dsn or $C4_DSN")
    parser.add_argument("--api-listen", metavar="HOST:PORT", type=host_port,
                        help="serve /api/v1 on this address instead of beside the routing endpoint")
    parser.add_argument("--routing-from", metavar="CIDR", action="append", type=network,
                        help="who may POST /kamailio/rtjson (repeatable; default: 127.0.0.0/8 and ::1)")


def host_port(value: str) -> tuple[str, int]:
    host, _, port = value.rpartition(":")
    host = host.strip("[]")
    if not host or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise argparse.ArgumentTypeError(f"{value!r} is not HOST:PORT")
    return host, int(port)


def network(value: str) -> str:
    try:
        return str(ipaddress.ip_network(value, strict=True))
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
