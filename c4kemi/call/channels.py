"""Live channel counts: the calls in progress per tenant and per trunk, read from Kamailio.

Kamailio counts the calls itself, in the dialog profiles ``c4_tenant`` and
``c4_trunk`` (kamailio-base.cfg; docs/routing.md, "Channel limits"). This
reads them over Kamailio's JSON-RPC datagram socket (``jsonrpcs``, the
``C4_RPC_SOCKET`` of ``c4 kamailio --rpc-socket``) with
``dlg.profile_get_size``, one request per name: the names come from the
routing table, so the cost grows with the table (about 30 us a name here),
not with the traffic. Used by ``c4 serve --kamailio-rpc`` for ``/metrics``
and ``GET /channels``. Standard library only.
"""

from __future__ import annotations

import itertools
import json
import os
import socket
import tempfile
import threading
from typing import Any

__all__ = ["KamailioRpc", "RpcError", "channel_names", "live_channels", "live_counts"]

TENANT_PROFILE = "c4_tenant"
TRUNK_PROFILE = "c4_trunk"


class RpcError(RuntimeError):
    """Kamailio did not answer, or answered with an error."""


class KamailioRpc:
    """A JSON-RPC client of one Kamailio's ``jsonrpcs`` datagram socket.

    Kamailio answers to the sender's address, so each call binds a socket of
    its own in a private temporary directory. Thread-safe (one call at a time).
    """

    def __init__(self, path: str, timeout: float = 1.0) -> None:
        self.path = path
        self.timeout = timeout
        self._ids = itertools.count(1)
        self._lock = threading.Lock()

    def call(self, method: str, *params: Any) -> Any:
        request = {"jsonrpc": "2.0", "method": method, "id": next(self._ids)}
        if params:
            request["params"] = list(params)
        with self._lock, tempfile.TemporaryDirectory(prefix="c4-rpc-") as tmp:
            with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
                sock.bind(os.path.join(tmp, "reply.sock"))
                sock.settimeout(self.timeout)
                try:
                    sock.sendto(json.dumps(request).encode(), self.path)
                    data = sock.recv(65536)
                except OSError as exc:
                    raise RpcError(f"Kamailio RPC socket {self.path}: {exc.strerror or exc}") from None
        try:
            reply = json.loads(data)
        except ValueError:
            raise RpcError(f"Kamailio RPC {method}: not JSON: {data[:200]!r}") from None
        if "error" in reply:
            raise RpcError(f"Kamailio RPC {method}: {reply['error']}")
        return reply.get("result")

    def calls(self, method: str, params: list[tuple], missing_ok: bool = False) -> list[Any]:
        """The same method for each parameter tuple, over one socket; with ``missing_ok``, None for each error reply."""
        out = []
        with self._lock, tempfile.TemporaryDirectory(prefix="c4-rpc-") as tmp:
            with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
                sock.bind(os.path.join(tmp, "reply.sock"))
                sock.settimeout(self.timeout)
                for args in params:
                    ident = next(self._ids)
                    request = {"jsonrpc": "2.0", "method": method, "params": list(args), "id": ident}
                    try:
                        sock.sendto(json.dumps(request).encode(), self.path)
                        while True:  # a late answer to an earlier request is skipped
                            reply = json.loads(sock.recv(65536))
                            if reply.get("id") == ident:
                                break
                    except OSError as exc:
                        raise RpcError(f"Kamailio RPC socket {self.path}: {exc.strerror or exc}") from None
                    except ValueError:
                        raise RpcError(f"Kamailio RPC {method}: a reply that is not JSON") from None
                    if "error" in reply:
                        if missing_ok:  # htable.get of a key that is not there
                            out.append(None)
                            continue
                        raise RpcError(f"Kamailio RPC {method}: {reply['error']}")
                    out.append(reply.get("result"))
        return out


def channel_names(table: Any) -> tuple[list[str], list[str]]:
    """(tenants, trunks) that can carry calls with this table, sorted.

    A trunk carries calls if it is a source or in a route; a tenant if it has
    an IPBX with sources, a DID or a route. Taken from the compiled table.
    """
    tenants, trunks = _entities(table)
    return sorted(tenants), sorted(trunks)


def _entities(table: Any) -> tuple[set[str], dict[str, Any]]:
    tenants: set[str] = set()
    trunks: dict[str, Any] = {}
    for levels in (table.sources.v4, table.sources.v6):
        for _, _, nets in levels:
            for endpoint in nets.values():
                if endpoint.kind == "trunk":
                    trunks[endpoint.name] = endpoint
                elif endpoint.tenant is not None:
                    tenants.add(endpoint.tenant)
    tenants.update(did.tenant for did in table.dids.entries.values())
    for tenant, index in table.routes.items():
        tenants.add(tenant)
        for route in index.entries.values():
            trunks.update((endpoint.name, endpoint) for group in route.groups for endpoint, _ in group)
    return tenants, trunks


def _size(result: Any) -> int:
    # dlg.profile_get_size answers {"profile": ..., "value": ..., "count": N}
    if isinstance(result, dict):
        return int(result.get("count", 0))
    return int(result or 0)


def live_counts(rpc: KamailioRpc, table: Any) -> dict[str, Any]:
    """``{"calls": N, "tenants": {name: calls}, "trunks": {name: calls}}``.

    ``calls``: every call in progress (each is in exactly one tenant's
    count); then one count for every name the table can route. Kamailio is
    asked even for an empty table, so an unreachable one is always an error.
    """
    tenants, trunks = channel_names(table)
    params = [(TENANT_PROFILE,)] + [(TENANT_PROFILE, name) for name in tenants] + [(TRUNK_PROFILE, name) for name in trunks]
    total, *sizes = [_size(result) for result in rpc.calls("dlg.profile_get_size", params)]
    return {
        "calls": total,
        "tenants": dict(zip(tenants, sizes[: len(tenants)], strict=True)),
        "trunks": dict(zip(trunks, sizes[len(tenants):], strict=True)),
    }


def live_channels(rpc: KamailioRpc, table: Any) -> dict[str, Any]:
    """``live_counts`` with each name's limits, as ``GET /channels`` serves it."""
    counts = live_counts(rpc, table)
    _, trunks = _entities(table)

    def limits(**values: int | None) -> dict[str, int]:
        return {key: value for key, value in values.items() if value is not None}

    return {
        "calls": counts["calls"],
        "tenants": [
            {"name": name, "calls": calls, **limits(max_channels=table.tenant_channels.get(name))}
            for name, calls in counts["tenants"].items()
        ],
        "trunks": [
            {"name": name, "calls": calls, **limits(max_channels=trunks[name].max_channels, max_cps=trunks[name].max_cps)}
            for name, calls in counts["trunks"].items()
        ],
    }
