"""Two nodes, one cluster, in both modes (docs/cluster.md): shared channels and call rates over DMQ.

Each test runs two ``c4 kamailio --cluster-node`` on two loopback
addresses (127.0.2.1 and 127.0.2.2, the same SIP and DMQ ports), with one
deployment secret, each its own state directory. Calls are real (sipp and
raw SIP), the counts are read from each node's Kamailio.
"""

from __future__ import annotations

import os
import shutil
import signal
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from c4kemi.call.channels import KamailioRpc, live_counts
from c4kemi.core.table import compile_table

from .documents import OUT_CALLED_E164, PBX, TRUNK_A, TRUNK_B, routing_document
from .harness import Router, RouterFactory, free_udp_port

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
    start_b: object  # starts node B again (after a stop)


def free_port_on_both() -> int:
    while True:
        port = free_udp_port(NODE_A)
        try:
            import socket

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


def start_cluster(router: RouterFactory, short_dir: Path, document: dict, extra: tuple = ()) -> Cluster:
    sip_port, dmq_port = free_port_on_both(), free_port_on_both()
    secret = short_dir / "secret"

    def node(number: int, address: str, peer: str) -> Router:
        args = [
            "--cluster-grace", str(GRACE),
            "--cluster-node", str(number), "--cluster-peer", peer, "--cluster-port", str(dmq_port),
            "--node-name", f"node-{number}", "--secret-file", str(secret),
            "--state-dir", str(short_dir / f"state-{number}"), "--rpc-socket", str(short_dir / f"rpc-{number}.sock"),
            *extra,
        ]
        return router.start(document, address=address, port=sip_port, extra_args=args)

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
