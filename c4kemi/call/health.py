"""Trunk health in Kamailio: what it probes (written from the table), and what it found (read for the API).

Kamailio keeps the health of every target in shared-memory htables
(kamailio/kamailio-health.cfg). Two of them say what to watch, and only
the node's ``c4 health-sync`` writes them, over the JSON-RPC datagram
socket: ``c4probe`` (target URI -> settings line, c4kemi/core/health.py)
and ``c4pname`` (target URI -> who uses it). The config writes the state;
``health_report`` reads it back for ``GET /trunks/health`` and ``/metrics``.
Standard library only (runs beside Kamailio, and in c4 serve).
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any

from ..core.health import ProbeTarget
from .channels import KamailioRpc

__all__ = ["ProbeSync", "health_report", "htable"]

PROBES, NAMES = "c4probe", "c4pname"
# The state tables the config keeps, cleared for a target that leaves the table.
STATE_TABLES = ("c4down", "c4hfail", "c4hpfail", "c4hok", "c4hnext")
INFO_FIELDS = ("since", "probe", "rtt", "failure", "reason", "ups", "downs")
# Set by a full sync: a Kamailio that restarted (or never got one) reads 0.
EPOCH = "c4_probe_epoch"


def htable(rpc: KamailioRpc, name: str) -> dict[str, Any]:
    """Every item of one htable (``htable.dump``: a list of slots, each with its items)."""
    items: dict[str, Any] = {}
    for slot in rpc.call("htable.dump", name) or []:
        for item in slot.get("slot", []) if isinstance(slot, dict) else []:
            if isinstance(item, dict) and "name" in item:
                items[item["name"]] = item.get("value")
    return items


class ProbeSync:
    """Makes Kamailio's probe tables equal to a table's targets, sending only what changed.

    ``sync`` is called with every table (and may be called again with the
    same one: then it only checks that Kamailio still has what it was
    given). A Kamailio that restarted has empty tables and epoch 0: it gets
    everything again. Raises RpcError when Kamailio does not answer; what
    was sent stays sent, the next call goes on from there.
    """

    def __init__(self, rpc: KamailioRpc) -> None:
        self.rpc = rpc
        self.sent: dict[str, ProbeTarget] = {}
        self.epoch = 0

    def sync(self, targets: Mapping[str, ProbeTarget]) -> int:
        """Send what differs; the number of targets added, changed or removed."""
        if self.epoch == 0 or self._epoch() != self.epoch:
            self._full(targets)
            return len(targets)
        changed = [t for uri, t in targets.items() if self.sent.get(uri) != t]
        removed = [uri for uri in self.sent if uri not in targets]
        self._send(changed, removed)
        return len(changed) + len(removed)

    def _epoch(self) -> int:
        result = self.rpc.call("pv.shvGet", EPOCH)
        value = result[0].get("value") if isinstance(result, list) and result and isinstance(result[0], dict) else result
        if isinstance(value, dict):
            value = value.get("value")
        try:
            return int(value or 0)
        except (TypeError, ValueError):
            return 0

    def _full(self, targets: Mapping[str, ProbeTarget]) -> None:
        """Everything, as if Kamailio knew nothing (targets it has and the table has not are removed)."""
        known = set(htable(self.rpc, PROBES))
        self.sent = {}
        self._send(list(targets.values()), sorted(known - set(targets)))
        epoch = int(time.time() * 1000) % 2_000_000_000 or 1
        self.rpc.call("pv.shvSet", EPOCH, "int", epoch)
        self.epoch = epoch

    def _send(self, changed: list[ProbeTarget], removed: list[str]) -> None:
        if changed:
            self.rpc.calls("htable.sets", [(NAMES, t.uri, ", ".join(t.users)) for t in changed])
            self.rpc.calls("htable.sets", [(PROBES, t.uri, t.line) for t in changed])
            self.sent.update((t.uri, t) for t in changed)
        if removed:
            # Not watched any more: its state goes too (a target that comes back starts up).
            self.rpc.calls("htable.delete", [(PROBES, uri) for uri in removed])
            self.rpc.calls("htable.delete", [(NAMES, uri) for uri in removed])
            for name in STATE_TABLES:
                self.rpc.calls("htable.delete", [(name, uri) for uri in removed])
            self.rpc.calls("htable.delete", [("c4hinfo", f"{uri};{key}") for uri in removed for key in INFO_FIELDS])
            for uri in removed:
                self.sent.pop(uri, None)


def _number(value: Any) -> int | None:
    try:
        return int(value)
    except (TypeError, ValueError):
        return None


def _iso(seconds: int | None) -> str | None:
    if not seconds:
        return None
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(seconds))


def health_report(rpc: KamailioRpc) -> list[dict[str, Any]]:
    """One entry per watched target, sorted by URI: who uses it, its state and what the probes saw."""
    names = htable(rpc, NAMES)
    settings = htable(rpc, PROBES)
    down = htable(rpc, "c4down")
    failures = htable(rpc, "c4hfail")
    probe_failures = htable(rpc, "c4hpfail")
    info = htable(rpc, "c4hinfo")
    out = []
    for uri in sorted(settings):
        def field(key: str, uri: str = uri) -> Any:
            return info.get(f"{uri};{key}")

        reason = field("reason")
        users = str(names.get(uri) or "").split(", ")
        out.append({
            "target": uri,
            "trunks": [u[6:] for u in users if u.startswith("trunk ")],
            "ipbxs": [u[5:] for u in users if u.startswith("ipbx ")],
            "state": "down" if _number(down.get(uri)) == 1 else "up",
            "since": _iso(_number(field("since"))),
            "invite_failures_in_a_row": _number(failures.get(uri)) or 0,
            "probe_failures_in_a_row": _number(probe_failures.get(uri)) or 0,
            "last_probe": _iso(_number(field("probe"))),
            "last_probe_rtt_ms": _number(field("rtt")),
            "last_failure": _iso(_number(field("failure"))),
            "last_failure_reason": reason if isinstance(reason, str) and reason != "0" else None,
            "went_down": _number(field("downs")) or 0,
            "came_up": _number(field("ups")) or 0,
            "probe_interval": _number(str(settings[uri]).split(";", 1)[0]),
        })
    return out
