"""KEMI entry point: the object Kamailio's ``app_python3`` loads.

``kamailio/kamailio-kemi.cfg`` is a native config, and everything Kamailio
does with a call is native config shared with HTTP mode
(``kamailio/kamailio-call.cfg``, ``kamailio/kamailio-cdr.cfg``): admission
control, channel limits, relay and failover, the 401/407 answer, call
records. Python only decides. The config calls one method, once per new
INVITE, named after the block that calls it:

- ``route[DECIDE]``: ``Router.ksr_route_decide`` builds the routing query
  from the request (the members HTTP mode sends to c4 serve), decides with
  the table in this process's memory, and hands the decision back as HTTP
  mode gets it from c4 serve: the reply's rtjson member in
  ``$var(rtjson)``, the call's facts (the C4-Call header of HTTP mode) in
  ``$avp(c4_call)``. The config goes on with ``route[DECIDED]``, the same
  block HTTP mode's response route goes on with.

``app_python3``'s ``load`` parameter points at ``kamailio/c4_kemi.py``, a
shim that imports this module as part of the package (loading this file
directly would put ``c4kemi/`` first on ``sys.path`` and shadow the
standard library's ``numbers``). ``mod_init()`` returns the handler.
``python_exec`` returns the method's integer, and 0 would end the script:
the method returns 1, or -1 when it failed (the config then answers 500).

Every Kamailio worker is a forked process with its own interpreter state
and no running threads (``threads_mode=0``), so each worker keeps its own
table source, inherited from ``mod_init``, which loads the table once
before Kamailio forks (else loaded in ``child_init`` or on first use):
``FeedTableSource`` on the node's table feed (``C4_FEED``, set by
``c4 kamailio``, which runs ``c4 feed``: see c4kemi/sources/feed.py), else
``FileTableSource`` on the document itself (``C4_TABLE``). A call looks at
it at most twice a second (the file: once) and swaps in a changed table; a broken document
is logged and the last good table keeps serving.

Imports stay lean (no aiohttp): this runs inside every SIP worker.

Debugging and parity checks: with ``C4_RTJSON_DUMP=DIR`` in Kamailio's
environment, each worker appends one line per decision to
``DIR/rtjson-PID.tsv``: the query as JSON, a tab, and the exact rtjson bytes
handed to the config. Off (the default), it costs one attribute test per call.
"""

from __future__ import annotations

import gc
import logging
import os
import sys
import traceback

import KSR  # provided by app_python3
import orjson

from c4kemi.core.decision import RequestError, call_json, decide_call
from c4kemi.core.document import DocumentError
from c4kemi.core.shapes import RoutingQuery
from c4kemi.node.memory import trim_heap
from c4kemi.sources import open_source
from c4kemi.sources.feed import FeedError
from c4kemi.sources.table_source import TableSource

__all__ = ["mod_init", "Router"]

TABLE_ENV = "C4_TABLE"
FEED_ENV = "C4_FEED"
# Seconds of a large table change (a bulk import, a new snapshot) a worker
# takes on per call; it routes with the previous table until it is done.
# All workers take a change in at about the same time: 8 workers at 60
# calls/s each, 2 ms a call, would be a whole core (docs/scale.md, section 4).
STEP_BUDGET = 0.0005
DUMP_ENV = "C4_RTJSON_DUMP"

# The hand-over to route[DECIDED] (kamailio-call.cfg): the rtjson member of
# the reply, and what the call counts against (c4kemi.core.decision.decide_call)
# as JSON. The AVP travels with the transaction to the branch and failure
# routes, which may run in another worker.
RTJSON_VAR = "$var(rtjson)"
CALL_AVP = "$avp(c4_call)"
# Refusals the decision cannot give, for a request it cannot take or a
# worker without a table: route[DECIDED] answers them as any refusal.
BAD_REQUEST = b'{"success":false,"code":400,"reason":"Bad Request"}'
NO_TABLE = b'{"success":false,"code":500,"reason":"No Routing Table"}'
# The R-URI sent to the decision when the caller's is not UTF-8: its number
# is refused (404), where leaving ruri out would route on the To user.
# kamailio-http.cfg sends the same.
NOT_UTF8_RURI = "sip:not-utf-8@invalid"


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


def routing_query() -> RoutingQuery:
    """The routing query of the current INVITE, member for member as kamailio-http.cfg's route[QUERY] builds it."""
    query: RoutingQuery = {
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
    return query


class Router:
    """The handler app_python3 calls. One instance, created before Kamailio forks."""

    def __init__(self) -> None:
        self.table_path = os.environ.get(TABLE_ENV, "")
        self.feed_path = os.environ.get(FEED_ENV, "")
        self._source: TableSource | None = None
        self._source_for = ""  # the path self._source was made for
        self.dump_dir = os.environ.get(DUMP_ENV) or None
        self._dump = None  # this worker's dump file, opened on first use after fork
        self._dump_pid = 0

    # -- table ---------------------------------------------------------

    def source(self) -> TableSource:
        """This process's table source: inherited from mod_init (preload), else created on first use."""
        path = self.feed_path or self.table_path
        # Compared as the configured text: a Path built per call cost about 5 % of the INVITE's Python time.
        if self._source is None or self._source_for != path:
            if not path:
                raise RuntimeError(f"environment variable {FEED_ENV} or {TABLE_ENV} is not set: no routing table")
            if self.feed_path:
                self._source = open_source(feed=path, step_budget=STEP_BUDGET)
            else:
                self._source = open_source(table=path)
            self._source_for = path
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
        if rank > 0:  # SIP workers; timer/main processes route nothing
            try:
                self.source()
            except (DocumentError, FeedError, OSError, RuntimeError) as exc:
                # Not fatal: the worker retries on its first call and answers 500 until the file is good.
                KSR.err(f"c4: cannot load routing table in child {rank}: {exc}\n")
        return 0

    # -- route[DECIDE] -------------------------------------------------

    def ksr_route_decide(self, msg) -> int:
        """route[DECIDE] (kamailio-kemi.cfg): decide a new INVITE, hand the decision to route[DECIDED]."""
        try:
            rtjson, call = self.decide(routing_query())
            KSR.pv.sets(RTJSON_VAR, rtjson.decode())
            if call is not None:
                KSR.pv.sets(CALL_AVP, call)
        except Exception:
            _log_exception("route[DECIDE]")
            return -1
        return 1

    def decide(self, query: RoutingQuery) -> tuple[bytes, str | None]:
        """The rtjson member (bytes) and the call (C4-Call's JSON, None for none) for QUERY."""
        try:
            table = self.source().current()
        except (DocumentError, FeedError, OSError, RuntimeError) as exc:
            KSR.err(f"c4: no routing table: {exc}\n")
            return NO_TABLE, None
        try:
            reply, call = decide_call(table, query)
        except RequestError as exc:
            KSR.notice(f"c4: bad routing request from {query['source_ip']}: {exc}\n")
            return BAD_REQUEST, None
        data = orjson.dumps(reply["rtjson"])
        if self.dump_dir is not None:
            self._dump_decision(query, data)
        return data, (call_json(call) if call else None)

    def _dump_decision(self, query: RoutingQuery, data: bytes) -> None:
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


def mod_init() -> Router:
    _setup_logging()
    router = Router()
    router.preload()
    return router
