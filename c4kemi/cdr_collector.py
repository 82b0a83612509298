"""``c4 cdr``: collect the call events Kamailio sends through evapi and write the records.

    c4 cdr --evapi 127.0.0.1:PORT --file /var/log/c4/cdr.jsonl
    c4 cdr --evapi 127.0.0.1:PORT --db [--dsn DSN] --spool /var/lib/c4/cdr-spool.jsonl [--spool-max-mb 1024]

``c4 kamailio --cdr-file`` / ``--cdr-db`` starts it before Kamailio and stops it
after. It connects to Kamailio's evapi socket (and reconnects, every 0.1 to
1 s, while Kamailio is not there), reads one netstring per finished call,
makes the record (c4kemi/cdr.py) and appends it as one JSON line:

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

Everything runs in one asyncio loop in one process: evapi reading and file
writes never wait on the database.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import sys
import uuid
from pathlib import Path

import orjson

from .cdr import EventError, make_record

__all__ = ["add_arguments", "run"]

log = logging.getLogger("c4.cdr")

MAX_EVENT = 1 << 20  # bytes: an event is a few hundred
BATCH_LINES = 500
RETRY_MAX = 5.0  # seconds between attempts to ship while PostgreSQL is down


def parse_address(text: str) -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    if not sep or not host or not port.isdigit():
        raise argparse.ArgumentTypeError(f"expected HOST:PORT, got {text!r}")
    return host, int(port)


class JsonLines:
    """An append-only JSON-lines file, reopened when rotated away; optionally bounded."""

    def __init__(self, path: Path, max_bytes: int | None = None) -> None:
        self.path = path
        self.max_bytes = max_bytes
        self.dropped = 0
        self._file = None
        self.reopen()

    def reopen(self) -> None:
        if self._file is not None:
            self._file.close()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._file = open(self.path, "ab", buffering=0)
        os.chmod(self.path, 0o640)

    def _rotated(self) -> bool:
        try:
            return os.stat(self.path).st_ino != os.fstat(self._file.fileno()).st_ino
        except FileNotFoundError:
            return True

    def append(self, record: dict) -> bool:
        line = orjson.dumps(record) + b"\n"
        if self._rotated():
            self.reopen()
        if self.max_bytes is not None and os.fstat(self._file.fileno()).st_size + len(line) > self.max_bytes:
            self.dropped += 1
            if self.dropped == 1 or self.dropped % 1000 == 0:
                log.error("c4 cdr: spool %s is full (%d bytes): %d record(s) dropped so far", self.path, self.max_bytes, self.dropped)
            return False
        self._file.write(line)  # one write per line: O_APPEND keeps lines whole
        return True


class Shipper:
    """Ships the spool to PostgreSQL's ``cdrs`` table; the shipped offset is kept beside the spool."""

    def __init__(self, spool: JsonLines, dsn: str) -> None:
        self.spool = spool
        self.dsn = dsn
        self.offset_path = spool.path.with_name(spool.path.name + ".offset")
        self.wake = asyncio.Event()
        self.shipped = 0
        self._conn = None

    def _offset(self) -> int:
        try:
            return int(self.offset_path.read_text() or 0)
        except (FileNotFoundError, ValueError):
            return 0

    def _save_offset(self, offset: int) -> None:
        tmp = self.offset_path.with_name(self.offset_path.name + ".tmp")
        tmp.write_text(str(offset))
        os.replace(tmp, self.offset_path)

    def _pending(self) -> tuple[list[dict], int]:
        """Up to BATCH_LINES whole lines after the offset, and the offset after them."""
        offset = self._offset()
        size = self.spool.path.stat().st_size
        if offset > size:  # emptied after a crash between truncation and saving the offset
            offset = 0
            self._save_offset(0)
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
        from .db.cdrs import insert_records
        from .db.documents import connect

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
            delay = 0.0
            self._save_offset(offset)
            self.shipped += len(records)
            if offset >= self.spool.path.stat().st_size:  # all shipped: empty the spool
                os.truncate(self.spool.path, 0)
                self._save_offset(0)
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


def handle(data: bytes, sink: JsonLines) -> dict | None:
    """One event: the record written, or None (logged) for a malformed event."""
    try:
        record = make_record(orjson.loads(data), uuid.uuid4().hex)
    except (orjson.JSONDecodeError, EventError) as exc:
        log.error("c4 cdr: event refused (%s): %r", exc, data[:300])
        return None
    try:
        sink.append(record)
    except OSError as exc:  # a full disk, say: this record is lost, the next may be written
        log.error("c4 cdr: cannot write the record of %s to %s: %s", record["call_id"], sink.path, exc)
        return None
    return record


async def collect(host: str, port: int, sink: JsonLines, on_record=None) -> None:
    """Read evapi forever, reconnecting whenever Kamailio is away."""
    delay = 0.1
    while True:
        try:
            reader, writer = await asyncio.open_connection(host, port)
        except OSError:
            await asyncio.sleep(delay)
            delay = min(1.0, delay * 2)
            continue
        delay = 0.1
        log.warning("c4 cdr: connected to Kamailio's evapi at %s:%d", host, port)
        try:
            async for data in read_netstrings(reader):
                if handle(data, sink) is not None and on_record is not None:
                    on_record()
        except (asyncio.IncompleteReadError, ConnectionError, ValueError, asyncio.LimitOverrunError) as exc:
            log.warning("c4 cdr: evapi connection closed (%s); reconnecting", type(exc).__name__)
        finally:
            writer.close()


async def _main(args: argparse.Namespace) -> int:
    host, port = args.evapi
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
    tasks.append(asyncio.ensure_future(collect(host, port, sink, on_record)))
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
    parser.add_argument("--evapi", type=parse_address, required=True, help="Kamailio's evapi socket, HOST:PORT")
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
