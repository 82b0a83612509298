"""The table's version: digests of what it was compiled from, cheap to update on a change.

A version is made of two digests: the SHA-256 of the base collections
(``BASE_COLLECTIONS``, as checked) and the entity digest, the sum modulo
2**64 of one digest per DID and route. A sum does not depend on the order of
the entities, so a change updates it in O(1): add the new entities' digests,
subtract the old ones'. An entity's digest is the same whether it is taken
from its checked form (``did_digest``, ``route_digest``: the feed's writer,
``document_version``) or from its compiled form (``compiled_did_digest``,
``compiled_route_digest``: compiling, applying a change).
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from typing import Any

import orjson

from .compiled import BASE_COLLECTIONS, Did, RouteChoice

__all__ = [
    "DIGEST_MASK", "base_collections_digest", "compiled_did_digest", "compiled_route_digest", "did_digest", "document_version",
    "route_digest", "table_version",
]

DIGEST_MASK = 2**64 - 1  # the entity digest is a sum modulo 2**64


def _digest(data: bytes) -> int:
    return int.from_bytes(hashlib.blake2b(data, digest_size=8).digest(), "big")


def compiled_did_digest(prefix: str, did: Did) -> int:
    """The DID at ``prefix``'s share of the entity digest, from its compiled form."""
    return _did_values_digest(did.tenant, prefix, did.ipbx.name, did.match.pattern if did.match is not None else "")


def _did_values_digest(tenant: str, prefix: str, ipbx: str, match: str) -> int:
    return _digest(f"d\x00{tenant}\x00{prefix}\x00{ipbx}\x00{match}".encode())


def compiled_route_digest(route: RouteChoice) -> int:
    """A route's share of the entity digest, from its compiled form."""
    return _route_values_digest(route.tenant, route.prefix, [
        [priority, [[endpoint.name, weight] for endpoint, weight in group]] for priority, group in zip(route.priorities, route.groups)
    ], route.when_all_down)


def _route_values_digest(tenant: str, prefix: str, groups: list, when_all_down: str | None) -> int:
    # "try" is the default: such a route (when_all_down absent or "try") has the digest routes had before the field.
    if when_all_down is None or when_all_down == "try":
        return _digest(orjson.dumps(["r", tenant, prefix, groups]))
    return _digest(orjson.dumps(["r", tenant, prefix, groups, when_all_down]))


def document_version(document: Mapping[str, Any]) -> str:
    """The version ``compile_validated(document)`` gives, without compiling.

    For ``c4 kamailio``, which checks a table before it starts Kamailio but
    leaves the loading to Kamailio's main process.
    """
    base_digest = base_collections_digest({name: document[name] for name in BASE_COLLECTIONS})
    digest = sum(map(did_digest, document["dids"])) + sum(map(route_digest, document["routes"]))
    return table_version(base_digest, digest & DIGEST_MASK)


def did_digest(d: Mapping[str, Any]) -> int:
    """A checked DID's share of the entity digest, as its compiled form's (a DID as written: its fields are strings)."""
    return _did_values_digest(d["tenant"], d["prefix"], d["ipbx"], d.get("match") or "")


def route_digest(r: Mapping[str, Any]) -> int:
    """A checked route's share of the entity digest, as its compiled form's."""
    by_priority: dict[int, list] = {}
    for choice in r["trunks"]:
        by_priority.setdefault(choice["priority"], []).append([choice["trunk"], choice["weight"]])
    return _route_values_digest(r["tenant"], r["prefix"], [[p, by_priority[p]] for p in sorted(by_priority)], r.get("when_all_down"))


def base_collections_digest(base: Mapping[str, Any]) -> bytes:
    """The digest of the base collections as checked (``BASE_COLLECTIONS`` -> their entities)."""
    return hashlib.sha256(orjson.dumps(base, option=orjson.OPT_SORT_KEYS)).digest()


def table_version(base_digest: bytes, entity_digest: int) -> str:
    """Order-independent: a sum of per-entity digests, so a change updates it in O(1)."""
    return hashlib.sha256(base_digest + entity_digest.to_bytes(8, "big")).hexdigest()[:12]
