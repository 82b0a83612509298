"""A new table from an old one and what changed, at the cost of the change.

``apply_changes`` takes DIDs and routes (added, changed or removed, each
checked) and makes new indexes from the old ones: the route indexes of
untouched tenants, the source index and every endpoint are the old table's
own objects, and a ``PrefixIndex`` version shares its big dict with the one
before (c4kemi/core/indexes.py). ``update_table`` finds those changes itself by
comparing a whole new document with the table. The old table is never
modified: a call being decided with it finishes with it. docs/scale.md
tells what each piece costs.
"""

from __future__ import annotations

from collections.abc import Generator, Mapping
from types import MappingProxyType
from typing import Any

from . import steps
from .compiled import BASE_COLLECTIONS, Did, RouteChoice, RoutingTable
from .compiler import compile_did, compile_route, compile_validated
from .digests import DIGEST_MASK, compiled_did_digest, compiled_route_digest, table_version
from .indexes import PrefixIndex
from .steps import finish

__all__ = ["apply_changes", "apply_changes_steps", "update_table"]


def update_table(table: RoutingTable, document: Mapping[str, Any]) -> RoutingTable:
    """The table of ``document`` (checked, as ``compile_validated`` takes it), made from ``table``.

    Exactly what ``compile_validated(document)`` gives (tests/test_incremental.py),
    at the cost of what changed: when only DIDs and routes differ, the new
    table shares ``table``'s endpoints, source index, DID and route objects,
    and copies only the indexes that changed. Otherwise it is a full compile.
    Comparing the document with the table still reads every DID and route
    once (about a microsecond each); ``apply_changes`` skips even that when
    the caller knows what changed.
    """
    base = table.base
    if not base or any(document[name] != base[name] for name in BASE_COLLECTIONS):
        return compile_validated(document)
    entries = table.dids.entries
    changes: dict[str, dict | None] = {}
    added = 0
    for d in document["dids"]:
        old = entries.get(d["prefix"])
        if old is None:
            added += 1
            changes[d["prefix"]] = d
        elif (old.tenant != d["tenant"] or old.ipbx.name != d["ipbx"]
              or (old.match.pattern if old.match is not None else None) != (d.get("match") or None)):
            changes[d["prefix"]] = d
    if len(entries) + added != len(document["dids"]):  # some were removed
        kept = {d["prefix"] for d in document["dids"]}
        changes.update((prefix, None) for prefix in entries if prefix not in kept)
    route_changes: dict[tuple[str, str], dict | None] = {}
    seen = 0
    for r in document["routes"]:
        index = table.routes.get(r["tenant"])
        old = index.entries.get(r["prefix"]) if index is not None else None
        if old is None or not _same_route(old, compile_route(r, table.trunks)):
            route_changes[r["tenant"], r["prefix"]] = r
        if old is not None:
            seen += 1
    old_routes = sum(len(index.entries) for index in table.routes.values())
    if seen != old_routes:
        kept_routes = {(r["tenant"], r["prefix"]) for r in document["routes"]}
        route_changes.update(
            ((tenant, prefix), None) for tenant, index in table.routes.items() for prefix in index.entries
            if (tenant, prefix) not in kept_routes
        )
    return apply_changes(table, changes, route_changes)


def apply_changes(
    table: RoutingTable,
    dids: Mapping[str, Mapping[str, Any] | None] = MappingProxyType({}),
    routes: Mapping[tuple[str, str], Mapping[str, Any] | None] = MappingProxyType({}),
) -> RoutingTable:
    """``table`` with DIDs (prefix -> checked DID, None: removed) and routes
    ((tenant, prefix) -> checked route, None: removed) replaced.

    The entities must be checked against the table's other collections
    (``c4kemi.core.document.validate_entity``); the caller keeps the keys
    unique. Costs the changes plus, per index they touch, a copy of its layer.
    """
    return finish(apply_changes_steps(table, dids, routes))


def apply_changes_steps(
    table: RoutingTable,
    dids: Mapping[str, Mapping[str, Any] | None] = MappingProxyType({}),
    routes: Mapping[tuple[str, str], Mapping[str, Any] | None] = MappingProxyType({}),
    digest_delta: int | None = None,
    compiled: bool = False,
) -> Generator[None, None, RoutingTable]:
    """``apply_changes`` in steps: yields after every ``steps.STEP`` DIDs or routes, returns the table.

    ``digest_delta``: what the changes add to the table's entity digest
    (new entities' ``did_digest``/``route_digest`` minus the old ones'),
    when the caller knows it (the feed's writer computes it once per node);
    None: computed here, which costs a lookup and two digests per entity
    (about 40 % of a 100,000-DID change at 1M DIDs).
    ``compiled``: the DIDs are compiled already (``compile_did`` with the
    table's ``did_values``), as a feed reader does line by line.
    """
    if not dids and not routes:
        return table
    step = steps.STEP
    known = digest_delta is not None
    digest = table.entity_digest + (digest_delta or 0)
    # The index's own get, not entries.get: a proxy's get, or once the index has a layer
    # Mapping.get through Layered.__getitem__, cost a third of a 100,000-DID change's lookups.
    did_get = table.dids.get
    compiled_dids: Mapping[str, Did | None] = dids
    if not compiled:  # DIDs as checked: compiled here
        compiled_dids = {}
        for n, (prefix, d) in enumerate(dids.items(), 1):
            compiled_dids[prefix] = None if d is None else compile_did(d, table.ipbxs, table.did_values)
            if not n % step:
                yield
    if not known:
        for n, (prefix, did) in enumerate(compiled_dids.items(), 1):
            old = did_get(prefix)
            digest += (compiled_did_digest(prefix, did) if did is not None else 0) - (compiled_did_digest(prefix, old) if old is not None else 0)
            if not n % step:
                yield
    by_tenant: dict[str, dict[str, RouteChoice | None]] = {}
    for n, ((tenant, prefix), r) in enumerate(routes.items(), 1):
        route = by_tenant.setdefault(tenant, {})[prefix] = None if r is None else compile_route(r, table.trunks)
        if not known:
            index = table.routes.get(tenant)
            old = index.get(prefix) if index is not None else None
            digest += (compiled_route_digest(route) if route is not None else 0) - (compiled_route_digest(old) if old is not None else 0)
        if not n % step:
            yield
    route_indexes = dict(table.routes) if by_tenant else table.routes
    for tenant, changes in by_tenant.items():
        index = route_indexes.get(tenant) or PrefixIndex.build({})
        index = yield from index.updated_steps(changes)
        if index.entries:
            route_indexes[tenant] = index
        else:
            route_indexes.pop(tenant, None)
    did_index = (yield from table.dids.updated_steps(compiled_dids)) if compiled_dids else table.dids
    counts = dict(table.counts)
    counts["dids"] = len(did_index.entries)
    counts["routes"] = sum(len(index.entries) for index in route_indexes.values())
    digest &= DIGEST_MASK
    return RoutingTable(
        sources=table.sources,
        dids=did_index,
        routes=MappingProxyType(route_indexes) if by_tenant else table.routes,
        version=table_version(table.base_digest, digest),
        counts=MappingProxyType(counts),
        base=table.base,
        ipbxs=table.ipbxs,
        trunks=table.trunks,
        base_digest=table.base_digest,
        entity_digest=digest,
        tenant_channels=table.tenant_channels,  # tenants are a base collection: unchanged here
        did_values=table.did_values,
    )


def _same_route(a: RouteChoice, b: RouteChoice) -> bool:
    """Equal, weights of the same type too (1 and 1.0 compare equal but read back differently)."""
    return a == b and all(
        wa.__class__ is wb.__class__ for ga, gb in zip(a.groups, b.groups) for (_, wa), (_, wb) in zip(ga, gb)
    )
