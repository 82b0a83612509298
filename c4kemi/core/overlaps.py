"""Who holds which address and number space: overlaps across owners.

Source CIDRs and DID prefixes are both decided by longest match, so a more
specific entry of one owner silently takes part of another owner's space:
an IPBX source inside a carrier trunk's network takes that carrier's
inbound calls, a DID nested in another tenant's DID takes its numbers. The
owner of an IPBX or a DID is its tenant; of a trunk, its carrier's tenant,
or the platform for a shared carrier (``None``).

A tenant's number and address blocks (assigned by the admin) are space it
holds before it provisions anything there. A tenant token may never create
an overlap with what another owner holds (c4http/space.py refuses
it); an admin may, on purpose, and ``c4 check`` and the API warn.
Pure: documents in, messages out (docs/security.md, "Address and number
space").
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Iterator
from typing import Any

__all__ = ["did_nestings", "overlap_warnings", "owner_name", "source_overlaps"]

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


def owner_name(tenant: str | None) -> str:
    return f"tenant {tenant!r}" if tenant is not None else "the platform (a shared carrier)"


def _nested(items: Iterable[tuple[Any, Any, str]], contains) -> Iterator[tuple[tuple, tuple]]:
    """Pairs (outer, inner) of (key, owner, where) whose keys nest and whose owners differ.

    ``items`` sorted so that an entry comes right after everything that
    contains it (CIDRs by address then length, prefixes as strings): a
    stack of the entries that contain the current one is then enough.
    """
    stack: list[tuple] = []
    for item in items:
        while stack and not contains(stack[-1][0], item[0]):
            stack.pop()
        for outer in stack:
            if outer[1] != item[1]:
                yield outer, item
        stack.append(item)


def source_overlaps(document: dict[str, Any]) -> Iterator[tuple[tuple, tuple]]:
    """Source CIDRs and address blocks of different owners where one holds the other (a checked document)."""
    carrier_tenant = {c["name"]: c["tenant"] for c in document.get("carriers", [])}
    items = [
        (ipaddress.ip_network(block), tenant["name"], f"tenants[{tenant['name']}].address_blocks")
        for tenant in document.get("tenants", []) for block in tenant.get("address_blocks", ())
    ]  # fmt: skip
    for collection in ("ipbxs", "trunks"):
        for entity in document.get(collection, []):
            owner = entity["tenant"] if collection == "ipbxs" else carrier_tenant.get(entity["carrier"])
            for source in entity["sources"]:
                items.append((ipaddress.ip_network(source), owner, f"{collection}[{entity['name']}].sources"))
    # A block before an entity with the same key: the block is what is held.
    items.sort(key=lambda item: (item[0].version, item[0].network_address, item[0].prefixlen, "_blocks" not in item[2]))
    return _nested(items, lambda outer, inner: outer.version == inner.version and inner.subnet_of(outer))


def did_nestings(document: dict[str, Any]) -> Iterator[tuple[tuple, tuple]]:
    """DID prefixes and number blocks of different tenants where one starts the other (a checked document)."""
    items = [(d["prefix"], d["tenant"], f"dids[{d['prefix']}].prefix") for d in document.get("dids", [])]
    items += [
        (block, tenant["name"], f"tenants[{tenant['name']}].number_blocks")
        for tenant in document.get("tenants", []) for block in tenant.get("number_blocks", ())
    ]  # fmt: skip
    items.sort(key=lambda item: (item[0], "_blocks" not in item[2]))
    return _nested(items, lambda outer, inner: inner.startswith(outer))


def overlap_warnings(document: dict[str, Any]) -> list[str]:
    """What ``c4 check`` warns about: space one owner's entry or block takes from another's."""
    warnings = []
    for overlaps in (source_overlaps(document), did_nestings(document)):
        for (outer, outer_owner, outer_where), (inner, inner_owner, inner_where) in overlaps:
            if "_blocks" in outer_where or "_blocks" in inner_where:
                effect = f"{owner_name(outer_owner)} and {owner_name(inner_owner)} both hold it"
            else:
                effect = f"the longer match gives what they share to {owner_name(inner_owner)}"
            warnings.append(f"{inner_where}: {inner} lies inside {outer} of {outer_where} ({owner_name(outer_owner)}): {effect}")
    return warnings
