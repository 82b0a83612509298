"""Call records: the record made from Kamailio's event (c4kemi/call/cdr.py) and c4 cdr's writing (c4kemi/call/cdr_collector.py)."""

from __future__ import annotations

import asyncio
import os

import orjson
import pytest

from c4kemi.call.cdr import EventError, make_record
from c4kemi.call.cdr_collector import JsonLines, Shipper, collect, read_netstrings
from c4kemi.db.cdrs import insert_records, select_records
from c4kemi.db.documents import connect

CALL = {
    "tenant": "acme", "direction": "outbound", "tenant_max": -1, "source": "acme-pbx", "source_kind": "ipbx",
    "source_max": -1, "source_cps": -1, "calling": "39611111111", "called": "39298765432",
    "routes": [{"trunk": "carrier-a-1", "max": -1, "cps": -1, "name": "carrier-a-1", "uri": "sip:192.0.2.10:5060"},
               {"trunk": "carrier-b-1", "max": -1, "cps": -1, "name": "carrier-b-1", "uri": "sip:198.51.100.20:5060"}],
}  # fmt: skip
ANSWERED = {
    "call_id": "a1@pbx", "call": CALL, "invite": "1764178801.100000", "answer": "1764178803.250400",
    "end": "1764178863.750000", "tries": "0:503,1:200", "code": 200, "reason": "OK", "by": "caller", "node": "c4-a",
}


def test_an_answered_call_after_failover():
    assert make_record(ANSWERED, "0" * 32) == {
        "id": "0" * 32, "call_id": "a1@pbx", "tenant": "acme", "direction": "outbound",
        "source": "acme-pbx", "source_kind": "ipbx", "calling": "39611111111", "called": "39298765432",
        "attempts": [
            {"destination": "carrier-a-1", "kind": "trunk", "uri": "sip:192.0.2.10:5060", "code": 503},
            {"destination": "carrier-b-1", "kind": "trunk", "uri": "sip:198.51.100.20:5060", "code": 200},
        ],
        "answered_by": "carrier-b-1",
        "invite_at": "2025-11-26T17:40:01.100Z", "answer_at": "2025-11-26T17:40:03.250Z", "end_at": "2025-11-26T17:41:03.750Z",
        "duration_ms": 60500, "code": 200, "reason": "OK", "ended_by": "caller", "node": "c4-a",
    }  # fmt: skip


def test_a_refusal_without_a_call_and_an_unanswered_call():
    refused = make_record({"call_id": "x", "invite": "1764178801.1", "end": "1764178801.2", "code": 403,
                           "reason": "Forbidden", "by": "router"}, "1" * 32)
    assert (refused["tenant"], refused["attempts"], refused["answered_by"], refused["duration_ms"]) == (None, [], None, 0)
    busy = make_record({**ANSWERED, "answer": None, "tries": "0:486", "code": 486, "reason": "Busy Here", "by": "callee"}, "2")
    assert (busy["answered_by"], busy["answer_at"], busy["duration_ms"], busy["ended_by"]) == (None, None, 0, "callee")
    assert busy["attempts"] == [{"destination": "carrier-a-1", "kind": "trunk", "uri": "sip:192.0.2.10:5060", "code": 486}]


def test_a_route_skipped_because_its_target_was_down_is_an_attempt_without_a_code():
    record = make_record({**ANSWERED, "tries": "0:down,1:200"}, "3")
    first, second = record["attempts"]
    assert first["code"] is None and first["skipped"] == "down" and first["destination"] == "carrier-a-1"
    assert second["code"] == 200 and "skipped" not in second
    assert record["answered_by"] == second["destination"]


@pytest.mark.parametrize(
    "change, error",
    [
        ({"tries": "0:up"}, "bad 'tries' entry"),
        ({"code": "200"}, "bad 'code'"),
        ({"code": 99}, "bad 'code'"),
        ({"invite": None}, "missing 'invite'"),
        ({"end": "soon"}, "'end' is not a time"),
        ({"end": "-5"}, "'end' is out of range"),
        ({"tries": "0:200,x"}, "bad 'tries' entry"),
    ],
)
def test_a_malformed_event_is_refused(change, error):
    with pytest.raises(EventError, match=error):
        make_record({**ANSWERED, **change}, "3")


def test_untrusted_members_of_the_wrong_type_are_left_out():
    record = make_record({**ANSWERED, "call_id": 5, "reason": ["x"], "by": "someone", "call": "nope", "tries": "7:200"}, "4")
    assert (record["call_id"], record["reason"], record["ended_by"], record["tenant"]) == ("", "", None, None)
    assert record["attempts"] == [{"destination": None, "kind": None, "uri": None, "code": 200}]  # no such route


def test_every_text_of_a_record_is_bounded():
    """A peer's 50 KB Call-ID (or reason, or number) makes a record of a few hundred bytes, not 50 KB."""
    huge = "x" * 50_000
    call = {**CALL, "tenant": huge, "source": huge, "direction": huge, "calling": huge, "called": huge,
            "routes": [{**CALL["routes"][0], "name": huge, "uri": huge}]}
    record = make_record({**ANSWERED, "call_id": huge, "reason": huge, "call": call, "tries": "0:486"}, "6")
    assert len(record["call_id"]) == 256 and len(record["reason"]) == 128
    assert (len(record["tenant"]), len(record["source"]), len(record["direction"])) == (128, 128, 16)
    assert (len(record["calling"]), len(record["called"])) == (64, 64)
    assert (len(record["attempts"][0]["destination"]), len(record["attempts"][0]["uri"])) == (128, 256)
    assert len(orjson.dumps(record)) < 2000
    with pytest.raises(EventError, match="bad 'tries' entry"):
        make_record({**ANSWERED, "tries": "9" * 50_000 + ":200"}, "7")


def test_the_file_is_reopened_when_rotated(tmp_path):
    path = tmp_path / "cdr.jsonl"
    sink = JsonLines(path)
    sink.append({"n": 1})
    os.rename(path, tmp_path / "cdr.jsonl.1")  # logrotate's default: rename, then the writer makes a new file
    sink.append({"n": 2})
    path.unlink()
    sink.append({"n": 3})
    assert (tmp_path / "cdr.jsonl.1").read_bytes() == b'{"n":1}\n'
    assert path.read_bytes() == b'{"n":3}\n'


def test_a_full_spool_drops_new_records_and_counts_them(tmp_path, caplog):
    sink = JsonLines(tmp_path / "spool.jsonl", max_bytes=20)
    assert sink.append({"n": 1}) and sink.append({"n": 2})  # 8 bytes each
    assert not sink.append({"n": 3}) and not sink.append({"n": 4})
    assert sink.dropped == 2
    assert (tmp_path / "spool.jsonl").read_bytes() == b'{"n":1}\n{"n":2}\n'
    assert "is full" in caplog.text


def test_netstrings_are_read_and_a_bad_one_stops_the_stream():
    async def read(data: bytes) -> list[bytes]:
        reader = asyncio.StreamReader()
        reader.feed_data(data)
        reader.feed_eof()
        out = []
        try:
            async for item in read_netstrings(reader):
                out.append(item)
        except (asyncio.IncompleteReadError, ValueError) as exc:
            out.append(type(exc).__name__.encode())
        return out

    assert asyncio.run(read(b"3:abc,0:,2:{}")) == [b"abc", b"", b"IncompleteReadError"]
    assert asyncio.run(read(b"3:abcX")) == [b"ValueError"]
    assert asyncio.run(read(b"99999999999:x")) == [b"ValueError"]


def test_the_collector_writes_what_evapi_sends_and_reconnects(tmp_path):
    """A real TCP server stands in for Kamailio's evapi; it closes the first connection."""
    path = tmp_path / "cdr.jsonl"
    event = orjson.dumps(ANSWERED)
    frame = str(len(event)).encode() + b":" + event + b","

    async def scenario():
        connections = []

        async def evapi(reader, writer):
            connections.append(writer)
            writer.write(frame + b"5:nope!," if len(connections) == 1 else frame)  # a malformed event is skipped
            await writer.drain()
            if len(connections) == 1:
                writer.close()

        server = await asyncio.start_server(evapi, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        task = asyncio.ensure_future(collect("127.0.0.1", port, JsonLines(path)))
        for _ in range(100):
            if path.exists() and len(path.read_bytes().splitlines()) >= 2:
                break
            await asyncio.sleep(0.05)
        task.cancel()
        server.close()

    asyncio.run(scenario())
    records = [orjson.loads(line) for line in path.read_bytes().splitlines()]
    assert [r["call_id"] for r in records] == ["a1@pbx", "a1@pbx"] and records[0]["id"] != records[1]["id"]


def test_the_collector_authenticates_then_acknowledges(tmp_path, monkeypatch):
    """With a key: "auth KEY" first, events only after Kamailio's "ok", "ack N" every 100 events;
    a Kamailio that says nothing to the key (a wrong one) is left and tried again."""
    import c4kemi.call.cdr_collector as collector

    monkeypatch.setattr(collector, "AUTH_TIMEOUT", 0.2)
    monkeypatch.setattr(collector, "REFUSED_DELAY", 0.05)
    path = tmp_path / "cdr.jsonl"
    event = orjson.dumps(ANSWERED)
    frame = str(len(event)).encode() + b":" + event + b","

    async def scenario():
        heard = []

        async def evapi(reader, writer):
            heard.append(await reader.readuntil(b","))
            if len(heard) == 1:  # the first connection: silence, as to a wrong key
                await asyncio.sleep(1)
                writer.close()
                return
            writer.write(b"2:ok," + frame * 150)
            await writer.drain()
            heard.append(await reader.readuntil(b","))
            await asyncio.sleep(1)

        server = await asyncio.start_server(evapi, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        task = asyncio.ensure_future(collect("127.0.0.1", port, JsonLines(path), key="k3y"))
        for _ in range(100):
            if len(heard) == 3:
                break
            await asyncio.sleep(0.05)
        task.cancel()
        server.close()
        return heard

    heard = asyncio.run(scenario())
    assert heard == [b"8:auth k3y,", b"8:auth k3y,", b"7:ack 100,"]
    assert len(path.read_bytes().splitlines()) == 150


def test_the_collector_wants_its_key(tmp_path, monkeypatch, caplog):
    import argparse

    from c4kemi.call.cdr_collector import _main

    monkeypatch.delenv("C4_CDR_KEY", raising=False)
    args = argparse.Namespace(evapi=("127.0.0.1", 9), db=False, file=str(tmp_path / "cdr.jsonl"))
    assert asyncio.run(_main(args)) == 2
    assert "$C4_CDR_KEY is not set" in caplog.text


def test_shipping_stores_each_record_once_and_empties_the_spool(tmp_path, pg_dsn):
    spool = JsonLines(tmp_path / "spool.jsonl")
    records = [make_record({**ANSWERED, "call_id": f"c{i}"}, f"{i:032x}") for i in range(3)]
    for record in records:
        spool.append(record)

    async def scenario():
        conn = await connect(pg_dsn)
        try:
            await insert_records(conn, records[:1])  # shipped before a crash that lost the offset
            shipper = Shipper(spool, pg_dsn)
            task = asyncio.ensure_future(shipper.run())
            shipper.wake.set()
            for _ in range(100):
                if shipper.shipped == 3:
                    break
                await asyncio.sleep(0.05)
            task.cancel()
            await shipper._close()
            return await select_records(conn, tenant="acme", since=None, until=None, number=None, after=None, limit=10)
        finally:
            await conn.close()

    stored = asyncio.run(scenario())
    assert [r["call_id"] for r in stored] == ["c0", "c1", "c2"]
    assert stored[1] == records[1]  # the row reads back as the record
    assert spool.path.stat().st_size == 0


def test_a_record_that_cannot_be_written_is_logged_and_the_next_one_is(tmp_path, caplog, monkeypatch):
    from c4kemi.call.cdr_collector import handle

    sink = JsonLines(tmp_path / "cdr.jsonl")
    real = sink.append
    monkeypatch.setattr(sink, "append", lambda record: (_ for _ in ()).throw(OSError(28, "No space left on device")))
    assert handle(orjson.dumps(ANSWERED), sink) is None
    assert "cannot write the record of a1@pbx" in caplog.text
    monkeypatch.setattr(sink, "append", real)
    assert handle(orjson.dumps(ANSWERED), sink)["call_id"] == "a1@pbx"
