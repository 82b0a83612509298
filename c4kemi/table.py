"""The compiled routing table: an immutable object built for fast lookups.

A validated routing document is compiled once. Every lookup a decision makes
costs a handful of dict probes, one per distinct prefix length present, so
the cost does not grow with the number of DIDs, routes or sources:

- sources: per address family, one dict per CIDR prefix length, keyed by
  the network address as an int, probed longest first;
- DIDs: one dict keyed by prefix, probed for each prefix of the called
  number, longest first;
- routes: per tenant, the same.

Reloading builds a new table and swaps it whole. A table is immutable:
frozen dataclasses, tuples and read-only mapping proxies all the way down.
"""

from __future__ import annotations

import hashlib
import ipaddress
import re
import socket
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any

import orjson

from .document import load_document, validate_document
from .numbers import Profile

__all__ = ["Endpoint", "Target", "Did", "RouteChoice", "RoutingTable", "compile_table", "compile_validated", "load_table"]


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
    tenant: str
    prefix: str
    ipbx: Endpoint
    match: Any = None  # compiled regex the whole E.164 number must match


@dataclass(frozen=True, slots=True)
class RouteChoice:
    """The trunks of one outbound route, grouped by priority (lowest first)."""

    tenant: str
    prefix: str
    groups: tuple[tuple[tuple[Endpoint, float], ...], ...]
    priorities: tuple[int, ...] = ()  # each group's priority, for explanations


@dataclass(frozen=True, slots=True)
class PrefixIndex:
    """Longest-prefix lookup: a dict per prefix, probed longest first."""

    entries: Mapping[str, Any]
    lengths: tuple[int, ...]  # distinct prefix lengths, descending

    @classmethod
    def build(cls, entries: dict[str, Any]) -> PrefixIndex:
        return cls(MappingProxyType(entries), tuple(sorted({len(p) for p in entries}, reverse=True)))

    def candidates(self, number: str):
        """Entries whose prefix starts ``number``, longest prefix first."""
        entries, size = self.entries, len(number)
        for length in self.lengths:
            if length <= size:
                entry = entries.get(number[:length])
                if entry is not None:
                    yield entry


@dataclass(frozen=True, slots=True)
class SourceIndex:
    """Longest-prefix CIDR lookup for IPv4 and IPv6 source addresses."""

    v4: tuple[tuple[int, int, Mapping[int, Endpoint]], ...]  # (prefixlen, mask, {net: endpoint})
    v6: tuple[tuple[int, int, Mapping[int, Endpoint]], ...]

    @classmethod
    def build(cls, networks: list[tuple[Any, Endpoint]]) -> SourceIndex:
        families: dict[int, dict[int, dict[int, Endpoint]]] = {4: {}, 6: {}}
        for network, endpoint in networks:
            by_length = families[network.version].setdefault(network.prefixlen, {})
            by_length[int(network.network_address)] = endpoint

        def levels(version: int, bits: int):
            return tuple(
                (length, ((1 << bits) - 1) ^ ((1 << (bits - length)) - 1), MappingProxyType(nets))
                for length, nets in sorted(families[version].items(), reverse=True)
            )

        return cls(levels(4, 32), levels(6, 128))

    def lookup(self, address: str) -> Endpoint | None:
        """The endpoint whose most specific source CIDR holds ``address``.

        Raises ValueError if ``address`` is not an IP address.
        """
        try:
            value, levels = int.from_bytes(socket.inet_pton(socket.AF_INET, address), "big"), self.v4
        except OSError:
            if address.startswith("[") and address.endswith("]"):
                address = address[1:-1]
            try:
                value, levels = int.from_bytes(socket.inet_pton(socket.AF_INET6, address), "big"), self.v6
            except OSError:
                raise ValueError(f"{address!r} is not an IP address") from None
            if value >> 32 == 0xFFFF:  # IPv4-mapped IPv6 (::ffff:a.b.c.d)
                value, levels = value & 0xFFFFFFFF, self.v4
        for _, mask, nets in levels:
            endpoint = nets.get(value & mask)
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
    dids: PrefixIndex  # prefix -> Did
    routes: Mapping[str, PrefixIndex]  # tenant -> (prefix -> RouteChoice)
    version: str  # digest of the document: equal tables, equal versions
    counts: Mapping[str, int] = field(default_factory=dict)
    tenant_channels: Mapping[str, int] = field(default_factory=dict)  # tenant -> max_channels, limited ones only

    def find_did(self, number: str, tenant: str | None) -> Did | None:
        """Longest-prefix DID for an E.164 number within a tenant (None: all)."""
        for did in self.dids.candidates(number):
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
        return next(index.candidates(number), None)


def compile_table(document: Any) -> RoutingTable:
    """Validate a routing document (parsed JSON/TOML) and compile it.

    Raises DocumentError naming every problem.
    """
    return compile_validated(validate_document(document))


def compile_validated(document: Mapping[str, Any]) -> RoutingTable:
    """Compile a document already returned by ``c4kemi.document`` (validated, defaults filled in)."""
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

    networks = [
        (ipaddress.ip_network(cidr), by_name[entity["name"]])
        for collection, by_name in (("trunks", trunks), ("ipbxs", ipbxs))
        for entity in document[collection]
        for cidr in entity["sources"]
    ]

    dids = {
        d["prefix"]: Did(d["tenant"], d["prefix"], ipbxs[d["ipbx"]], re.compile(d["match"]) if d.get("match") else None)
        for d in document["dids"]
    }

    routes: dict[str, dict[str, RouteChoice]] = {}
    for r in document["routes"]:
        by_priority: dict[int, list[tuple[Endpoint, float]]] = {}
        for choice in r["trunks"]:
            by_priority.setdefault(choice["priority"], []).append((trunks[choice["trunk"]], choice["weight"]))
        priorities = tuple(sorted(by_priority))
        groups = tuple(tuple(by_priority[p]) for p in priorities)
        routes.setdefault(r["tenant"], {})[r["prefix"]] = RouteChoice(r["tenant"], r["prefix"], groups, priorities)

    return RoutingTable(
        sources=SourceIndex.build(networks),
        dids=PrefixIndex.build(dids),
        routes=MappingProxyType({tenant: PrefixIndex.build(entries) for tenant, entries in routes.items()}),
        version=hashlib.sha256(orjson.dumps(document, option=orjson.OPT_SORT_KEYS)).hexdigest()[:12],
        counts=MappingProxyType({name: len(items) for name, items in document.items()}),
        tenant_channels=MappingProxyType({t["name"]: t["max_channels"] for t in document["tenants"] if "max_channels" in t}),
    )


def load_table(path: str | Path) -> RoutingTable:
    """Load, validate and compile a routing document file."""
    return compile_validated(load_document(path))
