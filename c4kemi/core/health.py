"""Trunk health settings: what the document may say, and what Kamailio is told to probe.

The health of a target (a trunk's ``target``, each of an IPBX's
``targets``) lives in Kamailio's shared memory and is kept there by the
config (kamailio/kamailio-health.cfg): OPTIONS probes, calls that time out,
the skip of a down target at relay time. The decision never sees it. This
module is the Python side: the optional ``health`` object of a trunk or an
IPBX (checked like any other field), and the probe list a node hands to
Kamailio, one line of settings per target.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

__all__ = [
    "DEFAULTS",
    "LIMITS",
    "WHEN_ALL_DOWN",
    "ProbeTarget",
    "base_targets",
    "health_errors",
    "probe_targets",
    "settings_line",
]

# Every member of a ``health`` object, its default and its bounds (inclusive).
DEFAULTS: dict[str, Any] = {
    "probe_interval": 10,  # seconds between OPTIONS while up; 0: none while up (a down target is probed anyway)
    "alive_codes": None,  # OPTIONS replies that mean alive: None (absent) is any reply
    "down_after": 3,  # failures in a row (probe or INVITE timeouts, INVITEs not sent) that mark it down; 0: never
    "up_after": 2,  # answered probes in a row that bring a down target back
    "failure_percent": 0,  # share of INVITEs failing (503, timeout, not sent) in a window that marks it down; 0: off
    "failure_window": 60,  # seconds of that window
    "failure_min_calls": 10,  # INVITEs in the window before the share counts
}
LIMITS: dict[str, tuple[int, int]] = {
    "probe_interval": (0, 3600),
    "down_after": (0, 100),
    "up_after": (1, 100),
    "failure_percent": (0, 100),
    "failure_window": (10, 3600),
    "failure_min_calls": (1, 100_000),
}
# A down target with probe_interval 0 is still probed, this often, or it would never come back.
DOWN_PROBE_INTERVAL = 10
MAX_ALIVE_CODES = 20
_CODE = re.compile(r"[1-6](?:[0-9][0-9]|xx)")
# A route's ``when_all_down``: what a call does when every target of its route is down.
WHEN_ALL_DOWN = ("try", "refuse")


def health_errors(where: str, value: Any) -> list[str]:
    """Why ``value`` is not a valid ``health`` object (``where`` names it, e.g. ``trunks[t1].health``); [] when it is."""
    if not isinstance(value, dict):
        return [f"{where}: must be an object with some of {', '.join(DEFAULTS)}"]
    errors = [f"{where}.{key}: unknown field (known: {', '.join(DEFAULTS)})" for key in value if key not in DEFAULTS]
    for key, (low, high) in LIMITS.items():
        if key in value:
            number = value[key]
            if not isinstance(number, int) or isinstance(number, bool) or not low <= number <= high:
                shown = repr(number) if not isinstance(number, int) or abs(number) < 10**30 else "a huge integer"
                errors.append(f"{where}.{key}: must be an integer from {low} to {high}, got {shown}")
    if "alive_codes" in value:
        codes = value["alive_codes"]
        if not isinstance(codes, list) or not 1 <= len(codes) <= MAX_ALIVE_CODES:
            errors.append(f"{where}.alive_codes: must be a list of 1 to {MAX_ALIVE_CODES} reply codes such as \"200\" or \"2xx\"")
        else:
            for index, code in enumerate(codes):
                if not isinstance(code, str) or not _CODE.fullmatch(code):
                    short = (isinstance(code, str) and len(code) <= 20) or isinstance(code, (bool, float)) or (
                        isinstance(code, int) and abs(code) < 10**30)
                    got = f", got {code!r}" if short else ""
                    errors.append(f"{where}.alive_codes[{index}]: must be a reply code (\"100\" to \"699\") or a class such as \"2xx\"{got}")
    return errors


def settings(value: Mapping[str, Any] | None) -> dict[str, Any]:
    """A checked ``health`` object (or None) with every default filled in."""
    return {**DEFAULTS, **(value or {})}


def settings_line(value: Mapping[str, Any] | None) -> str:
    """What Kamailio reads of a target's settings: fields separated by ``;``, in a fixed order.

    probe_interval;down_after;up_after;failure_percent;failure_window;failure_min_calls;codes
    where codes is ``any`` or the alive codes separated by commas (``2xx,404``: the config
    looks a reply's code up in it, then its class).
    """
    s = settings(value)
    codes = "any" if s["alive_codes"] is None else ",".join(s["alive_codes"])
    numbers = (s[key] for key in ("probe_interval", "down_after", "up_after", "failure_percent", "failure_window", "failure_min_calls"))
    return ";".join([*map(str, numbers), codes])


@dataclass(frozen=True)
class ProbeTarget:
    """One target Kamailio watches: its settings line and who uses it ("trunk NAME", "ipbx NAME")."""

    uri: str
    line: str
    users: tuple[str, ...]


def probe_targets(trunks: Iterable[Mapping[str, Any]], ipbxs: Iterable[Mapping[str, Any]]) -> dict[str, ProbeTarget]:
    """Every target of the table, by URI (as the routes' dst_uri write it).

    Several trunks or IPBXs naming one target share one health (one host
    answers for all of them); its settings are those of the first one, trunks
    before IPBXs, in document order.
    """
    found: dict[str, ProbeTarget] = {}
    for kind, entities in (("trunk", trunks), ("ipbx", ipbxs)):
        for entity in entities:
            uris = [entity["target"]] if kind == "trunk" else list(entity["targets"])
            for uri in uris:
                user = f"{kind} {entity['name']}"
                known = found.get(uri)
                if known is None:
                    found[uri] = ProbeTarget(uri, settings_line(entity.get("health")), (user,))
                elif user not in known.users:
                    found[uri] = ProbeTarget(uri, known.line, (*known.users, user))
    return found


def base_targets(base: Mapping[str, Any]) -> dict[str, ProbeTarget]:
    """``probe_targets`` of a document's (or a compiled table's ``base``) trunks and IPBXs."""
    return probe_targets(base.get("trunks", []), base.get("ipbxs", []))
