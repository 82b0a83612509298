"""The compiled routing table: what a decision reads, built once from a checked document.

A table holds its endpoints (trunks and IPBXs, with their targets), the
interned DID destinations and the outbound route choices, behind the
indexes of c4kemi/core/indexes.py: sources by CIDR, DIDs by prefix, routes per
tenant by prefix. Every lookup a decision makes costs a handful of dict
probes, one per distinct prefix length present, so the cost does not grow
with the number of DIDs, routes or sources.

c4kemi/core/compiler.py makes a table from a document, c4kemi/core/incremental.py a
new one from a table and what changed; c4kemi/core/table.py is where callers
get them. Reloading builds a new table and swaps it whole. A table is
immutable: frozen dataclasses, tuples and read-only mapping proxies all
the way down (the hot path keeps the dicts' own bound ``get``, which
cannot write).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from .indexes import HEAD, PrefixIndex, SourceIndex
from .numbers import Profile

__all__ = ["BASE_COLLECTIONS", "Did", "Endpoint", "RouteChoice", "RoutingTable", "Target"]

# The collections a DID or route refers to, kept as checked in ``RoutingTable.base``: when one of
# them changes, the whole table is compiled again; DIDs and routes are applied one by one.
BASE_COLLECTIONS = ("tenants", "normalization_profiles", "ipbxs", "carriers", "trunks")


@dataclass(frozen=True, slots=True)
class Target:
    """A SIP destination, split so the called number drops in cheaply."""

    uri: str  # as written: the branch's dst_uri
    scheme: str  # "sip:" / "sips:"
    hostport: str  # everything after the scheme

    @classmethod
    def parse(cls, uri: str) -> Target:
        scheme, _, rest = uri.partition(":")
        return cls(uri, scheme + ":", rest)

    def request_uri(self, user: str) -> str:
        return f"{self.scheme}{user}@{self.hostport}"


@dataclass(frozen=True, slots=True)
class Endpoint:
    """A trunk or an IPBX: where calls come from and go to."""

    kind: str  # "trunk" or "ipbx"
    name: str
    tenant: str | None  # an IPBX's tenant; a trunk's carrier's (None: shared)
    targets: tuple[Target, ...]
    profile: Profile | None
    fr_timer: int
    fr_inv_timer: int
    branch_flags: int
    auth: Mapping[str, str] | None = None
    hash_key: bytes = b""  # the name, for the per-call weighted draw
    carrier: str | None = None  # a trunk's carrier, for explanations
    max_channels: int | None = None  # a trunk's channel limit (None: none)
    max_cps: int | None = None  # a trunk's new calls per second (None: no limit)


@dataclass(frozen=True, slots=True)
class Did:
    """Where the DIDs of one tenant, IPBX and ``match`` go: one object for all of them.

    The DID index maps each prefix to the ``Did`` of its tenant, IPBX and
    match, interned (``c4kemi.core.compiler.compile_did``): a million DIDs share a few hundred of these.
    A lookup writes the reference count of the object it returns; in a
    Kamailio worker forked from the process that loaded the table, one
    object per DID meant a page copied per call (48 MiB per 10,000
    inbound calls at 1M DIDs, ``benchmarks/scale.py cow``), and the table
    stopped being shared.
    """

    tenant: str
    ipbx: Endpoint
    match: Any = None  # compiled regex the whole E.164 number must match


@dataclass(frozen=True, slots=True)
class RouteChoice:
    """The trunks of one outbound route, grouped by priority (lowest first)."""

    tenant: str
    prefix: str
    groups: tuple[tuple[tuple[Endpoint, float], ...], ...]
    priorities: tuple[int, ...] = ()  # each group's priority, for explanations
    when_all_down: str = "try"  # "refuse": a call whose targets are all down gets 503 (Kamailio's to apply)


@dataclass(frozen=True, slots=True)
class RoutingTable:
    """A compiled routing table: its indexes, the version, and what a change needs to make the next one."""

    sources: SourceIndex[Endpoint]  # source address -> the trunk or IPBX it belongs to
    dids: PrefixIndex[Did]  # prefix -> Did (interned: see Did)
    routes: Mapping[str, PrefixIndex[RouteChoice]]  # tenant -> (prefix -> RouteChoice)
    version: str  # digest of the compiled table: equal tables, equal versions
    counts: Mapping[str, int] = field(default_factory=dict)
    # What update_table needs to apply a new document's DID and route changes
    # without recompiling: the other collections as checked, their endpoints,
    # and the digests the version is made of.
    base: Mapping[str, Any] = field(default_factory=dict)
    ipbxs: Mapping[str, Endpoint] = field(default_factory=dict)
    trunks: Mapping[str, Endpoint] = field(default_factory=dict)
    base_digest: bytes = b""
    entity_digest: int = 0  # sum of the DID and route digests, modulo 2**64
    tenant_channels: Mapping[str, int] = field(default_factory=dict)  # tenant -> max_channels, limited ones only
    # The interned DID destinations, (tenant, IPBX name, match pattern) -> Did, for changes: one dict
    # shared by every table made from the same compile, only ever added to. Copied per change, it wrote
    # the reference count of every Did and key in it, pages a KEMI worker shares with its siblings.
    did_values: dict[tuple[str, str, str | None], Did] = field(default_factory=dict, compare=False, repr=False)

    def find_did(self, number: str, tenant: str | None, filtered: bool = False) -> Did | None:
        """Longest-prefix DID for an E.164 number within a tenant (None: all).

        ``filtered``: look at the head filter first. For a call from an IPBX:
        most numbers it dials are no DID, and the filter rules out the
        probes of the long prefixes. A call from a trunk is meant to hit a
        DID: there the filter would only cost one more look.
        """
        index = self.dids
        lengths = index.lengths
        if filtered:  # PrefixIndex.may_have, inline
            heads = index.heads
            bucket = hash(number[:HEAD]) & (len(heads) - 1)
            if not heads[bucket] and bucket not in index.layer_heads:
                lengths = index.short_lengths
        # PrefixIndex.candidates, inline: this runs on every call.
        get, size = index.get, len(number)
        for length in lengths:
            if length <= size:
                did = get(number[:length])
                if did is None:
                    continue
                if tenant is not None and did.tenant != tenant:
                    continue
                if did.match is not None and did.match.fullmatch(number) is None:
                    continue
                return did
        return None

    def find_route(self, tenant: str, number: str) -> RouteChoice | None:
        index = self.routes.get(tenant)
        if index is None:
            return None
        get, size = index.get, len(number)
        for length in index.lengths:
            if length <= size:
                route = get(number[:length])
                if route is not None:
                    return route
        return None
