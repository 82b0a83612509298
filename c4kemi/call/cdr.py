"""Call records: what Kamailio reports about a finished call, made into one record.

Pure: no I/O. Both Kamailio configs report a finished call the same way, one
JSON *event* through ``evapi`` (docs/cdr.md); ``c4 cdr`` (c4kemi/call/cdr_collector.py)
turns each event into a record with ``make_record`` and writes it. The event
carries facts only, so the record's format lives in this one place::

    {"run": "5f0c3a9e1b2d4c6a",     # this Kamailio's run (16 hex digits), and the event's sequence
     "seq": 1234,                   # number in it: the record's id (``event_id``), so an event sent twice is one record
     "call_id": "...",
     "call": {...},                 # the decision's call (c4kemi.core.decision.decide_call), absent for a 403
     "invite": "1764178801.123456", # seconds since the epoch, as Kamailio's $TV(Sn)
     "answer": "...",               # absent: never answered
     "end": "...",
     "tries": "0:503,1:200",        # rtjson route index : SIP code ("down": skipped, its target down), in order
     "code": 200, "reason": "OK",   # the final answer to the caller (200 for an answered call)
     "by": "caller"}                # who ended it: caller, callee, timeout, router

Every member is checked: an event is untrusted data (the reason phrase and
the Call-ID come from SIP peers). A malformed one raises ``EventError``.
Every text of the record has a bounded length (``MAX_TEXT``, in
characters): longer ones are cut, so that no peer can make a record
bigger than a few kilobytes (Kamailio already cuts the Call-ID and reason
phrases where it makes the event).
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

__all__ = ["ENDED_BY", "MAX_TEXT", "EventError", "event_id", "event_seq", "id_seq", "make_record"]

ENDED_BY = ("caller", "callee", "timeout", "router")
MAX_TRIES = 64  # more than any routing document gives one call
# Characters kept of each text member of a record; the rest is cut.
MAX_TEXT = {
    "call_id": 256,
    "reason": 128,
    "name": 128,  # tenant, source, a destination
    "number": 64,  # calling, called (E.164 has 15 digits; an anonymous caller's user part as it came)
    "uri": 256,
    "kind": 16,  # direction, source_kind, a destination's kind
}


class EventError(ValueError):
    """A call event that cannot be made into a record; the message says why."""


def _time(event: dict, name: str, required: bool = True) -> int | None:
    """A time of the event in whole milliseconds (the record's precision)."""
    value = event.get(name)
    if value is None or value == "":
        if required:
            raise EventError(f"missing {name!r}")
        return None
    try:
        seconds = float(value)
    except (TypeError, ValueError):
        raise EventError(f"{name!r} is not a time: {value!r}") from None
    if not 0 < seconds < 1e11:
        raise EventError(f"{name!r} is out of range: {value!r}")
    return round(seconds * 1000)


def _iso(ms: int | None) -> str | None:
    if ms is None:
        return None
    moment = datetime.fromtimestamp(ms // 1000, UTC) + timedelta(milliseconds=ms % 1000)
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _text(value: Any, kind: str) -> str | None:
    """A text member, cut to MAX_TEXT[kind] characters; None if it is not a string."""
    return value[: MAX_TEXT[kind]] if isinstance(value, str) else None


def _attempts(tries: Any, routes: list) -> list[dict]:
    """'0:503,1:200' -> one entry per destination tried, named from the call's routes.

    A route skipped because its target was down ('0:down', kamailio-health.cfg)
    is an entry too, with no code and ``"skipped": "down"``.
    """
    if not isinstance(tries, str) or not tries:
        return []
    attempts = []
    for item in tries.split(",")[:MAX_TRIES]:
        index, _, code = item.partition(":")
        if not (index.isdigit() and (code.isdigit() or code == "down")) or len(index) > 4 or len(code) > 4:
            raise EventError(f"bad 'tries' entry {item!r}")
        route = routes[int(index)] if int(index) < len(routes) and isinstance(routes[int(index)], dict) else {}
        attempt = {
            "destination": _text(route.get("name"), "name"),
            "kind": ("trunk" if route.get("trunk") else "ipbx") if route else None,
            "uri": _text(route.get("uri"), "uri"),
            "code": int(code) if code != "down" else None,
        }
        if code == "down":
            attempt["skipped"] = "down"
        attempts.append(attempt)
    return attempts


def event_seq(event: Any) -> tuple[str, int] | None:
    """The event's (run, seq) as Kamailio numbers what it hands to c4 cdr, or None (an event without them)."""
    if not isinstance(event, dict):
        return None
    run, seq = event.get("run"), event.get("seq")
    if not isinstance(run, str) or len(run) != 16 or any(c not in "0123456789abcdef" for c in run):
        return None
    if not isinstance(seq, int) or isinstance(seq, bool) or not 0 < seq < 1 << 64:
        return None
    return run, seq


def event_id(run: str, seq: int) -> str:
    """The record id of event SEQ of Kamailio's RUN: 32 hex digits, the same each time that event comes."""
    return f"{run}{seq:016x}"


def id_seq(record_id: Any) -> tuple[str, int] | None:
    """``event_id`` backwards: (run, seq) of a record id made by it, else None (a random id)."""
    if not isinstance(record_id, str) or len(record_id) != 32:
        return None
    try:
        seq = int(record_id[16:], 16)
    except ValueError:
        return None
    return event_seq({"run": record_id[:16], "seq": seq})


def make_record(event: Any, record_id: str) -> dict:
    """The call record (docs/cdr.md, "The record") for one event from Kamailio."""
    if not isinstance(event, dict):
        raise EventError("an event must be a JSON object")
    call = event.get("call")
    if not isinstance(call, dict):
        call = {}
    code = event.get("code")
    if not isinstance(code, int) or isinstance(code, bool) or not 100 <= code <= 699:
        raise EventError(f"bad 'code': {code!r}")
    invite = _time(event, "invite")
    answer = _time(event, "answer", required=False)
    end = _time(event, "end")
    routes = call.get("routes") if isinstance(call.get("routes"), list) else []
    attempts = _attempts(event.get("tries"), routes)
    by = event.get("by")
    return {
        "id": record_id,
        "call_id": _text(event.get("call_id"), "call_id") or "",
        "tenant": _text(call.get("tenant"), "name"),
        "direction": _text(call.get("direction"), "kind"),
        "source": _text(call.get("source"), "name"),
        "source_kind": _text(call.get("source_kind"), "kind"),
        "calling": _text(call.get("calling"), "number"),
        "called": _text(call.get("called"), "number"),
        "attempts": attempts,
        "answered_by": attempts[-1]["destination"] if answer is not None and attempts else None,
        "invite_at": _iso(invite),
        "answer_at": _iso(answer),
        "end_at": _iso(end),
        "duration_ms": max(0, end - answer) if answer is not None else 0,
        "code": code,
        "reason": _text(event.get("reason"), "reason") or "",
        "ended_by": by if by in ENDED_BY else None,
        "node": _text(event.get("node"), "name"),
    }
