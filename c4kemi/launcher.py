"""``c4 kamailio``: run Kamailio in the foreground with the router."""

from __future__ import annotations

import argparse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--mode", choices=("kemi", "http"), default="kemi")
    parser.add_argument("--table", help="routing document (KEMI mode, or with --serve-api)")
    parser.add_argument("--listen", action="append", help="Kamailio listen socket, e.g. udp:127.0.0.1:5060 (repeatable)")
    parser.add_argument("--workers", type=int, default=4, help="SIP worker processes")
    parser.add_argument("--shm", type=int, default=512, help="shared memory in MiB")
    parser.add_argument("--pkg", type=int, default=32, help="private memory per process in MiB")
    parser.add_argument("--api", default="http://127.0.0.1:8080", help="c4http base URL (HTTP mode)")
    parser.add_argument("--log-level", type=int, default=2, help="Kamailio debug level (2: info)")


def run_kamailio(args: argparse.Namespace) -> int:
    raise NotImplementedError("KEMI launcher: see issue 3")
