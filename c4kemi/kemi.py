"""KEMI entry point: the object Kamailio's ``app_python3`` loads.

``kamailio/kamailio-kemi.cfg`` is a native config: its request_route runs
the routing blocks both modes share (``kamailio/kamailio-base.cfg``:
sanity, CANCEL, in-dialog requests with the c4d signature check, OPTIONS,
retransmissions), then calls this handler with ``python_exec`` only where
the decision is. ``app_python3``'s ``load`` parameter points at
``kamailio/c4_kemi.py``, a shim that imports this module as part of the
package (loading this file directly would put ``c4kemi/`` first on
``sys.path`` and shadow the standard library's ``numbers``).
``mod_init()`` returns the handler. The methods the config calls are named
after the blocks that call them:

- ``request_route`` (a new initial INVITE): ``ksr_request_route``
- ``branch_route[MANAGE_BRANCH]``: ``ksr_branch_manage`` (-1 drops the branch)
- ``failure_route[MANAGE_FAILURE]``: ``ksr_failure_manage``
- ``event_route[dialog:start|end|failed]`` (call records, docs/cdr.md):
  ``ksr_dialog_event``

``python_exec`` returns the method's integer, and 0 would end the script:
the methods return 1 (or -1). The routes they run are named after the
blocks of ``kamailio/kamailio-http.cfg`` they mirror, so the two read side
by side:

- ``route[ADMIT]`` (overload protection): ``ksr_route_admit``
- ``route[RELAY_API]`` and ``route[RELAY_API_RESPONSE]`` (ask c4http):
  ``ksr_route_decide`` (decide in process)
- ``route[RELAY_ROUTES]``: ``ksr_route_relay_routes``
- ``route[CHANNELS]``, ``route[TRUNK_CHANNEL]``, ``route[RELEASE_TRUNK_CHANNEL]``
  (channel limits): ``ksr_route_channels``, ``ksr_route_trunk_channel``,
  ``ksr_route_release_trunk_channel``
- ``route[CDR_REFUSED]``, ``route[CDR_START]``, ``route[CDR_TRY]``,
  ``route[CDR_RESULT]``, ``route[CDR_LOCAL]``: ``ksr_route_cdr_*``

Every Kamailio worker is a forked process with its own interpreter state
and no running threads (``threads_mode=0``), so each worker keeps its own
table source, inherited from ``mod_init``, which loads the table once
before Kamailio forks (else loaded in ``child_init`` or on first use):
``FeedTableSource`` on the node's table feed (``C4_FEED``, set by
``c4 kamailio``, which runs ``c4 feed``: see c4kemi/feed.py), else
``FileTableSource`` on the document itself (``C4_TABLE``). A call looks at
it at most twice a second (the file: once) and swaps in a changed table; a broken document
is logged and the last good table keeps serving.

Imports stay lean (no aiohttp): this runs inside every SIP worker.

Debugging and parity checks: with ``C4_RTJSON_DUMP=DIR`` in Kamailio's
environment, each worker appends one line per decision to
``DIR/rtjson-PID.tsv``: the query as JSON, a tab, and the exact rtjson bytes
the handler hands to ``rtjson`` (or answers a refusal from). Off (the
default), it costs one attribute test per call.
"""

from __future__ import annotations

import gc
import logging
import os
import sys
import time
import traceback
from time import monotonic

import KSR  # provided by app_python3
import orjson

from c4kemi.decision import RequestError, call_json, decide_call
from c4kemi.document import DocumentError
from c4kemi.feed import FeedError, FeedTableSource
from c4kemi.memory import trim_heap
from c4kemi.secret import DIALOG_ENV, dialog_mac
from c4kemi.store import FileTableSource

__all__ = ["mod_init", "Router"]

TABLE_ENV = "C4_TABLE"
FEED_ENV = "C4_FEED"
# Seconds of a large table change (a bulk import, a new snapshot) a worker
# takes on per call; it routes with the previous table until it is done.
# All workers take a change in at about the same time: 8 workers at 60
# calls/s each, 2 ms a call, would be a whole core (docs/scale.md, section 4).
STEP_BUDGET = 0.0005
DUMP_ENV = "C4_RTJSON_DUMP"
# Set by `c4 kamailio` when call records are on (the config then loads evapi
# and its dialog event routes call ksr_dialog_event).
CDR_ENV = "C4_CDR"
# Records of the calls refused for an unknown source: off unless
# `c4 kamailio --cdr-unknown-sources` (read in child_init).
CDR_UNKNOWN_SOURCES_DEFINE = "$defn(C4_CDR_UNKNOWN_SOURCES)"
# A call's event goes to the native route that queues it for c4 cdr
# (kamailio-base.cfg: the bound and the count of what is dropped live there).
CDR_EVENT_VAR = "$var(cdr)"
CDR_QUEUE_ROUTE = "CDR_QUEUE"
# What a peer sends is cut where the event is made, as kamailio-http.cfg
# cuts it: bytes of a Call-ID, of a reason phrase.
CDR_MAX_CALL_ID = 256
CDR_MAX_REASON = 128
# Kamailio statistic (kamailio-base.cfg): new INVITEs refused 403 for a
# source in no trunk or IPBX.
UNKNOWN_SOURCE_STAT = "c4_refused_unknown_source"
FORBIDDEN = 403
# Transaction flag: the 401/407 of the current rtjson route was answered.
FLT_AUTH = 1
# AVPs named in kamailio-kemi.cfg for uac_auth().
AUTH_USERNAME_AVP = "$avp(c4_auth_username)"
AUTH_PASSWORD_AVP = "$avp(c4_auth_password)"
AUTH_REALM_AVP = "$avp(c4_auth_realm)"

# What the call counts against (c4kemi.decision.decide_call), as JSON in an
# AVP: it travels with the transaction to the branch and failure routes,
# which may run in another worker. kamailio-http.cfg sets it from C4-Call.
CALL_AVP = "$avp(c4_call)"
SIZE_VAR = "$var(c4_size)"

# What a call record needs, kept with the dialog (shared memory, every
# process): the call from the decision, when the INVITE came, the rtjson
# route being tried, "index:code" of every route tried, the answer time,
# the final code and reason, and who ended the call (docs/cdr.md).
CDR_CALL = "$dlg_var(c4_call)"
CDR_INVITE = "$dlg_var(c4_invite)"
CDR_TRY = "$dlg_var(c4_try)"
CDR_TRIES = "$dlg_var(c4_tries)"
CDR_ANSWER = "$dlg_var(c4_answer)"
CDR_CODE = "$dlg_var(c4_code)"
CDR_REASON = "$dlg_var(c4_reason)"
CDR_BY = "$dlg_var(c4_by)"
CDR_CALL_ID = "$dlg_var(c4_callid)"  # only for a Call-ID longer than CDR_MAX_CALL_ID: cut
# Admission control (kamailio-base.cfg): the bound and the Retry-After of
# the 503, read from the cfg's defines (set by `c4 kamailio`).
MAX_TRANSACTIONS_DEFINE = "$defn(C4_MAX_TRANSACTIONS)"
SHM_RESERVE_DEFINE = "$defn(C4_SHM_RESERVE)"
RETRY_AFTER_DEFINE = "$defn(C4_RETRY_AFTER)"
ADMIT_INTERVAL_DEFINE = "$defn(C4_ADMIT_INTERVAL)"
# What the admission control reads, live (JSON-RPC
# through jsonrpcs, no socket involved): tm's transaction counts, summed
# over every process ("current", of which "waiting" have their final reply
# and only linger to absorb retransmissions), and shared memory in MiB.
# (The $stat() copies of tmx and kex are refreshed only once a second or
# two per process: too late for a burst.)
TM_STATS_RPC = '{"jsonrpc": "2.0", "method": "tm.stats", "id": 1}'
SHMMEM_RPC = '{"jsonrpc": "2.0", "method": "core.shmmem", "params": ["m"], "id": 1}'
# Each worker reads those numbers at most once per C4_ADMIT_INTERVAL ms
# and judges the INVITEs of that window on its last reading: two RPCs and
# their JSON per INVITE were about a tenth of the handler's CPU at 1000
# calls/s. The price: the bound can be passed by what the workers admit
# within one window (at most the call rate times the interval: 40 calls at
# 4000 calls/s and 10 ms), and a node at its bound refuses for one window more.
# Calls that ring (early dialogs: a 1xx with a To-tag came back) are waiting
# for a person, not for the node: they are taken out of the count. A live
# counter of the dialog module, answered as ["dialog:early_dialogs = N"].
EARLY_DIALOGS_RPC = '{"jsonrpc": "2.0", "method": "stats.get_statistics", "params": ["early_dialogs"], "id": 1}'

# The native blocks of kamailio-kemi.cfg that call ksr_branch_manage and
# ksr_failure_manage (with the native engine, t_on_branch names a block).
BRANCH_ROUTE = "MANAGE_BRANCH"
FAILURE_ROUTE = "MANAGE_FAILURE"


class KamailioLogHandler(logging.Handler):
    """Python logging (the store's reload messages) into Kamailio's log."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            text = self.format(record).replace("\n", " | ") + "\n"
            if record.levelno >= logging.ERROR:
                KSR.err(text)
            elif record.levelno >= logging.WARNING:
                KSR.warn(text)
            elif record.levelno >= logging.INFO:
                KSR.info(text)
            else:
                KSR.dbg(text)
        except Exception:  # never let logging break a route
            pass


def _setup_logging() -> None:
    logger = logging.getLogger("c4")
    if not any(isinstance(h, KamailioLogHandler) for h in logger.handlers):
        handler = KamailioLogHandler()
        handler.setFormatter(logging.Formatter("c4: %(name)s: %(message)s"))
        logger.addHandler(handler)
        logger.setLevel(logging.INFO)
        logger.propagate = False


def _log_exception(where: str) -> None:
    text = "".join(traceback.format_exception(*sys.exc_info()))
    KSR.err(f"c4: exception in {where}: " + text.replace("\n", "\n    ").rstrip() + "\n")


# The R-URI sent to the decision when the caller's is not UTF-8: its number
# is refused (404), where leaving ruri out would route on the To user.
# kamailio-http.cfg sends the same.
NOT_UTF8_RURI = "sip:not-utf-8@invalid"
# Identity headers a peer may send; the router asserts identity itself.
IDENTITY_HEADERS = ("P-Asserted-Identity", "P-Preferred-Identity", "Remote-Party-ID")


def _pv(name: str) -> str | None:
    """A pseudo-variable as text; None when unset or not UTF-8.

    app_python3 decodes strictly and raises UnicodeDecodeError on bytes that
    are not UTF-8 (an old PBX's ISO-8859-1 "Zoé"). Such a value cannot be a
    JSON string either: HTTP mode's jansson_set leaves it out, and so does
    this (a display name then goes out untouched, byte for byte).
    """
    try:
        value = KSR.pv.get(name)
    except UnicodeDecodeError:
        return None
    return None if value is None else str(value)


def _pv_bytes(name: str) -> bytes:
    """A pseudo-variable's raw bytes ('$ci' -> b'...'), whatever their encoding."""
    try:
        value = KSR.pv.get(name)
    except UnicodeDecodeError:
        return bytes.fromhex(KSR.pv.get(f"$({name[1:]}{{s.encode.hexa}})") or "")
    return b"" if value is None else str(value).encode()


class Router:
    """The routing blocks. One instance per process (created pre-fork)."""

    def __init__(self) -> None:
        self.table_path = os.environ.get(TABLE_ENV, "")
        self.feed_path = os.environ.get(FEED_ENV, "")
        self._source: FileTableSource | FeedTableSource | None = None
        self._source_for = ""  # the path self._source was made for
        self._pid = 0
        self.dump_dir = os.environ.get(DUMP_ENV) or None
        # Signs the router's Record-Route (c4d); from the deployment secret
        # (c4kemi/secret.py). Without it no in-dialog request is relayed.
        self.dialog_key = os.environ.get(DIALOG_ENV, "")
        self._dump = None  # this worker's dump file, opened on first use after fork
        self._dump_pid = 0
        # A route of the current relay was skipped for a trunk limit
        # (kamailio-http.cfg: $var(c4_full)); the branch route runs within t_relay.
        self._full = False
        self.cdr = bool(os.environ.get(CDR_ENV))
        self.cdr_unknown_sources = False  # read in child_init
        # Admission control, read in child_init (None: no bound, as in the unit tests).
        self.max_transactions: int | None = None
        self.shm_reserve = 0  # MiB of shared memory kept free for the calls already admitted
        self.retry_after = 0
        self.admit_interval = 0.0  # seconds a reading of the counts is kept
        self._stats_unreadable = False
        # The last reading (ksr_route_admit): when, and whether it said busy or full.
        self._load_read_at: float | None = None
        self._overloaded = False

    # -- table ---------------------------------------------------------

    def source(self) -> FileTableSource | FeedTableSource:
        """This process's table source: inherited from mod_init (preload), else created on first use."""
        path = self.feed_path or self.table_path
        # Compared as the configured text: a Path built per call cost about 5 % of the INVITE's Python time.
        if self._source is None or self._source_for != path:
            if not path:
                raise RuntimeError(f"environment variable {FEED_ENV} or {TABLE_ENV} is not set: no routing table")
            if self.feed_path:
                self._source = FeedTableSource(path, step_budget=STEP_BUDGET)
            else:
                self._source = FileTableSource(path)
            self._source_for = path
            self._pid = os.getpid()
            KSR.info(f"c4: routing table {path} loaded: version {self._source.current().version}\n")
        return self._source

    def preload(self) -> None:
        """Load the table once, in Kamailio's main process before it forks the workers.

        Every worker inherits it: one compile per node instead of one per
        worker at start, and the pages stay shared (copy-on-write) until a
        worker swaps in a changed table. gc.freeze() keeps the collector
        from writing to every inherited object (which would copy them all).
        Not fatal: a worker that has no table loads it itself (child_init).
        """
        if not (self.feed_path or self.table_path):
            return
        try:
            self.source()
        except (DocumentError, FeedError, OSError) as exc:
            self._source = None
            KSR.err(f"c4: cannot load routing table before fork: {exc}\n")
            return
        gc.freeze()
        trim_heap()  # what the load freed would otherwise count in every worker

    def child_init(self, rank: int) -> int:
        _setup_logging()
        self._read_admission_bound()
        self.cdr_unknown_sources = self.cdr and bool(KSR.pv.get(CDR_UNKNOWN_SOURCES_DEFINE))
        if rank > 0:  # SIP workers; timer/main processes route nothing
            try:
                self.source()
            except (DocumentError, FeedError, OSError, RuntimeError) as exc:
                # Not fatal: the worker retries on its first call and answers 500 until the file is good.
                KSR.err(f"c4: cannot load routing table in child {rank}: {exc}\n")
        return 0

    def _read_admission_bound(self) -> None:
        try:
            bound = KSR.pv.get(MAX_TRANSACTIONS_DEFINE)
            self.max_transactions = int(bound) if bound else None
            self.shm_reserve = int(KSR.pv.get(SHM_RESERVE_DEFINE) or 0)
            self.retry_after = int(KSR.pv.get(RETRY_AFTER_DEFINE) or 0)
            self.admit_interval = int(KSR.pv.get(ADMIT_INTERVAL_DEFINE) or 0) / 1000
        except (TypeError, ValueError):
            KSR.err("c4: C4_MAX_TRANSACTIONS / C4_SHM_RESERVE / C4_RETRY_AFTER / C4_ADMIT_INTERVAL are not numbers: "
                    "no admission control\n")
            self.max_transactions = None

    # -- request route -------------------------------------------------

    def ksr_request_route(self, msg) -> int:
        """request_route, past route[REQINIT] (kamailio-base.cfg): a new initial INVITE.

        Sanity, CANCEL, in-dialog requests, OPTIONS, REGISTER, stray ACKs,
        retransmissions and other methods never get here: the native
        config handles them.
        """
        try:
            if self.ksr_route_admit():
                KSR.hdr.remove("Route")  # no preloaded routes through the router
                self.ksr_route_decide(msg)
        except Exception:
            _log_exception("request_route")
            self._internal_error()
        return 1

    def ksr_route_admit(self) -> bool:
        """route[ADMIT]: past the node's bounds, a new call gets a fast 503 with Retry-After.

        Refused while ``max_transactions`` SIP transactions are in progress
        and not ringing (created, no final reply and no ringing 1xx yet:
        when the node falls behind, each waits longer and their number
        grows, call rate times delay; a ringing call waits for a person),
        or
        while less than ``shm_reserve`` MiB of shared memory is free (kept
        for the calls already admitted: answered calls' transactions stay
        in memory a few seconds more). The refusal is stateless, before any
        transaction exists, and costs no shared memory; in-dialog requests,
        ACK, CANCEL and retransmissions never get here. The counts are read
        at most once per ``admit_interval`` (C4_ADMIT_INTERVAL) in each worker.
        """
        if self.max_transactions is None:
            return True
        now = monotonic()
        if self._load_read_at is None or now - self._load_read_at >= self.admit_interval:
            self._overloaded = self._read_overloaded()
            self._load_read_at = now
        if not self._overloaded:
            return True
        self.ksr_route_cdr_refused(None, _now(), 503, "Service Unavailable")
        if self.retry_after > 0:
            KSR.hdr.append_to_reply(f"Retry-After: {self.retry_after}\r\n")
        KSR.sl.sl_send_reply(503, "Service Unavailable")
        return False

    def _read_overloaded(self) -> bool:
        """Whether the node is past a bound now: the live counts, through JSON-RPC."""
        tm = self._rpc(TM_STATS_RPC)
        shm = self._rpc(SHMMEM_RPC)
        in_progress = tm["current"] - tm["waiting"] if tm is not None else 0
        # The ringing calls are asked for only near the bound: one RPC less per reading below it.
        busy = in_progress >= self.max_transactions and in_progress - self._early_dialogs() >= self.max_transactions
        full = shm is not None and shm["free"] < self.shm_reserve
        return busy or full

    def _rpc(self, command: str):
        """A JSON-RPC command's result; None (admit, as HTTP mode does) if it cannot be read."""
        try:
            KSR.jsonrpcs.exec(command)
            result = orjson.loads(KSR.jsonrpcs.response())["result"]
            if isinstance(result, dict):
                return {name: int(value) for name, value in result.items()}
            return [str(line) for line in result]
        except (TypeError, ValueError, KeyError, AttributeError, orjson.JSONDecodeError):
            if not self._stats_unreadable:  # once per process, not once per call
                self._stats_unreadable = True
                KSR.err(f"c4: cannot read {command}: the admission control admits every call in this process\n")
            return None

    def _early_dialogs(self) -> int:
        """Calls ringing now (0 if the counter cannot be read: the bound then counts them too)."""
        lines = self._rpc(EARLY_DIALOGS_RPC)
        try:
            return int(lines[0].rpartition("=")[2])
        except (TypeError, IndexError, ValueError):
            return 0

    def _dialog_mac(self) -> str:
        """route[DIALOG_MAC] (kamailio-base.cfg): the signature of this Call-ID's dialogs.

        Signs the initial INVITE's Record-Route; the native route checks it
        on every in-dialog request, so both must compute the same.
        """
        return dialog_mac(self.dialog_key, _pv_bytes("$ci"))

    @staticmethod
    def _strip_identity() -> None:
        """route[STRIP_IDENTITY] (kamailio-base.cfg), for the INVITE: peers' identity headers are removed; Privacy stays."""
        for name in IDENTITY_HEADERS:
            KSR.hdr.remove(name)

    def ksr_route_decide(self, msg) -> int:
        """The routing decision, in process (HTTP mode: route[RELAY_API] and its response route)."""
        invite_at = _now()
        query = {
            "event": "sip-routing",
            "source_ip": _pv("$si"),
            "source_port": KSR.pv.get("$sp"),
            "auth": 0,
            "call_id": _pv("$ci"),
            "ruri": _pv("$ru") or NOT_UTF8_RURI,
            "from_name": _pv("$fn"),
            "from_uri": _pv("$fu"),
            "from_tag": _pv("$ft"),
            "to_name": _pv("$tn"),
            "to_uri": _pv("$tu"),
            "to_tag": _pv("$tt"),
        }
        # The identity the peer claims for the caller (used only for an
        # anonymous caller) and its Privacy; absent members are left out, as
        # HTTP mode does.
        identity = _pv("$ai") or _pv("$pu")
        if identity:
            query["identity_uri"] = identity
        privacy = _pv("$hdr(Privacy)")
        if privacy:
            query["privacy"] = privacy
        self._strip_identity()
        try:
            table = self.source().current()
        except (DocumentError, FeedError, OSError, RuntimeError) as exc:
            KSR.err(f"c4: no routing table: {exc}\n")
            self.ksr_route_cdr_refused(None, invite_at, 500, "No Routing Table")
            KSR.sl.sl_send_reply(500, "No Routing Table")
            return 1
        try:
            reply, call = decide_call(table, query)
        except RequestError as exc:
            KSR.notice(f"c4: bad routing request from {query['source_ip']}: {exc}\n")
            self.ksr_route_cdr_refused(None, invite_at, 400, "Bad Request")
            KSR.sl.sl_send_reply(400, "Bad Request")
            return 1
        rtjson = reply["rtjson"]
        data = orjson.dumps(rtjson)
        if self.dump_dir is not None:
            self._dump_decision(query, data)
        if not rtjson.get("success"):
            code, reason = int(rtjson.get("code", 500)), str(rtjson.get("reason", "Server Error"))
            if code == FORBIDDEN:
                self.ksr_route_refused_unknown_source(invite_at, reason)
            else:
                self.ksr_route_cdr_refused(call, invite_at, code, reason)
            KSR.sl.sl_send_reply(code, reason)
            return 1

        KSR.rr.record_route_params(";c4d=" + self._dialog_mac())
        # What the call counts against, from the same decision.
        call_text = call_json(call)
        KSR.pv.sets(CALL_AVP, call_text)
        self.ksr_route_cdr_start(call_text, invite_at)
        if not self.ksr_route_channels(call):
            return 1
        if KSR.rtjson.init_routes(data.decode()) < 0 or KSR.rtjson.push_routes() < 0:
            KSR.err("c4: rtjson refused the routing document\n")
            self.ksr_route_cdr_local(500, "Routing Error")
            KSR.sl.sl_send_reply(500, "Routing Error")
            return 1
        return self.ksr_route_relay_routes(msg)

    def ksr_route_channels(self, call: dict) -> bool:
        """route[CHANNELS]: the call takes a channel of its tenant and of the trunk it came from.

        The dialog joins the profiles first, then the limits are checked
        (two calls racing for the last channel can both be refused, never
        both let through). Over a limit the caller gets 503 (False); the
        dialog ends with that reply and leaves its profiles.
        """
        KSR.dialog.dlg_manage()
        tenant = call["tenant"]
        KSR.dialog.set_dlg_profile("c4_tenant", tenant)
        if call["tenant_max"] >= 0 and self._profile_size("c4_tenant", tenant) > call["tenant_max"]:
            KSR.notice(f"c4: tenant {tenant} at its limit of {call['tenant_max']} channels, refusing {_pv('$ci')}\n")
            return self._refuse(503, "Tenant Channel Limit")
        if call["source_kind"] != "trunk":
            return True
        trunk = call["source"]
        if call["source_cps"] >= 0 and KSR.htable.sht_inc("c4cps", f"{trunk};{KSR.pv.get('$Ts')}") > call["source_cps"]:
            KSR.notice(f"c4: trunk {trunk} at its limit of {call['source_cps']} calls per second, refusing {_pv('$ci')}\n")
            return self._refuse(503, "Trunk Call Rate Limit")
        KSR.dialog.set_dlg_profile("c4_trunk", trunk)
        if call["source_max"] >= 0 and self._profile_size("c4_trunk", trunk) > call["source_max"]:
            KSR.notice(f"c4: trunk {trunk} at its limit of {call['source_max']} channels, refusing {_pv('$ci')}\n")
            return self._refuse(503, "Trunk Channel Limit")
        return True

    @staticmethod
    def _profile_size(profile: str, value: str) -> int:
        KSR.dialog.get_profile_size(profile, value, SIZE_VAR)
        return int(KSR.pv.get(SIZE_VAR) or 0)

    def _refuse(self, code: int, reason: str) -> bool:
        """A stateful refusal, as HTTP mode's: the transaction absorbs retransmissions, and the dialog ends with the reply."""
        KSR.tm.t_newtran()
        self.ksr_route_cdr_local(code, reason)
        KSR.tm.t_reply(code, reason)
        return False

    @staticmethod
    def _call_route() -> dict | None:
        """The current rtjson route's entry in the call (rtjson's idx is one past it)."""
        data = KSR.pv.get(CALL_AVP)
        idx = KSR.pv.get("$xavp(rtjson=>idx)")
        if data is None or idx is None:
            return None
        routes = orjson.loads(data).get("routes") or []
        idx = int(idx)
        return routes[idx - 1] if 1 <= idx <= len(routes) else None

    def ksr_route_trunk_channel(self) -> bool:
        """route[TRUNK_CHANNEL]: the branch's trunk takes a channel, within its limits.

        False: the trunk is at a limit, the branch is dropped and
        ``ksr_route_relay_routes`` tries the next route.
        """
        route = self._call_route()
        trunk = route["trunk"] if route else ""
        # The same route again (a 401/407 answered): it holds its channel already.
        if not trunk or KSR.dialog.is_in_profile("c4_trunk", trunk) > 0:
            return True
        if route["cps"] >= 0 and KSR.htable.sht_inc("c4cps", f"{trunk};{KSR.pv.get('$Ts')}") > route["cps"]:
            KSR.notice(f"c4: trunk {trunk} at its limit of {route['cps']} calls per second, skipped for {_pv('$ci')}\n")
            self._full = True
            return False
        KSR.dialog.set_dlg_profile("c4_trunk", trunk)
        if route["max"] >= 0 and self._profile_size("c4_trunk", trunk) > route["max"]:
            KSR.dialog.unset_dlg_profile("c4_trunk", trunk)
            KSR.notice(f"c4: trunk {trunk} at its limit of {route['max']} channels, skipped for {_pv('$ci')}\n")
            self._full = True
            return False
        return True

    def ksr_route_release_trunk_channel(self) -> None:
        """route[RELEASE_TRUNK_CHANNEL]: before failing over, the failed branch's trunk gives its channel back."""
        route = self._call_route()
        trunk = route["trunk"] if route else ""
        if trunk and KSR.dialog.is_in_profile("c4_trunk", trunk) > 0:
            KSR.dialog.unset_dlg_profile("c4_trunk", trunk)

    def _dump_decision(self, query: dict, data: bytes) -> None:
        """One line to this worker's dump file: query JSON, tab, rtjson bytes."""
        try:
            if self._dump is None or self._dump_pid != os.getpid():
                path = os.path.join(self.dump_dir, f"rtjson-{os.getpid()}.tsv")
                fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
                os.fchmod(fd, 0o600)  # the rtjson holds trunk passwords, even in a file left from before
                self._dump = os.fdopen(fd, "ab", buffering=0)
                self._dump_pid = os.getpid()
            self._dump.write(orjson.dumps(query) + b"\t" + data + b"\n")
        except OSError as exc:
            KSR.err(f"c4: cannot write the rtjson dump to {self.dump_dir}: {exc}\n")
            self.dump_dir = None

    def ksr_route_relay_routes(self, msg) -> int:
        """route[RELAY_ROUTES]: an initial INVITE to its current rtjson route.

        From the decision, a 401/407 answered in the failure route, or
        failover. A route that cannot even be sent (a host that does not
        resolve, an address family Kamailio does not listen on, any other
        local send error) or whose trunk is at a limit (``ksr_route_trunk_channel``)
        is skipped like a 503 and the next one tried; with none left the caller
        gets one 500, or 503 when a route was skipped for a limit (tm's own
        error reply is off).
        """
        KSR.tm.t_set_disable_internal_reply(1)
        self._arm_rtjson_routes()
        self._full = False
        while KSR.tm.t_relay() < 0:
            if KSR.rtjson.next_route() < 0:
                if self._full:
                    KSR.notice(f"c4: every route left for {_pv('$ci')} is at a limit\n")
                    self.ksr_route_cdr_local(503, "All Trunks Busy")
                    KSR.tm.t_reply(503, "All Trunks Busy")
                    return 1
                KSR.warn(f"c4: cannot send to {_pv('$du')} for {_pv('$ci')}, no route left\n")
                self.ksr_route_cdr_local(500, "Relay Failed")
                KSR.tm.t_reply(500, "Relay Failed")
                return 1
            KSR.warn(f"c4: cannot send to the route before {_pv('$du')} for {_pv('$ci')}, trying it\n")
            self._arm_rtjson_routes()
        return 1

    @staticmethod
    def _arm_rtjson_routes() -> None:
        """Branch route: update_branch per rtjson route; failure route: the next one."""
        KSR.tm.t_on_branch(BRANCH_ROUTE)
        KSR.tm.t_on_failure(FAILURE_ROUTE)

    # -- branch and failure routes -----------------------------------------

    def ksr_branch_manage(self, msg) -> int:
        """branch_route[MANAGE_BRANCH]: apply the rtjson route to the branch.

        -1: the config drops the branch (python_exec's return; KSR.set_drop
        is for the KEMI engine), so the relay fails and the next route is tried.
        """
        try:
            if KSR.siputils.has_totag() < 0:
                if not self.ksr_route_trunk_channel():
                    return -1
                self.ksr_route_cdr_try()
                if KSR.rtjson.update_branch() < 0:
                    KSR.warn("c4: rtjson update_branch failed\n")
        except Exception:
            _log_exception("branch_route")
            return -1  # drop this branch; the relay then fails and is answered
        return 1

    def ksr_failure_manage(self, msg) -> int:
        """failure_route[MANAGE_FAILURE]: answer a challenge once, or fail over."""
        try:
            self._failure(msg)
        except Exception:
            _log_exception("failure_route")
            self._internal_error()
        return 1

    def _failure(self, msg) -> None:
        if KSR.tm.t_is_canceled() > 0:
            self.ksr_route_cdr_result()
            return
        code = KSR.tm.t_get_status_code()
        if code in (401, 407) and self._answer_challenge(msg):
            return
        self.ksr_route_cdr_result()
        timeout = KSR.tm.t_branch_timeout() > 0 or KSR.tm.t_any_timeout() > 0
        if code == 408 or 500 <= code <= 599 or timeout:
            KSR.resetflag(FLT_AUTH)
            self.ksr_route_release_trunk_channel()
            if KSR.rtjson.next_route() > 0:
                KSR.info(f"c4: branch failed with {code}, trying next route for {_pv('$ci')}\n")
                self.ksr_route_relay_routes(msg)
        # Anything else (4xx such as 486/404, 6xx, or no route left) goes back to the caller.

    def _current_route(self) -> dict | None:
        """The rtjson route of the failed branch (rtjson's idx is one past it)."""
        doc = KSR.pv.get("$xavp(rtjson=>json)")
        idx = KSR.pv.get("$xavp(rtjson=>idx)")
        if doc is None or idx is None:
            return None
        routes = orjson.loads(doc).get("routes") or []
        idx = int(idx)
        if 1 <= idx <= len(routes):
            return routes[idx - 1]
        return None

    def _answer_challenge(self, msg) -> bool:
        """Answer a 401/407 once with the current route's credentials."""
        if KSR.isflagset(FLT_AUTH):
            return False
        route = self._current_route()
        auth = route.get("auth") if route else None
        if not auth:
            return False
        KSR.pv.sets(AUTH_USERNAME_AVP, str(auth.get("username", "")))
        KSR.pv.sets(AUTH_PASSWORD_AVP, str(auth.get("password", "")))
        KSR.pv.sets(AUTH_REALM_AVP, str(auth.get("realm") or ""))
        if KSR.uac.uac_auth() < 0:
            KSR.warn(f"c4: cannot answer the challenge for {_pv('$ci')}\n")
            return False
        KSR.setflag(FLT_AUTH)
        # The failure route sees the first route's URIs: aim at the challenging one again.
        KSR.pv.sets("$ru", route["uri"])
        if route.get("dst_uri"):
            KSR.pv.sets("$du", route["dst_uri"])
        self.ksr_route_relay_routes(msg)
        return True

    # -- call records (docs/cdr.md) ---------------------------------------------
    #
    # Off unless `c4 kamailio` was given a record sink (C4_CDR). The facts
    # are kept in dialog variables and queued, once the call is over, as one
    # JSON event by route[CDR_QUEUE] (kamailio-base.cfg), which never waits
    # on c4 cdr; c4 cdr makes the record.

    def ksr_route_refused_unknown_source(self, invite_at: str, reason: str) -> None:
        """The decision's 403 (a source in no trunk or IPBX): counted; a record only with C4_CDR_UNKNOWN_SOURCES.

        kamailio-http.cfg does the same in route[RELAY_API_RESPONSE]:
        strangers must not fill the disk.
        """
        KSR.statistics.update_stat(UNKNOWN_SOURCE_STAT, 1)
        if self.cdr_unknown_sources:
            self.ksr_route_cdr_refused(None, invite_at, FORBIDDEN, reason)

    def ksr_route_cdr_refused(self, call: dict | None, invite_at: str, code: int, reason: str) -> None:
        """route[CDR_REFUSED]: a call refused before it had a dialog; its record goes at once."""
        if self.cdr:
            event = {"call_id": _cut(_pv("$ci"), CDR_MAX_CALL_ID), "invite": invite_at, "end": _now(), "code": code,
                     "reason": reason, "by": "router"}
            if call:
                event["call"] = call
            self._cdr_emit(event)

    def ksr_route_cdr_start(self, call_text: str, invite_at: str) -> None:
        """route[CDR_START]: a routed call keeps its facts with its dialog (created by dlg_manage)."""
        if self.cdr:
            KSR.pv.sets(CDR_CALL, call_text)
            KSR.pv.sets(CDR_INVITE, invite_at)
            # $dlg(callid) gives nothing past 8 KiB (Kamailio's pseudo-variable buffer): a long one is kept cut.
            call_id = _pv("$ci")
            if call_id is not None and len(call_id) > CDR_MAX_CALL_ID // 4:
                cut = _cut(call_id, CDR_MAX_CALL_ID)
                if cut != call_id and cut is not None:
                    KSR.pv.sets(CDR_CALL_ID, cut)

    def ksr_route_cdr_try(self) -> None:
        """route[CDR_TRY]: the rtjson route of the branch being sent (its index: rtjson's idx - 1)."""
        if self.cdr:
            KSR.pv.sets(CDR_TRY, str(int(KSR.pv.get("$xavp(rtjson=>idx)") or 1) - 1))

    def ksr_route_cdr_result(self) -> None:
        """route[CDR_RESULT]: a branch failed (failure route): its code, and the call's end so far."""
        if not self.cdr:
            return
        code = KSR.tm.t_get_status_code()
        self._cdr_append_try(code)
        if KSR.tm.t_is_canceled() > 0:
            by = "caller"
        elif KSR.tm.t_branch_timeout() > 0 or KSR.tm.t_any_timeout() > 0:
            by = "timeout"
        else:
            by = "callee"
        self._cdr_final(code, _cut(_pv("$T_reply_reason"), CDR_MAX_REASON) or "", by)

    def ksr_route_cdr_local(self, code: int, reason: str) -> None:
        """route[CDR_LOCAL]: the router answers a routed call itself (a limit, no route left)."""
        if self.cdr:
            self._cdr_final(code, reason, "router")

    def ksr_dialog_event(self, msg, event: str) -> int:
        """event_route[dialog:start|end|failed]: EVENT is the block's name (python_exec's parameter)."""
        try:
            if event == "dialog:start":  # the 2xx: answer time and the route that answered
                KSR.pv.sets(CDR_ANSWER, _now())
                self._cdr_append_try(int(KSR.pv.get("$rs") or 200))
                self._cdr_final(int(KSR.pv.get("$rs") or 200), _cut(_pv("$rr"), CDR_MAX_REASON) or "", "")
            elif event == "dialog:end":
                if KSR.is_BYE():
                    by = "caller" if _pv("$ft") == _pv("$dlg(from_tag)") else "callee"
                else:  # the dialog's timeout (C4_DIALOG_TIMEOUT), or ended by RPC
                    by = "timeout"
                KSR.pv.sets(CDR_BY, by)
                self._cdr_emit_dialog()
            elif event == "dialog:failed":
                self._cdr_emit_dialog()
        except Exception:
            _log_exception(event)
        return 1

    @staticmethod
    def _cdr_append_try(code: int) -> None:
        tries = _pv(CDR_TRIES)
        entry = f"{_pv(CDR_TRY) or '0'}:{code}"
        KSR.pv.sets(CDR_TRIES, f"{tries},{entry}" if tries else entry)

    @staticmethod
    def _cdr_final(code: int, reason: str, by: str) -> None:
        KSR.pv.sets(CDR_CODE, str(code))
        KSR.pv.sets(CDR_REASON, reason)
        KSR.pv.sets(CDR_BY, by)

    def _cdr_emit_dialog(self) -> None:
        """route[CDR_EMIT]: the record of a routed call, from its dialog variables."""
        call = _pv(CDR_CALL)
        event = {
            "call_id": _pv(CDR_CALL_ID) or _cut(_pv("$dlg(callid)"), CDR_MAX_CALL_ID),
            "invite": _pv(CDR_INVITE),
            "end": _now(),
            "tries": _pv(CDR_TRIES) or "",
            "code": int(_pv(CDR_CODE) or 500),
            "reason": _pv(CDR_REASON) or "",
            "by": _pv(CDR_BY) or "",
        }
        if call:
            event["call"] = orjson.loads(call)
        answer = _pv(CDR_ANSWER)
        if answer:
            event["answer"] = answer
        self._cdr_emit(event)

    @staticmethod
    def _cdr_emit(event: dict) -> None:
        """The event to route[CDR_QUEUE] (kamailio-base.cfg), which queues it for c4 cdr or drops and counts it."""
        KSR.pv.sets(CDR_EVENT_VAR, orjson.dumps({k: v for k, v in event.items() if v is not None}).decode())
        KSR.route(CDR_QUEUE_ROUTE)

    # -- errors --------------------------------------------------------------

    def _internal_error(self) -> None:
        """Answer 500 so that no transaction is left hanging."""
        try:
            if KSR.is_ACK():
                return
            if KSR.tmx.t_is_failure_route() > 0:
                KSR.tm.t_reply(500, "Server Internal Error")
                return
            if KSR.is_INVITE() and KSR.tmx.t_is_request_route() > 0:
                # A transaction absorbs the retransmissions instead of failing again on each.
                KSR.tm.t_newtran()
            KSR.sl.send_reply(500, "Server Internal Error")  # stateful when a transaction exists
        except Exception:
            _log_exception("error reply")


def _cut(text: str | None, limit: int) -> str | None:
    """TEXT cut to LIMIT bytes of UTF-8, as kamailio-http.cfg cuts it ({s.substr}).

    None when the cut splits a character: the native config's cut is then
    not UTF-8 and jansson leaves the member out, so this does too.
    """
    if text is None:
        return None
    data = text.encode()
    if len(data) <= limit:
        return text
    try:
        return data[:limit].decode()
    except UnicodeDecodeError:
        return None


def _now() -> str:
    """The time as Kamailio's $TV(Sn) gives it: seconds.microseconds."""
    return f"{time.time():.6f}"


def mod_init() -> Router:
    _setup_logging()
    router = Router()
    router.preload()
    return router
