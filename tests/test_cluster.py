"""A cluster node's launch (c4 kamailio --cluster-node) and the lost-node watch, without Kamailio.

The cluster itself, two real nodes, is tested end to end in tests/e2e/test_cluster.py.
"""

from __future__ import annotations

import subprocess
import sys

import pytest

from c4kemi.cli import EXAMPLE_TABLE
from c4kemi.node.cluster_watch import NodeWatch


def dry_run(tmp_path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "c4kemi.cli", "kamailio", "--dry-run", "--table", str(EXAMPLE_TABLE),
         "--state-dir", str(tmp_path / "state"), *args],
        capture_output=True, text=True, timeout=60,
    )


def test_a_cluster_node_gets_its_dmq_socket_peers_and_watch(tmp_path):
    done = dry_run(tmp_path, "--listen", "udp:127.0.2.1:5060", "--cluster-node", "3", "--cluster-peer", "127.0.2.2",
                   "--cluster-peer", "127.0.2.3", "--cluster-port", "5070", "--node-name", "edge-1")
    assert done.returncode == 0, done.stderr
    command = done.stdout.splitlines()[-1]
    # The SIP socket first (timers send from it), then DMQ's own: both in the config, not on the command line.
    assert " -l " not in command
    for define in ("C4_SIP_LISTEN=udp:127.0.2.1:5060", "C4_DMQ_LISTEN=udp:127.0.2.1:5070", 'C4_CLUSTER_NODE=3', 'C4_DMQ_SERVER="sip:127.0.2.1:5070"', "C4_DMQ_PORT=5070",
                   'C4_CLUSTER_HOSTS="127.0.2.2,127.0.2.3"', 'C4_DMQ_PEER1="sip:127.0.2.2:5070"',
                   'C4_DMQ_PEER2="sip:127.0.2.3:5070"', "C4_PEER1_SIP=127.0.2.2:5060", "C4_PEER2_SIP=127.0.2.3:5060",
                   'C4_NODE_NAME="edge-1"'):
        assert f"-A {define}" in command
    assert "cluster-watch --kamailio-rpc" in done.stdout


def test_no_cluster_without_cluster_node(tmp_path):
    done = dry_run(tmp_path, "--listen", "udp:127.0.2.1:5060")
    assert done.returncode == 0, done.stderr
    assert "C4_CLUSTER_NODE" not in done.stdout and "cluster-watch" not in done.stdout


@pytest.mark.parametrize("args, error", [
    (["--cluster-peer", "127.0.2.2"], "--cluster-peer needs --cluster-node"),
    (["--cluster-node", "17", "--cluster-peer", "127.0.2.2"], "--cluster-node must be between 1 and 16"),
    (["--cluster-node", "1"], "needs one to 3 --cluster-peer"),
    (["--cluster-node", "1", "--cluster-peer", "db.example.net"], "an IP address"),
    (["--cluster-node", "1", "--cluster-peer", "127.0.2.1"], "this node's own address"),
    (["--cluster-node", "1", "--cluster-peer", "127.0.2.2", "--cluster-port", "5060"], "other than the SIP one"),
    (["--node-name", "a b"], "--node-name 'a b'"),
])
def test_a_cluster_that_cannot_work_is_refused_with_the_option_named(tmp_path, args, error):
    done = dry_run(tmp_path, "--listen", "udp:127.0.2.1:5060", *args)
    assert done.returncode != 0
    assert error in done.stderr


def test_a_wildcard_listen_cannot_be_a_cluster_address(tmp_path):
    done = dry_run(tmp_path, "--listen", "udp:0.0.0.0:5060", "--cluster-node", "1", "--cluster-peer", "10.0.0.2")
    assert done.returncode != 0 and "the nodes reach each other at that address" in done.stderr


def nodes(*statuses: str) -> list[dict]:
    listed = [{"host": "127.0.2.1", "port": "5090", "status": "active", "local": 1}]
    return listed + [{"host": f"127.0.2.{n}", "port": "5090", "status": s, "local": 0} for n, s in enumerate(statuses, 2)]


def test_a_node_is_lost_only_after_the_grace_and_dealt_with_once():
    watch = NodeWatch(grace=30)
    assert watch.look(nodes("active", "active"), 0) == []
    assert watch.look(nodes("pending", "active"), 100) == []  # first seen away
    assert watch.look(nodes("pending", "active"), 129) == []
    assert watch.look(nodes("pending", "active"), 130) == ["sip:127.0.2.2:5090"]
    watch.ended.add("sip:127.0.2.2:5090")
    assert watch.look(nodes("disabled", "active"), 200) == []  # its calls were ended already


def test_a_node_back_within_the_grace_loses_nothing_and_starts_a_new_count():
    watch = NodeWatch(grace=30)
    assert watch.look(nodes("pending"), 0) == []
    assert watch.look(nodes("active"), 20) == []  # a restart
    assert watch.look(nodes("pending"), 40) == []  # away again: the grace starts over
    assert watch.look(nodes("pending"), 69) == []
    assert watch.look(nodes("pending"), 70) == ["sip:127.0.2.2:5090"]
