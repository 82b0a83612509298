"""The table feed's files: generations, torn lines, staggered rebuilds, a restarted writer.

The tables a reader builds are compared with a full compile of the same
document in tests/test_incremental.py; this is about how the files behave.
"""

from __future__ import annotations

import copy
import gc
import math
import os
import stat
import threading

import orjson
import pytest

from c4kemi.core import steps
from c4kemi.core.document import DocumentError, validate_document
from c4kemi.core.table import compile_validated
from c4kemi.sources import feed_reader, feed_writer
from c4kemi.sources.feed_reader import FeedTableSource
from c4kemi.sources.feed_writer import FeedWriter
from tables import document


def routed_prefix(table, number: str) -> str | None:
    """The prefix of the DID a call to ``number`` goes to (these tables' DIDs have no match: the longest)."""
    did = table.find_did(number, None)
    return None if did is None else next(prefix for prefix, entry in table.dids.candidates(number) if entry is did)


def with_did(prefix: str) -> dict:
    doc = document()
    doc["dids"].append({"tenant": "acme", "prefix": prefix, "ipbx": "acme-pbx"})
    return doc


def started(tmp_path):
    feed = tmp_path / "feed"
    writer = FeedWriter(feed)
    writer.publish(document())
    return feed, writer, FeedTableSource(feed, check_interval=0)


def test_the_feed_directory_is_private_and_a_did_is_one_line(tmp_path):
    feed, writer, reader = started(tmp_path)
    assert stat.S_IMODE(os.stat(feed).st_mode) == 0o700
    assert writer.publish(with_did("3977")) == "changes"
    assert writer.publish(with_did("3977")) == "unchanged"
    lines = (feed / "changes-1.jsonl").read_bytes().splitlines()
    assert len(lines) == 1 and b'"3977"' in lines[0]
    assert reader.refresh() is True
    assert routed_prefix(reader.current(), "39771") == "3977"


def test_a_change_set_carries_its_digest_and_readers_take_the_writer_s_word(tmp_path):
    feed, writer, reader = started(tmp_path)
    writer.publish(with_did("3977"))
    expected = compile_validated(validate_document(with_did("3977"))).version
    assert reader.refresh() is True and reader.current().version == expected
    changes = feed / "changes-1.jsonl"
    line = orjson.loads(changes.read_bytes())
    assert isinstance(line["digest"], int)
    # A reader does not digest the entities again: a wrong digest would show in the version ...
    changes.write_bytes(orjson.dumps({**line, "digest": line["digest"] + 1}) + b"\n")
    assert FeedTableSource(feed).current().version != expected
    # ... and a change set without one (an older writer) is digested by the reader.
    changes.write_bytes(orjson.dumps({k: v for k, v in line.items() if k != "digest"}) + b"\n")
    assert FeedTableSource(feed).current().version == expected


def test_a_torn_last_line_is_left_until_it_is_complete(tmp_path):
    feed, writer, reader = started(tmp_path)
    writer.publish(with_did("3977"))
    changes = feed / "changes-1.jsonl"
    line = changes.read_bytes()
    changes.write_bytes(line[:-9])  # the writer died in the middle of its write
    good = reader.current()
    reader.refresh()
    assert reader.current() is good and reader.current().find_did("39771", None) is None
    changes.write_bytes(line)
    assert reader.refresh() is True
    assert routed_prefix(reader.current(), "39771") == "3977"


def test_a_trunk_change_is_a_new_generation_and_old_ones_are_removed(tmp_path):
    feed, writer, reader = started(tmp_path)
    for timer in (1000, 2000, 3000):
        doc = document()
        doc["trunks"][0]["fr_timer"] = timer
        assert writer.publish(doc) == "snapshot"
    assert writer.generation == 4
    assert sorted(p.name for p in feed.glob("snapshot-*")) == ["snapshot-3.json", "snapshot-4.json"]
    assert sorted(p.name for p in feed.glob("changes-*")) == ["changes-3.jsonl", "changes-4.jsonl"]
    assert reader.refresh() is True and reader.generation == 4
    assert reader.current().trunks["carrier-a-1"].fr_timer == 3000


def test_a_worker_spreads_a_new_snapshot_over_calls_and_routes_meanwhile(tmp_path, monkeypatch):
    monkeypatch.setattr(steps, "STEP", 2)  # the test table is small: steps of 2 entities
    feed = tmp_path / "feed"
    writer = FeedWriter(feed)
    writer.publish(document())
    reader = FeedTableSource(feed, check_interval=0, step_budget=0)  # one step per call
    doc = document()
    doc["ipbxs"][0]["targets"] = ["sip:10.0.0.12"]
    writer.publish(doc)
    assert gc.isenabled()
    old = reader.current()  # starts the new generation: its first step
    calls = 1
    while reader.current() is old:
        assert reader.generation == 1  # the old table, whole, until the new one is complete
        assert not gc.isenabled()  # no full collection scans the objects the change is making
        calls += 1
    assert calls > 3  # 4 DIDs and 4 routes in steps of 2
    assert gc.isenabled() and gc.get_freeze_count() > 0  # the new table's objects frozen, the collector back
    assert reader.generation == 2
    assert reader.current().version == compile_validated(validate_document(doc)).version


def test_a_call_s_share_of_pending_work_doubles_with_its_age_up_to_a_cap():
    budget = feed_reader.call_budget
    assert [budget(0.002, age) for age in (0, 4.9, 5, 10, 15)] == [0.002, 0.002, 0.004, 0.008, 0.016]
    assert budget(0.002, 20) == budget(0.002, 3600) == budget(0.002, math.inf) == feed_reader.MAX_CALL_BUDGET
    assert budget(0.05, 0) == budget(0.05, 60) == 0.05  # a budget above the cap is never cut
    assert budget(0, 3600) == 0  # 0: one step per call, for ever


class SteppingClock:
    """A clock that moves 1 ms at each reading: each step of work seems to take 1 ms, and no test waits."""

    def __init__(self) -> None:
        self.now = 0.0
        self.readings = 0

    def __call__(self) -> float:
        self.now += 0.001
        self.readings += 1
        return self.now


def test_a_worker_that_gets_few_calls_does_more_per_call_as_work_ages_but_never_all_at_once(tmp_path, monkeypatch):
    monkeypatch.setattr(steps, "STEP", 1)  # steps of one entity: a 2,000-DID change is thousands of steps
    monkeypatch.setattr(feed_writer, "LINE", 1)
    feed, writer, _ = started(tmp_path)
    clock = SteppingClock()
    reader = FeedTableSource(feed, check_interval=0, step_budget=0.002, clock=clock)
    doc = document()
    doc["dids"] += [{"tenant": "acme", "prefix": f"3980{n:04d}", "ipbx": "acme-pbx"} for n in range(2000)]
    writer.publish(doc)
    shares = []  # clock readings in each call: about one per step (1 ms)
    while not shares or reader.pending:
        before = clock.readings
        reader.current()
        shares.append(clock.readings - before)
        clock.now += 1.0  # one call a second
    # Call i comes about i seconds after the change: its share is call_budget's for that age, in 1 ms steps
    # (plus the two or three readings around them), and never more than the cap: no call did all the rest at once.
    expected = [round(feed_reader.call_budget(0.002, float(i)) * 1000) for i in range(len(shares) - 1)]
    assert all(e <= share <= e + 3 for e, share in zip(expected, shares))
    assert expected[:25:5] == [2, 4, 8, 16, 25] and len(shares) > 100
    assert routed_prefix(reader.current(), "398000011") == "39800001" and gc.isenabled()


def test_a_change_that_breaks_unexpectedly_keeps_the_table_and_the_collector(tmp_path, monkeypatch):
    """Whatever goes wrong while a change is applied, the call routes with the table it has, the
    collector runs again, and the next change is taken in."""
    feed, writer, _ = started(tmp_path)
    reader = FeedTableSource(feed, check_interval=0, step_budget=0)
    good = reader.current()

    def broken(*args, **kwargs):
        yield
        raise AttributeError("a bug in a step")

    with monkeypatch.context() as patch:
        patch.setattr(feed_reader, "apply_changes_steps", broken)
        writer.publish(with_did("3977"))
        while reader.refresh() or reader.pending:
            pass
        assert reader.counters.failed_reloads == 1 and gc.isenabled()  # (current() would start a retry: checked first)
        assert reader.current() is good
    writer.publish(with_did("3978"))
    for _ in range(100):  # the retry under way fails once more, the next one takes both DIDs in
        if reader.current().find_did("39781", None) is not None:
            break
    assert routed_prefix(reader.current(), "39781") == "3978" and not reader.pending and gc.isenabled()


def test_a_gap_in_the_change_sets_keeps_the_table_and_is_counted(tmp_path):
    feed, writer, reader = started(tmp_path)
    good = reader.current()
    with open(feed / "changes-1.jsonl", "ab") as out:
        out.write(b'{"seq": 2, "dids": [["3977", null]], "routes": []}\n')
    assert reader.refresh() is False
    assert reader.counters.failed_reloads == 1 and reader.current() is good


def test_a_restarted_writer_starts_a_new_generation(tmp_path):
    feed, writer, reader = started(tmp_path)
    writer.publish(with_did("3977"))
    with open(feed / "changes-1.jsonl", "ab") as out:
        out.write(b'{"seq": 2, "dids": [["39')  # torn by the crash
    writer.close()
    again = FeedWriter(feed)
    assert again.publish(with_did("3988")) == "snapshot" and again.generation == 2
    assert reader.refresh() is True
    assert reader.current().find_did("39881", None) is not None and reader.current().find_did("39771", None) is None


def test_an_equal_weight_of_another_type_is_a_change(tmp_path):
    """The writer compares entities in place with ==, which takes 1 for 1.0 or True: the checks do not."""
    feed, writer, reader = started(tmp_path)
    doc = document()
    doc["routes"][1]["trunks"][0]["weight"] = 1.0
    assert writer.publish(copy.deepcopy(doc)) == "changes"  # a fresh document each time, as parsed from the file
    reader.refresh()
    assert reader.current().version == compile_validated(validate_document(doc)).version
    assert reader.current().version != compile_validated(validate_document(document())).version
    doc["routes"][1]["trunks"][0]["weight"] = True
    with pytest.raises(DocumentError, match="weight"):
        writer.publish(copy.deepcopy(doc))


def test_a_key_already_in_the_unchanged_part_is_refused(tmp_path):
    feed, writer, reader = started(tmp_path)
    doc = document()
    first = doc["dids"][0]
    doc["dids"].append(dict(first, ipbx="acme-branch"))  # the first DID's prefix again, at the end
    with pytest.raises(DocumentError, match="duplicate"):
        writer.publish(doc)
    doc["routes"].insert(0, dict(doc["routes"][-1]))
    doc["dids"].pop()
    with pytest.raises(DocumentError, match="duplicate"):
        writer.publish(doc)


def test_a_moved_entity_is_no_change_and_an_edit_after_a_refusal_is_whole(tmp_path):
    feed, writer, reader = started(tmp_path)
    doc = document()
    doc["dids"].append(doc["dids"].pop(0))
    assert writer.publish(doc) == "unchanged"
    bad = document()
    bad["dids"][0]["ipbx"] = "no-such-pbx"
    bad["dids"].append({"tenant": "acme", "prefix": "3977", "ipbx": "acme-pbx"})
    with pytest.raises(DocumentError):
        writer.publish(bad)
    fixed = document()  # the refused document's good DID, without the bad one: one change from what was published
    fixed["dids"].append({"tenant": "acme", "prefix": "3977", "ipbx": "acme-pbx"})
    assert writer.publish(fixed) == "changes"
    reader.refresh()
    assert reader.current().version == compile_validated(validate_document(fixed)).version


def test_a_worker_spreads_a_bulk_change_set_over_calls_reading_included(tmp_path, monkeypatch):
    """Reading and compiling the change set (a line a step), then updating the DID index (STEP entities a step)."""
    monkeypatch.setattr(steps, "STEP", 1)
    monkeypatch.setattr(feed_writer, "LINE", 1)
    feed, writer, _ = started(tmp_path)
    reader = FeedTableSource(feed, check_interval=0, step_budget=0)  # one step per call
    doc = document()
    doc["dids"] += [{"tenant": "acme", "prefix": f"3977{i}", "ipbx": "acme-pbx"} for i in range(6)]
    assert writer.publish(doc) == "changes"
    old = reader.current()
    calls = 1
    while reader.current() is old:
        calls += 1
    assert calls >= 2 * 6  # 6 DIDs read and compiled, then put in the index, one a step each time
    assert reader.current().version == compile_validated(validate_document(doc)).version


def test_a_large_change_set_spans_lines_and_is_taken_only_whole(tmp_path, monkeypatch):
    monkeypatch.setattr(feed_writer, "LINE", 2)
    feed, writer, reader = started(tmp_path)
    good = reader.current()
    doc = document()
    doc["dids"] += [{"tenant": "acme", "prefix": f"3977{i}", "ipbx": "acme-pbx"} for i in range(5)]
    assert writer.publish(doc) == "changes"
    changes = feed / "changes-1.jsonl"
    data = changes.read_bytes()
    lines = data.splitlines(keepends=True)
    assert len(lines) == 3 and [b'"more":true' in line for line in lines] == [True, True, False]
    assert all(b'"seq":1' in line for line in lines)
    changes.write_bytes(b"".join(lines[:2]))  # the writer's write not complete yet: two whole lines of three
    reader.refresh()
    assert reader.current() is good and reader.seq == 0
    changes.write_bytes(data)
    assert reader.refresh() is True and reader.seq == 1
    assert reader.current().version == compile_validated(validate_document(doc)).version


def test_a_request_never_steps_the_work_of_c4_serve_s_refresh_thread(tmp_path, monkeypatch):
    """c4 serve: refresh() runs in a thread while requests call current(); the table they get is whole, no step taken."""
    feed, writer, _ = started(tmp_path)
    reader = FeedTableSource(feed, check_interval=math.inf)  # as c4 serve makes it: only its refresh thread reloads
    inside, go_on = threading.Event(), threading.Event()
    real = feed_reader.apply_changes_steps

    def held(*args, **kwargs):
        inside.set()
        go_on.wait(10)
        return (yield from real(*args, **kwargs))

    monkeypatch.setattr(feed_reader, "apply_changes_steps", held)
    writer.publish(with_did("3977"))
    old = reader.current()
    thread = threading.Thread(target=reader.refresh)
    thread.start()
    assert inside.wait(10)
    assert reader.current() is old  # a request meanwhile
    go_on.set()
    thread.join(10)
    assert reader.counters.failed_reloads == 0 and routed_prefix(reader.current(), "39771") == "3977"


def test_dids_of_one_destination_share_one_object_through_every_path(tmp_path):
    """A DID lookup writes the reference count of what it returns: one object per DID copied a page of a
    forked KEMI worker's shared heap per call. DIDs of one tenant, IPBX and match share one Did, whether
    compiled from the snapshot or taken in from a change set (compiled line by line by the reader)."""
    feed, writer, reader = started(tmp_path)
    doc = document()
    doc["dids"] += [{"tenant": "acme", "prefix": f"3978{i}", "ipbx": "acme-pbx"} for i in range(5)]
    doc["dids"] += [{"tenant": "acme", "prefix": f"3979{i}", "ipbx": "acme-branch", "match": "3979[0-9]+"} for i in range(3)]
    assert writer.publish(doc) == "changes"
    reader.refresh()
    for table in (reader.current(), FeedTableSource(feed, check_interval=0).current(), compile_validated(validate_document(doc))):
        entries = table.dids.entries
        assert len({id(did) for did in entries.values()}) == len({(d["tenant"], d["ipbx"], d.get("match")) for d in doc["dids"]})
        assert entries["39780"] is entries["39784"] is entries["39612345"] is table.did_values["acme", "acme-pbx", None]
        assert entries["39790"] is entries["39792"] and entries["39790"].match.pattern == "3979[0-9]+"
