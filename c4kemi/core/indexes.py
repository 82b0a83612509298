"""The lookup indexes of a compiled table: longest prefix first, a few dict probes a lookup.

- ``PrefixIndex``: numbers to DIDs, and per tenant to routes: one dict
  keyed by prefix, probed for each prefix length present, longest first;
  for the DIDs, a filter of their first ``HEAD`` digits first rules out
  the long prefixes (most numbers an IPBX dials are no DID, and at 1M
  DIDs each probe is a cache miss). A change makes a new version that
  shares the big dict with the old one (``PrefixIndex.updated``).
- ``SourceIndex``: source addresses to the trunk or IPBX they belong to:
  per address family, one dict per CIDR prefix length, keyed by the
  network address as an int, probed longest first.

Both are immutable: frozen dataclasses, tuples and read-only mapping
proxies (the hot path keeps the dicts' own bound ``get``, which cannot
write). The cost of a lookup does not grow with the number of entries.
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Generator, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from itertools import islice
from types import MappingProxyType
from typing import Any, Generic, TypeVar

from . import steps
from .steps import finish

__all__ = ["HEAD", "LAYER_MAX", "MERGE_STEP", "Layered", "PrefixIndex", "SourceIndex", "head_buckets"]

V = TypeVar("V")  # what a PrefixIndex maps prefixes to (a Did, a RouteChoice)
E = TypeVar("E")  # what a SourceIndex maps networks to (an Endpoint)

# A PrefixIndex keeps up to this many changed prefixes beside the big dict
# it shares with the versions before it, instead of copying that dict on
# every change (see PrefixIndex.updated_steps); past it they are merged.
LAYER_MAX = 250_000
# Entries copied per step of such a merge.
MERGE_STEP = 50_000
_ABSENT = object()


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
class PrefixIndex(Generic[V]):
    """Longest-prefix lookup: a dict per prefix, probed longest first.

    Versions share their big dict (``base``): a change goes into a small
    ``layer`` of changed prefixes (None: removed) looked at first. A KEMI
    worker forked from the process that loaded the table shares the big
    dict's pages with its siblings; copying it would write every entry's
    reference count, so the first change after the fork would copy all
    those pages in every worker at once (about 100 ms each at 1M DIDs, all
    workers together: long enough to drop SIP packets) and end the sharing.
    """

    entries: Mapping[str, V]
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
    base: Mapping[str, V] = field(default_factory=dict, compare=False, repr=False)
    base_get: Any = field(default=None, compare=False, repr=False)
    layer: Mapping[str, V | None] = field(default_factory=dict, compare=False, repr=False)
    # The buckets of the layer's long prefixes that ``heads`` does not flag.
    layer_heads: frozenset[int] = frozenset()

    @classmethod
    def build(cls, entries: dict[str, V]) -> PrefixIndex[V]:
        sizes: dict[int, int] = {}
        for prefix in entries:
            sizes[len(prefix)] = sizes.get(len(prefix), 0) + 1
        heads = finish(_head_flags_steps(entries, head_buckets(_long(sizes))))
        return cls._made(MappingProxyType(entries), entries.get, {}, sizes, heads, frozenset())

    @classmethod
    def _made(cls, base: Mapping[str, V], base_get: Any, layer: dict[str, V | None], sizes: dict[int, int],
              heads: bytearray, layer_heads: frozenset[int]) -> PrefixIndex[V]:
        lengths = tuple(sorted(sizes, reverse=True))
        if layer:
            entries: Mapping[str, V] = Layered(base, MappingProxyType(layer), sum(sizes.values()))
            get = _layered_get(layer.get, base_get)
        else:
            entries, get = base, base_get
        return cls(entries, lengths, MappingProxyType(sizes), heads, tuple(n for n in lengths if n < HEAD), get,
                   base, base_get, MappingProxyType(layer), layer_heads)

    def may_have(self, number: str) -> bool:
        """False when no prefix of HEAD digits or more can start ``number`` (the filter); True: probe them."""
        bucket = hash(number[:HEAD]) & (len(self.heads) - 1)
        return self.heads[bucket] == 1 or bucket in self.layer_heads

    def updated(self, changes: Mapping[str, V | None]) -> PrefixIndex[V]:
        """A new index with ``changes`` applied (prefix -> entry, None: removed); self is unchanged.

        Costs a copy of the layer plus the changes: the big dict, its
        filter and the entries are shared with this index (see the class).
        """
        return finish(self.updated_steps(changes))

    def updated_steps(self, changes: Mapping[str, V | None]) -> Generator[None, None, PrefixIndex[V]]:
        """``updated`` in steps: yields after every ``steps.STEP`` changes, returns the index.

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
        step = steps.STEP
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
            if not n % step:
                yield
        if len(layer) > LAYER_MAX:
            merged = yield from _merged_steps(base, layer)
            heads = yield from _head_flags_steps(merged, head_buckets(_long(sizes)))
            return self._made(MappingProxyType(merged), merged.get, {}, sizes, heads, frozenset())
        return self._made(base, base_get, layer, sizes, heads, frozenset(layer_heads))

    def candidates(self, number: str) -> Iterator[tuple[str, V]]:
        """(prefix, entry) of the prefixes that start ``number``, longest first."""
        get, size = self.get, len(number)
        for length in self.lengths:
            if length <= size:
                entry = get(number[:length])
                if entry is not None:
                    yield number[:length], entry


@dataclass(frozen=True, slots=True)
class SourceIndex(Generic[E]):
    """Longest-prefix CIDR lookup for IPv4 and IPv6 source addresses."""

    v4: tuple[tuple[int, int, Mapping[int, E]], ...]  # (prefixlen, mask, {net: endpoint})
    v6: tuple[tuple[int, int, Mapping[int, E]], ...]
    # The same levels as (mask, the dict's own get) for lookup: a mapping
    # proxy's get is a method call through the proxy (see PrefixIndex.get).
    v4_probes: tuple = field(default=(), compare=False, repr=False)
    v6_probes: tuple = field(default=(), compare=False, repr=False)

    @classmethod
    def build(cls, networks: list[tuple[Any, E]]) -> SourceIndex[E]:
        families: dict[int, dict[int, dict[int, E]]] = {4: {}, 6: {}}
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

    def lookup(self, address: str) -> E | None:
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

    def match(self, address: str) -> tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, E] | None:
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

