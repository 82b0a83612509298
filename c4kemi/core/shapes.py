"""The shapes the decision takes and gives: the routing query, the rtjson reply, the call; and a health object.

docs/routing.md describes each member ("The routing request", "The reply",
"Channel limits"); these ``TypedDict`` s name them for the code. At run
time they are plain dicts: nothing here checks anything. A query comes
from outside (Kamailio, an HTTP body, a command line) and ``decide``
checks it itself, raising ``RequestError`` for a malformed one; the type
says what a well-formed query holds.
"""

# No ``from __future__ import annotations`` here: TypedDict reads Required and
# NotRequired from evaluated annotations, so that __required_keys__ is right.
from typing import Literal, NotRequired, Required, TypedDict

__all__ = [
    "Call", "CallRoute", "Health", "RoutingQuery", "RoutingReply", "Rtjson", "RtjsonAuth", "RtjsonHeaders", "RtjsonNameAddr",
    "RtjsonRefusal", "RtjsonRoute", "RtjsonRoutes",
]


class RoutingQuery(TypedDict):
    """One routing request: what Kamailio tells about a new INVITE (docs/routing.md, "The routing request").

    Optional members that are absent or None count as empty strings; any
    other member (``event``, ``source_port``, ``from_tag``, ...) is ignored.
    """

    source_ip: str  # who sent the call: IPv4, IPv6, [IPv6], IPv4-mapped IPv6
    from_uri: str  # the calling number (its user part), the From of every route
    to_uri: str  # the called number when ruri has none, the To of every route
    ruri: NotRequired[str | None]  # the called number (its user part)
    call_id: NotRequired[str | None]  # the seed of the weighted trunk order
    from_name: NotRequired[str | None]  # the From display name of every route
    to_name: NotRequired[str | None]  # the To display name of every route
    identity_uri: NotRequired[str | None]  # an anonymous caller's claimed identity (P-Asserted- or P-Preferred-Identity)
    privacy: NotRequired[str | None]  # the request's Privacy header, for an anonymous caller


class RtjsonNameAddr(TypedDict):
    """A From or To header of a route."""

    display: str
    uri: str


# "from" is a keyword: this one is written the functional way.
RtjsonHeaders = TypedDict("RtjsonHeaders", {
    "from": RtjsonNameAddr,
    "to": RtjsonNameAddr,
    "extra": str,  # "P-Asserted-Identity: <...>\r\n" (and "Privacy: id\r\n"), or ""
})


class RtjsonAuth(TypedDict):
    """A trunk's credentials, for a 401/407 from it."""

    username: str
    password: str
    realm: str


class RtjsonRoute(TypedDict):
    """One destination of a reply, as Kamailio's rtjson module reads it; members in this order."""

    uri: str  # the branch's request URI: the target with the called number as the destination wants it
    dst_uri: str  # the target, as written in the table
    path: str  # ""
    socket: str  # ""
    headers: RtjsonHeaders
    branch_flags: int
    fr_timer: int  # ms
    fr_inv_timer: int  # ms
    auth: NotRequired[RtjsonAuth]  # a trunk with auth only


class RtjsonRoutes(TypedDict):
    """A routed call: the destinations, tried one after the other."""

    version: str  # "1.0"
    routing: Literal["serial"]
    success: Literal[True]
    routes: list[RtjsonRoute]  # never empty


class RtjsonRefusal(TypedDict):
    """A refused call: Kamailio answers it with this code and reason (403 Forbidden, 404 No Route)."""

    success: Literal[False]
    code: int
    reason: str


Rtjson = RtjsonRoutes | RtjsonRefusal


class RoutingReply(TypedDict):
    """The reply to a routing query, the same bytes in every mode (``c4kemi.core.decision.encode``)."""

    rtjson: Rtjson


class CallRoute(TypedDict):
    """What one rtjson route counts against, in the same order as the routes."""

    trunk: str  # the trunk whose channels it takes; "" for an IPBX
    max: int  # the trunk's max_channels, -1: none
    cps: int  # the trunk's max_cps, -1: none
    name: str  # the destination, trunk or IPBX (for the call record)
    uri: str  # the route's dst_uri (for the call record)


class Health(TypedDict, total=False):
    """A trunk's or an IPBX's optional ``health`` object in the routing document (c4kemi/core/health.py).

    Every member is optional; absent ones take health.DEFAULTS. Kamailio
    applies them at relay time; the decision never reads them.
    """

    probe_interval: int  # 0..3600 s between OPTIONS while up (0: none while up); default 10
    alive_codes: list[str]  # 1..20 codes "NNN" or classes "Nxx" that count as alive; default: any reply
    down_after: int  # 0..100 failures in a row that mark the target down (0: never); default 3
    up_after: int  # 1..100 answered probes in a row that bring it back; default 2
    failure_percent: int  # 0..100 % of INVITEs failing in the window that marks it down (0: off); default 0
    failure_window: int  # 10..3600 s; default 60
    failure_min_calls: int  # 1..100000 INVITEs in the window before the share counts; default 10


class Call(TypedDict, total=False):
    """What Kamailio counts and limits a call against, and what its record keeps (``decide_call``).

    Carried beside the rtjson, never in it (docs/routing.md, "Channel
    limits"). A routed call has every member but ``when_all_down``, which
    only a call on a route that says "refuse" has; a 404 only the sender and
    the numbers (the required ones), as far as the decision got with them
    (refused for a called number that is none: what normalizing made of
    it); a 403 has no call at all.
    """

    tenant: Required[str | None]  # the call's tenant; None: a 404 from a shared carrier's trunk
    direction: Required[Literal["inbound", "outbound", "on-net"]]
    source: Required[str]  # the trunk or IPBX the call comes from
    source_kind: Required[Literal["trunk", "ipbx"]]
    calling: Required[str]  # E.164, or the caller's user part as it came when it is no number ('anonymous')
    called: Required[str]  # E.164
    tenant_max: int  # the tenant's max_channels, -1: none
    source_max: int  # a sending trunk's max_channels, -1: none (always for an IPBX)
    source_cps: int  # a sending trunk's max_cps, -1: none (always for an IPBX)
    routes: list[CallRoute]
    when_all_down: Literal["refuse"]  # only when the chosen route says so: every target down, answer 503 at once
