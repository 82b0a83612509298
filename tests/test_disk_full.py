"""A full disk loses nothing silently: the table feed, the CDR file and the spool, on a real small tmpfs.

Each test fills a 256 KiB tmpfs with a filler file, has a write refused
(ENOSPC, or a write cut short where the last free page ends: tmpfs copies
what fits into the page a file already has), frees the space and checks
that what comes next is taken, with no corrupt line and nothing twice.
Mounting needs root (CI runs as root); elsewhere these tests are skipped.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import errno
import logging
import os
import subprocess
import sys
import time
import uuid
from pathlib import Path

import orjson
import pytest

from c4kemi.call import cdr_collector
from c4kemi.call.cdr import make_record
from c4kemi.call.cdr_collector import JsonLines, Shipper
from c4kemi.core.document import validate_document
from c4kemi.core.table import compile_validated
from c4kemi.db import source as source_module
from c4kemi.db.documents import connect
from c4kemi.db.source import FeedPublisher
from c4kemi.sources import feed_writer as feed_module
from c4kemi.sources.feed_reader import FeedTableSource
from c4kemi.sources.feed_writer import FeedWriter
from tables import document


class Disk:
    """A mounted tmpfs and the filler file that takes all its free space."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.filler = path / "filler"

    def fill(self) -> None:
        """Take every free page: the next write that needs a new one fails, or stops short where the last page ends."""
        with open(self.filler, "ab", buffering=0) as out:
            while True:
                try:
                    out.write(b"\0" * 4096)
                except OSError as exc:
                    assert exc.errno == errno.ENOSPC
                    return

    def free(self) -> None:
        self.filler.unlink()


@pytest.fixture
def disk(tmp_path):
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    mount = tmp_path / "disk"
    mount.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256k,mode=0700", "tmpfs", str(mount)], check=True)
    yield Disk(mount)
    subprocess.run(["umount", "--lazy", str(mount)], check=True)  # lazy: a failed test may leave a file open


def with_dids(count: int, start: int = 0, doc: dict | None = None) -> dict:
    """The test document with ``count`` more DIDs: 200 of them are a change-set line of some 14 KB, more than a page."""
    doc = document() if doc is None else doc
    doc["dids"] += [{"tenant": "acme", "prefix": f"3977{n:05d}", "ipbx": "acme-pbx"} for n in range(start, start + count)]
    return doc


def version_of(doc: dict) -> str:
    return compile_validated(validate_document(copy.deepcopy(doc))).version


def change_sets(path: Path) -> list[int]:
    """The seq of each line of a changes file; every line must be whole JSON."""
    data = path.read_bytes()
    assert data == b"" or data.endswith(b"\n")
    return [orjson.loads(line)["seq"] for line in data.splitlines()]


@contextlib.contextmanager
def short_writes(monkeypatch, fd: int):
    """os.write writes half of what it is given to ``fd``, and says so (any other file as usual)."""
    real = os.write
    with monkeypatch.context() as patch:
        patch.setattr(os, "write", lambda to, data: real(to, data[:len(data) // 2] if to == fd else data))
        yield


def started_feed(disk: Disk) -> tuple[Path, FeedWriter, FeedTableSource]:
    feed = disk.path / "feed"
    writer = FeedWriter(feed)
    writer.publish(document())
    writer.publish(with_dids(1, start=99_999))  # a few hundred bytes in the changes file: its page has room left
    return feed, writer, FeedTableSource(feed, check_interval=0)


# The table feed (c4 feed, c4 db follow): a refused publish leaves the writer and the files as they were.


def test_a_change_set_the_full_disk_refuses_changes_nothing_and_later_ones_are_taken(disk):
    feed, writer, reader = started_feed(disk)
    changes = feed / "changes-1.jsonl"
    disk.fill()
    refused = with_dids(200, doc=with_dids(1, start=99_999))
    size, table, before = changes.stat().st_size, reader.current(), writer.document()
    for attempt in (1, 2):  # refused, and again while the disk is still full
        with pytest.raises(OSError):
            writer.publish(copy.deepcopy(refused))
        assert (writer.seq, writer.failed_writes, changes.stat().st_size) == (1, attempt, size)
        assert writer.document() == before
        assert reader.refresh() is False and reader.current() is table
    disk.free()
    assert writer.publish(copy.deepcopy(refused)) == "changes"  # the one refused, retried
    later = with_dids(1, start=500, doc=copy.deepcopy(refused))
    assert writer.publish(copy.deepcopy(later)) == "changes"
    assert change_sets(changes) == [1, 2, 3]
    assert reader.refresh() is True
    assert reader.current().version == version_of(later) and reader.counters.failed_reloads == 0
    writer.close()


def test_a_new_generation_the_full_disk_refuses_is_not_pointed_to(disk):
    feed, writer, reader = started_feed(disk)
    disk.fill()
    new_trunk = with_dids(200, doc=with_dids(1, start=99_999))  # a snapshot of some 20 KB
    new_trunk["trunks"][0]["fr_timer"] = 1000
    pointer = (feed / "current").read_bytes()
    with pytest.raises(OSError):
        writer.publish(copy.deepcopy(new_trunk))
    assert (writer.generation, writer.seq) == (1, 1)
    assert (feed / "current").read_bytes() == pointer
    assert sorted(p.name for p in feed.iterdir()) == ["changes-1.jsonl", "current", "snapshot-1.json"]  # no temporary left
    assert writer.failed_writes == 1
    disk.free()
    one_more = with_dids(1, start=500, doc=with_dids(1, start=99_999))
    assert writer.publish(copy.deepcopy(one_more)) == "changes" and writer.seq == 2  # generation 1 goes on
    assert reader.refresh() is True and reader.current().version == version_of(one_more)
    assert writer.publish(copy.deepcopy(new_trunk)) == "snapshot" and writer.generation == 2
    assert reader.refresh() is True and reader.generation == 2 and reader.current().version == version_of(new_trunk)
    writer.close()


def test_a_pointer_that_cannot_be_replaced_leaves_the_generation_as_it_was(tmp_path, monkeypatch):
    """The last write of a new generation is the pointer's: refused, the snapshot written before it goes too."""
    feed = tmp_path / "feed"
    writer = FeedWriter(feed)
    writer.publish(document())
    real = feed_module.write_atomically

    def no_pointer(path, data):
        if path.name == "current":
            raise OSError(errno.ENOSPC, "No space left on device")
        real(path, data)

    monkeypatch.setattr(feed_module, "write_atomically", no_pointer)
    new_trunk = document()
    new_trunk["trunks"][0]["fr_timer"] = 1000
    with pytest.raises(OSError, match="No space left"):
        writer.publish(copy.deepcopy(new_trunk))
    assert (writer.generation, writer.seq) == (1, 0)
    assert sorted(p.name for p in feed.iterdir()) == ["changes-1.jsonl", "current", "snapshot-1.json"]
    monkeypatch.undo()
    assert writer.publish(with_dids(1)) == "changes"  # still generation 1, as the readers know it
    assert FeedTableSource(feed).current().version == version_of(with_dids(1))
    writer.close()


@pytest.mark.parametrize("how", ["publish", "publish_changes"])
def test_a_set_of_several_lines_refused_is_published_again_as_a_new_generation(disk, monkeypatch, how):
    """A set cut short may have had whole lines read by a worker still in the middle of it: not retried in place."""
    monkeypatch.setattr(feed_module, "LINE", 20)  # 400 DIDs: 20 lines, the first ones fit where the file's page ends
    feed, writer, reader = started_feed(disk)
    changes = feed / "changes-1.jsonl"
    size = changes.stat().st_size
    disk.fill()
    bigger = with_dids(400, doc=with_dids(1, start=99_999))

    def publish() -> str:
        if how == "publish":
            return writer.publish(copy.deepcopy(bigger))
        new = {d["prefix"]: d for d in bigger["dids"][-400:]}
        return writer.publish_changes(copy.deepcopy(new), {})

    with pytest.raises(OSError):
        publish()
    assert (writer.generation, writer.seq, changes.stat().st_size) == (1, 1, size)
    disk.free()
    assert publish() == "snapshot" and writer.generation == 2
    assert writer.publish(with_dids(1, start=500, doc=copy.deepcopy(bigger))) == "changes"  # and change sets again after it
    assert reader.refresh() is True and reader.generation == 2
    assert reader.current().version == version_of(with_dids(1, start=500, doc=copy.deepcopy(bigger)))
    writer.close()


def test_a_change_set_written_short_is_cut_off_and_refused(tmp_path, monkeypatch):
    """A real short write happens on the tmpfs above only where a page ends; here it is certain: os.write, patched,
    writes half of what it is given and says so."""
    feed = tmp_path / "feed"
    writer = FeedWriter(feed)
    writer.publish(document())
    reader = FeedTableSource(feed, check_interval=0)
    with short_writes(monkeypatch, writer._out), pytest.raises(OSError, match="short"):
        writer.publish(with_dids(1))
    assert (writer.seq, (feed / "changes-1.jsonl").stat().st_size) == (0, 0)
    assert writer.publish(with_dids(1)) == "changes" and writer.seq == 1
    assert reader.refresh() is True and reader.current().version == version_of(with_dids(1))
    writer.close()


def test_c4_db_follow_publishes_a_refused_change_set_once_space_is_back(disk, monkeypatch):
    monkeypatch.setattr(source_module, "PUBLISH_RETRY", 0.1, raising=False)
    feed = disk.path / "feed"
    doc = with_dids(1, start=99_999)

    async def scenario():
        publisher = FeedPublisher(FeedWriter(feed), disk.path / "table.json")
        assert await publisher.document(copy.deepcopy(doc), 1)
        disk.fill()
        new = {d["prefix"]: d for d in with_dids(200)["dids"][-200:]}
        taking = asyncio.ensure_future(publisher.changes(new, {}, 2))
        await asyncio.sleep(0.5)
        assert not taking.done()  # retried, not given up: the change log moves on only once it is published
        disk.free()
        assert await asyncio.wait_for(taking, 5) is True
        publisher.writer.close()

    asyncio.run(scenario())
    assert FeedTableSource(feed).current().version == version_of(with_dids(200, doc=copy.deepcopy(doc)))


def test_c4_feed_publishes_the_table_once_space_is_back(disk, tmp_path):
    table = tmp_path / "table.json"
    table.write_bytes(orjson.dumps(document()))
    feed = disk.path / "feed"
    process = subprocess.Popen([sys.executable, "-m", "c4kemi.cli", "feed", "--table", str(table), "--out", str(feed),
                                "--interval", "0.05"], stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 30
        while not (feed / "current").exists():
            assert time.monotonic() < deadline and process.poll() is None
            time.sleep(0.05)
        disk.fill()
        table.write_bytes(orjson.dumps(with_dids(200)))
        time.sleep(1)
        assert process.poll() is None
        assert FeedTableSource(feed).current().version == version_of(document())
        disk.free()
        while FeedTableSource(feed).current().version != version_of(with_dids(200)):
            assert time.monotonic() < deadline and process.poll() is None
            time.sleep(0.05)
    finally:
        process.terminate()
        log = process.communicate(timeout=10)[1].decode()
    assert log.count("No space left on device") == 1, log  # once per outage, not once per look


# The CDR file and the spool (c4 cdr): a record the disk refuses waits in memory, and is written once, whole.


def records(start: int, count: int) -> list[dict]:
    return [{"id": f"{n:032x}", "call_id": f"call-{n}", "attempts": "x" * 500} for n in range(start, start + count)]


def call_ids(path: Path) -> list[str]:
    """The call_id of each line; every line must be whole JSON."""
    data = path.read_bytes()
    assert data == b"" or data.endswith(b"\n")
    return [orjson.loads(line)["call_id"] for line in data.splitlines()]


def test_cdr_records_the_full_disk_refuses_wait_and_are_written_once_space_is_back(disk, caplog):
    path = disk.path / "cdr.jsonl"
    sink = JsonLines(path)
    for record in records(0, 3):
        assert sink.append(record)
    disk.fill()
    for record in records(3, 20):  # 12 KB: more than the page the file has
        assert sink.append(record)  # kept: written, or waiting
    assert sink.backlog and sink.failed_writes >= 1
    written = call_ids(path)
    assert written == [f"call-{n}" for n in range(len(written))]
    assert [r.levelname for r in caplog.records if "cannot write" in r.message] == ["ERROR"]  # once per outage
    disk.free()
    assert sink.append(records(23, 1)[0])
    assert not sink.backlog and sink.lost == 0
    assert call_ids(path) == [f"call-{n}" for n in range(24)]
    assert any("writing to" in r.message and "again" in r.message for r in caplog.records)


def test_cdr_records_beyond_the_backlog_are_dropped_and_counted(disk, caplog):
    path = disk.path / "cdr.jsonl"
    sink = JsonLines(path, backlog_max=5)
    disk.fill()
    kept = [sink.append(record) for record in records(0, 12)]
    written = len(call_ids(path))  # what fitted in the file's first page
    assert kept == [True] * (written + 5) + [False] * (12 - written - 5)
    assert sink.lost == 12 - written - 5 and len(sink.backlog) == 5
    disk.free()
    sink.flush()
    assert call_ids(path) == [f"call-{n}" for n in range(written + 5)]
    assert "dropped" in caplog.text


def test_cdr_records_waiting_are_written_by_the_timer_without_a_new_record(disk, monkeypatch):
    monkeypatch.setattr(cdr_collector, "RETRY_INTERVAL", 0.1, raising=False)
    path = disk.path / "cdr.jsonl"

    async def scenario():
        sink = JsonLines(path)
        disk.fill()
        for record in records(0, 10):
            sink.append(record)
        await asyncio.sleep(0.3)
        assert sink.backlog  # the disk is still full
        disk.free()
        await asyncio.sleep(0.5)
        assert not sink.backlog

    asyncio.run(scenario())
    assert call_ids(path) == [f"call-{n}" for n in range(10)]


def test_a_cdr_record_written_short_is_cut_off_and_written_again(tmp_path, monkeypatch):
    """A real short write happens on the tmpfs above only where a page ends; here it is certain: os.write, patched,
    writes half of what it is given and says so."""
    path = tmp_path / "cdr.jsonl"
    sink = JsonLines(path)
    sink.append(records(0, 1)[0])
    with short_writes(monkeypatch, sink._file.fileno()):
        assert sink.append(records(1, 1)[0])
    assert call_ids(path) == ["call-0"] and len(sink.backlog) == 1 and sink.failed_writes == 1
    sink.append(records(2, 1)[0])
    assert call_ids(path) == ["call-0", "call-1", "call-2"]


def test_the_spool_offset_the_full_disk_refuses_stays_as_it_was(disk, caplog):
    spool = JsonLines(disk.path / "spool.jsonl")
    shipper = Shipper(spool, "postgresql://unused")
    shipper._save_offset(123)
    disk.fill()
    assert shipper._save_offset(456) is False  # not an exception: that would stop the shipping for good
    assert shipper.offset_path.read_text() == "123"
    assert sorted(p.name for p in disk.path.iterdir()) == ["filler", "spool.jsonl", "spool.jsonl.offset"]  # no temporary left
    assert shipper.failed_writes == 1 and "cannot save" in caplog.text
    disk.free()
    assert shipper._save_offset(456) and shipper.offset_path.read_text() == "456"


def test_the_spool_ships_each_record_once_when_its_offset_could_not_be_saved(disk, pg_dsn, caplog):
    caplog.set_level(logging.INFO)
    spool = JsonLines(disk.path / "spool.jsonl")
    event = {"invite": "1764178801.1", "end": "1764178801.2", "code": 403, "reason": "Forbidden", "by": "router"}
    for n in range(5):
        spool.append(make_record({**event, "call_id": f"call-{n}"}, uuid.uuid4().hex))
    disk.fill()

    async def scenario():
        shipper = Shipper(spool, pg_dsn)
        shipper.wake.set()
        running = asyncio.ensure_future(shipper.run())
        try:
            deadline = time.monotonic() + 20
            while len(await stored()) < 5:
                assert time.monotonic() < deadline and not running.done()
                await asyncio.sleep(0.05)
            await asyncio.sleep(1)  # shipped, the offset refused: shipped again, not given up
            assert not running.done() and not shipper.offset_path.exists()
            disk.free()
            while spool.path.stat().st_size:  # all shipped: emptied
                assert time.monotonic() < deadline and not running.done()
                await asyncio.sleep(0.05)
        finally:
            running.cancel()
            await shipper._close()
        assert shipper.failed_writes >= 1
        return await stored()

    async def stored() -> list[str]:
        conn = await connect(pg_dsn)
        try:
            return [row["call_id"] for row in await conn.fetch("SELECT call_id FROM cdrs ORDER BY call_id")]
        finally:
            await conn.close()

    assert asyncio.run(scenario()) == [f"call-{n}" for n in range(5)]  # each once
    assert spool.path.with_name("spool.jsonl.offset").read_text() == "0"
