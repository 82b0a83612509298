"""The compiled routing table: an immutable object built for fast lookups.

A validated routing document is compiled once. Every lookup a decision makes
costs a handful of dict probes, one per distinct prefix length present, so
the cost does not grow with the number of DIDs, routes or sources:

- sources: per address family, one dict per CIDR prefix length, keyed by
  the network address as an int, probed longest first;
- DIDs: one dict keyed by prefix, probed for each prefix of the called
  number, longest first; for a call from an IPBX, a filter of the DIDs'
  first ``HEAD`` digits first rules out the long prefixes (most numbers an
  IPBX dials are no DID, and at 1M DIDs each probe is a cache miss);
- routes: per tenant, the same.

Reloading builds a new table and swaps it whole. A table is immutable:
frozen dataclasses, tuples and read-only mapping proxies all the way down
(the hot path keeps the dicts' own bound ``get``, which cannot write).
"""

from __future__ import annotations

import hashlib
import ipaddress
import re
import socket
from collections.abc import Generator, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from itertools import islice
from pathlib import Path
from types import MappingProxyType
from typing import Any, TypeVar

import orjson

from .document import load_document, validate_document
from .numbers import Profile

__all__ = [
    "Endpoint", "Target", "Did", "RouteChoice", "RoutingTable", "apply_changes", "apply_changes_steps", "compile_steps",
    "compile_did", "compile_table", "compile_validated", "did_digest", "document_version", "finish", "load_table", "route_digest",
    "update_table",
]

# A step of compile_steps / apply_changes_steps: this many DIDs or routes
# (a few ms), so a Kamailio worker can spread a large change over calls.
STEP = 1000
T = TypeVar("T")
# A PrefixIndex keeps up to this many changed prefixes beside the big dict
# it shares with the versions before it, instead of copying that dict on
# every change (see PrefixIndex.updated_steps); past it they are merged.
LAYER_MAX = 250_000
# Entries copied per step of such a merge.
MERGE_STEP = 50_000
_ABSENT = object()


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
    match, interned (``compile_did``): a million DIDs share a few hundred of these.
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


# DID numbers are checked against a filter of their first HEAD digits before
# the DID dict is probed for each prefix length: a call from an IPBX mostly
# dials numbers that are no DID, and at 1M DIDs every probe of the big dict
# is a cache miss, while one look in the filter replaces them all. Eight
# digits: a country code and enough of the national number to tell most
# numbers apart, yet no longer than a DID (a whole number) usually is.
HEAD = 8


def head_buckets(long_prefixes: int) -> int:
    """The filter's size for this many prefixes of HEAD digits or more: the
    power of two of at least four buckets per prefix (a quarter full at most)."""
    return 1 << (4 * long_prefixes - 1).bit_length()


def _long(sizes: Mapping[int, int]) -> int:
    return sum(count for length, count in sizes.items() if length >= HEAD)


def _head_flags_steps(prefixes: Iterable[str], buckets: int) -> Generator[None, None, bytearray]:
    """The filter of ``prefixes``: 1 in each bucket (hash of the head) a prefix of HEAD digits or more has, in steps."""
    flags = bytearray(buckets)
    mask = buckets - 1
    for n, prefix in enumerate(prefixes, 1):
        if len(prefix) >= HEAD:
            flags[hash(prefix[:HEAD]) & mask] = 1
        if not n % MERGE_STEP:
            yield
    return flags


class Layered(Mapping):
    """A read-only view of a big dict and the changes made since (prefix -> entry, None: removed)."""

    __slots__ = ("base", "layer", "_len")

    def __init__(self, base: Mapping[str, Any], layer: Mapping[str, Any], length: int) -> None:
        self.base, self.layer, self._len = base, layer, length

    def __getitem__(self, key: str) -> Any:
        entry = self.layer.get(key, _ABSENT)
        if entry is _ABSENT:
            return self.base[key]
        if entry is None:
            raise KeyError(key)
        return entry

    def __iter__(self) -> Iterator[str]:
        layer = self.layer
        yield from (key for key in self.base if key not in layer)
        yield from (key for key, entry in layer.items() if entry is not None)

    def __len__(self) -> int:
        return self._len


def _layered_get(layer_get: Any, base_get: Any) -> Any:
    """The hot path's get for a Layered view: one more dict probe than the base dict's own get."""
    def get(key: str) -> Any:
        entry = layer_get(key, _ABSENT)
        return base_get(key) if entry is _ABSENT else entry
    return get


def _merged_steps(base: Mapping[str, Any], layer: Mapping[str, Any]) -> Generator[None, None, dict[str, Any]]:
    """A new dict of ``base`` with ``layer`` applied, copied ``MERGE_STEP`` entries a step."""
    merged: dict[str, Any] = {}
    items = iter(base.items())
    while True:
        size = len(merged)
        merged.update(islice(items, MERGE_STEP))
        if len(merged) - size < MERGE_STEP:
            break
        yield
    for key, entry in layer.items():
        if entry is None:
            merged.pop(key, None)
        else:
            merged[key] = entry
    return merged


@dataclass(frozen=True, slots=True)
class PrefixIndex:
    """Longest-prefix lookup: a dict per prefix, probed longest first.

    Versions share their big dict (``base``): a change goes into a small
    ``layer`` of changed prefixes (None: removed) looked at first. A KEMI
    worker forked from the process that loaded the table shares the big
    dict's pages with its siblings; copying it would write every entry's
    reference count, so the first change after the fork would copy all
    those pages in every worker at once (about 100 ms each at 1M DIDs, all
    workers together: long enough to drop SIP packets) and end the sharing.
    """

    entries: Mapping[str, Any]
    lengths: tuple[int, ...]  # distinct prefix lengths, descending
    sizes: Mapping[int, int] = field(default_factory=dict)  # prefix length -> entries of that length
    # The filter: a flag per bucket (hash of the head), 1 where a prefix of
    # HEAD digits or more of the big dict has its head; a bytearray, not a
    # set of heads: at 1M random DIDs the heads would take 80 MiB, the
    # flags take 4. Never written once built, so forked workers share it;
    # the layer's prefixes are in ``layer_heads`` (see ``may_have``).
    # Python's str hash is salted per process: a table is only ever used
    # in the process that built it (or a fork of it).
    heads: bytearray = field(default_factory=lambda: bytearray(1))
    short_lengths: tuple[int, ...] = ()  # the lengths below HEAD, probed whatever the head
    # entries' own dict.get, for the hot path: a mapping proxy's get is a
    # method call through the proxy, several times dearer than a dict's.
    get: Any = field(default=None, compare=False, repr=False)
    # The big dict, shared with the versions before (and its own get), and
    # the changes since (see the class).
    base: Mapping[str, Any] = field(default_factory=dict, compare=False, repr=False)
    base_get: Any = field(default=None, compare=False, repr=False)
    layer: Mapping[str, Any] = field(default_factory=dict, compare=False, repr=False)
    # The buckets of the layer's long prefixes that ``heads`` does not flag.
    layer_heads: frozenset[int] = frozenset()

    @classmethod
    def build(cls, entries: dict[str, Any]) -> PrefixIndex:
        sizes: dict[int, int] = {}
        for prefix in entries:
            sizes[len(prefix)] = sizes.get(len(prefix), 0) + 1
        heads = finish(_head_flags_steps(entries, head_buckets(_long(sizes))))
        return cls._made(MappingProxyType(entries), entries.get, {}, sizes, heads, frozenset())

    @classmethod
    def _made(cls, base: Mapping[str, Any], base_get: Any, layer: dict[str, Any], sizes: dict[int, int],
              heads: bytearray, layer_heads: frozenset[int]) -> PrefixIndex:
        lengths = tuple(sorted(sizes, reverse=True))
        if layer:
            entries: Mapping[str, Any] = Layered(base, MappingProxyType(layer), sum(sizes.values()))
            get = _layered_get(layer.get, base_get)
        else:
            entries, get = base, base_get
        return cls(entries, lengths, MappingProxyType(sizes), heads, tuple(n for n in lengths if n < HEAD), get,
                   base, base_get, MappingProxyType(layer), layer_heads)

    def may_have(self, number: str) -> bool:
        """False when no prefix of HEAD digits or more can start ``number`` (the filter); True: probe them."""
        bucket = hash(number[:HEAD]) & (len(self.heads) - 1)
        return self.heads[bucket] == 1 or bucket in self.layer_heads

    def updated(self, changes: Mapping[str, Any]) -> PrefixIndex:
        """A new index with ``changes`` applied (prefix -> entry, None: removed); self is unchanged.

        Costs a copy of the layer plus the changes: the big dict, its
        filter and the entries are shared with this index (see the class).
        """
        return finish(self.updated_steps(changes))

    def updated_steps(self, changes: Mapping[str, Any]) -> Generator[None, None, PrefixIndex]:
        """``updated`` in steps: yields after every ``STEP`` changes, returns the index.

        The changes go into a copy of the layer, not of the big dict (see
        the class); past ``LAYER_MAX`` changed prefixes the two are merged
        into a new big dict, ``MERGE_STEP`` entries a step, and its filter
        is made again. A removed prefix stays flagged in the filter until
        then: the filter may say "probe" for nothing, never "no" for a
        prefix that is there.
        """
        base, base_get, old_layer, heads = self.base, self.base_get, self.layer, self.heads
        layer, sizes = dict(old_layer), dict(self.sizes)
        layer_heads, mask = set(self.layer_heads), len(heads) - 1
        for n, (prefix, entry) in enumerate(changes.items(), 1):
            # Membership, not get: get would write the reference count of the entry it returns,
            # and in a forked KEMI worker that copies the entry's page, shared until then.
            in_base = prefix in base
            present = old_layer[prefix] is not None if prefix in old_layer else in_base
            if entry is None:
                if present:
                    if not in_base:
                        del layer[prefix]  # added since the big dict was made: no trace left
                    else:
                        layer[prefix] = None
                    sizes[len(prefix)] -= 1
                    if not sizes[len(prefix)]:
                        del sizes[len(prefix)]
            else:
                layer[prefix] = entry
                if not present:
                    sizes[len(prefix)] = sizes.get(len(prefix), 0) + 1
                if len(prefix) >= HEAD:
                    bucket = hash(prefix[:HEAD]) & mask
                    if not heads[bucket]:
                        layer_heads.add(bucket)
            if not n % STEP:
                yield
        if len(layer) > LAYER_MAX:
            merged = yield from _merged_steps(base, layer)
            heads = yield from _head_flags_steps(merged, head_buckets(_long(sizes)))
            return self._made(MappingProxyType(merged), merged.get, {}, sizes, heads, frozenset())
        return self._made(base, base_get, layer, sizes, heads, frozenset(layer_heads))

    def candidates(self, number: str) -> Iterator[tuple[str, Any]]:
        """(prefix, entry) of the prefixes that start ``number``, longest first."""
        get, size = self.get, len(number)
        for length in self.lengths:
            if length <= size:
                entry = get(number[:length])
                if entry is not None:
                    yield number[:length], entry


@dataclass(frozen=True, slots=True)
class SourceIndex:
    """Longest-prefix CIDR lookup for IPv4 and IPv6 source addresses."""

    v4: tuple[tuple[int, int, Mapping[int, Endpoint]], ...]  # (prefixlen, mask, {net: endpoint})
    v6: tuple[tuple[int, int, Mapping[int, Endpoint]], ...]
    # The same levels as (mask, the dict's own get) for lookup: a mapping
    # proxy's get is a method call through the proxy (see PrefixIndex.get).
    v4_probes: tuple = field(default=(), compare=False, repr=False)
    v6_probes: tuple = field(default=(), compare=False, repr=False)

    @classmethod
    def build(cls, networks: list[tuple[Any, Endpoint]]) -> SourceIndex:
        families: dict[int, dict[int, dict[int, Endpoint]]] = {4: {}, 6: {}}
        for network, endpoint in networks:
            by_length = families[network.version].setdefault(network.prefixlen, {})
            by_length[int(network.network_address)] = endpoint

        def levels(version: int, bits: int):
            return tuple(
                (length, ((1 << bits) - 1) ^ ((1 << (bits - length)) - 1), nets)
                for length, nets in sorted(families[version].items(), reverse=True)
            )

        def probes(levels):
            return tuple((mask, nets.get) for _, mask, nets in levels)

        def read_only(levels):
            return tuple((length, mask, MappingProxyType(nets)) for length, mask, nets in levels)

        v4, v6 = levels(4, 32), levels(6, 128)
        return cls(read_only(v4), read_only(v6), probes(v4), probes(v6))

    def lookup(self, address: str) -> Endpoint | None:
        """The endpoint whose most specific source CIDR holds ``address``.

        Raises ValueError if ``address`` is not an IP address.
        """
        try:
            value, probes = int.from_bytes(socket.inet_pton(socket.AF_INET, address), "big"), self.v4_probes
        except OSError:
            if address.startswith("[") and address.endswith("]"):
                address = address[1:-1]
            try:
                value, probes = int.from_bytes(socket.inet_pton(socket.AF_INET6, address), "big"), self.v6_probes
            except OSError:
                raise ValueError(f"{address!r} is not an IP address") from None
            if value >> 32 == 0xFFFF:  # IPv4-mapped IPv6 (::ffff:a.b.c.d)
                value, probes = value & 0xFFFFFFFF, self.v4_probes
        for mask, get in probes:
            endpoint = get(value & mask)
            if endpoint is not None:
                return endpoint
        return None

    def match(self, address: str) -> tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, Endpoint] | None:
        """``lookup``, also naming the CIDR that matched (for explanations).

        Not for the hot path: ``lookup`` decides (and validates the address,
        raising ValueError as it does); this only finds the level it hit.
        """
        endpoint = self.lookup(address)
        if endpoint is None:
            return None
        ip = ipaddress.ip_address(address[1:-1] if address.startswith("[") else address)
        if ip.version == 6 and ip.ipv4_mapped is not None:
            ip = ip.ipv4_mapped
        value = int(ip)
        for length, mask, nets in self.v4 if ip.version == 4 else self.v6:
            if nets.get(value & mask) is not None:
                return ipaddress.ip_network((value & mask, length)), endpoint
        raise AssertionError(f"lookup found {endpoint.name} for {address!r} but no level holds it")


@dataclass(frozen=True, slots=True)
class RoutingTable:
    sources: SourceIndex
    dids: PrefixIndex  # prefix -> Did (interned: see Did)
    routes: Mapping[str, PrefixIndex]  # tenant -> (prefix -> RouteChoice)
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


def compile_table(document: Any) -> RoutingTable:
    """Validate a routing document (parsed JSON/TOML) and compile it.

    Raises DocumentError naming every problem.
    """
    return compile_validated(validate_document(document))


# The collections a DID or route refers to: when one of them changes, the
# whole table is compiled again; DIDs and routes are applied one by one.
BASE_COLLECTIONS = ("tenants", "normalization_profiles", "ipbxs", "carriers", "trunks")
DIGEST_MASK = 2**64 - 1  # the entity digest is a sum modulo 2**64


def compile_validated(document: Mapping[str, Any]) -> RoutingTable:
    """Compile a document already returned by ``c4kemi.document`` (validated, defaults filled in)."""
    return finish(compile_steps({name: document[name] for name in BASE_COLLECTIONS}, document["dids"], document["routes"]))


def finish(steps: Generator[None, None, T]) -> T:
    """Run compile_steps, apply_changes_steps or PrefixIndex.updated_steps to the end: what it returns."""
    while True:
        try:
            next(steps)
        except StopIteration as done:
            return done.value


def compile_steps(
    base: Mapping[str, Any], dids: Iterable[Mapping[str, Any]], routes: Iterable[Mapping[str, Any]]
) -> Generator[None, None, RoutingTable]:
    """``compile_validated`` in steps: yields after every ``STEP`` DIDs or routes, returns the table.

    ``base`` holds the checked ``BASE_COLLECTIONS``; ``dids`` and ``routes``
    may be lazy (c4kemi/feed.py reads a snapshot a chunk at a time).
    """
    ipbxs, trunks = _endpoints(base)

    networks = [
        (ipaddress.ip_network(cidr), by_name[entity["name"]])
        for collection, by_name in (("trunks", trunks), ("ipbxs", ipbxs))
        for entity in base[collection]
        for cidr in entity["sources"]
    ]

    digest = 0
    did_entries = {}
    did_values: dict[tuple[str, str, str | None], Did] = {}
    for n, d in enumerate(dids, 1):
        did_entries[d["prefix"]] = compile_did(d, ipbxs, did_values)
        digest += did_digest(d)
        if not n % STEP:
            yield

    route_entries: dict[str, dict[str, RouteChoice]] = {}
    n = 0
    for n, r in enumerate(routes, 1):
        route = _route(r, trunks)
        route_entries.setdefault(route.tenant, {})[route.prefix] = route
        digest += _route_digest(route)
        if not n % STEP:
            yield

    base = {name: base[name] for name in BASE_COLLECTIONS}
    base_digest = hashlib.sha256(orjson.dumps(base, option=orjson.OPT_SORT_KEYS)).digest()
    digest &= DIGEST_MASK
    counts = {name: len(items) for name, items in base.items()}
    counts.update(dids=len(did_entries), routes=n)
    dids, routes = did_entries, route_entries
    return RoutingTable(
        sources=SourceIndex.build(networks),
        dids=PrefixIndex.build(dids),
        routes=MappingProxyType({tenant: PrefixIndex.build(entries) for tenant, entries in routes.items()}),
        version=_version(base_digest, digest),
        counts=MappingProxyType(counts),
        base=MappingProxyType(base),
        ipbxs=MappingProxyType(ipbxs),
        trunks=MappingProxyType(trunks),
        base_digest=base_digest,
        entity_digest=digest,
        tenant_channels=MappingProxyType({t["name"]: t["max_channels"] for t in base["tenants"] if "max_channels" in t}),
        did_values=did_values,
    )


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
        if old is None or not _same_route(old, _route(r, table.trunks)):
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
    (``c4kemi.document.validate_entity``); the caller keeps the keys
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
    """``apply_changes`` in steps: yields after every ``STEP`` DIDs or routes, returns the table.

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
            if not n % STEP:
                yield
    if not known:
        for n, (prefix, did) in enumerate(compiled_dids.items(), 1):
            old = did_get(prefix)
            digest += (_did_digest(prefix, did) if did is not None else 0) - (_did_digest(prefix, old) if old is not None else 0)
            if not n % STEP:
                yield
    by_tenant: dict[str, dict[str, RouteChoice | None]] = {}
    for n, ((tenant, prefix), r) in enumerate(routes.items(), 1):
        route = by_tenant.setdefault(tenant, {})[prefix] = None if r is None else _route(r, table.trunks)
        if not known:
            index = table.routes.get(tenant)
            old = index.get(prefix) if index is not None else None
            digest += (_route_digest(route) if route is not None else 0) - (_route_digest(old) if old is not None else 0)
        if not n % STEP:
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
        version=_version(table.base_digest, digest),
        counts=MappingProxyType(counts),
        base=table.base,
        ipbxs=table.ipbxs,
        trunks=table.trunks,
        base_digest=table.base_digest,
        entity_digest=digest,
        tenant_channels=table.tenant_channels,  # tenants are a base collection: unchanged here
        did_values=table.did_values,
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


def _route(r: Mapping[str, Any], trunks: Mapping[str, Endpoint]) -> RouteChoice:
    by_priority: dict[int, list[tuple[Endpoint, float]]] = {}
    for choice in r["trunks"]:
        by_priority.setdefault(choice["priority"], []).append((trunks[choice["trunk"]], choice["weight"]))
    priorities = tuple(sorted(by_priority))
    groups = tuple(tuple(by_priority[p]) for p in priorities)
    return RouteChoice(r["tenant"], r["prefix"], groups, priorities)


def _same_route(a: RouteChoice, b: RouteChoice) -> bool:
    """Equal, weights of the same type too (1 and 1.0 compare equal but read back differently)."""
    return a == b and all(
        wa.__class__ is wb.__class__ for ga, gb in zip(a.groups, b.groups) for (_, wa), (_, wb) in zip(ga, gb)
    )


def _digest(data: bytes) -> int:
    return int.from_bytes(hashlib.blake2b(data, digest_size=8).digest(), "big")


def _did_digest(prefix: str, did: Did) -> int:
    return _did_values_digest(did.tenant, prefix, did.ipbx.name, did.match.pattern if did.match is not None else "")


def _did_values_digest(tenant: str, prefix: str, ipbx: str, match: str) -> int:
    return _digest(f"d\x00{tenant}\x00{prefix}\x00{ipbx}\x00{match}".encode())


def _route_digest(route: RouteChoice) -> int:
    return _route_values_digest(route.tenant, route.prefix, [
        [priority, [[endpoint.name, weight] for endpoint, weight in group]] for priority, group in zip(route.priorities, route.groups)
    ])


def _route_values_digest(tenant: str, prefix: str, groups: list) -> int:
    return _digest(orjson.dumps(["r", tenant, prefix, groups]))


def document_version(document: Mapping[str, Any]) -> str:
    """The version ``compile_validated(document)`` gives, without compiling.

    For ``c4 kamailio``, which checks a table before it starts Kamailio but
    leaves the loading to Kamailio's main process.
    """
    base = {name: document[name] for name in BASE_COLLECTIONS}
    base_digest = hashlib.sha256(orjson.dumps(base, option=orjson.OPT_SORT_KEYS)).digest()
    digest = sum(map(did_digest, document["dids"])) + sum(map(route_digest, document["routes"]))
    return _version(base_digest, digest & DIGEST_MASK)


def did_digest(d: Mapping[str, Any]) -> int:
    """A checked DID's share of the entity digest, as its compiled form's (a DID as written: its fields are strings)."""
    return _did_values_digest(d["tenant"], d["prefix"], d["ipbx"], d.get("match") or "")


def route_digest(r: Mapping[str, Any]) -> int:
    """A checked route's share of the entity digest, as its compiled form's."""
    by_priority: dict[int, list] = {}
    for choice in r["trunks"]:
        by_priority.setdefault(choice["priority"], []).append([choice["trunk"], choice["weight"]])
    return _route_values_digest(r["tenant"], r["prefix"], [[p, by_priority[p]] for p in sorted(by_priority)])


def _version(base_digest: bytes, entity_digest: int) -> str:
    """Order-independent: a sum of per-entity digests, so a change updates it in O(1)."""
    return hashlib.sha256(base_digest + entity_digest.to_bytes(8, "big")).hexdigest()[:12]


def load_table(path: str | Path) -> RoutingTable:
    """Load, validate and compile a routing document file."""
    return compile_validated(load_document(path))
