"""Why did this call go there? The routing decision, step by step, for support.

``explain(table, query)`` walks one request through the rules of the
decision (docs/routing.md, rules 1-5) with the table's own lookup structures: the
source CIDR and its entity (``SourceIndex.match``), each number before and
after normalization with the step that applied, the DIDs whose prefix starts
the called number (``PrefixIndex.candidates``) and why the longer ones did
not apply, the outbound route and the trunk order (``trunk_order``), and per
destination the numbers as they leave (``from_e164``). Its ``reply`` is
``decide(table, query)`` itself, called here: the explanation never stands in
for the decision.

This is a support tool, never on the hot path: ``decide`` and ``route_json``
do not know it exists. The explanation re-derives each step with the same
primitives the decision uses and then checks its own conclusion against the
decision's reply (``consistent``); if they ever disagree, the reply is what
Kamailio got, and the explanation says it cannot be trusted.

Trunk health is not the decision's: Kamailio skips a target marked down
at relay time. The explanation says so (and what the route's
``when_all_down`` makes of a call whose targets are all down); it cannot
tell which targets are down now.

``render_text`` writes the explanation for a person. Trunk ``auth``
passwords never appear there (nor in ``destinations``); ``masked`` gives an
explanation whose ``reply`` has them masked too, for the HTTP endpoint.
"""

from __future__ import annotations

import copy
from typing import Any

import orjson

from .compiled import Endpoint, RoutingTable
from .decision import FORBIDDEN, NO_ROUTE, decide, trunk_order
from .numbers import MAX_NUMBER_LENGTH, Profile, is_digits, parse_uri, strip_separators
from .shapes import RoutingQuery, RoutingReply

__all__ = ["explain", "masked", "render_text", "to_e164_step", "from_e164_step", "MASK"]

MASK = "***"


# -- which normalization step applies ------------------------------------------
#
# The value always comes from Profile.to_e164 / from_e164 themselves; these
# only name the step that produced it, in the order those methods try them.


def _rule(kind: str, index: int, rule: Any) -> dict:
    return {"step": kind, "index": index, "match": rule.pattern.pattern, "replace": rule.replace}


def to_e164_step(profile: Profile | None, number: str) -> dict:
    """The step of rule 2 that takes ``number`` (separators removed) to E.164."""
    if profile is None:
        return {"step": "no_profile_plus_dropped" if number.startswith("+") else "no_profile"}
    for index, rule in enumerate(profile.to_rules):
        if rule.pattern.match(number) is not None:
            return _rule("to_e164_rule", index, rule)
    if number.startswith("+"):
        return {"step": "plus_dropped"}
    if profile.intl_prefix and number.startswith(profile.intl_prefix):
        return {"step": "intl_prefix_stripped", "intl_prefix": profile.intl_prefix}
    if profile.ld_prefix and number.startswith(profile.ld_prefix):
        return {"step": "ld_prefix_to_country_code", "ld_prefix": profile.ld_prefix, "country_code": profile.country_code}
    return {"step": "none"}


def from_e164_step(profile: Profile | None, number: str) -> dict:
    """The step of rule 5 that takes an E.164 ``number`` out with ``profile``."""
    if profile is None:
        return {"step": "no_profile"}
    for index, rule in enumerate(profile.from_rules):
        if rule.pattern.match(number) is not None:
            return dict(_rule("from_e164_rule", index, rule), plus_added=profile.always_plus)
    return {"step": "none", "plus_added": profile.always_plus}


# -- the explanation ------------------------------------------------------------------


def _auth(endpoint: Endpoint) -> dict | None:
    if endpoint.auth is None:
        return None
    return {"username": endpoint.auth["username"], "realm": endpoint.auth["realm"], "password": MASK}


def _entity(endpoint: Endpoint) -> dict:
    entity = {"kind": endpoint.kind, "name": endpoint.name, "tenant": endpoint.tenant}
    if endpoint.kind == "trunk":
        entity["carrier"] = endpoint.carrier
    entity["profile"] = endpoint.profile.name if endpoint.profile is not None else None
    return entity


def explain(table: RoutingTable, query: RoutingQuery) -> dict:
    """The explanation of ``decide(table, query)``; see the module docstring.

    Raises RequestError for a malformed query, exactly as ``decide`` does
    (it is ``decide`` that raises it).
    """
    reply = decide(table, query)
    source_ip = query["source_ip"]
    ruri, call_id = query.get("ruri") or "", query.get("call_id") or ""
    from_uri, to_uri = parse_uri(query["from_uri"]), parse_uri(query["to_uri"])
    out: dict[str, Any] = {
        "table_version": table.version,
        "request": {"source_ip": source_ip, "call_id": call_id, "ruri": ruri, "from_uri": from_uri.text, "to_uri": to_uri.text},
    }

    # Rule 1: the source.
    found = table.sources.match(source_ip)
    if found is None:
        out["source"] = {"ip": source_ip, "cidr": None}
        return _finish(out, reply, FORBIDDEN, f"no trunk or IPBX source CIDR holds {source_ip}")
    network, sender = found
    out["source"] = {"ip": source_ip, "cidr": str(network), **_entity(sender)}

    # Rule 2: the numbers, with the sender's profile.
    profile = sender.profile
    ruri_number = parse_uri(ruri).number
    called_user, called_from = (ruri_number, "ruri") if ruri_number else (to_uri.number, "to_uri")
    # Over-long strings never reach a regex: a called one is refused, a
    # calling one kept as it is.
    numbers = {}
    for name, user, where in (("called", called_user, called_from), ("calling", from_uri.number, "from_uri")):
        stripped = strip_separators(user)
        if len(stripped) > MAX_NUMBER_LENGTH:
            e164, step = stripped, {"step": "too_long", "max_length": MAX_NUMBER_LENGTH}
        else:
            e164 = profile.to_e164(stripped) if profile is not None else stripped.removeprefix("+")
            step = to_e164_step(profile, stripped)
        numbers[name] = {
            "uri": where,
            "user": user,
            "without_separators": stripped,
            "e164": e164,
            **step,
            "is_number": len(e164) <= MAX_NUMBER_LENGTH and is_digits(e164),
        }
    out["numbers"] = numbers
    called = numbers["called"]["e164"]
    calling_is_number = numbers["calling"]["is_number"]
    calling = numbers["calling"]["e164"] if calling_is_number else from_uri.number
    if not numbers["called"]["is_number"]:
        if len(called) > MAX_NUMBER_LENGTH:
            why = f"the called number is longer than {MAX_NUMBER_LENGTH} characters"
            why += " after normalization" if numbers["called"]["step"] != "too_long" else ""
        else:
            why = f"the called number {called!r} is not digits after normalization"
        return _finish(out, reply, NO_ROUTE, why)

    # Rules 3 and 4: DIDs in the sender's scope (on-net for an IPBX), then routes.
    scope = sender.tenant
    chosen = table.find_did(called, scope)
    considered = []
    chosen_prefix = None
    for prefix, did in table.dids.candidates(called):
        entry = {"prefix": prefix, "tenant": did.tenant, "ipbx": did.ipbx.name, "match": did.match.pattern if did.match is not None else None}
        if did is chosen:  # a longer one with this same Did would have been taken: same tenant, same match
            considered.append(dict(entry, verdict="chosen"))
            chosen_prefix = prefix
            break
        if scope is not None and did.tenant != scope:
            entry.update(verdict="other_tenant", why=f"DID of tenant {did.tenant}, not {scope}")
        elif did.match is not None and did.match.fullmatch(called) is None:
            entry.update(verdict="match_failed", why=f"{called} does not fully match {did.match.pattern!r}")
        else:
            entry.update(verdict="unexplained", why="skipped by the decision for a reason this explanation does not know")
        considered.append(entry)
    out["dids"] = {"scope": scope, "considered": considered, "chosen": chosen_prefix}

    if chosen is not None:
        out["kind"] = "inbound" if sender.kind == "trunk" else "on-net"
        destinations = [chosen.ipbx]
    elif sender.kind != "ipbx":
        out["kind"] = "inbound"
        why = f"no DID in scope applies to {called}" if considered else f"no DID prefix starts {called}"
        return _finish(out, reply, NO_ROUTE, f"{why} (calls from a trunk only go to DIDs)")
    else:
        out["kind"] = "outbound"
        index = table.routes.get(scope)
        routes = list(index.candidates(called)) if index is not None else []
        route = table.find_route(scope, called)
        out["route"] = {
            "tenant": scope,
            "prefix": route.prefix if route is not None else None,
            "matching_prefixes": [prefix for prefix, _ in routes],
        }
        if route is None:
            what = f"no route prefix of tenant {scope} starts {called}" if index is not None else f"tenant {scope} has no routes"
            return _finish(out, reply, NO_ROUTE, f"no DID of tenant {scope} applies and {what}")
        out["route"]["when_all_down"] = route.when_all_down
        settings = {
            endpoint.name: (priority, weight)
            for priority, group in zip(route.priorities, route.groups)
            for endpoint, weight in group
        }
        destinations = trunk_order(route, call_id)
        out["trunk_order"] = [
            {"trunk": endpoint.name, "priority": settings[endpoint.name][0], "weight": settings[endpoint.name][1]}
            for endpoint in destinations
        ]

    # Rule 5: each destination, with its own profile.
    explained = []
    for endpoint in destinations:
        profile = endpoint.profile
        out_called = profile.from_e164(called) if profile is not None else called
        called_step = from_e164_step(profile, called)
        if not calling_is_number:
            out_calling, calling_step = calling, {"step": "kept_not_a_number"}
        else:
            out_calling = profile.from_e164(calling) if profile is not None else calling
            calling_step = from_e164_step(profile, calling)
        explained.append({
            **_entity(endpoint),
            "called": {"e164": called, "out": out_called, **called_step},
            "calling": {"e164": calling, "out": out_calling, **calling_step},
            "from_uri": from_uri.with_user(out_calling),
            "to_uri": to_uri.with_user(out_called),
            "branches": [{"uri": target.request_uri(out_called), "dst_uri": target.uri} for target in endpoint.targets],
            "fr_timer": endpoint.fr_timer,
            "fr_inv_timer": endpoint.fr_inv_timer,
            "branch_flags": endpoint.branch_flags,
            "auth": _auth(endpoint),
        })
    out["destinations"] = explained
    return _finish(out, reply, None, None)


def _finish(out: dict, reply: RoutingReply, refusal: tuple[int, str] | None, why: str | None) -> dict:
    """Add the outcome and the decision's own reply, and check they agree."""
    rt = reply["rtjson"]
    if refusal is None:
        out["outcome"] = {"success": True, "code": None, "reason": None, "why": None}
        expected = [
            (b["uri"], b["dst_uri"], d["from_uri"], d["to_uri"]) for d in out["destinations"] for b in d["branches"]
        ]
        actual = [(r["uri"], r["dst_uri"], r["headers"]["from"]["uri"], r["headers"]["to"]["uri"]) for r in rt.get("routes", ())]
        consistent = rt["success"] is True and expected == actual
    else:
        code, reason = refusal
        out["outcome"] = {"success": False, "code": code, "reason": reason, "why": why}
        consistent = rt["success"] is False and (rt["code"], rt["reason"]) == refusal
    out["consistent"] = consistent
    out["reply"] = reply
    return out


def masked(explanation: dict) -> dict:
    """A copy whose ``reply`` carries no trunk auth password."""
    routes = explanation["reply"]["rtjson"].get("routes")
    if not routes or not any("auth" in route for route in routes):
        return explanation
    out = dict(explanation)
    out["reply"] = reply = copy.deepcopy(explanation["reply"])
    for route in reply["rtjson"]["routes"]:
        if "auth" in route:
            route["auth"]["password"] = MASK
    return out


# -- for a person -----------------------------------------------------------------------


def _step_text(step: dict) -> str:
    kind = step["step"]
    if kind in ("to_e164_rule", "from_e164_rule"):
        text = f"{kind[:-5]}[{step['index']}] '{step['match']}' -> '{step['replace']}'"
    else:
        text = {
            "no_profile": "no profile: unchanged",
            "no_profile_plus_dropped": "no profile: '+' dropped",
            "plus_dropped": "no to_e164 rule matches: '+' dropped",
            "intl_prefix_stripped": f"no to_e164 rule matches: intl prefix {step.get('intl_prefix')!r} stripped",
            "ld_prefix_to_country_code": f"no to_e164 rule matches: ld prefix {step.get('ld_prefix')!r} -> country code {step.get('country_code')!r}",
            "none": "no rule matches: unchanged",
            "kept_not_a_number": "not a number: kept as is",
            "too_long": f"longer than {step.get('max_length')} characters: no rule tried",
        }.get(kind, kind)
    if step.get("plus_added"):
        text += ", then '+' (always_plus)"
    return text


def _show(text: str) -> str:
    """Request text as is, or quoted when it holds control characters (no fake lines)."""
    return text if text.isprintable() else repr(text)


def _entity_text(entity: dict) -> str:
    if entity["kind"] == "trunk":
        owner = f"carrier {entity['carrier']}, " + (f"tenant {entity['tenant']}" if entity["tenant"] else "shared")
    else:
        owner = f"tenant {entity['tenant']}"
    profile = f"profile {entity['profile']}" if entity["profile"] else "no profile"
    return f"{'IPBX' if entity['kind'] == 'ipbx' else 'trunk'} {entity['name']} ({owner}; {profile})"


def render_text(explanation: dict) -> str:
    """The explanation for a person: short labelled lines, passwords masked."""
    ex = explanation
    lines = []
    add = lines.append
    req = ex["request"]
    add(f"table     version {ex['table_version']}")
    add(f"request   from {req['source_ip']}, call-id {req['call_id']!r}")
    add(f"          R-URI {req['ruri']!r}, From {req['from_uri']!r}, To {req['to_uri']!r}")
    source = ex["source"]
    if source["cidr"] is None:
        add(f"source    {source['ip']}: no source CIDR holds it")
    else:
        add(f"source    {source['ip']} is in {source['cidr']}: {_entity_text(source)}")
    for name in ("called", "calling"):
        number = ex.get("numbers", {}).get(name)
        if number is None:
            continue
        text = f"{number['user']!r} (user part of {number['uri']})"
        if number["without_separators"] != number["user"]:
            text += f" -> {number['without_separators']!r} (separators removed)"
        text += f" -> {number['e164']!r} ({_step_text(number)})"
        if not number["is_number"]:
            text += "; not digits" if name == "called" else "; not a number: kept as is, no P-Asserted-Identity"
        add(f"{name:<9} {text}")
    dids = ex.get("dids")
    if dids is not None:
        scope = f"tenant {dids['scope']}" if dids["scope"] else "every tenant (shared carrier)"
        if ex["source"]["kind"] == "ipbx":
            scope += " (on-net)"
        if not dids["considered"]:
            add(f"DIDs      of {scope}: no DID prefix starts {ex['numbers']['called']['e164']}")
        else:
            add(f"DIDs      of {scope}, whose prefix starts the number, longest first:")
            for did in dids["considered"]:
                match = f" match {did['match']!r}" if did["match"] else ""
                verdict = "chosen" if did["verdict"] == "chosen" else f"not used: {did['why']}"
                add(f"            {did['prefix']} (tenant {did['tenant']}, IPBX {did['ipbx']}{match}): {verdict}")
    route = ex.get("route")
    if route is not None:
        if route["prefix"] is None:
            add(f"route     tenant {route['tenant']}: no route prefix starts the number")
        else:
            def prefix(p: str) -> str:
                return repr(p) if p else "'' (catch-all)"

            others = [p for p in route["matching_prefixes"] if p != route["prefix"]]
            also = f" (also matching, shorter: {', '.join(prefix(p) for p in others)})" if others else ""
            add(f"route     tenant {route['tenant']}, prefix {prefix(route['prefix'])}, the longest that starts the number{also}")
    order = ex.get("trunk_order")
    if order is not None:
        add("trunks    lower priority first; within a priority, drawn by weight, seeded by the call-id:")
        for position, trunk in enumerate(order, 1):
            add(f"            {position}. {trunk['trunk']}  priority {trunk['priority']}  weight {trunk['weight']}")
    for position, dest in enumerate(ex.get("destinations", ()), 1):
        add(f"destination {position}: {_entity_text(dest)}")
        for name in ("called", "calling"):
            number = dest[name]
            add(f"            {name:<8}{_show(number['e164'])} -> {_show(number['out'])} ({_step_text(number)})")
        for branch in dest["branches"]:
            add(f"            branch {branch['uri']} via {branch['dst_uri']}")
        add(f"            From {_show(dest['from_uri'])}, To {_show(dest['to_uri'])}")
        timers = f"fr_timer {dest['fr_timer']} ms, fr_inv_timer {dest['fr_inv_timer']} ms, branch_flags {dest['branch_flags']}"
        if dest["auth"] is not None:
            timers += f"; auth: user {dest['auth']['username']}, realm {dest['auth']['realm']}, password {MASK}"
        add(f"            {timers}")
    outcome = ex["outcome"]
    if outcome["success"]:
        add("health    applied by Kamailio at relay time: a target marked down is skipped like a trunk at its channel limit;"
            " this decision does not depend on health")
        if (route or {}).get("when_all_down") == "refuse":
            add("          when_all_down refuse: a call whose targets are all down gets 503 at once")
        count = len(ex["reply"]["rtjson"]["routes"])
        add(f"result    {ex['kind']}: {count} branch(es), tried in this order")
    else:
        add(f"result    refused {outcome['code']} {outcome['reason']}: {outcome['why']}")
    if not ex["consistent"]:
        add("WARNING   this explanation disagrees with the decision: the rtjson below is what was decided")
    add("rtjson    (auth passwords masked)")
    body = orjson.dumps(masked(ex)["reply"], option=orjson.OPT_INDENT_2).decode()
    lines.extend("  " + line for line in body.splitlines())
    return "\n".join(lines) + "\n"
