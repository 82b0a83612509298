"""The routing document: loading (.json / .toml) and validation.

A routing document describes a whole routing table (see DESIGN.md). This
module checks it completely and reports *every* problem, each naming the
entity (collection and name, or index when the entity has no name) and the
field, e.g. ``trunks[carrier-a-1].sources[2]: '10.0.0.300' is not an IP
network``. It returns a normalised copy in which optional fields carry their
defaults, ready for ``c4kemi.table.compile_validated``.
"""

from __future__ import annotations

import ipaddress
import json
import re
import tomllib
from pathlib import Path
from typing import Any, Callable

__all__ = ["DocumentError", "load_document", "parse_document", "validate_document"]

DEFAULT_FR_TIMER = 5000
DEFAULT_FR_INV_TIMER = 30000

COLLECTIONS = (
    "tenants",
    "normalization_profiles",
    "ipbxs",
    "carriers",
    "trunks",
    "dids",
    "routes",
)

_DIGITS = re.compile(r"[0-9]*")
_GROUP_REF = re.compile(r"\\(?:g<([^>]*)>|([0-9]{1,2}))")


class DocumentError(ValueError):
    """A routing document was refused; ``errors`` lists every problem."""

    def __init__(self, errors: list[str], source: str | None = None) -> None:
        self.errors = list(errors)
        self.source = source
        where = f"{source}: " if source else ""
        super().__init__(f"{where}{len(self.errors)} error(s) in routing document:\n  " + "\n  ".join(self.errors))


def load_document(path: str | Path) -> dict[str, Any]:
    """Read and validate a .json or .toml routing document."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise DocumentError([f"cannot read file: {exc.strerror}"], str(path)) from None
    return parse_document(data, path.suffix.lower().lstrip(".") or "json", source=str(path))


def parse_document(data: bytes | str, fmt: str = "json", source: str | None = None) -> dict[str, Any]:
    """Parse and validate a routing document given as bytes or text."""
    try:
        if fmt == "toml":
            raw = tomllib.loads(data.decode() if isinstance(data, bytes) else data)
        elif fmt == "json":
            raw = json.loads(data)
        else:
            raise DocumentError([f"unsupported format {fmt!r}: use .json or .toml"], source)
    except (ValueError, UnicodeDecodeError) as exc:
        if isinstance(exc, DocumentError):
            raise
        raise DocumentError([f"not valid {fmt.upper()}: {exc}"], source) from None
    return validate_document(raw, source)


def validate_document(raw: Any, source: str | None = None) -> dict[str, Any]:
    """Validate a parsed document; return it normalised or raise DocumentError."""
    checker = _Checker()
    doc = checker.document(raw)
    if checker.errors:
        raise DocumentError(checker.errors, source)
    return doc


class _Checker:
    """Walks a document, collecting errors instead of stopping at the first."""

    def __init__(self) -> None:
        self.errors: list[str] = []

    def error(self, where: str, message: str) -> None:
        self.errors.append(f"{where}: {message}")

    # -- the document and its collections ---------------------------------

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
            if not isinstance(name, str) or not name:
                self.error(f"{where}.name", "is required and must be a non-empty string")
                continue
            if name in seen:
                self.error(f"{where}.name", f"duplicate name {name!r}")
                continue
            seen[name] = entity
            checked = check(where, entity)
            if checked is not None:
                out.append(checked)
        return out, seen

    def fields(self, where: str, entity: dict, required: set[str], optional: set[str]) -> bool:
        ok = True
        for key in entity:
            if key not in required and key not in optional:
                self.error(f"{where}.{key}", "unknown field")
                ok = False
        for key in sorted(required):
            if key not in entity:
                self.error(f"{where}.{key}", "is required")
                ok = False
        return ok

    # -- entities ---------------------------------------------------------

    def tenant(self, where: str, entity: dict) -> dict | None:
        if not self.fields(where, entity, {"name"}, set()):
            return None
        return {"name": entity["name"]}

    def profile(self, where: str, entity: dict) -> dict | None:
        ok = self.fields(
            where, entity, {"name"},
            {"country_code", "intl_prefix", "ld_prefix", "always_plus", "to_e164", "from_e164"},
        )
        out = {"name": entity["name"]}
        for key in ("country_code", "intl_prefix", "ld_prefix"):
            value = entity.get(key, "")
            ok &= self.digits(f"{where}.{key}", value, allow_empty=True)
            out[key] = value
        always_plus = entity.get("always_plus", False)
        if not isinstance(always_plus, bool):
            self.error(f"{where}.always_plus", "must be true or false")
            ok = False
        out["always_plus"] = always_plus
        for key in ("to_e164", "from_e164"):
            rules = entity.get(key, [])
            if not isinstance(rules, list):
                self.error(f"{where}.{key}", "must be a list of {match, replace} rules")
                ok = False
                continue
            out[key] = []
            for index, rule in enumerate(rules):
                rule_where = f"{where}.{key}[{index}]"
                if not isinstance(rule, dict):
                    self.error(rule_where, "must be an object with match and replace")
                    ok = False
                    continue
                if not self.fields(rule_where, rule, {"match", "replace"}, set()):
                    ok = False
                    continue
                pattern = self.regex(f"{rule_where}.match", rule["match"])
                replace = rule["replace"]
                if not isinstance(replace, str):
                    self.error(f"{rule_where}.replace", "must be a string")
                    ok = False
                elif pattern is not None:
                    ok &= self.replacement(f"{rule_where}.replace", pattern, replace)
                if pattern is None:
                    ok = False
                out[key].append({"match": rule["match"], "replace": replace})
        return out if ok else None

    def carrier(self, where: str, entity: dict, tenants: set[str]) -> dict | None:
        ok = self.fields(where, entity, {"name"}, {"tenant"})
        tenant = entity.get("tenant")
        if tenant is not None:
            ok &= self.reference(f"{where}.tenant", tenant, tenants, "tenant")
        return {"name": entity["name"], "tenant": tenant} if ok else None

    def ipbx(self, where: str, entity: dict, tenants: set[str], profiles: set[str]) -> dict | None:
        ok = self.fields(
            where, entity, {"name", "tenant", "targets"},
            {"sources", "normalization", "fr_timer", "fr_inv_timer", "branch_flags"},
        )
        if "tenant" in entity:
            ok &= self.reference(f"{where}.tenant", entity["tenant"], tenants, "tenant")
        targets = entity.get("targets")
        if "targets" in entity:
            if not isinstance(targets, list) or not targets:
                self.error(f"{where}.targets", "must be a non-empty list of SIP URIs")
                ok = False
            else:
                for index, target in enumerate(targets):
                    ok &= self.sip_uri(f"{where}.targets[{index}]", target)
        out = {"name": entity["name"], "tenant": entity.get("tenant"), "targets": targets}
        ok &= self.common_endpoint(where, entity, profiles, out)
        return out if ok else None

    def trunk(self, where: str, entity: dict, carriers: dict, profiles: set[str]) -> dict | None:
        ok = self.fields(
            where, entity, {"name", "carrier", "target"},
            {"sources", "normalization", "fr_timer", "fr_inv_timer", "branch_flags", "auth"},
        )
        if "carrier" in entity:
            ok &= self.reference(f"{where}.carrier", entity["carrier"], carriers, "carrier")
        if "target" in entity:
            ok &= self.sip_uri(f"{where}.target", entity["target"])
        out = {"name": entity["name"], "carrier": entity.get("carrier"), "target": entity.get("target")}
        ok &= self.common_endpoint(where, entity, profiles, out)
        auth = entity.get("auth")
        if auth is not None:
            if not isinstance(auth, dict):
                self.error(f"{where}.auth", "must be an object with username, password and realm")
                ok = False
            elif self.fields(f"{where}.auth", auth, {"username", "password", "realm"}, set()):
                for key in ("username", "password", "realm"):
                    if not isinstance(auth[key], str):
                        self.error(f"{where}.auth.{key}", "must be a string")
                        ok = False
                auth = {key: auth[key] for key in ("username", "password", "realm")}
            else:
                ok = False
        out["auth"] = auth
        return out if ok else None

    def common_endpoint(self, where: str, entity: dict, profiles: set[str], out: dict) -> bool:
        """Fields shared by trunks and IPBXs: sources, profile, timers, flags."""
        ok = True
        sources = entity.get("sources", [])
        networks = []
        if not isinstance(sources, list):
            self.error(f"{where}.sources", "must be a list of IP addresses or CIDRs")
            ok = False
        else:
            for index, source in enumerate(sources):
                network = self.cidr(f"{where}.sources[{index}]", source)
                if network is None:
                    ok = False
                elif network not in networks:
                    networks.append(network)
        out["sources"] = networks
        profile = entity.get("normalization")
        if profile is not None:
            ok &= self.reference(f"{where}.normalization", profile, profiles, "normalization profile")
        out["normalization"] = profile
        for key, default, minimum in (
            ("fr_timer", DEFAULT_FR_TIMER, 1),
            ("fr_inv_timer", DEFAULT_FR_INV_TIMER, 1),
            ("branch_flags", 0, 0),
        ):
            value = entity.get(key, default)
            if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
                self.error(f"{where}.{key}", f"must be an integer >= {minimum}")
                ok = False
            out[key] = value
        return ok

    def dids(self, items: list, tenants: set[str], ipbxs: dict) -> list[dict]:
        out, seen = [], {}
        for index, entity in enumerate(items):
            where = f"dids[{index}]"
            if not isinstance(entity, dict):
                self.error(where, "must be an object")
                continue
            ok = self.fields(where, entity, {"tenant", "prefix", "ipbx"}, {"match"})
            prefix = entity.get("prefix")
            if "prefix" in entity:
                if self.digits(f"{where}.prefix", prefix, allow_empty=False):
                    if prefix in seen:
                        self.error(f"{where}.prefix", f"duplicate DID prefix {prefix!r} (also dids[{seen[prefix]}])")
                        ok = False
                    else:
                        seen[prefix] = index
                else:
                    ok = False
            tenant = entity.get("tenant")
            if "tenant" in entity:
                ok &= self.reference(f"{where}.tenant", tenant, tenants, "tenant")
            ipbx = entity.get("ipbx")
            if "ipbx" in entity and self.reference(f"{where}.ipbx", ipbx, ipbxs, "IPBX"):
                owner = ipbxs[ipbx].get("tenant")
                if isinstance(tenant, str) and tenant in tenants and isinstance(owner, str) and owner != tenant:
                    self.error(f"{where}.ipbx", f"IPBX {ipbx!r} belongs to tenant {owner!r}, not {tenant!r}")
                    ok = False
            elif "ipbx" in entity:
                ok = False
            match = entity.get("match")
            if match is not None and self.regex(f"{where}.match", match) is None:
                ok = False
            if ok:
                out.append({"tenant": tenant, "prefix": prefix, "ipbx": ipbx, "match": match})
        return out

    def routes(self, items: list, tenants: set[str], trunks: dict, carriers: dict) -> list[dict]:
        out, seen = [], {}
        for index, entity in enumerate(items):
            where = f"routes[{index}]"
            if not isinstance(entity, dict):
                self.error(where, "must be an object")
                continue
            ok = self.fields(where, entity, {"tenant", "prefix", "trunks"}, set())
            tenant, prefix = entity.get("tenant"), entity.get("prefix")
            if "tenant" in entity:
                ok &= self.reference(f"{where}.tenant", tenant, tenants, "tenant")
            if "prefix" in entity:
                ok &= self.digits(f"{where}.prefix", prefix, allow_empty=True)
            if ok:
                if (tenant, prefix) in seen:
                    self.error(f"{where}.prefix", f"duplicate route prefix {prefix!r} for tenant {tenant!r} (also routes[{seen[tenant, prefix]}])")
                    ok = False
                else:
                    seen[tenant, prefix] = index
            entries = entity.get("trunks")
            choices = []
            if "trunks" in entity:
                if not isinstance(entries, list) or not entries:
                    self.error(f"{where}.trunks", "must be a non-empty list of trunk names or {trunk, priority, weight}")
                    ok = False
                    entries = []
                names = set()
                for position, entry in enumerate(entries):
                    choice = self.route_trunk(f"{where}.trunks[{position}]", entry, position, tenant, trunks, carriers)
                    if choice is None:
                        ok = False
                    elif choice["trunk"] in names:
                        self.error(f"{where}.trunks[{position}]", f"trunk {choice['trunk']!r} listed twice")
                        ok = False
                    else:
                        names.add(choice["trunk"])
                        choices.append(choice)
            if ok:
                out.append({"tenant": tenant, "prefix": prefix, "trunks": choices})
        return out

    def route_trunk(self, where: str, entry: Any, position: int, tenant: Any, trunks: dict, carriers: dict) -> dict | None:
        if isinstance(entry, str):
            choice = {"trunk": entry, "priority": position, "weight": 1}
        elif isinstance(entry, dict):
            if not self.fields(where, entry, {"trunk"}, {"priority", "weight"}):
                return None
            choice = {"trunk": entry["trunk"], "priority": entry.get("priority", position), "weight": entry.get("weight", 1)}
            ok = True
            if not isinstance(choice["priority"], int) or isinstance(choice["priority"], bool):
                self.error(f"{where}.priority", "must be an integer")
                ok = False
            weight = choice["weight"]
            if not isinstance(weight, (int, float)) or isinstance(weight, bool) or not weight >= 0 or weight == float("inf"):
                self.error(f"{where}.weight", "must be a number >= 0")
                ok = False
            if not ok:
                return None
        else:
            self.error(where, "must be a trunk name or an object {trunk, priority, weight}")
            return None
        field = f"{where}.trunk" if isinstance(entry, dict) else where
        if not self.reference(field, choice["trunk"], trunks, "trunk"):
            return None
        carrier_name = trunks[choice["trunk"]].get("carrier")
        owner = carriers[carrier_name].get("tenant") if isinstance(carrier_name, str) and carrier_name in carriers else None
        if owner is not None and owner != tenant:
            self.error(field, f"trunk {choice['trunk']!r} belongs to carrier {carrier_name!r} of tenant {owner!r}")
            return None
        return choice

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

    # -- values -----------------------------------------------------------

    def reference(self, where: str, value: Any, names, kind: str) -> bool:
        if not isinstance(value, str) or value not in names:
            self.error(where, f"unknown {kind} {value!r}")
            return False
        return True

    def digits(self, where: str, value: Any, allow_empty: bool) -> bool:
        if not isinstance(value, str) or not _DIGITS.fullmatch(value) or (not value and not allow_empty):
            need = "digits" if allow_empty else "one or more digits"
            self.error(where, f"must be a string of {need} (E.164 without '+'), got {value!r}")
            return False
        return True

    def regex(self, where: str, value: Any) -> re.Pattern | None:
        if not isinstance(value, str):
            self.error(where, "must be a regular expression string")
            return None
        try:
            return re.compile(value)
        except re.error as exc:
            self.error(where, f"bad regular expression {value!r}: {exc}")
            return None

    def replacement(self, where: str, pattern: re.Pattern, replace: str) -> bool:
        """Group references in a replacement must exist in the pattern."""
        for named, number in _GROUP_REF.findall(replace):
            if number and int(number) > pattern.groups:
                self.error(where, f"refers to group {number} but the match has {pattern.groups} group(s)")
                return False
            if named and not (named.isdigit() and int(named) <= pattern.groups) and named not in pattern.groupindex:
                self.error(where, f"refers to unknown group {named!r}")
                return False
        return True

    def cidr(self, where: str, value: Any):
        if not isinstance(value, str):
            self.error(where, "must be an IP address or CIDR string")
            return None
        try:
            return ipaddress.ip_network(value, strict=True)
        except ValueError as exc:
            self.error(where, f"bad CIDR {value!r}: {exc}")
            return None

    def sip_uri(self, where: str, value: Any) -> bool:
        if not isinstance(value, str) or not re.fullmatch(r"sips?:[^\s@<>]+", value):
            self.error(where, f"must be a SIP URI like 'sip:192.0.2.10:5060', got {value!r}")
            return False
        return True
