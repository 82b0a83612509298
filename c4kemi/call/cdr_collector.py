"""``c4 cdr``: collect the call events Kamailio sends through evapi and write the records.

    c4 cdr --evapi 127.0.0.1:PORT --file /var/log/c4/cdr.jsonl
    c4 cdr --evapi 127.0.0.1:PORT --db [--dsn DSN] --spool /var/lib/c4/cdr-spool.jsonl [--spool-max-mb 1024]

``c4 kamailio --cdr-file`` / ``--cdr-db`` starts it before Kamailio and stops it
after. It connects to Kamailio's evapi socket (and reconnects, every 0.1 to
1 s, while Kamailio is not there), authenticates with the key in
``$C4_CDR_KEY`` (derived from the deployment secret: c4kemi/node/secret.py; the
environment, never the command line, which ``ps`` shows), reads one
netstring per finished call, makes the record (c4kemi/call/cdr.py) and appends
it as one JSON line, then acknowledges it (``ack SEQ``):

- to ``--file``: reopened when it is rotated (renamed or removed: checked
  before every write) or on SIGHUP, so logrotate's plain ``create`` works;
- with ``--db``: to the local spool file first, shipped from there to the
  ``cdrs`` table in batches. Each record carries a unique ``id`` and the
  insert skips ids already there, so a batch shipped twice (a crash between
  the commit and the saving of the spool offset) is stored once. While
  PostgreSQL is down records wait in the spool, and shipping retries with
  a backoff up to 5 s. The spool is bounded (``--spool-max-mb``): when full,
  new records are dropped, counted and logged as errors; calls are never
  affected. The spool is emptied whenever everything in it is shipped.

Nothing is lost while it restarts: Kamailio numbers each event it hands
over (``run``, ``seq``), keeps it until acknowledged, and sends a newly
authenticated collector everything after the last acknowledgement again
(kamailio-cdr.cfg, route[CDR_SEND]). So an event can come twice: the record
id is made of run and seq (c4kemi/call/cdr.py, ``event_id``), and an event
whose seq is not past the last one written for its run is dropped
(``Written``; at start, the last line of the file or the spool says where
the previous c4 cdr stopped; PostgreSQL skips an id it has anyway).

Everything runs in one asyncio loop in one process: evapi reading and file
writes never wait on the database.
"""

from __future__ import annotations

import argparse
import asyncio
import atexit
import logging
import os
import signal
import sys
import time
import uuid
from collections import deque
from pathlib import Path

import orjson

from ..node.secret import CDR_KEY_ENV
from ..sources.files import append_whole, write_atomically
from .cdr import EventError, event_id, event_seq, id_seq, make_record

__all__ = ["add_arguments", "run"]

log = logging.getLogger("c4.cdr")

MAX_EVENT = 1 << 16  # bytes: an event is a few hundred (Kamailio sends none above 8000)
BATCH_LINES = 500
RETRY_MAX = 5.0  # seconds between attempts to ship while PostgreSQL is down
BACKLOG_MAX = 10_000  # records waiting in memory while the disk refuses them (some 6 MB); past it new ones are dropped
RETRY_INTERVAL = 1.0  # seconds between attempts to write the records waiting, when no new one comes meanwhile
TAIL_BYTES = 1 << 16  # read from the end of the file for the last record written (records are a few KiB at most)


def parse_address(text: str) -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    if not sep or not host or not port.isdigit():
        raise argparse.ArgumentTypeError(f"expected HOST:PORT, got {text!r}")
    return host, int(port)


class JsonLines:
    """An append-only JSON-lines file, reopened when rotated away; optionally bounded.

    Each record is one line, written whole or not at all: a write the disk
    refuses (full: ENOSPC, or a write cut short) is cut off the file again
    and counted, and its record waits in memory (``backlog``, at most
    ``backlog_max`` records; past that new ones are dropped and counted),
    written before any newer one at the next record, and every
    RETRY_INTERVAL seconds in an event loop. An outage is logged once as an
    error, and once more when the file takes writes again.
    """

    def __init__(self, path: Path, max_bytes: int | None = None, backlog_max: int = BACKLOG_MAX) -> None:
        self.path = path
        self.max_bytes = max_bytes
        self.backlog_max = backlog_max
        self.backlog: deque[bytes] = deque()  # lines the disk refused, oldest first
        self.dropped = 0  # records dropped: the spool at max_bytes
        self.lost = 0  # records dropped: the backlog full while the disk refused writes
        self.failed_writes = 0  # writes the disk refused (each cut off the file again)
        self._failing_since: float | None = None  # when the current outage's first write was refused
        self._retry: asyncio.TimerHandle | None = None
        self._file = None
        self.reopen()
        atexit.register(self._at_exit)

    def reopen(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None  # should the open below fail, the next write opens again
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._file = open(self.path, "ab", buffering=0)
        os.chmod(self.path, 0o640)

    def last_id(self) -> str | None:
        """The id of the last whole record in the file (what a c4 cdr before this one wrote last), or None."""
        if self.backlog:
            return orjson.loads(self.backlog[-1]).get("id")
        try:
            with open(self.path, "rb") as file:
                size = file.seek(0, os.SEEK_END)
                file.seek(max(0, size - TAIL_BYTES))
                tail = file.read()
        except OSError:
            return None
        for line in reversed(tail.split(b"\n")):
            try:
                record = orjson.loads(line)
            except orjson.JSONDecodeError:
                continue  # empty, cut by the tail's start, or half written
            if isinstance(record, dict):
                return record.get("id")
        return None

    def _rotated(self) -> bool:
        if self._file is None:
            return True
        try:
            return os.stat(self.path).st_ino != os.fstat(self._file.fileno()).st_ino
        except FileNotFoundError:
            return True

    def append(self, record: dict) -> bool:
        """Write the record as one line, after those waiting; False: dropped (the spool or the backlog is full).

        True also when the disk refused it: it waits in the backlog.
        """
        line = orjson.dumps(record) + b"\n"
        if self._over_bound(line):
            self.dropped += 1
            if self.dropped == 1 or self.dropped % 1000 == 0:
                log.error("c4 cdr: spool %s is full (%d bytes): %d record(s) dropped so far", self.path, self.max_bytes, self.dropped)
            return False
        self.backlog.append(line)
        self.flush()
        if len(self.backlog) > self.backlog_max:  # refused, and no room left to wait: the newest goes
            self.backlog.pop()
            self.lost += 1
            if self.lost == 1 or self.lost % 1000 == 0:
                log.error("c4 cdr: %d record(s) dropped so far: %s refuses writes and %d records wait already",
                          self.lost, self.path, self.backlog_max)
            return False
        return True

    def _over_bound(self, line: bytes) -> bool:
        """Past the spool's bound with this line: what the file holds, what waits, and the line."""
        if self.max_bytes is None:
            return False
        try:
            size = os.stat(self.path).st_size
        except FileNotFoundError:  # rotated away: the next write makes a new one
            size = 0
        return size + sum(map(len, self.backlog)) + len(line) > self.max_bytes

    def flush(self) -> None:
        """Write the lines waiting, oldest first, one write each; at the first refusal the rest wait."""
        try:
            if self.backlog and self._rotated():
                self.reopen()
            while self.backlog:
                append_whole(self._file.fileno(), self.backlog[0])
                self.backlog.popleft()
        except OSError as exc:
            self._refused(exc)
            return
        self._taken()

    def _refused(self, exc: OSError) -> None:
        self.failed_writes += 1
        if self._failing_since is None:  # said once per outage, not once per record
            self._failing_since = time.monotonic()
            log.error("c4 cdr: cannot write to %s (%s): records wait in memory (at most %d) and are tried again every %.0f s",
                      self.path, exc, self.backlog_max, RETRY_INTERVAL)
        self._retry_later()

    def _taken(self) -> None:
        if self._failing_since is not None:
            log.warning("c4 cdr: writing to %s again after %.0f s (%d write(s) refused, %d record(s) dropped)",
                        self.path, time.monotonic() - self._failing_since, self.failed_writes, self.lost)
            self._failing_since = None

    def _retry_later(self) -> None:
        """In an event loop (c4 cdr), try again in RETRY_INTERVAL s, should no record come meanwhile."""
        if self._retry is not None:
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:  # no loop: the next record tries again
            return
        self._retry = loop.call_later(RETRY_INTERVAL, self._retry_now)

    def _retry_now(self) -> None:
        self._retry = None
        self.flush()

    def _at_exit(self) -> None:
        """c4 cdr stops: one last try for the records waiting; those the disk still refuses are lost, and said so."""
        self.flush()
        if self.backlog:
            log.error("c4 cdr: stopped with %d record(s) that %s refused: lost", len(self.backlog), self.path)


class Shipper:
    """Ships the spool to PostgreSQL's ``cdrs`` table; the shipped offset is kept beside the spool."""

    def __init__(self, spool: JsonLines, dsn: str) -> None:
        self.spool = spool
        self.dsn = dsn
        self.offset_path = spool.path.with_name(spool.path.name + ".offset")
        self.wake = asyncio.Event()
        self.shipped = 0
        self.failed_writes = 0  # offset saves the disk refused
        self._saving_failed = False
        self._conn = None

    def _offset(self) -> int:
        try:
            return int(self.offset_path.read_text() or 0)
        except (FileNotFoundError, ValueError):
            return 0

    def _save_offset(self, offset: int) -> bool:
        """Write then rename; False (counted, logged) when the disk refuses it: the saved offset stays as it was.

        What the refused one covers is then shipped again, and stored once
        (the insert skips ids already there).
        """
        try:
            write_atomically(self.offset_path, str(offset).encode())
        except OSError as exc:
            self.failed_writes += 1
            if not self._saving_failed:  # said once per outage
                self._saving_failed = True
                log.error("c4 cdr: cannot save the spool offset to %s (%s); shipped records are shipped again until it is",
                          self.offset_path, exc)
            return False
        if self._saving_failed:
            self._saving_failed = False
            log.warning("c4 cdr: the spool offset is saved to %s again", self.offset_path)
        return True

    def _pending(self) -> tuple[list[dict], int]:
        """Up to BATCH_LINES whole lines after the offset, and the offset after them."""
        offset = self._offset()
        size = self.spool.path.stat().st_size
        if offset > size:  # emptied after a crash between truncation and saving the offset (older versions)
            offset = 0
            self._save_offset(0)  # refused: the next save after shipping writes it
        with open(self.spool.path, "rb") as spool:
            spool.seek(offset)
            data = spool.read(min(size - offset, MAX_EVENT * 4))
        lines = data.split(b"\n")[:-1][:BATCH_LINES]  # the last piece is partial (or empty)
        records = []
        for line in lines:
            offset += len(line) + 1
            try:
                records.append(orjson.loads(line))
            except orjson.JSONDecodeError:
                log.error("c4 cdr: unreadable line in the spool skipped: %r", line[:200])
        return records, offset

    async def run(self) -> None:
        from ..db.cdrs import insert_records
        from ..db.documents import connect

        delay = 0.0
        down_since = None
        while True:
            if delay:
                await asyncio.sleep(delay)
            else:
                try:
                    await asyncio.wait_for(self.wake.wait(), 1.0)
                except TimeoutError:
                    pass
            self.wake.clear()
            records, offset = self._pending()
            if not records and offset == self._offset():
                delay = 0.0
                continue
            try:
                if self._conn is None or self._conn.is_closed():
                    self._conn = await connect(self.dsn, timeout=5)
                async with self._conn.transaction():
                    await insert_records(self._conn, records)
            except Exception as exc:  # any database trouble (down, restarting, refusing): retry later
                if down_since is None:
                    down_since = asyncio.get_running_loop().time()
                    log.error("c4 cdr: cannot ship records to PostgreSQL (%s); they wait in %s", exc, self.spool.path)
                await self._close()
                delay = min(RETRY_MAX, max(0.5, delay * 2))
                continue
            if down_since is not None:
                log.warning("c4 cdr: PostgreSQL is back; shipping the spool")
                down_since = None
            everything = offset >= self.spool.path.stat().st_size
            # All shipped: the offset says 0 before the spool is emptied (a crash between: shipped again, stored once).
            if not self._save_offset(0 if everything else offset):
                delay = min(RETRY_MAX, max(0.5, delay * 2))  # the batch goes again, until its offset is saved
                continue
            delay = 0.0
            self.shipped += len(records)
            if everything:  # empty the spool
                os.truncate(self.spool.path, 0)
            else:
                self.wake.set()  # more to ship now

    async def _close(self) -> None:
        if self._conn is not None:
            try:
                self._conn.terminate()
            except Exception:  # noqa: BLE001
                pass
            self._conn = None


async def read_netstrings(reader: asyncio.StreamReader):
    """evapi's framing: LENGTH:DATA, (netstrings)."""
    while True:
        head = await reader.readuntil(b":")
        length = head[:-1].strip()
        if not length.isdigit() or int(length) > MAX_EVENT:
            raise ValueError(f"bad netstring length {head[:20]!r}")
        data = await reader.readexactly(int(length) + 1)
        if data[-1:] != b",":
            raise ValueError("netstring without its trailing comma")
        yield data[:-1]


class Written:
    """Where the records written stand: Kamailio's run and the seq of the last event written for it.

    Kamailio sends events in seq order, and again from the last
    acknowledged one to a new collector: an event of the same run whose
    seq is not past the last one written is a duplicate.
    """

    def __init__(self, last_id: str | None = None) -> None:
        self.run, self.seq = id_seq(last_id) or (None, 0)
        self.duplicates = 0
        self.numbered = False  # whether the last event had a seq (those of an older config have none)

    def seen(self, run: str, seq: int) -> bool:
        return run == self.run and seq <= self.seq

    def mark(self, run: str, seq: int) -> None:
        self.run, self.seq = run, seq


def handle(data: bytes, sink: JsonLines, written: Written | None = None) -> dict | None:
    """One event: the record written, or None for a malformed event (logged) or one written already.

    Of a numbered event (``run``, ``seq``) the record id is ``event_id``;
    with WRITTEN, one not past the last written is dropped as a duplicate.
    """
    try:
        event = orjson.loads(data)
        numbered = event_seq(event)
        if written is not None:
            written.numbered = numbered is not None
        if numbered is not None and written is not None:
            if written.seen(*numbered):
                written.duplicates += 1
                if written.duplicates == 1 or written.duplicates % 1000 == 0:
                    log.info("c4 cdr: event %d of Kamailio run %s sent again, written already (up to %d): dropped "
                             "(%d so far)", numbered[1], numbered[0], written.seq, written.duplicates)
                return None
            written.mark(*numbered)  # written or refused, it is done with
        record = make_record(event, event_id(*numbered) if numbered else uuid.uuid4().hex)
    except (orjson.JSONDecodeError, EventError) as exc:
        log.error("c4 cdr: event refused (%s): %r", exc, data[:300])
        return None
    try:
        sink.append(record)
    except OSError as exc:  # a full disk, say: this record is lost, the next may be written
        log.error("c4 cdr: cannot write the record of %s to %s: %s", record["call_id"], sink.path, exc)
        return None
    return record


def netstring(data: bytes) -> bytes:
    return str(len(data)).encode() + b":" + data + b","


AUTH_OK = b"ok"
# Kamailio hands evapi at most 1000 events the collector has not acknowledged
# (C4_CDR_WINDOW, kamailio-base.cfg): "ack SEQ" goes back every ACK_EVERY
# events, and ACK_IDLE seconds after the last one when no more came.
ACK_EVERY = 100
ACK_IDLE = 0.2
AUTH_TIMEOUT = 5.0  # seconds for Kamailio's "ok": it says nothing to a wrong key
REFUSED_DELAY = 5.0  # seconds before trying again after Kamailio refused the key


class Acker:
    """``ack SEQ`` on one connection: every ACK_EVERY events written, and ACK_IDLE s after the last one."""

    def __init__(self, writer: asyncio.StreamWriter, written: Written) -> None:
        self.writer = writer
        self.written = written
        self.acked = 0  # what this connection said; Kamailio may know less (a duplicate is acknowledged too)
        self._idle: asyncio.TimerHandle | None = None

    def wrote(self) -> None:
        if self.written.seq - self.acked >= ACK_EVERY:
            self.send()
        elif self._idle is None:
            self._idle = asyncio.get_running_loop().call_later(ACK_IDLE, self._on_idle)

    def _on_idle(self) -> None:
        self._idle = None
        if self.written.seq != self.acked:
            self.send()

    def send(self) -> None:
        self.acked = self.written.seq
        if not self.writer.is_closing():
            self.writer.write(netstring(b"ack %d" % self.acked))

    def cancel(self) -> None:
        if self._idle is not None:
            self._idle.cancel()
            self._idle = None


async def collect(host: str, port: int, sink: JsonLines, on_record=None, key: str | None = None) -> None:
    """Read evapi forever, reconnecting whenever Kamailio is away.

    With KEY, the first message is ``auth KEY``: Kamailio answers ``ok`` and
    sends call events to this connection only then (kamailio-cdr.cfg,
    event_route[evapi:message-received]); to a wrong key it says nothing.
    Then ``ack SEQ`` (the seq of the last event written) every ACK_EVERY
    events and when idle: Kamailio keeps each event until then, and holds
    back what goes past its window. (Events without a seq, from an older
    config: ``ack N``, N events received on this connection, every ACK_EVERY.)
    """
    written = Written(sink.last_id())
    if written.run is not None:
        log.info("c4 cdr: the last record in %s is event %d of Kamailio run %s", sink.path, written.seq, written.run)
    delay = 0.1
    while True:
        try:
            reader, writer = await asyncio.open_connection(host, port)
        except OSError:
            await asyncio.sleep(delay)
            delay = min(1.0, delay * 2)
            continue
        delay = 0.1
        authenticated = key is None
        if authenticated:
            log.warning("c4 cdr: connected to Kamailio's evapi at %s:%d", host, port)
        try:
            events = read_netstrings(reader)
            if key is not None:
                writer.write(netstring(b"auth " + key.encode()))
                await writer.drain()
                answer = await asyncio.wait_for(anext(events), AUTH_TIMEOUT)
                if answer != AUTH_OK:
                    raise ValueError(f"Kamailio answered {answer[:40]!r} to the authentication")
                authenticated = True
                log.warning("c4 cdr: connected to Kamailio's evapi at %s:%d (authenticated)", host, port)
            count = 0
            acker = Acker(writer, written)
            try:
                async for data in events:
                    if handle(data, sink, written) is not None and on_record is not None:
                        on_record()
                    count += 1
                    if key is None:
                        continue
                    if not written.numbered:  # events without a seq (an older config): it counts them
                        if count % ACK_EVERY == 0:
                            writer.write(netstring(b"ack %d" % count))
                        continue
                    acker.wrote()
            finally:
                acker.cancel()
        except (asyncio.IncompleteReadError, ConnectionError, ValueError, asyncio.LimitOverrunError, TimeoutError) as exc:
            if authenticated:
                log.warning("c4 cdr: evapi connection closed (%s); reconnecting", type(exc).__name__)
            else:  # the wrong key (another node's secret?), or Kamailio stopping meanwhile
                log.error("c4 cdr: Kamailio's evapi at %s:%d did not accept C4_CDR_KEY (%s); trying again in %.0f s",
                          host, port, type(exc).__name__, REFUSED_DELAY)
                await asyncio.sleep(REFUSED_DELAY)
        finally:
            writer.close()


async def _main(args: argparse.Namespace) -> int:
    host, port = args.evapi
    key = os.environ.get(CDR_KEY_ENV)
    if not key:
        log.error("c4 cdr: $%s is not set: Kamailio sends call events only to a collector that has it "
                  "(c4 kamailio sets it from the deployment secret)", CDR_KEY_ENV)
        return 2
    loop = asyncio.get_running_loop()
    tasks = []
    if args.db:
        sink = JsonLines(Path(args.spool), max_bytes=args.spool_max_mb * 1024 * 1024)
        shipper = Shipper(sink, args.dsn)
        tasks.append(asyncio.ensure_future(shipper.run()))
        on_record = shipper.wake.set
    else:
        sink = JsonLines(Path(args.file))
        on_record = None
    loop.add_signal_handler(signal.SIGHUP, sink.reopen)
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    tasks.append(asyncio.ensure_future(collect(host, port, sink, on_record, key)))
    stopping = asyncio.ensure_future(stop.wait())
    done, _ = await asyncio.wait([stopping, *tasks], return_when=asyncio.FIRST_COMPLETED)
    for task in [stopping, *tasks]:
        task.cancel()
    failed = [task for task in done if task is not stopping]
    if failed:  # a bug: exit (and say why) rather than run on without collecting
        log.error("c4 cdr: stopped by an unexpected error: %r", failed[0].exception())
        return 1
    return 0


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--evapi", type=parse_address, required=True,
                        help=f"Kamailio's evapi socket, HOST:PORT (the key to authenticate there: ${CDR_KEY_ENV})")
    out = parser.add_mutually_exclusive_group(required=True)
    out.add_argument("--file", help="append the records to this JSON-lines file")
    out.add_argument("--db", action="store_true", help="ship the records to the cdrs table of PostgreSQL (--dsn)")
    parser.add_argument("--dsn", default=os.environ.get("C4_DSN"), help="with --db: PostgreSQL DSN (default: $C4_DSN)")
    parser.add_argument("--spool", default="/var/lib/c4/cdr-spool.jsonl", help="with --db: where records wait to be shipped")
    parser.add_argument("--spool-max-mb", type=int, default=1024, help="with --db: the spool's bound; past it new records are dropped")


def run(args: argparse.Namespace) -> int:
    if args.db and not args.dsn:
        print("c4 cdr: --db needs --dsn or $C4_DSN", file=sys.stderr)
        return 2
    if args.spool_max_mb < 1:
        print("c4 cdr: --spool-max-mb must be >= 1", file=sys.stderr)
        return 2
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)
    try:
        return asyncio.run(_main(args))
    except OSError as exc:
        print(f"c4 cdr: {exc}", file=sys.stderr)
        return 1
