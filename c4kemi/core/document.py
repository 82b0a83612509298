"""The routing document: loading (.json / .toml) and validation.

A routing document describes a whole routing table (docs/routing.md). This
module checks it completely and reports *every* problem, each naming the
entity (collection and name, or index when the entity has no name) and the
field, e.g. ``trunks[carrier-a-1].sources[2]: '10.0.0.300' is not an IP
network``. It returns a normalised copy in which optional fields carry their
defaults, ready for ``c4kemi.core.table.compile_validated``.

Here: reading a document, the whole-document checks (the collections,
unique names and keys, references resolved within the document, a source
CIDR of one entity only) and ``DocumentError``; each entity's own checks
are c4kemi/core/entity_checks.py's, a target's syntax c4kemi/core/targets.py's.
"""

from __future__ import annotations

import json
import tomllib
from collections.abc import Callable
from pathlib import Path
from typing import Any

from .entity_checks import EntityChecker, entity_where

__all__ = [
    "COLLECTIONS", "DocumentError", "load_document", "load_raw", "parse_document", "parse_raw", "validate_document", "validate_entity",
]

COLLECTIONS = (
    "tenants",
    "normalization_profiles",
    "ipbxs",
    "carriers",
    "trunks",
    "dids",
    "routes",
)
NAMED_COLLECTIONS = ("tenants", "normalization_profiles", "ipbxs", "carriers", "trunks")


class DocumentError(ValueError):
    """A routing document was refused; ``errors`` lists every problem."""

    def __init__(self, errors: list[str], source: str | None = None) -> None:
        self.errors = list(errors)
        self.source = source
        where = f"{source}: " if source else ""
        super().__init__(f"{where}{len(self.errors)} error(s) in routing document:\n  " + "\n  ".join(self.errors))


def load_document(path: str | Path) -> dict[str, Any]:
    """Read and validate a .json or .toml routing document."""
    return validate_document(load_raw(path), str(path))


def load_raw(path: str | Path) -> Any:
    """Read and parse a .json or .toml routing document, not validated yet."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise DocumentError([f"cannot read file: {exc.strerror}"], str(path)) from None
    return parse_raw(data, path.suffix.lower().lstrip(".") or "json", source=str(path))


def parse_document(data: bytes | str, fmt: str = "json", source: str | None = None) -> dict[str, Any]:
    """Parse and validate a routing document given as bytes or text."""
    return validate_document(parse_raw(data, fmt, source), source)


def parse_raw(data: bytes | str, fmt: str = "json", source: str | None = None) -> Any:
    """Parse a routing document given as bytes or text (duplicate keys refused), not validated yet."""
    try:
        if fmt == "toml":
            raw = tomllib.loads(data.decode() if isinstance(data, bytes) else data)
        elif fmt == "json":
            raw = json.loads(data, object_pairs_hook=_refuse_duplicate_keys)
        else:
            raise DocumentError([f"unsupported format {fmt!r}: use .json or .toml"], source)
    except (ValueError, UnicodeDecodeError, RecursionError) as exc:
        if isinstance(exc, DocumentError):
            raise
        if isinstance(exc, RecursionError):
            exc = "nested too deeply"
        raise DocumentError([f"not valid {fmt.upper()}: {exc}"], source) from None
    return raw


def _refuse_duplicate_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """json.loads hook: a repeated key would silently drop the first value."""
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            name = out.get("name")
            where = f" in the object named {name!r}" if isinstance(name, str) else ""
            raise ValueError(f"duplicate key {key!r}{where}")
        out[key] = value
    return out


def validate_document(raw: Any, source: str | None = None) -> dict[str, Any]:
    """Validate a parsed document; return it normalised or raise DocumentError."""
    checker = DocumentChecker()
    doc = checker.document(raw)
    if checker.errors:
        raise DocumentError(checker.errors, source)
    return doc


def validate_entity(collection: str, item: Any, refs: dict[str, Any] | None = None) -> dict[str, Any]:
    """Check one entity as ``validate_document`` checks it inside a document.

    ``refs`` holds what the entity may refer to, by collection: names for
    ``tenants`` and ``normalization_profiles``; name -> entity (at least
    ``tenant`` for carriers and IPBXs, ``carrier`` for trunks) for
    ``carriers``, ``ipbxs`` and ``trunks``. A name missing from ``refs`` is
    an unknown reference, so a caller that leaves out what a user may not
    see refuses references to it without revealing that it exists.

    Returns the entity in checked form (defaults filled in, sources as
    CIDRs, route trunks as ``{trunk, priority, weight}``) or raises
    DocumentError listing every problem, each naming the entity
    (``entity_where``) and the field. What only the whole document can
    tell (a duplicate key, a source CIDR of another entity) is the
    caller's to check.
    """
    if collection not in COLLECTIONS:
        raise ValueError(f"unknown collection {collection!r}")
    refs = refs or {}
    tenants = set(refs.get("tenants", ()))
    profiles = set(refs.get("normalization_profiles", ()))
    carriers = dict(refs.get("carriers", {}))
    ipbxs = dict(refs.get("ipbxs", {}))
    trunks = dict(refs.get("trunks", {}))
    checker = EntityChecker()
    where = entity_where(collection, item)
    checked = None
    if not isinstance(item, dict):
        checker.error(where, "must be an object")
    elif collection in NAMED_COLLECTIONS:
        if checker.name(where, item):
            checks = {
                "tenants": checker.tenant,
                "normalization_profiles": checker.profile,
                "carriers": lambda w, e: checker.carrier(w, e, tenants),
                "ipbxs": lambda w, e: checker.ipbx(w, e, tenants, profiles),
                "trunks": lambda w, e: checker.trunk(w, e, carriers, profiles),
            }
            checked = checks[collection](where, item)
    elif collection == "dids":
        checked = checker.did(where, item, tenants, ipbxs)
    else:
        checked = checker.route(where, item, tenants, trunks, carriers)
    if checker.errors:
        raise DocumentError(checker.errors)
    assert checked is not None  # every refusal records an error
    if collection in ("ipbxs", "trunks"):
        checked["sources"] = [str(network) for network in checked["sources"]]
    return checked


class DocumentChecker(EntityChecker):
    """Walks a whole document: its collections, then each entity with what it may refer to in the document."""

    def document(self, raw: Any) -> dict[str, Any]:
        if not isinstance(raw, dict):
            self.error("document", "must be an object with the collections " + ", ".join(COLLECTIONS))
            return {name: [] for name in COLLECTIONS}
        for key in raw:
            if key not in COLLECTIONS:
                self.error(str(key), "unknown collection (expected one of " + ", ".join(COLLECTIONS) + ")")
        lists = {}
        for name in COLLECTIONS:
            items = raw.get(name, [])
            if not isinstance(items, list):
                self.error(name, "must be a list")
                items = []
            lists[name] = items

        # References are checked against every entity that has a valid name,
        # even one with errors of its own, so one mistake is reported once.
        doc: dict[str, Any] = {}
        doc["tenants"], tenants = self.named(lists, "tenants", self.tenant)
        doc["normalization_profiles"], profiles = self.named(lists, "normalization_profiles", self.profile)
        doc["carriers"], carriers = self.named(lists, "carriers", lambda w, e: self.carrier(w, e, tenants))
        doc["ipbxs"], ipbxs = self.named(lists, "ipbxs", lambda w, e: self.ipbx(w, e, tenants, profiles))
        doc["trunks"], trunks = self.named(lists, "trunks", lambda w, e: self.trunk(w, e, carriers, profiles))
        doc["dids"] = self.dids(lists["dids"], tenants, ipbxs)
        doc["routes"] = self.routes(lists["routes"], tenants, trunks, carriers)
        self.unique_sources(doc)
        return doc

    def named(self, lists: dict, collection: str, check: Callable[[str, dict], dict | None]) -> tuple[list[dict], dict]:
        """Check a collection of named entities; names must be unique.

        Returns the checked entities and every entity by name (as written).
        """
        out, seen = [], {}
        for index, entity in enumerate(lists[collection]):
            name = entity.get("name") if isinstance(entity, dict) else None
            where = f"{collection}[{name}]" if isinstance(name, str) and name else f"{collection}[{index}]"
            if not isinstance(entity, dict):
                self.error(where, "must be an object")
                continue
            if not self.name(where, entity):
                continue
            if name in seen:
                self.error(f"{where}.name", f"duplicate name {name!r}")
                continue
            seen[name] = entity
            checked = check(where, entity)
            if checked is not None:
                out.append(checked)
        return out, seen

    def dids(self, items: list, tenants: set[str], ipbxs: dict) -> list[dict]:
        out, seen = [], {}
        for index, entity in enumerate(items):
            checked = self.did(f"dids[{index}]", entity, tenants, ipbxs, seen, index)
            if checked is not None:
                out.append(checked)
        return out

    def routes(self, items: list, tenants: set[str], trunks: dict, carriers: dict) -> list[dict]:
        out, seen = [], {}
        for index, entity in enumerate(items):
            checked = self.route(f"routes[{index}]", entity, tenants, trunks, carriers, seen, index)
            if checked is not None:
                out.append(checked)
        return out

    def unique_sources(self, doc: dict) -> None:
        owners: dict = {}
        for collection in ("ipbxs", "trunks"):
            for entity in doc[collection]:
                for network in entity["sources"]:
                    here = f"{collection}[{entity['name']}]"
                    if network in owners:
                        self.error(f"{here}.sources", f"{network} is also a source of {owners[network]}")
                    else:
                        owners[network] = here
        for collection in ("trunks", "ipbxs"):
            for entity in doc[collection]:
                entity["sources"] = [str(network) for network in entity["sources"]]
