"""Trunk health in Kamailio: what it probes (written from the table), and what it found (read for the API).

Kamailio keeps the health of every target in shared-memory htables
(kamailio/kamailio-health.cfg). Two of them say what to watch, and only
the node's ``c4 health-sync`` writes them, over the JSON-RPC datagram
socket: ``c4probe`` (target URI -> settings line, c4kemi/core/health.py)
and ``c4pname`` (target URI -> who uses it, for Kamailio's log lines). The
config writes the state; ``health_report`` reads it back for the table's
targets, for ``GET /trunks/health`` and ``/metrics``.
Standard library only (runs beside Kamailio, and in c4 serve).
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any

from ..core.health import ProbeTarget
from .channels import KamailioRpc

__all__ = ["ProbeSync", "health_report", "htable_values"]

PROBES, NAMES = "c4probe", "c4pname"
# The state tables the config keeps, cleared for a target that leaves the table.
STATE_TABLES = ("c4down", "c4hfail", "c4hpfail", "c4hok", "c4hnext")
INFO_FIELDS = ("since", "probe", "rtt", "failure", "reason", "ups", "downs")
# Set by a full sync: a Kamailio that restarted (or never got one) reads 0.
EPOCH = "c4_probe_epoch"


def htable_values(rpc: KamailioRpc, name: str, keys: list[str]) -> dict[str, Any]:
    """The items of KEYS present in one htable (``htable.get`` each, over one socket).

    Not ``htable.dump``: with a thousand targets its reply outgrows a datagram.
    """
    results = rpc.calls("htable.get", [(name, key) for key in keys], missing_ok=True)
    return {key: r["item"].get("value") for key, r in zip(keys, results)
            if isinstance(r, dict) and isinstance(r.get("item"), dict)}


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
        """Everything, as if Kamailio knew nothing: emptied first, so no target the table dropped stays watched.

        Only at start or after Kamailio restarted; for the few milliseconds of
        the refill the probe timer may see part of the list (a down target
        missed by its count of down targets, for a second at most).
        """
        self.rpc.call("htable.flush", PROBES)
        self.rpc.call("htable.flush", NAMES)
        self.sent = {}
        self._send(list(targets.values()), [])
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


def health_report(rpc: KamailioRpc, targets: Mapping[str, ProbeTarget], detail: bool = True) -> list[dict[str, Any]]:
    """One entry per target of TARGETS (the table's) that Kamailio watches, sorted by URI.

    Who uses it comes from the table; the rest from Kamailio: its state,
    how often it changed, and with ``detail`` since when, the last probe
    and failure, failures in a row (GET /trunks/health; /metrics needs
    only the state and the changes).
    """
    uris = sorted(targets)
    watched = htable_values(rpc, PROBES, uris)
    uris = [uri for uri in uris if uri in watched]
    down = htable_values(rpc, "c4down", uris)
    info_keys = [f"{uri};{key}" for uri in uris for key in (INFO_FIELDS if detail else ("ups", "downs"))]
    info = htable_values(rpc, "c4hinfo", info_keys)
    failures = htable_values(rpc, "c4hfail", uris) if detail else {}
    probe_failures = htable_values(rpc, "c4hpfail", uris) if detail else {}
    out = []
    for uri in uris:
        users = targets[uri].users
        entry = {
            "target": uri,
            "trunks": [u[6:] for u in users if u.startswith("trunk ")],
            "ipbxs": [u[5:] for u in users if u.startswith("ipbx ")],
            "state": "down" if _number(down.get(uri)) == 1 else "up",
            "went_down": _number(info.get(f"{uri};downs")) or 0,
            "came_up": _number(info.get(f"{uri};ups")) or 0,
        }
        if detail:
            reason = info.get(f"{uri};reason")
            entry.update({
                "since": _iso(_number(info.get(f"{uri};since"))),
                "invite_failures_in_a_row": _number(failures.get(uri)) or 0,
                "probe_failures_in_a_row": _number(probe_failures.get(uri)) or 0,
                "last_probe": _iso(_number(info.get(f"{uri};probe"))),
                "last_probe_rtt_ms": _number(info.get(f"{uri};rtt")),
                "last_failure": _iso(_number(info.get(f"{uri};failure"))),
                "last_failure_reason": reason if isinstance(reason, str) and reason != "0" else None,
                "probe_interval": _number(str(watched[uri]).split(";", 1)[0]),
            })
        out.append(entry)
    return out
