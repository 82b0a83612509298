"""The tenant space policy: what a write may hold of the numbers and addresses others hold.

Every write is checked as ``c4 check`` checks a document
(``c4kemi.core.document.validate_entity``), against the names the caller may
see. Then the space: a source CIDR belongs to one IPBX or trunk; a tenant
token's new sources and DID prefixes lie in its tenant's blocks when the
admin assigned some, and overlap no other owner's (409); the admin is only
warned of such an overlap (c4kemi.core.overlaps, the same rules as ``c4
check``). The SQL is c4http.queries'.
"""

from __future__ import annotations

import ipaddress
from typing import Any

from c4kemi.core.document import DocumentError, validate_entity
from c4kemi.core.entity_checks import entity_where
from c4kemi.core.overlaps import owner_name

from .auth import Principal
from .queries import Spec, assigned_blocks, carrier_tenant, number_overlaps, references, source_overlaps
from .web import ApiError

__all__ = ["check"]


async def check(conn, spec: Spec, item: dict[str, Any], principal: Principal,
                current: dict[str, Any] | None = None) -> tuple[dict[str, Any], list[str]]:  # fmt: skip
    """The item checked as ``c4 check`` would, and against the space others hold.

    Returns it in checked form with the warnings an admin gets for an
    overlap across owners (a tenant token gets a 409 instead). ``current``:
    the stored item a PATCH changes; only what the change adds is held
    against a tenant token, so an overlap an admin made on purpose does not
    lock the tenant out of its own item.
    """
    if not principal.admin and spec.tenant_column is not None:
        tenant = item.get("tenant")
        if isinstance(tenant, str) and tenant != principal.tenant:
            raise ApiError(403, f"{entity_where(spec.name, item)}.tenant: a tenant token may only write its own tenant's {spec.name}")
    if not principal.admin and item.get("allow_wide_sources") is True and not (current or {}).get("allow_wide_sources"):
        raise ApiError(403, f"{entity_where(spec.name, item)}.allow_wide_sources: only the admin token may allow wide sources")
    try:
        checked = validate_entity(spec.name, item, await references(conn, item, principal))
    except DocumentError as exc:
        raise ApiError(422, "; ".join(exc.errors), exc.errors) from None
    warnings: list[str] = []
    if spec.name in ("ipbxs", "trunks"):
        await _check_sources(conn, spec, checked, principal, current, warnings)
    elif spec.name == "dids" and (current is None or current["tenant"] != checked["tenant"]):
        await _check_did_prefix(conn, checked, principal, warnings)
    return checked, warnings


async def _check_sources(conn, spec: Spec, item: dict[str, Any], principal: Principal,
                         current: dict[str, Any] | None, warnings: list[str]) -> None:  # fmt: skip
    """A source CIDR belongs to one IPBX or trunk, and nests in no other owner's for a tenant token.

    The owner of an IPBX's source is its tenant; of a trunk's, its carrier's
    tenant (NULL: a shared carrier, the platform's). The same CIDR twice is
    refused for everyone, as c4 check refuses it.
    """
    where = entity_where(spec.name, item)
    ipbx, trunk = (item["name"], None) if spec.name == "ipbxs" else (None, item["name"])
    if spec.name == "ipbxs":
        owner = item["tenant"]
    else:
        owner = await carrier_tenant(conn, item["carrier"])
    # Other entities' sources, and tenants' address blocks, that hold or lie in one of ours.
    rows = await source_overlaps(conn, item["sources"], ipbx, trunk)
    added = set(item["sources"]) - set((current or {}).get("sources", []))
    taken, captures = [], []
    for row in rows:
        mine, theirs, other = str(row["mine"]), str(row["theirs"]), row["other"]
        if mine == theirs and not other.startswith("tenants["):
            # A tenant token learns that the network is taken, which it must,
            # but not by whom unless it is one of its own tenant's.
            named = principal.admin or row["owner"] == principal.tenant
            taken.append(f"{where}.sources: {mine} is also a source of {other if named else 'another IPBX or trunk'}")
        elif row["owner"] != owner:
            if principal.admin:
                warnings.append(f"{where}.sources: {mine} overlaps {theirs} of {other} ({owner_name(row['owner'])})")
            elif mine in added:
                captures.append(
                    f"{where}.sources: {mine} overlaps the address space of another tenant or of a carrier;"
                    " ask the platform's admin for the network you need"
                )
    if taken:
        raise ApiError(409, "; ".join(taken), taken)
    if not principal.admin:
        await _confine(conn, where + ".sources", "address_blocks", principal, added,
                       lambda source, block: block.version == source.version and source.subnet_of(block), ipaddress.ip_network)  # fmt: skip
    if captures:
        captures = list(dict.fromkeys(captures))
        raise ApiError(409, "; ".join(captures), captures)


async def _confine(conn, where: str, column: str, principal: Principal, added, inside, parse) -> None:
    """A tenant token's new sources or DID lie inside its tenant's blocks, if the admin assigned any."""
    blocks = await assigned_blocks(conn, column, principal.tenant)
    if not blocks:
        return
    outside = sorted(value for value in added if not any(inside(parse(value), block) for block in blocks))
    if outside:
        assigned = ", ".join(map(str, blocks))
        raise ApiError(403, f"{where}: {', '.join(outside)} outside the {column.replace('_', ' ')} of tenant {principal.tenant!r} ({assigned})")


async def _check_did_prefix(conn, item: dict[str, Any], principal: Principal, warnings: list[str]) -> None:
    """A DID prefix nests in (or holds) no other tenant's DID or number block, for a tenant token; an admin is warned."""
    prefix, where = item["prefix"], entity_where("dids", item)
    if not principal.admin:
        await _confine(conn, where + ".prefix", "number_blocks", principal, [prefix], lambda p, block: p.startswith(block), str)
    rows = await number_overlaps(conn, prefix, item["tenant"])
    if rows and not principal.admin:
        raise ApiError(409, f"{where}.prefix: overlaps the numbers of another tenant; ask the platform's admin for the block you need")
    for row in rows:
        relation = "inside" if prefix.startswith(row["prefix"]) else "holding"
        warnings.append(f"{where}.prefix: {relation} {row['kind']} {row['prefix']} of {owner_name(row['tenant'])}")
