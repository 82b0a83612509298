"""The routing decision: a request and a compiled table in, an rtjson reply out.

Pure: no I/O, no Kamailio, no clock. KEMI mode, the c4http service and the
``c4 route`` dry run all call ``route_json`` (or ``decide``), so the same
request against the same table gives the same bytes everywhere.
"""

from __future__ import annotations

import hashlib
import json
import math

import orjson

from .compiled import Endpoint, RouteChoice, RoutingTable
from .numbers import MAX_NUMBER_LENGTH, is_digits, parse_uri, strip_separators
from .shapes import Call, RoutingQuery, RoutingReply, RtjsonRoute

__all__ = ["RequestError", "decide", "decide_call", "call_json", "route_json", "encode", "refusal", "trunk_order"]

RTJSON_VERSION = "1.0"


class RequestError(ValueError):
    """A routing request is malformed; the message names the member."""


def refusal(code: int, reason: str) -> RoutingReply:
    return {"rtjson": {"success": False, "code": code, "reason": reason}}


FORBIDDEN = 403, "Forbidden"
NO_ROUTE = 404, "No Route"


def _required(query: RoutingQuery, name: str) -> str:
    value = query.get(name)
    if value is None:
        raise RequestError(f"missing required member {name!r}")
    if value.__class__ is not str:
        raise RequestError(f"member {name!r} must be a string, not {type(value).__name__}")
    return value


def _optional(query: RoutingQuery, name: str) -> str:
    value = query.get(name)
    if value is None:  # absent, or null as a config may send for an empty pv
        return ""
    if value.__class__ is not str:
        raise RequestError(f"member {name!r} must be a string, not {type(value).__name__}")
    return value


def decide(table: RoutingTable, query: RoutingQuery) -> RoutingReply:
    """The reply ``{"rtjson": {...}}`` for one routing query (``decide_call`` without the call)."""
    return _decide(table, query, None)


def decide_call(table: RoutingTable, query: RoutingQuery) -> tuple[RoutingReply, Call | None]:
    """The reply and what Kamailio needs to count and limit the call's channels: the ``Call`` (c4kemi/core/shapes.py).

    The call is carried beside the rtjson, never in it, so that the reply
    stays the same bytes with or without limits (docs/routing.md, "Channel
    limits"). Its ``routes`` has one entry per rtjson route, in the same
    order. A refusal gives a call too when something is known: for a 404
    the sender, its tenant and the numbers (no limits, no ``routes``); for
    a 403 nothing (None).
    """
    call: Call = {}  # _decide fills it in; left empty (a 403): None
    reply = _decide(table, query, call)
    return reply, (call or None)


def _limit(value: int | None) -> int:
    return -1 if value is None else value


def _decide(table: RoutingTable, query: RoutingQuery, call: Call | None) -> RoutingReply:
    """The reply ``{"rtjson": {...}}`` for one routing query; fills ``call`` when given.

    Raises RequestError for a malformed query: not an object, a required
    member (source_ip, from_uri, to_uri) missing or not a string, an
    optional one (call_id, ruri, from_name, to_name, identity_uri, privacy)
    not a string.
    Other members are ignored.
    """
    if query.__class__ is not dict:
        raise RequestError(f"request must be a JSON object, not {type(query).__name__}")
    # Members read inline (this is the hot path); the checks, their order
    # and their errors are _required's and _optional's.
    get = query.get
    source_ip = get("source_ip")
    if source_ip.__class__ is not str:
        _required(query, "source_ip")
    from_uri = get("from_uri")
    if from_uri.__class__ is not str:
        _required(query, "from_uri")
    to_uri = get("to_uri")
    if to_uri.__class__ is not str:
        _required(query, "to_uri")
    to_text = to_uri
    from_uri, to_uri = parse_uri(from_uri), parse_uri(to_uri)
    try:
        sender = table.sources.lookup(source_ip)
    except ValueError as exc:
        raise RequestError(f"member 'source_ip': {exc}") from None
    call_id = get("call_id")
    if call_id.__class__ is not str:
        call_id = _optional(query, "call_id")
    ruri = get("ruri")
    if ruri.__class__ is not str:
        ruri = _optional(query, "ruri")
    from_name = get("from_name")
    if from_name.__class__ is not str:
        from_name = _optional(query, "from_name")
    to_name = get("to_name")
    if to_name.__class__ is not str:
        to_name = _optional(query, "to_name")
    # Optional, absent = the behaviour before they existed: the identity the
    # peer claims for the caller (its P-Asserted-Identity, else
    # P-Preferred-Identity) and its Privacy header.
    identity_uri = get("identity_uri")
    if identity_uri.__class__ is not str:
        identity_uri = _optional(query, "identity_uri")
    privacy = get("privacy")
    if privacy.__class__ is not str:
        privacy = _optional(query, "privacy")
    if sender is None:
        return refusal(*FORBIDDEN)

    # Rule 2: numbers to E.164 with the sender's profile. Over-long strings
    # never reach a regex: a called one is refused, a calling one kept as is.
    # The R-URI is most often the To URI, already parsed.
    called = strip_separators((to_uri if ruri == to_text else parse_uri(ruri)).number or to_uri.number)
    if len(called) > MAX_NUMBER_LENGTH:
        return refusal(*NO_ROUTE)
    calling_raw = from_uri.number
    calling = strip_separators(calling_raw)
    calling_fits = len(calling) <= MAX_NUMBER_LENGTH
    profile = sender.profile
    if profile is not None:
        called = profile.to_e164(called)
        if calling_fits:
            calling = profile.to_e164(calling)
    else:
        called, calling = called.removeprefix("+"), calling.removeprefix("+")
    if len(called) > MAX_NUMBER_LENGTH or not is_digits(called):
        if call is not None:
            _sender_facts(call, sender, sender.tenant, calling, called)
        return refusal(*NO_ROUTE)
    calling_is_number = calling_fits and len(calling) <= MAX_NUMBER_LENGTH and is_digits(calling)
    if not calling_is_number:
        calling = calling_raw  # 'anonymous' and the like pass untouched

    # Rules 3 and 4: a DID in the sender's scope (on-net for an IPBX), else
    # for an IPBX the tenant's route.
    did = table.find_did(called, sender.tenant, sender.kind == "ipbx")
    route = None
    if did is not None:
        destinations = [did.ipbx]
    elif sender.kind == "ipbx" and (route := table.find_route(sender.tenant, called)) is not None:
        destinations = trunk_order(route, call_id)
    else:
        if call is not None:
            _sender_facts(call, sender, sender.tenant, calling, called)
        return refusal(*NO_ROUTE)
    if call is not None:
        tenant = did.tenant if did is not None else sender.tenant
        trunk = sender.kind == "trunk"
        _sender_facts(call, sender, tenant, calling, called, on_net=did is not None)
        call.update({
            "tenant_max": _limit(table.tenant_channels.get(tenant)),
            "source_max": _limit(sender.max_channels) if trunk else -1,
            "source_cps": _limit(sender.max_cps) if trunk else -1,
            "routes": [
                {"trunk": e.name, "max": _limit(e.max_channels), "cps": _limit(e.max_cps), "name": e.name, "uri": t.uri}
                if e.kind == "trunk"
                else {"trunk": "", "max": -1, "cps": -1, "name": e.name, "uri": t.uri}
                for e in destinations for t in e.targets
            ],
        })
        if route is not None and route.when_all_down == "refuse":
            # Only when the route says so: without it the call is what it was. Kamailio reads it
            # when every target is down (docs/routing.md, "Trunk health"); the rtjson never carries it.
            call["when_all_down"] = "refuse"

    # Rule 5: one rtjson route per target.
    if calling_is_number:
        pai = _asserted_identity(calling, from_uri.host)
    elif identity_uri:
        pai = _anonymous_identity(identity_uri, privacy, profile)
    else:
        pai = ""
    routes = []
    headers_by_profile: dict = {}  # trunks of one route often share a profile
    for endpoint in destinations:
        profile = endpoint.profile
        headers = headers_by_profile.get(profile)
        if headers is None:
            if profile is None:
                out_called, out_calling = called, calling
            else:
                out_called = profile.from_e164(called)
                out_calling = profile.from_e164(calling) if calling_is_number else calling
            headers = headers_by_profile[profile] = (out_called, {
                "from": {"display": from_name, "uri": from_uri.with_user(out_calling)},
                "to": {"display": to_name, "uri": to_uri.with_user(out_called)},
                "extra": pai,
            })
        out_called, branch_headers = headers
        for target in endpoint.targets:
            branch: RtjsonRoute = {
                "uri": f"{target.scheme}{out_called}@{target.hostport}",  # target.request_uri, inline
                "dst_uri": target.uri,
                "path": "",
                "socket": "",
                "headers": branch_headers,
                "branch_flags": endpoint.branch_flags,
                "fr_timer": endpoint.fr_timer,
                "fr_inv_timer": endpoint.fr_inv_timer,
            }
            if endpoint.auth is not None:
                branch["auth"] = dict(endpoint.auth)
            routes.append(branch)
    return {"rtjson": {"version": RTJSON_VERSION, "routing": "serial", "success": True, "routes": routes}}


def _sender_facts(call: Call, sender: Endpoint, tenant: str | None, calling: str, called: str, on_net: bool = False) -> None:
    """What the call record keeps of who sent the call and the numbers (also for a 404)."""
    call["tenant"] = tenant
    call["direction"] = "inbound" if sender.kind == "trunk" else ("on-net" if on_net else "outbound")
    call["source"] = sender.name
    call["source_kind"] = sender.kind
    call["calling"] = calling
    call["called"] = called


def _asserted_identity(e164: str, host: str) -> str:
    return f"P-Asserted-Identity: <sip:+{e164}@{host}>\r\n" if host else f"P-Asserted-Identity: <tel:+{e164}>\r\n"


def _anonymous_identity(identity_uri: str, privacy: str, profile) -> str:
    """An anonymous caller's identity, still asserted to the next hop, marked private.

    The number of the identity the peer claims (normalized with the sender's
    profile, as a calling number) is asserted like any calling number, with
    ``Privacy: id`` unless the request has a Privacy header of its own (which
    the router passes on). Not a number, or not one clean URI: nothing.
    """
    if "\r" in identity_uri or "\n" in identity_uri:
        return ""
    uri = parse_uri(identity_uri)
    number = strip_separators(uri.number)
    if len(number) > MAX_NUMBER_LENGTH:  # as for any number: no regex sees an over-long one
        return ""
    number = profile.to_e164(number) if profile is not None else number.removeprefix("+")
    host = uri.host
    if not is_digits(number) or any(c in host for c in "<>\"\\ \t,"):
        return ""
    return _asserted_identity(number, host) + ("" if privacy else "Privacy: id\r\n")


def trunk_order(route: RouteChoice, call_id: str) -> list[Endpoint]:
    """The trunks of a route in the order to try them for this call.

    Priority groups in ascending order; within a group, a weighted random
    order (Efraimidis-Spirakis: sort by u ** (1 / weight)) where each trunk's
    u is a hash of (call_id, trunk name). The same call always gets the same
    order, whatever the order the trunks are listed in, and over many calls
    a trunk comes first with probability weight / total weight. Weight 0
    puts a trunk after the weighted ones of its group.
    """
    order: list[Endpoint] = []
    seed = call_id.encode() + b"\x00"
    for group in route.groups:
        if len(group) == 1:
            order.append(group[0][0])
            continue
        keyed = []
        for endpoint, weight in group:
            digest = hashlib.blake2b(seed + endpoint.hash_key, digest_size=8).digest()
            if weight > 0:
                u = (int.from_bytes(digest, "big") + 0.5) / 18446744073709551616.0  # (0, 1)
                key = math.log(u) / weight  # log of u ** (1 / weight): same order, no underflow
            else:
                key = -math.inf
            keyed.append((key, endpoint))
        keyed.sort(key=lambda item: item[0], reverse=True)
        order.extend(endpoint for _, endpoint in keyed)
    return order


def encode(reply: RoutingReply) -> bytes:
    """The reply as the bytes every mode serves."""
    return orjson.dumps(reply)


def call_json(call: Call) -> str:
    """The call as ASCII JSON: it travels in an HTTP header (C4-Call) in HTTP mode.

    The text of ``json.dumps(call, ensure_ascii=True, separators=(",", ":"))``
    for what a call holds (strings, integers, lists, dicts).
    orjson gives the same text when its output is ASCII without DEL (which
    json escapes and orjson does not) in 0.2 instead of 2.8 µs: this header
    was 4 % of c4 serve's CPU per routing request. Other names go through json.
    """
    try:
        data = orjson.dumps(call)
    except TypeError:  # an integer beyond 64 bits
        data = None
    if data is not None and data.isascii() and b"\x7f" not in data:
        return data.decode()
    return json.dumps(call, ensure_ascii=True, separators=(",", ":"))


def route_json(table: RoutingTable, query: RoutingQuery) -> bytes:
    """``decide`` and ``encode`` in one call."""
    return encode(decide(table, query))
