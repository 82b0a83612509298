"""A scriptable SIP peer for the trunk health tests: it notes every request and answers as told.

sipp plays one scenario from start to end; a health test needs a carrier
whose behaviour changes while the router runs (silent, then answering
OPTIONS, then INVITEs too) and that counts what it got and when. This
is that, on one UDP socket, in a thread: ``options``, ``invite`` and
``bye`` are the codes it answers with (None: silence), changed at any
time. It answers where a request came from, as a UA answers the Via
(sipp answers the first peer of the call: a cluster test's BYE through
another node needs this).
"""

from __future__ import annotations

import re
import socket
import threading
import time
import uuid
from dataclasses import dataclass

__all__ = ["SipPeer"]

_HEADERS = re.compile(r"(?im)^(via|v|from|f|to|t|call-id|i|cseq|record-route):.*$")


@dataclass
class Received:
    method: str
    at: float  # time.monotonic()
    source: tuple[str, int]


class SipPeer:
    """A UDP peer on ADDRESS:free port; ``uri`` is its SIP URI, ``received`` what came in."""

    def __init__(self, address: str, options: int | None = None, invite: int | None = None, bye: int | None = None) -> None:
        self.options = options
        self.invite = invite
        self.bye = bye
        self.received: list[Received] = []
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind((address, 0))
        self.sock.settimeout(0.2)
        self.address, self.port = self.sock.getsockname()
        self.uri = f"sip:{self.address}:{self.port}"
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def count(self, method: str, since: float = 0.0) -> int:
        return sum(1 for r in list(self.received) if r.method == method and r.at >= since)

    def close(self) -> None:
        self._stop.set()
        self._thread.join(2)
        self.sock.close()

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                data, source = self.sock.recvfrom(65535)
            except (TimeoutError, OSError):
                continue
            text = data.decode(errors="replace")
            first = text.split("\r\n", 1)[0]
            if first.startswith("SIP/2.0"):
                continue
            method = first.split(" ", 1)[0]
            self.received.append(Received(method, time.monotonic(), source))
            code = {"OPTIONS": self.options, "INVITE": self.invite, "BYE": self.bye}.get(method)
            if code is not None:  # to where the request came from, as a UA answers its Via (sipp answers its first peer)
                self.sock.sendto(self._reply(text, code), source)

    def _reply(self, request: str, code: int) -> bytes:
        lines = [m.group(0).rstrip("\r") for m in _HEADERS.finditer(request)]
        lines = [line + f";tag={uuid.uuid4().hex[:8]}" if re.match(r"(?i)(to|t):", line) and ";tag=" not in line else line
                 for line in lines]
        reason = {200: "OK", 404: "Not Found", 486: "Busy Here", 503: "Service Unavailable"}.get(code, "Reply")
        lines.append(f"Contact: <{self.uri}>")
        return (f"SIP/2.0 {code} {reason}\r\n" + "\r\n".join(lines) + "\r\nContent-Length: 0\r\n\r\n").encode()
