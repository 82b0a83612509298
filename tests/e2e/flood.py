"""Hostile local traffic for the end-to-end tests: a flood of INVITEs, and clients that never read.

- ``flood_invites``: raw UDP INVITEs from one loopback address at a steady
  rate, each with its own Call-ID, from one non-blocking socket; every final
  reply of 300 or more is ACKed (hop by hop, as a UAC must: HTTP mode's
  refusals are stateful, and an INVITE transaction never ACKed holds its
  shared memory for half a minute) and counted by code, once per Call-ID.
- ``idle_clients``: one TCP connection to every port the router's processes
  listen on (Kamailio, c4 cdr, c4 serve: found through /proc), each with a
  tiny receive buffer, never read from.
- ``group_pids`` / ``find_process``: the processes of one process group
  (the harness starts each router in a session of its own).
"""

from __future__ import annotations

import os
import socket
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path


@dataclass
class FloodResult:
    sent: int
    elapsed: float  # seconds the sending took
    codes: Counter = field(default_factory=Counter)  # final reply code -> how many

    @property
    def rate(self) -> float:
        return self.sent / self.elapsed if self.elapsed else 0.0


def _header(message: bytes, name: bytes) -> bytes | None:
    wanted = name.lower() + b":"
    for line in message.split(b"\r\n")[1:]:
        if not line:
            break
        if line.lower().startswith(wanted):
            return line[len(wanted):].strip()
    return None


def _ack(reply: bytes, ruri: bytes) -> bytes | None:
    """The ACK of a negative final reply to one of our INVITEs (same Via branch, the reply's To tag)."""
    via, from_, to, call_id = (_header(reply, name) for name in (b"Via", b"From", b"To", b"Call-ID"))
    if None in (via, from_, to, call_id):
        return None
    return (b"ACK " + ruri + b" SIP/2.0\r\nVia: " + via + b"\r\nFrom: " + from_ + b"\r\nTo: " + to
            + b"\r\nCall-ID: " + call_id + b"\r\nCSeq: 1 ACK\r\nMax-Forwards: 70\r\nContent-Length: 0\r\n\r\n")


def flood_invites(address: str, port: int, source: str, count: int, rate: float, called: str = "0612345678",
                  call_id_size: int = 0, linger: float = 1.0) -> FloodResult:
    """COUNT INVITEs from SOURCE to the router at about RATE a second; then listen LINGER seconds for late replies.

    ``call_id_size``: pad each Call-ID to that many characters (a bigger call event).
    """
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
    sock.bind((source, 0))
    sock.setblocking(False)
    local = f"{source}:{sock.getsockname()[1]}"
    ruri = f"sip:{called}@{address}:{port}".encode()
    run = uuid.uuid4().hex[:12]
    codes: Counter = Counter()
    answered: set[bytes] = set()  # Call-IDs with a final reply (a stateful one may come again before our ACK)

    def drain() -> None:
        while True:
            try:
                data = sock.recv(65535)
            except BlockingIOError:
                return
            first = data.split(b"\r\n", 1)[0]
            if not first.startswith(b"SIP/2.0 ") or first.startswith(b"SIP/2.0 1"):
                continue
            code = int(first[8:11])
            call_id = _header(data, b"Call-ID")
            if call_id not in answered:
                answered.add(call_id)
                codes[code] += 1
            if code >= 300:
                ack = _ack(data, ruri)
                if ack is not None:
                    try:
                        sock.sendto(ack, (address, port))
                    except BlockingIOError:
                        pass

    started = time.monotonic()
    sent = 0
    try:
        while sent < count:
            due = started + sent / rate
            now = time.monotonic()
            if now < due:
                drain()
                time.sleep(min(0.002, due - now))
                continue
            call_id = f"{run}-{sent}"
            if call_id_size:
                call_id = call_id.ljust(call_id_size - len("@flood"), "x")
            call_id += "@flood"
            invite = (
                f"INVITE sip:{called}@{address}:{port} SIP/2.0\r\n"
                f"Via: SIP/2.0/UDP {local};branch=z9hG4bK{run}{sent};rport\r\n"
                f"From: <sip:0611111111@{source}>;tag=f{sent}\r\n"
                f"To: <sip:{called}@{address}>\r\n"
                f"Call-ID: {call_id}\r\nCSeq: 1 INVITE\r\nMax-Forwards: 70\r\n"
                f"Contact: <sip:flood@{local}>\r\nContent-Length: 0\r\n\r\n"
            ).encode()
            try:
                sock.sendto(invite, (address, port))
            except BlockingIOError:
                drain()
                continue
            sent += 1
            if sent % 50 == 0:
                drain()
        elapsed = time.monotonic() - started
        quiet_until = time.monotonic() + linger
        while time.monotonic() < quiet_until:
            before = sum(codes.values())
            drain()
            if sum(codes.values()) != before:
                quiet_until = time.monotonic() + linger
            time.sleep(0.01)
    finally:
        sock.close()
    return FloodResult(sent, elapsed, codes)


# ---------------------------------------------------------------- processes and their ports


def group_pids(pgid: int) -> list[int]:
    """The processes of process group PGID."""
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        fields = stat.rsplit(")", 1)[1].split()  # after "pid (comm)": state, ppid, pgrp, ...
        if int(fields[2]) == pgid:
            pids.append(int(entry.name))
    return pids


def find_process(pgid: int, needle: str) -> int:
    """The one process of group PGID whose command line holds NEEDLE."""
    found = []
    for pid in group_pids(pgid):
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if needle in cmdline:
            found.append(pid)
    assert len(found) == 1, f"{len(found)} processes of group {pgid} run {needle!r}"
    return found[0]


def listening_ports(pids: list[int]) -> list[int]:
    """The TCP ports (IPv4) that these processes listen on."""
    inodes = set()
    for pid in pids:
        try:
            for fd in os.listdir(f"/proc/{pid}/fd"):
                try:
                    target = os.readlink(f"/proc/{pid}/fd/{fd}")
                except OSError:
                    continue
                if target.startswith("socket:["):
                    inodes.add(target[8:-1])
        except OSError:
            continue
    ports = set()
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        parts = line.split()
        local, state, inode = parts[1], parts[3], parts[9]
        if state == "0A" and inode in inodes:  # LISTEN
            ports.add(int(local.split(":")[1], 16))
    return sorted(ports)


def idle_clients(pgids: list[int], receive_buffer: int = 4096) -> list[socket.socket]:
    """A connection to every TCP port the processes of these groups listen on, never read from."""
    clients = []
    for port in listening_ports([pid for pgid in pgids for pid in group_pids(pgid)]):
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, receive_buffer)
        sock.connect(("127.0.0.1", port))
        clients.append(sock)
    return clients
