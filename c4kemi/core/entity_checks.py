"""One entity of a routing document checked: its fields, their values, its references.

``EntityChecker`` checks a tenant, a normalization profile, a carrier, an
IPBX, a trunk, a DID or a route against what it may refer to, and records
*every* problem (``errors``), each naming the entity and the field, e.g.
``trunks[carrier-a-1].sources[2]: '10.0.0.300' is not an IP network``. An
entity check returns the entity in checked form (defaults filled in), or
None when it recorded an error. What only a whole document can tell (the
collections, unique names, a source CIDR of two entities) is
c4kemi/core/document.py's, which also turns the errors into a DocumentError.

The bounds below keep every value usable by Kamailio and the JSON
encoders; the provisioning API's schema (c4http/openapi.py) states them too.
"""

from __future__ import annotations

import ipaddress
import re
from typing import Any

from .health import DEFAULTS as HEALTH_DEFAULTS
from .health import WHEN_ALL_DOWN, health_errors
from .numbers import MAX_NUMBER_LENGTH
from .patterns import PatternError, check_template, compile_pattern
from .targets import target_problem

__all__ = [
    "DEFAULT_FR_INV_TIMER", "DEFAULT_FR_TIMER", "EntityChecker", "MAX_BRANCH_FLAGS", "MAX_CHANNELS", "MAX_CPS", "MAX_NAME_LENGTH",
    "MAX_TIMER_MS", "MAX_WEIGHT", "PRIORITY_RANGE", "WIDE_SOURCE_PREFIXLEN", "entity_where",
]

DEFAULT_FR_TIMER = 5000
DEFAULT_FR_INV_TIMER = 30000

# Bounds that keep every value usable by Kamailio and the JSON encoders
# (64-bit integers at most) and every name safe to print in a log line.
MAX_TIMER_MS = 3_600_000  # an hour: tm's timers are milliseconds in 32 bits
MAX_BRANCH_FLAGS = 2**32 - 1  # Kamailio's branch flags are 32 bits
PRIORITY_RANGE = (-(2**31), 2**31 - 1)
MAX_WEIGHT = 1_000_000
MAX_NAME_LENGTH = 200
# Channel limits (docs/routing.md, "Channel limits"): simultaneous calls of a
# trunk or a tenant (0 refuses every call), new calls per second of a trunk.
MAX_CHANNELS = 1_000_000
MAX_CPS = 100_000
# A source wider than this takes calls from a large part of the Internet (at
# the extreme 0.0.0.0/0, every stranger's INVITE): refused unless the entity
# says allow_wide_sources (docs/security.md, "Address and number space").
WIDE_SOURCE_PREFIXLEN = {4: 8, 6: 32}

_DIGITS = re.compile(r"[0-9]*")
_PRINTABLE = re.compile(r"[^\x00-\x1f\x7f]+")


def entity_where(collection: str, item: Any) -> str:
    """How errors name one entity checked alone: by its key, as the API addresses it.

    ``trunks[carrier-a-1]``, ``dids[39612345]``, ``routes[acme/39]`` (the
    default route: ``routes[acme/]``); ``collection[?]`` when the key is
    not a printable string.
    """
    def printable(value: Any) -> bool:
        return isinstance(value, str) and len(value) <= MAX_NAME_LENGTH and (not value or bool(_PRINTABLE.fullmatch(value)))

    item = item if isinstance(item, dict) else {}
    if collection == "dids":
        key = item.get("prefix")
        return f"dids[{key}]" if printable(key) and key else "dids[?]"
    if collection == "routes":
        tenant, prefix = item.get("tenant"), item.get("prefix")
        return f"routes[{tenant}/{prefix}]" if printable(tenant) and tenant and printable(prefix) else "routes[?]"
    name = item.get("name")
    return f"{collection}[{name}]" if printable(name) and name else f"{collection}[?]"


class EntityChecker:
    """Checks entities one by one, collecting errors instead of stopping at the first."""

    def __init__(self) -> None:
        self.errors: list[str] = []

    def error(self, where: str, message: str) -> None:
        self.errors.append(f"{where}: {message}")

    def name(self, where: str, entity: dict) -> bool:
        name = entity.get("name")
        if not isinstance(name, str) or not name:
            self.error(f"{where}.name", "is required and must be a non-empty string")
            return False
        return self.text(f"{where}.name", name)

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
        if not self.fields(where, entity, {"name"}, {"max_channels", "number_blocks", "address_blocks"}):
            return None
        out = {"name": entity["name"]}
        ok = self.limits(where, entity, out, ("max_channels",))
        return out if self.blocks(where, entity, out) and ok else None

    def blocks(self, where: str, entity: dict, out: dict) -> bool:
        """A tenant's number and address blocks: the space its token may provision in (docs/security.md).

        Absent (or empty) stays absent, so documents without them are unchanged.
        """
        ok = True
        for key, check in (("number_blocks", self.number_block), ("address_blocks", self.cidr)):
            values = entity.get(key) or []
            if not isinstance(values, list):
                self.error(f"{where}.{key}", "must be a list")
                ok = False
                continue
            checked = []
            for index, value in enumerate(values):
                block = check(f"{where}.{key}[{index}]", value)
                if block is None:
                    ok = False
                elif block not in checked:
                    checked.append(block)
            if checked:
                out[key] = [str(block) for block in checked]
        return ok

    def number_block(self, where: str, value: Any) -> str | None:
        return value if self.digits(where, value, allow_empty=False) else None

    def limits(self, where: str, entity: dict, out: dict, keys: tuple[str, ...]) -> bool:
        """Optional channel limits; absent (or null) stays absent (no limit), so documents without them are unchanged."""
        ok = True
        for key in keys:
            if entity.get(key) is not None:
                low, high = (0, MAX_CHANNELS) if key == "max_channels" else (1, MAX_CPS)
                ok &= self.integer(f"{where}.{key}", entity[key], low, high)
                out[key] = entity[key]
        return ok

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
                    try:
                        check_template(pattern, replace)
                    except PatternError as exc:
                        self.error(f"{rule_where}.replace", str(exc))
                        ok = False
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
            {"sources", "allow_wide_sources", "normalization", "fr_timer", "fr_inv_timer", "branch_flags", "health"},
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
        ok &= self.health(where, entity, out)
        return out if ok else None

    def trunk(self, where: str, entity: dict, carriers: dict, profiles: set[str]) -> dict | None:
        ok = self.fields(
            where, entity, {"name", "carrier", "target"},
            {"sources", "allow_wide_sources", "normalization", "fr_timer", "fr_inv_timer", "branch_flags", "auth",
             "max_channels", "max_cps", "health"},
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
                    elif auth[key] and not _PRINTABLE.fullmatch(auth[key]):
                        # Never echo a password back, not even in an error.
                        self.error(f"{where}.auth.{key}", "must not contain control characters (CR, LF, ...)")
                        ok = False
                auth = {key: auth[key] for key in ("username", "password", "realm")}
            else:
                ok = False
        out["auth"] = auth
        ok &= self.limits(where, entity, out, ("max_channels", "max_cps"))
        ok &= self.health(where, entity, out)
        return out if ok else None

    def health(self, where: str, entity: dict, out: dict) -> bool:
        """A trunk's or an IPBX's optional ``health`` settings (c4kemi/core/health.py).

        Absent (or null) stays absent, so documents without it are
        unchanged; present, it is kept as given (no defaults filled in),
        its members in the order of ``health.DEFAULTS``.
        """
        value = entity.get("health")
        if value is None:
            return True
        errors = health_errors(f"{where}.health", value)
        if errors:
            self.errors.extend(errors)
            return False
        out["health"] = {
            key: list(value[key]) if key == "alive_codes" else value[key] for key in HEALTH_DEFAULTS if key in value
        }
        return True

    def common_endpoint(self, where: str, entity: dict, profiles: set[str], out: dict) -> bool:
        """Fields shared by trunks and IPBXs: sources, profile, timers, flags."""
        ok = True
        sources = entity.get("sources", [])
        allow_wide = entity.get("allow_wide_sources", False)
        if not isinstance(allow_wide, bool):
            self.error(f"{where}.allow_wide_sources", "must be true or false")
            ok, allow_wide = False, False
        networks = []
        if not isinstance(sources, list):
            self.error(f"{where}.sources", "must be a list of IP addresses or CIDRs")
            ok = False
        else:
            for index, source in enumerate(sources):
                network = self.cidr(f"{where}.sources[{index}]", source)
                if network is None:
                    ok = False
                    continue
                if not allow_wide and network.prefixlen < WIDE_SOURCE_PREFIXLEN[network.version]:
                    self.error(
                        f"{where}.sources[{index}]",
                        f"{network} is wider than /{WIDE_SOURCE_PREFIXLEN[network.version]}: it would take calls from "
                        "anyone there; set allow_wide_sources to true if that is meant",
                    )
                    ok = False
                if network not in networks:
                    networks.append(network)
        out["sources"] = networks
        if allow_wide:  # absent when false, so documents without it read back unchanged
            out["allow_wide_sources"] = True
        profile = entity.get("normalization")
        if profile is not None:
            ok &= self.reference(f"{where}.normalization", profile, profiles, "normalization profile")
        out["normalization"] = profile
        for key, default, low, high in (
            ("fr_timer", DEFAULT_FR_TIMER, 1, MAX_TIMER_MS),
            ("fr_inv_timer", DEFAULT_FR_INV_TIMER, 1, MAX_TIMER_MS),
            ("branch_flags", 0, 0, MAX_BRANCH_FLAGS),
        ):
            value = entity.get(key, default)
            ok &= self.integer(f"{where}.{key}", value, low, high)
            out[key] = value
        return ok

    def did(self, where: str, entity: Any, tenants: set[str], ipbxs: dict, seen: dict | None = None, index: int = 0) -> dict | None:
        """One DID; ``seen`` (prefix -> index) finds duplicates within a document."""
        if not isinstance(entity, dict):
            self.error(where, "must be an object")
            return None
        ok = self.fields(where, entity, {"tenant", "prefix", "ipbx"}, {"match"})
        prefix = entity.get("prefix")
        if "prefix" in entity:
            if self.digits(f"{where}.prefix", prefix, allow_empty=False):
                if seen is None:
                    pass
                elif prefix in seen:
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
        return {"tenant": tenant, "prefix": prefix, "ipbx": ipbx, "match": match} if ok else None

    def route(
        self, where: str, entity: Any, tenants: set[str], trunks: dict, carriers: dict, seen: dict | None = None, index: int = 0
    ) -> dict | None:
        """One route; ``seen`` ((tenant, prefix) -> index) finds duplicates within a document."""
        if not isinstance(entity, dict):
            self.error(where, "must be an object")
            return None
        ok = self.fields(where, entity, {"tenant", "prefix", "trunks"}, {"when_all_down"})
        tenant, prefix = entity.get("tenant"), entity.get("prefix")
        if "tenant" in entity:
            ok &= self.reference(f"{where}.tenant", tenant, tenants, "tenant")
        if "prefix" in entity:
            ok &= self.digits(f"{where}.prefix", prefix, allow_empty=True)
        if ok and seen is not None:
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
        out = {"tenant": tenant, "prefix": prefix, "trunks": choices}
        # What a call does when every target of the route is down (docs/routing.md). Absent (or null)
        # stays absent and means "try"; a value is kept as given, so documents read back unchanged.
        when_all_down = entity.get("when_all_down")
        if when_all_down is not None:
            if when_all_down.__class__ is not str or when_all_down not in WHEN_ALL_DOWN:
                value = when_all_down
                short = (isinstance(value, str) and len(value) <= 40) or isinstance(value, (bool, float)) or (
                    isinstance(value, int) and abs(value) < 10**30)
                got = f", got {value!r}" if short else ""
                self.error(f"{where}.when_all_down", f"must be \"try\" (the default) or \"refuse\"{got}")
                ok = False
            out["when_all_down"] = when_all_down
        return out if ok else None

    def route_trunk(self, where: str, entry: Any, position: int, tenant: Any, trunks: dict, carriers: dict) -> dict | None:
        if isinstance(entry, str):
            choice = {"trunk": entry, "priority": position, "weight": 1}
        elif isinstance(entry, dict):
            if not self.fields(where, entry, {"trunk"}, {"priority", "weight"}):
                return None
            choice = {"trunk": entry["trunk"], "priority": entry.get("priority", position), "weight": entry.get("weight", 1)}
            ok = self.integer(f"{where}.priority", choice["priority"], *PRIORITY_RANGE)
            weight = choice["weight"]
            if not isinstance(weight, (int, float)) or isinstance(weight, bool) or not 0 <= weight <= MAX_WEIGHT:
                self.error(f"{where}.weight", f"must be a number from 0 to {MAX_WEIGHT}")
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
        if len(value) > MAX_NUMBER_LENGTH:
            self.error(where, f"has {len(value)} digits; numbers longer than {MAX_NUMBER_LENGTH} are never routed")
            return False
        return True

    def integer(self, where: str, value: Any, low: int, high: int) -> bool:
        if not isinstance(value, int) or isinstance(value, bool) or not low <= value <= high:
            shown = value if not isinstance(value, int) or abs(value) < 10**30 else f"an integer of {len(str(abs(value)))} digits"
            self.error(where, f"must be an integer from {low} to {high}, got {shown!r}")
            return False
        return True

    def text(self, where: str, value: str) -> bool:
        """Names are printed in logs and explanations: printable, bounded."""
        if len(value) > MAX_NAME_LENGTH or not _PRINTABLE.fullmatch(value):
            self.error(where, f"must be at most {MAX_NAME_LENGTH} characters without control characters")
            return False
        return True

    def regex(self, where: str, value: Any) -> re.Pattern | None:
        if not isinstance(value, str):
            self.error(where, "must be a regular expression string")
            return None
        try:
            return compile_pattern(value)
        except PatternError as exc:
            self.error(where, str(exc))
            return None


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
        problem = target_problem(value)
        if problem is not None:
            self.error(where, f"must be a SIP URI like 'sip:192.0.2.10:5060' (host, port, parameters; no user part), got {value!r}: {problem}")
            return False
        return True

