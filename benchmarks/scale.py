"""Carrier-scale benchmark (issue #8): decision speed, cost of a change, memory and start per node.

    .venv/bin/python benchmarks/scale.py [decision|change|pgchange|kamailio|nopause|cow|all] [--dids 1000000] [--routes 100000]

Tables come from benchmarks/generate.py (100 tenants, 1,000 trunks, 5
profiles; ``--dids`` DIDs and ``--routes`` routes). Not a test: the numbers
depend on the machine, so every comparison is measured in one run, side by
side, and medians of repeated runs are reported.

- ``decision`` (goal 5): ``route_json`` (decision + orjson encoding) per
  request at 1k, 100k and 1M DIDs with the same routes and trunks; median
  of each of ``--repeat`` passes over 50,000 requests (half inbound to a
  DID, 40 % outbound through a route, 10 % refused), then the median of
  the pass medians.
- ``change`` (goal 1): a one-DID edit of the file store's document, taken
  in by ``FileTableSource.refresh`` (what every KEMI worker runs), split
  into read+parse, validation and compile; and the compiled table's own
  update for a DID added, changed and removed and a route changed: from a
  whole checked document (``update_table``, what the stores do) and from a
  known change set (``apply_changes``), against a full compile. Then the
  same edit through the table feed (c4kemi/sources/feed.py): the writer's check
  and diff (``c4 feed``, once per node) and one reader's
  ``FeedTableSource.refresh`` (what each KEMI worker and c4 serve pay).
- ``pgchange`` (goal 1 through the API): the generated table imported into
  PostgreSQL (a throwaway server unless ``--dsn``), then one DID changed
  by SQL as the provisioning API writes it: the write with its change-log
  triggers, ``c4 db follow``'s work (read the change log and that DID,
  check it, append a change set) and one reader's ``refresh``; and, once,
  what the follower did before per change (export the whole table, then
  compare it).
- ``kamailio`` (goals 3 and 4): ``c4 kamailio`` in KEMI mode with 1 and
  with 8 SIP workers: the time from the command to the first routed answer
  (a 403 to an INVITE from an unknown source: the table is loaded), and the
  sum of the PSS (/proc/PID/smaps_rollup) of all Kamailio processes.
  ``--c4`` starts another checkout's c4 for a side-by-side baseline.
  ``--modes kemi,http`` also times HTTP mode (``--serve-api``) to its first
  routed answer.
- ``nopause`` (goal 2): in each mode, ``c4 kamailio`` with the generated
  table plus a bench tenant whose calls go to a local sipp callee; a sipp
  caller at ``--rate`` calls/s (benchmarks/sip.py's scenario: setup time
  per call) for three phases: ``--phase`` seconds without changes, then one
  DID edit of the file per second for ``--changes`` seconds, then one bulk
  edit of ``--bulk`` DIDs and ``--phase`` seconds more. Per phase, by the
  time each INVITE was sent: calls answered, p50, p99 and max setup time;
  and the calls sipp counted as failed, with sipp's reasons, the calls
  refused with 503, and the router log's error lines. The log lines of the
  writer and of the readers say what each change cost them. ``--store
  pg`` drives the changes through PostgreSQL instead: the table imported
  into a throwaway server (or ``--dsn``), ``c4 kamailio --dsn``, one DID
  updated per second as the provisioning API writes it, then one UPDATE
  of ``--bulk`` DIDs in one transaction. ``--logs DIR`` keeps the router
  logs. After the changes: the sum of the Kamailio processes' PSS (goal 3
  after changes) and the largest private memory of one of them.
- ``cow`` (goal 3, where a worker's memory goes): a table feed of the
  generated table is loaded in this process, frozen, and a reader is
  forked from it, as Kamailio forks its workers; a writer process forked
  beside it publishes ``--changes`` one-DID edits, then one change set of
  ``--bulk`` DIDs. The reader decides 10,000 inbound calls (a DID hit
  each), takes in the edits, then the bulk set; after each phase, its
  private memory (``Private_Dirty``: pages it copied or made) and PSS.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import random
import re
import socket
import statistics
import sys
import tempfile
import time
from pathlib import Path

import orjson

sys.path.insert(0, str(Path(__file__).resolve().parent))
from generate import COUNTRIES, IPBXS_PER_TENANT, TENANTS, make_document, routing_query  # noqa: E402
from sip import (  # noqa: E402
    CALLEE,
    CALLER,
    ROOT,
    ROUTER,
    finished,
    free_port,
    read_log,
    read_stat,
    start_callee,
    start_caller,
    stop,
    wait_options,
)
from timing import time_pass  # noqa: E402

from c4kemi.core.decision import route_json  # noqa: E402
from c4kemi.core.document import _refuse_duplicate_keys, validate_document  # noqa: E402
from c4kemi.core.table import apply_changes, compile_validated, update_table  # noqa: E402
from c4kemi.sources.feed_reader import FeedTableSource  # noqa: E402
from c4kemi.sources.feed_writer import FeedWriter, load_frozen  # noqa: E402
from c4kemi.sources.files import write_atomically  # noqa: E402
from c4kemi.sources.store import FileTableSource  # noqa: E402

KINDS = ["inbound"] * 5 + ["outbound"] * 4 + ["refused"]


def make_requests(document: dict, count: int, rng: random.Random) -> list[dict]:
    dids = document["dids"]
    ccs = list(COUNTRIES)
    requests = []
    for i in range(count):
        kind = KINDS[i % 10]
        if kind == "inbound":  # from a carrier's trunk, E.164 with '+'
            did = rng.choice(dids)
            number = did["prefix"]
            if len(number) < 11 or did.get("match"):
                number += "12"
            k = rng.randrange(900)
            source, called = f"172.{16 + k // 250}.{k % 250}.{rng.randrange(1, 15)}", "+" + number
        elif kind == "outbound":  # from an IPBX, international format
            t = rng.randrange(TENANTS)
            cc = rng.choice(ccs)
            source = f"10.{t}.{rng.randrange(IPBXS_PER_TENANT)}.{rng.randrange(1, 255)}"
            called = "00" + cc + str(rng.randrange(10**8, 10**9))
        else:  # unknown source
            source, called = "203.0.113.9", "0612345678"
        requests.append(routing_query(source, called, rng))
    return requests


def bench_decision(sizes: list[int], n_routes: int, repeat: int) -> None:
    print("\n## Decision (goal 5): route_json per request, µs\n")
    print("| DIDs | routes | median (µs) | pass medians | p99 (µs) | inbound | outbound | refused | one dict hit (µs) |")
    print("|---:|---:|---:|---|---:|---:|---:|---:|---:|")
    for size in sizes:
        document = make_document(size, n_routes)
        table = compile_validated(validate_document(document))
        requests = make_requests(document, 50_000, random.Random(size))
        dict_hit = bare_dict_hit(document["dids"], random.Random(size))
        del document
        gc.collect()
        time_pass(table, requests[:5000])  # warm up
        passes = [time_pass(table, requests) for _ in range(repeat)]
        medians = [statistics.median(p) / 1000 for p in passes]
        last = passes[-1]
        by_kind = {k: statistics.median(t for i, t in enumerate(last) if KINDS[i % 10] == k) / 1000 for k in set(KINDS)}
        p99 = sorted(last)[int(len(last) * 0.99)] / 1000
        print(f"| {size:,} | {n_routes:,} | {statistics.median(medians):.2f} | {', '.join(f'{m:.2f}' for m in medians)} "
              f"| {p99:.2f} | {by_kind['inbound']:.2f} | {by_kind['outbound']:.2f} | {by_kind['refused']:.2f} "
              f"| {dict_hit:.2f} |", flush=True)
        del table, requests, passes
        gc.collect()
    print("\nOne dict hit: a plain dict of that many DIDs, probed with a fresh key string (as a parsed request gives),"
          " no c4 code: what the machine's caches charge for a larger dict. An inbound call pays it at least once.")


def bare_dict_hit(dids: list[dict], rng: random.Random, probes: int = 200_000, repeat: int = 5) -> float:
    """µs per hit of a plain {prefix: DID} dict of these DIDs: the floor under the decision's growth with size."""
    index = {did["prefix"]: did for did in dids}
    keys = [prefix[:1] + prefix[1:] for prefix in (rng.choice(dids)["prefix"] for _ in range(probes))]  # new str objects
    get = index.get
    passes = []
    for _ in range(repeat):
        started = time.perf_counter_ns()
        for key in keys:
            get(key)
        passes.append((time.perf_counter_ns() - started) / probes / 1000)
    return statistics.median(passes)


def timed(fn, *args):
    t0 = time.perf_counter()
    out = fn(*args)
    return out, time.perf_counter() - t0


def bench_change(n_dids: int, n_routes: int, repeat: int) -> None:
    print(f"\n## One change (goal 1), {n_dids:,} DIDs, {n_routes:,} routes; medians of {repeat} runs, ms\n")
    document = make_document(n_dids, n_routes)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "table.json"
        path.write_bytes(orjson.dumps(document))
        source = FileTableSource(path, check_interval=0)
        refresh, parse, validate, compile_ = [], [], [], []
        for run in range(repeat):
            document["dids"].append({"tenant": "t000", "prefix": f"4{run:011d}", "ipbx": "pbx-t000-0"})
            data = orjson.dumps(document)
            path.write_bytes(data)
            _, seconds = timed(source.refresh)
            refresh.append(seconds)
            raw, seconds = timed(lambda: json.loads(path.read_bytes(), object_pairs_hook=_refuse_duplicate_keys))
            parse.append(seconds)
            checked, seconds = timed(validate_document, raw)
            validate.append(seconds)
            _, seconds = timed(compile_validated, checked)
            compile_.append(seconds)
        # Before update_table, refresh was parse + validate + compile_validated (a full compile).
        assert source.counters.reloads == repeat
        print("| step | median (ms) |")
        print("|---|---:|")
        for name, values in (("FileTableSource.refresh, one DID added (whole reload)", refresh),
                             ("  read + parse (as load_document: json.loads, duplicate keys refused)", parse), ("  validate_document", validate),
                             ("  compile_validated", compile_)):
            print(f"| {name} | {statistics.median(values) * 1000:.0f} |")
    bench_update(document, repeat)
    bench_feed(document, repeat)


def bench_feed(document: dict, repeat: int) -> None:
    """One DID edit of the file through the table feed: c4 feed once per node, then each reader."""
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "table.json"
        writer = FeedWriter(Path(tmp) / "feed")
        writer.publish(orjson.loads(orjson.dumps(document)))  # it keeps what it published: not the dicts edited below
        reader = FeedTableSource(writer.directory, check_interval=0)
        parse, publish, apply = [], [], []
        for run in range(repeat):
            flip_ipbx(document["dids"][run])
            path.write_bytes(orjson.dumps(document))
            raw, seconds = timed(load_frozen, path)
            parse.append(seconds)
            taken, seconds = timed(writer.publish, raw)
            assert taken == "changes"
            publish.append(seconds)
            _, seconds = timed(reader.refresh)
            apply.append(seconds)
        print("\n| through the table feed, one DID changed in the file | median (ms) |")
        print("|---|---:|")
        for name, values in (("c4 feed: read + parse (load_frozen: the garbage collector paused), once per node", parse),
                             ("c4 feed: FeedWriter.publish (find the change in place, check the changed DID, append a line)", publish),
                             ("each reader: FeedTableSource.refresh (stat, read the line, apply_changes)", apply)):
            print(f"| {name} | {statistics.median(values) * 1000:.1f} |")


def bench_pgchange(n_dids: int, n_routes: int, repeat: int, dsn: str | None, bulk: int) -> None:
    """One DID change through PostgreSQL (as the provisioning API writes it) and its change log, to every reader."""
    import asyncio

    print(f"\n## One DID change through PostgreSQL (goal 1), {n_dids:,} DIDs, {n_routes:,} routes; medians of {repeat} runs, ms\n")
    cluster = None
    if dsn is None:  # a throwaway server, as the tests make one
        sys.path.insert(0, str(ROOT / "tests"))
        from postgres import Cluster

        cluster = Cluster()
        cluster.start()
        dsn = cluster.dsn(cluster.create_database())
    try:
        asyncio.run(_pgchange(make_document(n_dids, n_routes), repeat, dsn, min(bulk, n_dids)))
    finally:
        if cluster is not None:
            cluster.destroy()


async def _pgchange(document: dict, repeat: int, dsn: str, bulk: int) -> None:
    from c4kemi.db.changes import ChangeFollower
    from c4kemi.db.documents import connect, export_document, import_document
    from c4kemi.db.migrate import migrate
    from c4kemi.db.source import FeedPublisher

    conn = await connect(dsn)
    with tempfile.TemporaryDirectory() as tmp:
        try:
            await migrate(conn)
            _, seconds = await atimed(import_document(conn, validate_document(document)))
            print(f"c4 db import of the document: {seconds:.1f} s\n")
            publisher = FeedPublisher(FeedWriter(Path(tmp) / "feed"), Path(tmp) / "table.json")
            follower = ChangeFollower(dsn, publisher.document, publisher.changes)
            _, seconds = await atimed(follower.load_once())
            reader = FeedTableSource(publisher.writer.directory, check_interval=0)
            write, follow, apply = [], [], []
            for run in range(repeat):
                did = document["dids"][run]
                flip_ipbx(did)
                _, seconds = await atimed(conn.execute("UPDATE dids SET ipbx = $1 WHERE prefix = $2", did["ipbx"], did["prefix"]))
                write.append(seconds)
                _, seconds = await atimed(follower._check(conn))  # what the NOTIFY wakes
                follow.append(seconds)
                _, seconds = timed(reader.refresh)
                apply.append(seconds)
            assert follower.documents == 1 and follower.change_sets == repeat and reader.seq == repeat
            exported, export_seconds = await atimed(export_document(conn))
            _, publish_seconds = timed(publisher.writer.publish, exported[0])
            bulk_rows = await _pgbulk(conn, document["dids"][:bulk], follower, reader)
        finally:
            await conn.close()
    print("| step | median (ms) |")
    print("|---|---:|")
    for name, values in (("the write: UPDATE of one DID, committed (with the change log triggers)", write),
                         ("c4 db follow: read the log and the DID, check it, append a change set", follow),
                         ("each reader: FeedTableSource.refresh (apply_changes)", apply),
                         ("before: export_document (the whole table, per change)", [export_seconds]),
                         ("before: then FeedWriter.publish of it (compare every entity)", [publish_seconds])):
        print(f"| {name} | {statistics.median(values) * 1000:.1f} |")
    print(f"\nOne UPDATE of {bulk:,} DIDs in one statement:\n")
    print("| step | ms |")
    print("|---|---:|")
    for name, seconds in bulk_rows:
        print(f"| {name} | {seconds * 1000:.0f} |")


async def _pgbulk(conn, dids: list[dict], follower, reader) -> list[tuple[str, float]]:
    """One UPDATE of every DID in ``dids``: logged as keys, then (the same statement again) as one 'all' row."""
    async def update() -> float:
        for did in dids:
            flip_ipbx(did)
        _, seconds = await atimed(conn.execute(BULK_UPDATE, [d["prefix"] for d in dids], [d["ipbx"] for d in dids]))
        return seconds

    rows = [("the write, keys logged (migration 0007)", await update())]
    change_sets = follower.change_sets
    rows.append(("c4 db follow: read the log and the DIDs, check them, append a change set", (await atimed(follower._check(conn)))[1]))
    assert follower.change_sets == change_sets + 1, "the bulk UPDATE did not arrive as a change set"
    rows.append(("one reader: FeedTableSource.refresh, at once", timed(reader.refresh)[1]))
    await conn.execute("CREATE OR REPLACE FUNCTION c4_bulk_rows() RETURNS integer LANGUAGE sql IMMUTABLE AS 'SELECT 0'")
    try:
        rows.append(("the same write, one 'all' row instead (0005 past 10,000 rows)", await update()))
    finally:
        await conn.execute("CREATE OR REPLACE FUNCTION c4_bulk_rows() RETURNS integer LANGUAGE sql IMMUTABLE AS 'SELECT 200000'")
    return rows


async def atimed(awaitable):
    t0 = time.perf_counter()
    out = await awaitable
    return out, time.perf_counter() - t0


def bench_update(document: dict, repeat: int) -> None:
    """The compiled table's own update: from a whole checked document, and from a change set."""
    checked = validate_document(document)
    table = compile_validated(checked)
    rows = []
    edits = {
        "DID added": lambda d, r: d["dids"].append({"tenant": "t001", "prefix": f"5{r:011d}", "ipbx": "pbx-t001-1", "match": None}),
        "DID changed": lambda d, r: d["dids"][r].update(ipbx=d["dids"][r]["ipbx"][:-1] + str(1 - int(d["dids"][r]["ipbx"][-1]))),
        "DID removed": lambda d, r: d["dids"].pop(r),
        "route changed": lambda d, r: d["routes"][r]["trunks"].reverse(),
    }
    for name, edit in edits.items():
        times = []
        for run in range(repeat):
            new = _copy_checked(checked)
            edit(new, run + 1)
            new_table, seconds = timed(update_table, table, new)
            times.append(seconds)
            checked, table = new, new_table
        rows.append((f"update_table (whole document compared), {name}", times))
    for name, change in (
        ("DID added", lambda r: ({f"6{r:011d}": {"tenant": "t002", "prefix": f"6{r:011d}", "ipbx": "pbx-t002-0", "match": None}}, {})),
        ("DID removed", lambda r: ({f"6{r:011d}": None}, {})),
        ("route changed", lambda r: ({}, {(checked["routes"][3000 + r]["tenant"], checked["routes"][3000 + r]["prefix"]):
                                          dict(checked["routes"][3000 + r], trunks=[{"trunk": "trunk-0003", "priority": 0, "weight": 1}])})),
    ):
        times = []
        for run in range(repeat):
            dids, routes = change(run)
            table, seconds = timed(apply_changes, table, dids, routes)
            times.append(seconds)
        rows.append((f"apply_changes (change set known), {name}", times))
    full = [timed(compile_validated, checked)[1] for _ in range(max(1, repeat // 2))]
    rows.append(("compile_validated of the same document (full)", full))
    print("\n| compiled-table update | median (ms) |")
    print("|---|---:|")
    for name, values in rows:
        print(f"| {name} | {statistics.median(values) * 1000:.1f} |")


def _copy_checked(checked: dict) -> dict:
    """A new checked document sharing the unchanged entities (as a reload's diff sees them)."""
    out = {name: list(items) for name, items in checked.items()}
    out["dids"] = [dict(d) for d in out["dids"][:10]] + out["dids"][10:]
    out["routes"] = [dict(r, trunks=list(r["trunks"])) for r in out["routes"][:10]] + out["routes"][10:]
    return out


def smaps_rollup(pid: int | str) -> dict[str, int]:
    """/proc/PID/smaps_rollup's sizes, in KiB."""
    with open(f"/proc/{pid}/smaps_rollup") as f:
        return {key: int(value.split()[0]) for key, _, value in (line.partition(":") for line in f) if value.strip().endswith("kB")}


def kamailio_pss(launcher: int) -> tuple[list[int], float, float]:
    """The Kamailio processes c4 kamailio started, the sum of their PSS and the largest private memory of one, in MiB."""
    pids = [p for p in descendants(launcher) if Path(f"/proc/{p}/comm").read_text().strip() == "kamailio"]
    rollups = [smaps_rollup(p) for p in pids]
    return pids, sum(r["Pss"] for r in rollups) / 1024, max(r["Private_Dirty"] for r in rollups) / 1024


def sip_answer(port: int, timeout: float = 0.2) -> str | None:
    """The status line Kamailio answers an INVITE from an unknown source with (a routed 403), or None."""
    import socket
    call = f"scale-{time.monotonic_ns()}"
    message = (
        f"INVITE sip:39612345678@127.0.0.1:{port} SIP/2.0\r\n"
        f"Via: SIP/2.0/UDP 127.0.0.1:5999;rport;branch=z9hG4bK{call}\r\n"
        "Max-Forwards: 70\r\nFrom: <sip:0611111111@127.0.0.1>;tag=1\r\n"
        f"To: <sip:39612345678@127.0.0.1>\r\nCall-ID: {call}\r\nCSeq: 1 INVITE\r\n"
        "Contact: <sip:0611111111@127.0.0.1:5999>\r\nContent-Length: 0\r\n\r\n"
    )
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.settimeout(timeout)
        sock.sendto(message.encode(), ("127.0.0.1", port))
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                data = sock.recv(4096)
            except OSError:
                return None
            line = data.split(b"\r\n", 1)[0].decode(errors="replace")
            if not line.startswith("SIP/2.0 1"):  # a final answer, not 100 Trying
                return line
    return None


def descendants(pid: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    parent = int(f.read().rsplit(")", 1)[1].split()[1])
            except OSError:
                continue
            children.setdefault(parent, []).append(int(entry))
    out, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            out.append(child)
            todo.append(child)
    return out


def mode_args(mode: str) -> list[str]:
    """c4 kamailio's arguments for a mode: HTTP mode runs its c4 serve (--serve-api) on a free port."""
    if mode == "kemi":
        return ["--mode", "kemi"]
    return ["--mode", "http", "--serve-api", "--api", f"http://{ROUTER}:{free_port(socket.SOCK_STREAM, ROUTER)}"]


def bench_kamailio(n_dids: int, n_routes: int, counts: list[int], port: int, c4: list[str], modes: list[str]) -> None:
    """Goals 3 and 4 with a real Kamailio: c4 kamailio started, time to the first routed answer, sum of PSS."""
    import signal
    import subprocess
    print(f"\n## Kamailio (goals 3 and 4), {n_dids:,} DIDs, {n_routes:,} routes\n")
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "table.json"
        path.write_bytes(orjson.dumps(make_document(n_dids, n_routes)))
        print("| mode | SIP workers | c4 kamailio to first routed answer (s) | answer | Kamailio processes | sum of PSS (MiB) | x 1 worker |")
        print("|---|---:|---:|---|---:|---:|---:|")
        first = None
        for mode, count in [(mode, count) for mode in modes for count in counts]:
            first = None if count == counts[0] else first
            started = time.monotonic()
            launcher = subprocess.Popen(
                [*c4, "kamailio", *mode_args(mode), "--table", str(path), "--listen", f"udp:127.0.0.1:{port}",
                 "--workers", str(count)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
            try:
                answer = None
                while answer is None and time.monotonic() - started < 120 and launcher.poll() is None:
                    answer = sip_answer(port)
                ready = time.monotonic() - started
                time.sleep(2)
                pids, total, _ = kamailio_pss(launcher.pid)
            finally:
                launcher.send_signal(signal.SIGTERM)
                launcher.wait(timeout=30)
            first = first or total
            print(f"| {mode} | {count} | {ready:.1f} | {answer} | {len(pids)} | {total:.0f} | {total / first:.2f} |", flush=True)


PHASES = ("no change", "one DID edit per second", "bulk edit")
# An error in the router's log: Kamailio's and c4's own ERROR/CRITICAL lines (a refused table is one), a crash.
ERROR_LINE = re.compile(r"\b(ERROR|CRITICAL)\b|exited by a signal|core dumped")


def flip_ipbx(did: dict) -> None:
    """Move a DID to its tenant's other IPBX (generate.py names them pbx-TENANT-0 and -1)."""
    did["ipbx"] = did["ipbx"][:-1] + str(1 - int(did["ipbx"][-1]))


def flipped(did: dict) -> dict:
    """A copy of a DID moved to its tenant's other IPBX."""
    did = dict(did)
    flip_ipbx(did)
    return did


def bench_entities(callee_port: int) -> dict:
    """The SIP calls' own tenant: bench-pbx (the sipp caller) -> route "" -> bench-trunk (the sipp callee)."""
    return {
        "tenants": [{"name": "bench"}],
        "ipbxs": [{"name": "bench-pbx", "tenant": "bench", "targets": [f"sip:{CALLER}:5999"], "sources": [CALLER]}],
        "carriers": [{"name": "bench-carrier"}],
        "trunks": [{"name": "bench-trunk", "carrier": "bench-carrier", "target": f"sip:{CALLEE}:{callee_port}"}],
        "routes": [{"tenant": "bench", "prefix": "", "trunks": ["bench-trunk"]}],
    }


class FileEdits:
    """Changes as a provisioning tool makes them in the file store: the whole document rewritten, renamed over."""

    def __init__(self, document: dict, workdir: Path) -> None:
        self.document = document
        self.path = workdir / "table.json"
        write_atomically(self.path, orjson.dumps(document))

    def router_args(self) -> list[str]:
        return ["--table", str(self.path)]

    def one(self, did: dict) -> None:
        flip_ipbx(did)
        write_atomically(self.path, orjson.dumps(self.document))

    def bulk(self, dids: list[dict]) -> None:
        for did in dids:
            flip_ipbx(did)
        write_atomically(self.path, orjson.dumps(self.document))

    def close(self) -> None:
        pass


BULK_UPDATE = ("UPDATE dids SET ipbx = new.ipbx FROM unnest($1::text[], $2::text[]) AS new(prefix, ipbx)"
               " WHERE dids.prefix = new.prefix")


class SqlEdits:
    """Changes through PostgreSQL, written as the provisioning API writes a DID; the bulk change in one transaction.

    The document is imported into a fresh database first (as ``c4 db import`` does); c4 kamailio then
    follows it (``--dsn``: c4 db follow and the change log).
    """

    def __init__(self, document: dict, workdir: Path, dsn: str) -> None:
        import asyncio

        from c4kemi.db.documents import connect, import_document
        from c4kemi.db.migrate import migrate

        self.dsn, self.workdir = dsn, workdir
        self.loop = asyncio.new_event_loop()
        self.conn = self.loop.run_until_complete(connect(dsn))
        self.loop.run_until_complete(migrate(self.conn))
        started = time.monotonic()
        self.loop.run_until_complete(import_document(self.conn, validate_document(document)))
        print(f"|  | table imported into PostgreSQL in {time.monotonic() - started:.1f} s | | | | |", flush=True)

    def router_args(self) -> list[str]:
        return ["--dsn", self.dsn, "--table-cache", str(self.workdir / "table-cache.json")]

    def one(self, did: dict) -> None:
        flip_ipbx(did)
        self.loop.run_until_complete(self.conn.execute("UPDATE dids SET ipbx = $1 WHERE prefix = $2", did["ipbx"], did["prefix"]))

    def bulk(self, dids: list[dict]) -> None:
        for did in dids:
            flip_ipbx(did)
        self.loop.run_until_complete(self.conn.execute(BULK_UPDATE, [d["prefix"] for d in dids], [d["ipbx"] for d in dids]))

    def close(self) -> None:
        self.loop.run_until_complete(self.conn.close())
        self.loop.close()


def bench_nopause(args: argparse.Namespace, modes: list[str]) -> None:
    """Goal 2: setup times under steady SIP load while changes arrive, per phase, in each mode."""
    cluster = None
    if args.store == "pg" and args.dsn is None:  # a throwaway server, as the tests make one
        sys.path.insert(0, str(ROOT / "tests"))
        from postgres import Cluster

        cluster = Cluster()
        cluster.start()
    try:
        _nopause(args, modes, cluster)
    finally:
        if cluster is not None:
            cluster.destroy()


def _nopause(args: argparse.Namespace, modes: list[str], cluster) -> None:
    import subprocess
    print(f"\n## No pauses (goal 2), {args.dids:,} DIDs, {args.routes:,} routes, {args.rate} calls/s, "
          f"{args.workers.split(',')[-1]} workers, phases of {args.phase} s, {args.changes} edits, bulk edit of {args.bulk:,} DIDs, "
          f"changes through {'PostgreSQL' if args.store == 'pg' else 'the file'}\n")
    print("| mode | phase | calls answered | p50 (ms) | p99 (ms) | max (ms) |")
    print("|---|---|---:|---:|---:|---:|")
    failures = {}
    for mode in modes:
        with tempfile.TemporaryDirectory(prefix="c4-nopause-") as tmp:
            workdir = Path(tmp)
            callee_port, router_port = free_port(socket.SOCK_DGRAM, CALLEE), free_port(socket.SOCK_DGRAM, ROUTER)
            document = make_document(args.dids, args.routes)
            for name, items in bench_entities(callee_port).items():  # the calls: bench-pbx -> route "" -> the callee
                document[name] = document.get(name, []) + items
            if args.store == "pg":  # a fresh database per mode (--dsn: that database, emptied by the import)
                edits = SqlEdits(document, workdir, args.dsn or cluster.dsn(cluster.create_database()))
            else:
                edits = FileEdits(document, workdir)
            log = open(workdir / "router.log", "wb")
            router = subprocess.Popen(
                [sys.executable, "-m", "c4kemi.cli", "kamailio", *mode_args(mode), *edits.router_args(),
                 "--listen", f"udp:{ROUTER}:{router_port}", "--workers", args.workers.split(",")[-1], "--log-level", "2"],
                stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, start_new_session=True, cwd=ROOT)
            callee = caller = None
            try:
                wait_options(router_port, router, timeout=300)
                callee = start_callee(workdir, callee_port)
                time.sleep(0.5)
                duration = 2 * args.phase + args.changes
                caller = start_caller(workdir, router_port, args.rate, args.rate * duration, limit=args.rate * 5,
                                      timeout_s=duration + 30)
                t0 = time.time()
                bounds = [t0, t0 + args.phase, t0 + args.phase + args.changes, float("inf")]
                time.sleep(max(0.0, bounds[1] - time.time()))
                for i in range(args.changes):  # one DID edit per second
                    edits.one(document["dids"][i % len(document["dids"])])
                    time.sleep(max(0.0, bounds[1] + i + 1 - time.time()))
                edits.bulk(document["dids"][:args.bulk])
                ended = finished(caller, duration + 90)  # a stuck caller is stopped: its unfinished calls count as failed
                # Goal 3 after a minute of changes and the bulk edit: do the workers still share the table?
                kamailios, pss_after, private_after = kamailio_pss(router.pid)
            finally:
                for proc in (caller, callee, router):
                    if proc is not None:
                        stop(proc)
                log.close()
                edits.close()
            calls = read_log(workdir)
            setups = calls.answered
            stats = read_stat(workdir)
            failed = max(stats.get("FailedCall(C)", -1), stats.get("TotalCallCreated", 0) - stats.get("SuccessfulCall(C)", 0))
            # Why: sipp's own failure counters (FailedTimeoutOnRecv: no 200 within 10 s; FailedUnexpectedMessage:
            # an error answer such as 408 or 500), 503s (admission control: sipp counts them as successful),
            # and a caller stopped past its timeout (its calls in progress count as failed).
            reasons = [f"{name[:-3]} {value}" for name, value in stats.items() if name.startswith("Failed") and name.endswith("(C)")
                       and name != "FailedCall(C)" and value]
            failures[mode] = f"{failed}" + (f" ({', '.join(reasons)})" if reasons else "") + f", {calls.refused} refused with 503" + (
                "" if ended else ", caller stopped past its timeout")
            for number, phase in enumerate(PHASES):
                times = sorted(ms for sent, ms in setups if bounds[number] <= sent < bounds[number + 1])
                if not times:
                    print(f"| {mode} | {phase} | 0 | | | |")
                    continue
                print(f"| {mode} | {phase} | {len(times)} | {statistics.median(times):.1f} | "
                      f"{times[int(len(times) * 0.99)]:.1f} | {times[-1]:.1f} |", flush=True)
            if args.logs:  # the run's directory goes away: keep the router's log for reading
                Path(args.logs).mkdir(parents=True, exist_ok=True)
                kept = Path(args.logs) / f"router-{mode}.log"
                kept.write_bytes((workdir / "router.log").read_bytes())
                print(f"|  | router log kept in {kept} | | | | |")
            lines = (workdir / "router.log").read_text(errors="replace").splitlines()
            feed_lines = [line for line in lines if "published (generation" in line]
            for line in feed_lines[-2:]:  # the last edit and the bulk edit, as the writer took them
                print(f"|  | writer: {line.split(' INFO ', 1)[-1]} | | | | |")
            taken = sum("routing table feed" in line and "reloaded" in line for line in lines)
            errors = [line for line in lines if ERROR_LINE.search(line)]
            print(f"|  | readers: {taken} change sets taken in (all workers), {len(errors)} errors logged | | | | |")
            print(f"|  | after the changes: {len(kamailios)} Kamailio processes, sum of PSS {pss_after:.0f} MiB, "
                  f"largest private memory of one {private_after:.0f} MiB | | | | |")
            for line in errors[:5]:
                print(f"|  | error: {line.strip()[:200]} | | | | |")
    print("\nfailed calls (sipp): " + ", ".join(f"{mode} {count}" for mode, count in failures.items()))


def bench_cow(n_dids: int, n_routes: int, edits: int, bulk: int) -> None:
    """Goal 3: what a reader forked from the process that loaded the table copies or makes, phase by phase."""
    print(f"\n## Copy on write in a forked reader (goal 3), {n_dids:,} DIDs, {n_routes:,} routes\n")
    print("| after | private (MiB) | PSS (MiB) |")
    print("|---|---:|---:|")
    with tempfile.TemporaryDirectory(prefix="c4-cow-") as tmp:
        document = make_document(n_dids, n_routes)
        writer = FeedWriter(Path(tmp) / "feed")
        writer.publish(document)
        # One bytes object, parsed in the reader: objects made here would have their counts written there.
        inbound = b"\n".join(orjson.dumps(q) for i, q in enumerate(make_requests(document, 20_000, random.Random(3)))
                              if KINDS[i % 10] == "inbound")
        reader = FeedTableSource(Path(tmp) / "feed", check_interval=0, step_budget=0.0005)
        gc.collect()
        gc.freeze()
        # The changes, made now so that the writer's process only writes them after the fork.
        rng = random.Random(5)
        ones = [flipped(rng.choice(document["dids"])) for _ in range(edits)]
        many = {d["prefix"]: flipped(d) for d in rng.sample(document["dids"], bulk)}
        go_edits, go_bulk = os.pipe(), os.pipe()
        if (reader_pid := os.fork()) == 0:
            try:
                def show(what: str) -> None:
                    r = smaps_rollup("self")
                    print(f"| {what} | {r['Private_Dirty'] / 1024:.0f} | {r['Pss'] / 1024:.0f} |", flush=True)

                def take_in(until_seq: int) -> None:
                    while reader.seq < until_seq:
                        reader.refresh()
                        while reader.pending:
                            reader.current()
                        time.sleep(0.01)
                queries = [orjson.loads(line) for line in inbound.splitlines()]
                show(f"the fork, {len(queries):,} requests parsed")
                for query in queries:
                    route_json(reader.current(), query)
                show(f"{len(queries):,} inbound calls")
                os.read(go_edits[0], 1)
                take_in(edits)
                show(f"{edits} one-DID change sets")
                os.read(go_bulk[0], 1)
                take_in(edits + 1)
                show(f"a change set of {bulk:,} DIDs")
                for query in queries:
                    route_json(reader.current(), query)
                show(f"{len(queries):,} inbound calls again")
            finally:
                os._exit(0)
        if (writer_pid := os.fork()) == 0:
            try:
                for did in ones:
                    writer.publish_changes({did["prefix"]: did}, {})
                os.write(go_edits[1], b"x")
                writer.publish_changes(many, {})
                os.write(go_bulk[1], b"x")
            finally:
                os._exit(0)
        os.waitpid(writer_pid, 0)
        os.waitpid(reader_pid, 0)
    print("\nPrivate: the reader's Private_Dirty (smaps_rollup), the pages it copied from the loading process or "
          "made itself. The loading process stays idle meanwhile, as Kamailio's main process does.")


def bench_serve(n_dids: int, n_routes: int, edits: int, trees: dict[str, Path]) -> None:
    """``c4 serve --table FILE`` on its own: a one-DID edit, how long until it shows, how long requests wait meanwhile.

    For each checkout in TREES (its own c4 serve: ``python -m c4kemi.cli``
    from that directory), side by side on the same table: the time to the
    first answer, then one keep-alive connection asking for the same DID
    every 5 ms (as http_async_client does, one query in flight) while the
    file is rewritten EDITS times with that DID moved to another IPBX, each
    once the previous one shows. Per edit: seconds from the rewrite to the
    first answer naming the new IPBX's target ("-": not within 30 s), and
    the slowest request from the rewrite until then; at the
    end, the PSS of c4 serve and of what it started (c4 feed).
    """
    import http.client
    import signal
    import subprocess
    import threading

    print(f"\n## c4 serve --table, {n_dids:,} DIDs, {n_routes:,} routes: one-DID edits\n")
    document = make_document(n_dids, n_routes)
    did = next(d for d in document["dids"] if "match" not in d)
    number = did["prefix"] + ("12" if len(did["prefix"]) < 11 else "")
    query = orjson.dumps(routing_query("172.16.0.5", "+" + number, random.Random(1)))
    print("| checkout | first answer (s) | edit | shows after (s) | slowest request meanwhile (ms) | p99 request, whole run (ms) | PSS c4 serve + c4 feed (MiB) |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for name, tree in trees.items():
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / "table.json"
            write_atomically(path, orjson.dumps(document))
            port = free_port(socket.SOCK_STREAM, ROUTER)
            started = time.monotonic()
            serve = subprocess.Popen([sys.executable, "-m", "c4kemi.cli", "serve", "--table", str(path), "--host", ROUTER,
                                      "--port", str(port)], cwd=tree, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                     start_new_session=True)
            samples: list[tuple[float, float, bytes]] = []  # (sent at, seconds, body)
            stopping = threading.Event()

            def ask(port: int = port, stopping: threading.Event = stopping, samples: list = samples) -> None:
                connection = http.client.HTTPConnection(ROUTER, port, timeout=30)
                while not stopping.is_set():
                    sent = time.monotonic()
                    connection.request("POST", "/kamailio/rtjson", body=query, headers={"Content-Type": "application/json"})
                    body = connection.getresponse().read()
                    samples.append((sent, time.monotonic() - sent, body))
                    time.sleep(0.005)

            try:
                while True:
                    try:
                        http.client.HTTPConnection(ROUTER, port, timeout=1).request("GET", "/health")
                        break
                    except OSError:
                        if serve.poll() is not None or time.monotonic() - started > 300:
                            raise RuntimeError(f"{name}: c4 serve did not start") from None
                        time.sleep(0.2)
                ready = time.monotonic() - started
                asker = threading.Thread(target=ask, daemon=True)
                asker.start()
                time.sleep(3)
                rows = []
                for _ in range(edits):
                    flip_ipbx(did)
                    # generate.py's IPBX pbx-tI-J has the targets sip:10.I.J.1 and .2: the new one's address in the reply
                    tenant, index = did["ipbx"].split("-")[1:]
                    target = f'"sip:10.{int(tenant[1:])}.{index}.1:5060"'.encode()
                    edited = time.monotonic()
                    write_atomically(path, orjson.dumps(document))
                    # Until the reply names it (at most 30 s), then a second more: the next edit starts from it.
                    while time.monotonic() - edited < 30 and target not in samples[-1][2]:
                        time.sleep(0.05)
                    time.sleep(1)
                    after = [(sent, took, body) for sent, took, body in samples if sent >= edited]
                    shown = next((sent + took for sent, took, body in after if target in body), None)
                    waits = [took for sent, took, _ in after if shown is None or sent <= shown]
                    rows.append(("-" if shown is None else f"{shown - edited:.2f}", f"{max(waits) * 1000:.0f}"))
                stopping.set()
                asker.join(timeout=30)
                p99 = sorted(took for _, took, _ in samples)[int(len(samples) * 0.99)] * 1000
                pss = sum(smaps_rollup(pid)["Pss"] for pid in [serve.pid, *descendants(serve.pid)]) / 1024
                for edit, (shows, slowest) in enumerate(rows, 1):
                    tail = f"{p99:.1f} | {pss:.0f}" if edit == len(rows) else " | "
                    print(f"| {name} | {ready:.1f} | {edit} | {shows} | {slowest} | {tail} |", flush=True)
            finally:
                stopping.set()
                serve.send_signal(signal.SIGTERM)
                serve.wait(timeout=30)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("what", nargs="?", default="all",
                        choices=["decision", "change", "pgchange", "kamailio", "nopause", "cow", "serve", "all"])
    parser.add_argument("--port", type=int, default=15080, help="kamailio: the UDP port to listen on")
    parser.add_argument("--c4", help="kamailio: the c4 command to start (default: this venv's), e.g. another checkout's")
    parser.add_argument("--sizes", default="1000,100000,1000000")
    parser.add_argument("--dids", type=int, default=1_000_000)
    parser.add_argument("--routes", type=int, default=100_000)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--dsn", help="pgchange, nopause --store pg: an empty database to use (default: a throwaway server, as the tests make)")
    parser.add_argument("--workers", default="1,8", help="kamailio: SIP worker counts to compare (nopause: the last)")
    parser.add_argument("--modes", default="kemi,http", help="kamailio, nopause: modes")
    parser.add_argument("--rate", type=int, default=500, help="nopause: calls per second")
    parser.add_argument("--phase", type=int, default=60, help="nopause: seconds without changes, and after the bulk edit")
    parser.add_argument("--changes", type=int, default=60, help="nopause: DID edits, one per second")
    parser.add_argument("--bulk", type=int, default=100_000, help="nopause: DIDs changed by the bulk edit")
    parser.add_argument("--store", default="file", choices=["file", "pg"],
                        help="nopause: changes as file edits, or through PostgreSQL (a throwaway server unless --dsn)")
    parser.add_argument("--before", help="serve: another checkout whose c4 serve runs beside this one's, e.g. a worktree of an older commit")
    parser.add_argument("--edits", type=int, default=3, help="serve: one-DID edits")
    parser.add_argument("--logs", help="nopause: keep each mode's router log (Kamailio, c4 feed, c4 serve) in this directory")
    args = parser.parse_args()
    print(f"# {platform.node()} {platform.machine()}, {os.cpu_count()} CPUs, Python {platform.python_version()}, "
          f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}")
    if args.what in ("decision", "all"):
        bench_decision([int(s) for s in args.sizes.split(",")], args.routes, args.repeat)
    if args.what in ("change", "all"):
        bench_change(args.dids, args.routes, args.repeat)
    if args.what == "pgchange":  # needs PostgreSQL: only when asked for
        bench_pgchange(args.dids, args.routes, args.repeat, args.dsn, args.bulk)
    if args.what in ("kamailio", "all"):
        c4 = args.c4.split() if args.c4 else [str(Path(sys.executable).with_name("c4"))]
        bench_kamailio(args.dids, args.routes, [int(c) for c in args.workers.split(",")], args.port, c4, args.modes.split(","))
    if args.what == "nopause":  # minutes of SIP load: only when asked for
        bench_nopause(args, args.modes.split(","))
    if args.what == "serve":
        trees = {"this": ROOT, **({"before": Path(args.before).resolve()} if args.before else {})}
        bench_serve(args.dids, args.routes, args.edits, trees)
    if args.what in ("cow", "all"):
        bench_cow(args.dids, args.routes, args.changes, args.bulk)


if __name__ == "__main__":
    main()
