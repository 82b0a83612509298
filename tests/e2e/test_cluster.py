"""Two nodes, one cluster, in both modes (docs/cluster.md): shared channels and call rates over DMQ.

Each test runs two ``c4 kamailio --cluster-node`` on two loopback
addresses (127.0.2.1 and 127.0.2.2, the same SIP and DMQ ports), with one
deployment secret, each its own state directory. Calls are real (sipp and
raw SIP), the counts are read from each node's Kamailio.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import shutil
import signal
import socket
import tempfile
import time
import urllib.request
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

from c4kemi.call.channels import KamailioRpc, live_counts
from c4kemi.core.table import compile_table
from c4kemi.db.documents import connect

from .documents import CALLER_NATIONAL, DID_NATIONAL, OUT_CALLED_E164, PBX, PBX2, TRUNK_A, TRUNK_B, routing_document
from .harness import BusyPeers, Router, RouterFactory, SipMessage, free_udp_port, sip_invite
from .sip_peer import SipPeer
from .test_postgres import ADMIN_TOKEN, CHANGE_BOUND, api_patch, call_did, import_into

NODE_A = "127.0.2.1"
NODE_B = "127.0.2.2"
HOLD_MS = 6000
GRACE = 2  # seconds a lost node's calls are kept (c4 kamailio --cluster-grace; 30 by default)
# DMQ pings every 10 s (kamailio-base.cfg, C4_DMQ_PING): a dead node is seen
# within about 13 s, then its calls wait GRACE. The bound leaves room for a
# loaded machine.
LOST_BOUND = 40


@dataclass
class Cluster:
    a: Router
    b: Router
    rpc_a: KamailioRpc
    rpc_b: KamailioRpc
    start_b: Callable[[], Router]  # starts node B again (after a stop)


def free_port_on_both() -> int:
    while True:
        port = free_udp_port(NODE_A)
        try:
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
                sock.bind((NODE_B, port))
            return port
        except OSError:
            continue


@pytest.fixture
def short_dir():
    """A short directory for the nodes' RPC sockets (a unix socket path is at most 107 bytes)."""
    path = Path(tempfile.mkdtemp(prefix="c4cl-"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


def start_cluster(router: RouterFactory, short_dir: Path, document: dict, extra: tuple = (), **start) -> Cluster:
    """Nodes 1 and 2 on NODE_A and NODE_B; "{n}" in ``extra`` is the node's number; ``start``: more for RouterFactory.start."""
    sip_port, dmq_port = free_port_on_both(), free_port_on_both()
    secret = short_dir / "secret"

    def node(number: int, address: str, peer: str) -> Router:
        args = [
            "--cluster-grace", str(GRACE),
            "--cluster-node", str(number), "--cluster-peer", peer, "--cluster-port", str(dmq_port),
            "--node-name", f"node-{number}", "--secret-file", str(secret),
            "--state-dir", str(short_dir / f"state-{number}"), "--rpc-socket", str(short_dir / f"rpc-{number}.sock"),
            *(arg.replace("{n}", str(number)) for arg in extra),
        ]
        return router.start(document, address=address, port=sip_port, extra_args=args, **start)

    a = node(1, NODE_A, NODE_B)
    b = node(2, NODE_B, NODE_A)
    cluster = Cluster(a, b, KamailioRpc(str(short_dir / "rpc-1.sock")), KamailioRpc(str(short_dir / "rpc-2.sock")),
                      lambda: node(2, NODE_B, NODE_A))
    for rpc in (cluster.rpc_a, cluster.rpc_b):
        assert wait_for(lambda rpc=rpc: len(active_nodes(rpc)) == 2, 20), rpc.call("dmq.list_nodes")
    return cluster


def active_nodes(rpc: KamailioRpc) -> list[str]:
    """The DMQ nodes this node sees active, itself included."""
    return [node["host"] for node in rpc.call("dmq.list_nodes") if node.get("status") == "active"]


def wait_for(predicate, timeout: float = 10.0):
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value or time.monotonic() > deadline:
            return value
        time.sleep(0.1)


def trunk_count(rpc: KamailioRpc, table, trunk: str = "carrier-a-1") -> int:
    return live_counts(rpc, table)["trunks"][trunk]


def test_a_trunk_of_two_channels_takes_two_calls_across_both_nodes(router, sipp, short_dir):
    trunk_a = sipp.uas("uas_answer.xml", TRUNK_A, calls=2)
    trunk_b = sipp.uas("uas_answer.xml", TRUNK_B, calls=2)
    document = routing_document(trunk_a_port=trunk_a.port, trunk_b_port=trunk_b.port)
    document["trunks"][0]["max_channels"] = 2
    cluster = start_cluster(router, short_dir, document)
    table = compile_table(document)

    # Two calls through node A, then two through node B: B must see A's two channels.
    callers = []
    for node in (cluster.a, cluster.a, cluster.b, cluster.b):
        callers.append(sipp.uac("uac_call_hold.xml", node.target, PBX, called=OUT_CALLED_E164, caller="39611111111",
                                hold_ms=HOLD_MS, wait=False, timeout=30))
        time.sleep(0.5)
    both = wait_for(lambda: trunk_count(cluster.rpc_a, table) == 2 and trunk_count(cluster.rpc_b, table) == 2)

    for caller in callers:
        assert caller.wait(40) == 0, sipp.describe_all()
    assert both, (trunk_count(cluster.rpc_a, table), trunk_count(cluster.rpc_b, table))
    assert len(trunk_a.received("INVITE")) == 2, sipp.describe_all()
    assert len(trunk_b.received("INVITE")) == 2, sipp.describe_all()
    assert wait_for(lambda: trunk_count(cluster.rpc_a, table) == 0 and trunk_count(cluster.rpc_b, table) == 0)



def hold_call(sipp, node: Router, hold_ms: int = HOLD_MS):
    return sipp.uac("uac_call_hold.xml", node.target, PBX, called=OUT_CALLED_E164, caller="39611111111",
                    hold_ms=hold_ms, wait=False, timeout=120)


def test_a_node_lost_mid_call_gives_its_channels_back(router, sipp, short_dir):
    trunk_a = sipp.uas("uas_answer.xml", TRUNK_A, calls=2, timeout=120)
    document = routing_document(trunk_a_port=trunk_a.port)
    cluster = start_cluster(router, short_dir, document)
    table = compile_table(document)
    hold_call(sipp, cluster.a, hold_ms=90000)
    hold_call(sipp, cluster.a, hold_ms=90000)
    assert wait_for(lambda: trunk_count(cluster.rpc_b, table) == 2), trunk_count(cluster.rpc_b, table)

    os.killpg(cluster.a.proc.pid, signal.SIGKILL)  # node A is gone: Kamailio and its helpers, no goodbye
    cluster.a.proc.wait(10)
    lost = time.monotonic()
    freed = wait_for(lambda: trunk_count(cluster.rpc_b, table) == 0, LOST_BOUND)
    elapsed = time.monotonic() - lost

    print(f"{router.mode} mode: node A's channels free on node B {elapsed:.1f} s after it was lost")
    assert freed, f"node B still counts {trunk_count(cluster.rpc_b, table)} channel(s) of the lost node\n{cluster.b.log_text()[-3000:]}"
    # Ended with a BYE to both parties (the carrier frees its channels too), not just forgotten.
    assert "ended its 2 call(s)" in cluster.b.log_text()


def test_a_node_started_again_learns_the_calls_in_progress(router, sipp, short_dir):
    trunk_a = sipp.uas("uas_answer.xml", TRUNK_A, calls=1, timeout=60)
    document = routing_document(trunk_a_port=trunk_a.port)
    cluster = start_cluster(router, short_dir, document)
    table = compile_table(document)
    cluster.b.stop()

    held = hold_call(sipp, cluster.a, hold_ms=8000)  # the callee waits 10 s at most for the BYE
    assert wait_for(lambda: trunk_count(cluster.rpc_a, table) == 1)
    cluster.b = cluster.start_b()

    assert wait_for(lambda: trunk_count(cluster.rpc_b, table) == 1, 15), "node B did not learn the call in progress"
    assert held.wait(60) == 0, sipp.describe_all()
    assert wait_for(lambda: trunk_count(cluster.rpc_b, table) == 0 and trunk_count(cluster.rpc_a, table) == 0)


class RawCaller:
    """A carrier's side of one call, by hand: INVITE through one node, then in-dialog requests to any node."""

    def __init__(self, source: str) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind((source, 0))
        self.local = f"{source}:{self.sock.getsockname()[1]}"
        self.call_id = f"{uuid.uuid4().hex}@cluster"
        self.from_header = f"<sip:{CALLER_NATIONAL}@{source}>;tag={uuid.uuid4().hex[:8]}"
        self.cseq = 1

    def request(self, node: Router, method: str, ruri: str, headers: str = "") -> bytes:
        branch = f"z9hG4bK{uuid.uuid4().hex[:16]}"
        message = (
            f"{method} {ruri} SIP/2.0\r\nVia: SIP/2.0/UDP {self.local};branch={branch};rport\r\n"
            f"From: {self.from_header}\r\nCall-ID: {self.call_id}\r\nCSeq: {self.cseq} {method}\r\n"
            f"Max-Forwards: 70\r\nContact: <sip:carrier@{self.local}>\r\n{headers}Content-Length: 0\r\n\r\n"
        ).encode()
        self.sock.sendto(message, (node.address, node.port))
        return message

    def final(self, timeout: float = 10.0) -> SipMessage:
        deadline = time.monotonic() + timeout
        while True:
            self.sock.settimeout(max(0.01, deadline - time.monotonic()))
            text = self.sock.recv(65535).decode(errors="replace")
            if text.startswith("SIP/2.0 ") and not text.startswith("SIP/2.0 1"):
                return SipMessage("received", text.replace("\r\n", "\n"))

    def close(self) -> None:
        self.sock.close()


def test_a_call_set_up_through_one_node_is_hung_up_through_the_other(router, sipp, short_dir):
    """The deployment secret is shared: node B relays the BYE of node A's call (its Record-Route, signed) and ends it."""
    pbx = SipPeer(PBX, invite=200, bye=200)
    document = routing_document(pbx_port=pbx.port)
    cluster = start_cluster(router, short_dir, document, ("--cdr-file", str(short_dir / "cdr-{n}.jsonl")))
    table = compile_table(document)
    caller = RawCaller(TRUNK_A)
    try:
        ruri = f"sip:{DID_NATIONAL}@{cluster.a.target}"
        caller.request(cluster.a, "INVITE", ruri, f"To: <{ruri}>\r\n")
        answer = caller.final()
        assert answer.status == 200, answer.text
        route = ", ".join(answer.headers("Record-Route"))
        assert route and cluster.a.address in route, answer.text
        callee = answer.header("Contact").strip("<>").split(">")[0]
        dialog = f"To: {answer.header('To')}\r\nRoute: {route}\r\n"
        caller.request(cluster.a, "ACK", callee, dialog)
        assert wait_for(lambda: trunk_count(cluster.rpc_b, table, "carrier-a-1") == 1)

        caller.cseq += 1
        caller.request(cluster.b, "BYE", callee, dialog)  # node A is out of reach for this carrier: B gets it
        bye = caller.final()

        assert bye.status == 200, bye.text
        assert [r.source[0] for r in pbx.received if r.method == "BYE"] == [NODE_B]
        assert wait_for(lambda: trunk_count(cluster.rpc_a, table, "carrier-a-1") == 0
                        and trunk_count(cluster.rpc_b, table, "carrier-a-1") == 0)
        # One record, written by the node that saw the end, naming the node that routed the call.
        assert wait_for(lambda: (short_dir / "cdr-2.jsonl").exists() and (short_dir / "cdr-2.jsonl").read_text())
        time.sleep(0.5)
        records = [json.loads(line) for n in (1, 2) if (short_dir / f"cdr-{n}.jsonl").exists()
                   for line in (short_dir / f"cdr-{n}.jsonl").read_text().splitlines()]
        assert len(records) == 1, records
        assert (records[0]["node"], records[0]["code"], records[0]["ended_by"]) == ("node-1", 200, "caller"), records
        assert records[0]["answer_at"] is not None, records
        # A forged one is still refused by B: a Route of A's without the call's signature.
        caller.cseq += 1
        caller.request(cluster.b, "BYE", callee, f"To: {answer.header('To')}\r\nRoute: <sip:{cluster.a.target};lr>\r\n")
        assert caller.final().status == 403
    finally:
        caller.close()
        pbx.close()


def test_two_nodes_on_one_database(router, pg_dsn, short_dir, monkeypatch):
    """A write through either node's API routes on both; a node started again catches up; one cdrs table, each record naming its node."""
    monkeypatch.setenv("C4_API_TOKEN", ADMIN_TOKEN)  # each node's own c4 serve (--serve-api) takes it
    peers = BusyPeers([PBX, PBX2])
    try:
        document = routing_document(pbx_port=peers.ports[PBX], pbx2_port=peers.ports[PBX2])
        import_into(pg_dsn, document)
        cluster = start_cluster(router, short_dir, document, ("--cdr-db",), dsn=pg_dsn, node_api=True)
        calls = {"node-1": 0, "node-2": 0}

        def routes_to(node: Router, name: str, target: str) -> bool:
            assert call_did(node) == 486
            calls[name] += 1
            return peers.invites[-1].split("@", 1)[1].split(":", 1)[0] == target

        def both_route_to(target: str) -> float:
            """Seconds until a call through either node reaches TARGET."""
            changed = time.monotonic()
            while not (routes_to(cluster.a, "node-1", target) and routes_to(cluster.b, "node-2", target)):
                assert time.monotonic() - changed < 10, "the change never reached routing on both nodes"
                time.sleep(0.02)
            return time.monotonic() - changed

        assert both_route_to(PBX) < 1
        with urllib.request.urlopen(f"{cluster.a.api_url}/metrics", timeout=5) as response:
            metrics = response.read().decode()
        assert re.search(rf'c4_cluster_node_up{{node="sip:{NODE_B}:\d+"}} 1', metrics), metrics
        assert api_patch(cluster.a.api_url, "dids/39612345", b'{"ipbx": "acme-pbx-2"}') == 200
        through_a = both_route_to(PBX2)
        assert api_patch(cluster.b.api_url, "dids/39612345", b'{"ipbx": "acme-pbx"}') == 200
        through_b = both_route_to(PBX)
        print(f"{router.mode} mode: a write through node A routes on both in {through_a * 1000:.0f} ms, "
              f"through node B in {through_b * 1000:.0f} ms")
        assert through_a < CHANGE_BOUND and through_b < CHANGE_BOUND

        # Every call's record, once, each naming the node it went through (before B stops: a Kamailio
        # stopped with events it has not handed over yet loses them, docs/cdr.md).
        assert records_per_node(pg_dsn, calls) == calls

        cluster.b.stop()  # B misses a change, then catches up when it starts again
        assert api_patch(cluster.a.api_url, "dids/39612345", b'{"ipbx": "acme-pbx-2"}') == 200
        cluster.b = cluster.start_b()
        assert both_route_to(PBX2) < CHANGE_BOUND
        assert records_per_node(pg_dsn, calls) == calls
    finally:
        peers.close()


def records_per_node(dsn: str, expected: dict, timeout: float = 20) -> dict:
    """The cdrs table's count of records per node, once it equals EXPECTED or TIMEOUT passed."""
    async def count() -> dict:
        conn = await connect(dsn)
        try:
            return dict(await conn.fetch("SELECT node, count(*) FROM cdrs GROUP BY node"))
        finally:
            await conn.close()

    deadline = time.monotonic() + timeout
    while (found := asyncio.run(count())) != expected and time.monotonic() < deadline:
        time.sleep(0.2)
    return found


def test_a_trunk_call_rate_holds_across_both_nodes(router, sipp, short_dir):
    """max_cps 2: four calls in the same second, two through each node, take the trunk twice; the rest go to the next."""
    document = routing_document()
    document["trunks"][0]["max_cps"] = 2
    peers = BusyPeers([TRUNK_A, TRUNK_B])
    try:
        document["trunks"][0]["target"] = f"sip:{TRUNK_A}:{peers.ports[TRUNK_A]}"
        document["trunks"][1]["target"] = f"sip:{TRUNK_B}:{peers.ports[TRUNK_B]}"
        cluster = start_cluster(router, short_dir, document)
        while time.time() % 1 > 0.3:  # the four calls well inside one second of the clock
            time.sleep(0.01)
        for node in (cluster.a, cluster.b, cluster.a, cluster.b):
            final = sip_invite(node.address, node.port, PBX, f"sip:{OUT_CALLED_E164}@{node.target}",
                               f"<sip:39611111111@{PBX}>;tag={uuid.uuid4().hex[:6]}", f"<sip:{OUT_CALLED_E164}@{node.target}>")
            assert final.code == 486
            time.sleep(0.05)  # replication takes a few ms: this is the cluster's tolerance (docs/cluster.md)
        tried = [invite.split("@", 1)[1].split(":", 1)[0] for invite in peers.invites]
        assert tried.count(TRUNK_A) == 2, tried
    finally:
        peers.close()


def core_hash(text: str, size: int = 4096) -> int:
    """Kamailio's core_hash (core/hashes.h) of an ASCII string: the dialog table slot a replicated call must name."""
    data, h, mask = text.encode(), 0, 0xFFFFFFFF
    i = 0
    while i <= len(data) - 4:
        v = (data[i] << 24) + (data[i + 1] << 16) + (data[i + 2] << 8) + data[i + 3]
        h = (h + (v ^ (v >> 3))) & mask
        i += 4
    rest = data[i:]
    v = int.from_bytes(rest, "big") if rest else 0
    h = (h + (v ^ (v >> 3))) & mask
    return ((h + (h >> 11)) + ((h >> 13) + (h >> 23))) & (size - 1)


def forged_call(to: str, call_id: str) -> bytes:
    """A KDMQ dialog update as a node sends it: an answered call on carrier-a-1."""
    profiles = json.dumps({"profiles": [{"name": "c4_trunk", "value": "carrier-a-1"}]})
    body = json.dumps({
        "action": 1, "h_entry": core_hash(call_id), "h_id": 4242, "state": 4, "init_ts": int(time.time()), "start_ts": int(time.time()),
        "lifetime": 600, "callid": call_id, "from_uri": "sip:x@127.0.0.2", "to_uri": "sip:y@127.0.0.3", "req_uri": "sip:y@127.0.0.3",
        "tag1": "a", "tag2": "b", "cseq1": "1", "cseq2": "1", "route_set1": "", "route_set2": "", "contact1": "sip:x@127.0.0.2",
        "contact2": "sip:y@127.0.0.3", "profiles": profiles,
    })
    return (
        f"KDMQ sip:dialog@{to} SIP/2.0\r\nVia: SIP/2.0/UDP {to};branch=z9hG4bK{uuid.uuid4().hex[:12]}\r\n"
        f"From: <sip:dialog@{to}>;tag=f\r\nTo: <sip:dialog@{to}>\r\nCall-ID: {call_id}\r\nCSeq: 1 KDMQ\r\n"
        f"Max-Forwards: 1\r\nContent-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n{body}"
    ).encode()


def test_a_forged_dmq_call_from_anyone_but_a_node_takes_no_channel(kemi_router, sipp, short_dir):
    """KDMQ only on the DMQ socket and only from the cluster: a replicated call is a channel taken, a forged one a capture."""
    document = routing_document()
    cluster = start_cluster(kemi_router, short_dir, document)
    table = compile_table(document)
    dmq_port = int(cluster.rpc_b.call("dmq.list_nodes")[0]["port"])

    def send(source: str, port: int) -> None:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            sock.bind((source, 0))
            sock.sendto(forged_call(f"{NODE_B}:{port}", f"{uuid.uuid4().hex}@forged"), (NODE_B, port))

    send(TRUNK_A, dmq_port)  # a stranger on the DMQ socket
    send(TRUNK_A, cluster.b.port)  # a SIP peer on the SIP socket
    send(NODE_A, cluster.b.port)  # even a node, but on the SIP socket
    time.sleep(1)
    assert trunk_count(cluster.rpc_b, table) == 0
    assert "not from a cluster node: dropped" in cluster.b.log_text()
    assert "KDMQ from 127.0.0.2" in cluster.b.log_text() and f"KDMQ from {NODE_A}" in cluster.b.log_text()

    # The same message from a node's address on the DMQ socket is taken: the refusals above were not luck.
    send(NODE_A, dmq_port)
    assert wait_for(lambda: trunk_count(cluster.rpc_b, table) == 1, 5)
