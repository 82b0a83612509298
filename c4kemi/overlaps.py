"""Who holds which address and number space: overlaps across owners.

Source CIDRs and DID prefixes are both decided by longest match, so a more
specific entry of one owner silently takes part of another owner's space:
an IPBX source inside a carrier trunk's network takes that carrier's
inbound calls, a DID nested in another tenant's DID takes its numbers. The
owner of an IPBX or a DID is its tenant; of a trunk, its carrier's tenant,
or the platform for a shared carrier (``None``).

A tenant token may never create such an overlap (c4http/provisioning.py
refuses it); an admin may, on purpose, and ``c4 check`` and the API warn.
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
    """Source CIDRs of different owners where one holds the other (a checked document)."""
    carrier_tenant = {c["name"]: c["tenant"] for c in document.get("carriers", [])}
    items = []
    for collection in ("ipbxs", "trunks"):
        for entity in document.get(collection, []):
            owner = entity["tenant"] if collection == "ipbxs" else carrier_tenant.get(entity["carrier"])
            for source in entity["sources"]:
                items.append((ipaddress.ip_network(source), owner, f"{collection}[{entity['name']}]"))
    items.sort(key=lambda item: (item[0].version, item[0].network_address, item[0].prefixlen))
    return _nested(items, lambda outer, inner: outer.version == inner.version and inner.subnet_of(outer))


def did_nestings(document: dict[str, Any]) -> Iterator[tuple[tuple, tuple]]:
    """DID prefixes of different tenants where one starts the other (a checked document)."""
    items = sorted((d["prefix"], d["tenant"], f"dids[{d['prefix']}]") for d in document.get("dids", []))
    return _nested(items, lambda outer, inner: inner.startswith(outer))


def overlap_warnings(document: dict[str, Any]) -> list[str]:
    """What ``c4 check`` warns about: space one owner's entry takes from another's."""
    warnings = []
    for (outer, outer_owner, outer_where), (inner, _owner, inner_where) in source_overlaps(document):
        warnings.append(
            f"{inner_where}.sources: {inner} lies inside {outer} of {outer_where} ({owner_name(outer_owner)}): "
            f"calls from {inner} are taken from {outer_where}"
        )
    for (outer, outer_owner, _where), (inner, inner_owner, inner_where) in did_nestings(document):
        warnings.append(
            f"{inner_where}.prefix: nested in DID {outer} of {owner_name(outer_owner)}: "
            f"numbers starting {inner} go to {owner_name(inner_owner)}"
        )
    return warnings
