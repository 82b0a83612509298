"""Compiling a checked routing document into a ``RoutingTable`` (c4kemi/core/compiled.py).

The document must come from ``c4kemi.core.document`` (checked, defaults filled
in): compiling checks nothing. ``compile_steps`` does it in steps, so a
Kamailio worker can spread a large compile over calls (c4kemi/sources/feed_reader.py).
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Generator, Iterable, Mapping
from types import MappingProxyType
from typing import Any

from . import steps
from .compiled import BASE_COLLECTIONS, Did, Endpoint, RouteChoice, RoutingTable, Target
from .digests import DIGEST_MASK, base_collections_digest, compiled_route_digest, did_digest, table_version
from .indexes import PrefixIndex, SourceIndex
from .numbers import Profile
from .steps import finish

__all__ = ["compile_did", "compile_route", "compile_steps", "compile_validated"]


def compile_validated(document: Mapping[str, Any]) -> RoutingTable:
    """Compile a document already returned by ``c4kemi.core.document`` (validated, defaults filled in)."""
    return finish(compile_steps({name: document[name] for name in BASE_COLLECTIONS}, document["dids"], document["routes"]))


def compile_steps(
    base: Mapping[str, Any], dids: Iterable[Mapping[str, Any]], routes: Iterable[Mapping[str, Any]]
) -> Generator[None, None, RoutingTable]:
    """``compile_validated`` in steps: yields after every ``steps.STEP`` DIDs or routes, returns the table.

    ``base`` holds the checked ``BASE_COLLECTIONS``; ``dids`` and ``routes``
    may be lazy (c4kemi/sources/feed_reader.py reads a snapshot a chunk at a time).
    """
    ipbxs, trunks = _endpoints(base)

    networks = [
        (ipaddress.ip_network(cidr), by_name[entity["name"]])
        for collection, by_name in (("trunks", trunks), ("ipbxs", ipbxs))
        for entity in base[collection]
        for cidr in entity["sources"]
    ]

    step = steps.STEP
    digest = 0
    did_entries = {}
    did_values: dict[tuple[str, str, str | None], Did] = {}
    for n, d in enumerate(dids, 1):
        did_entries[d["prefix"]] = compile_did(d, ipbxs, did_values)
        digest += did_digest(d)
        if not n % step:
            yield

    route_entries: dict[str, dict[str, RouteChoice]] = {}
    n = 0
    for n, r in enumerate(routes, 1):
        route = compile_route(r, trunks)
        route_entries.setdefault(route.tenant, {})[route.prefix] = route
        digest += compiled_route_digest(route)
        if not n % step:
            yield

    base = {name: base[name] for name in BASE_COLLECTIONS}
    base_digest = base_collections_digest(base)
    digest &= DIGEST_MASK
    counts = {name: len(items) for name, items in base.items()}
    counts.update(dids=len(did_entries), routes=n)
    dids, routes = did_entries, route_entries
    return RoutingTable(
        sources=SourceIndex.build(networks),
        dids=PrefixIndex.build(dids),
        routes=MappingProxyType({tenant: PrefixIndex.build(entries) for tenant, entries in routes.items()}),
        version=table_version(base_digest, digest),
        counts=MappingProxyType(counts),
        base=MappingProxyType(base),
        ipbxs=MappingProxyType(ipbxs),
        trunks=MappingProxyType(trunks),
        base_digest=base_digest,
        entity_digest=digest,
        tenant_channels=MappingProxyType({t["name"]: t["max_channels"] for t in base["tenants"] if "max_channels" in t}),
        did_values=did_values,
    )


def _endpoints(document: Mapping[str, Any]) -> tuple[dict[str, Endpoint], dict[str, Endpoint]]:
    profiles = {p["name"]: Profile(**p) for p in document["normalization_profiles"]}
    carriers = {c["name"]: c for c in document["carriers"]}

    def endpoint(kind: str, entity: dict, tenant: str | None, targets: list[str]) -> Endpoint:
        return Endpoint(
            kind=kind,
            name=entity["name"],
            tenant=tenant,
            targets=tuple(Target.parse(t) for t in targets),
            profile=profiles.get(entity["normalization"]) if entity.get("normalization") else None,
            fr_timer=entity["fr_timer"],
            fr_inv_timer=entity["fr_inv_timer"],
            branch_flags=entity["branch_flags"],
            auth=MappingProxyType(dict(entity["auth"])) if entity.get("auth") else None,
            hash_key=entity["name"].encode(),
            carrier=entity.get("carrier"),
            max_channels=entity.get("max_channels"),
            max_cps=entity.get("max_cps"),
        )

    ipbxs = {i["name"]: endpoint("ipbx", i, i["tenant"], i["targets"]) for i in document["ipbxs"]}
    trunks = {
        t["name"]: endpoint("trunk", t, carriers[t["carrier"]]["tenant"], [t["target"]])
        for t in document["trunks"]
    }
    return ipbxs, trunks


def compile_did(d: Mapping[str, Any], ipbxs: Mapping[str, Endpoint], interned: dict[tuple[str, str, str | None], Did]) -> Did:
    """The interned Did of a checked DID's tenant, IPBX and match (see Did), made and kept in ``interned`` once."""
    key = (d["tenant"], d["ipbx"], d.get("match") or None)
    did = interned.get(key)
    if did is None:
        did = interned[key] = Did(key[0], ipbxs[key[1]], re.compile(key[2]) if key[2] else None)
    return did


def compile_route(r: Mapping[str, Any], trunks: Mapping[str, Endpoint]) -> RouteChoice:
    """The RouteChoice of a checked route: its trunks (from ``trunks``, by name) grouped by priority.

    A route without ``when_all_down`` and one that says "try" compile to the same RouteChoice.
    """
    by_priority: dict[int, list[tuple[Endpoint, float]]] = {}
    for choice in r["trunks"]:
        by_priority.setdefault(choice["priority"], []).append((trunks[choice["trunk"]], choice["weight"]))
    priorities = tuple(sorted(by_priority))
    groups = tuple(tuple(by_priority[p]) for p in priorities)
    return RouteChoice(r["tenant"], r["prefix"], groups, priorities, r.get("when_all_down") or "try")
