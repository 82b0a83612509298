"""The node's own metrics in either mode: Kamailio counts the decisions it acts on, the node's c4 serve shows them (issue 21)."""

from __future__ import annotations

import re
import urllib.request

from .documents import NO_DID_NATIONAL, OUT_CALLED_E164, PBX, STRANGER, TRUNK_A, routing_document
from .harness import sip_invite


def metric(text: str, name: str) -> float:
    found = re.search(rf"^{re.escape(name)} (\S+)$", text, re.M)
    assert found, f"{name} not in /metrics"
    return float(found.group(1))


def test_decisions_refusals_and_their_wait_are_counted_by_the_node(router, sipp, tmp_path):
    carrier = sipp.uas("uas_reject.xml", TRUNK_A, code=486, reason="Busy Here")
    r = router.start(routing_document(trunk_a_port=carrier.port), node_api=True,
                     extra_args=["--rpc-socket", str(tmp_path / "rpc.sock")])

    def invite(source: str, called: str):
        return sip_invite(r.address, r.port, source, f"sip:{called}@{r.target}", f"<sip:0611111111@{source}>;tag=m",
                          f"<sip:{called}@{r.target}>")

    assert invite(PBX, OUT_CALLED_E164).code == 486  # routed (carrier A says busy)
    assert invite(TRUNK_A, NO_DID_NATIONAL).code == 404
    assert invite(STRANGER, OUT_CALLED_E164).code == 403
    assert invite(STRANGER, OUT_CALLED_E164).code == 403

    with urllib.request.urlopen(f"{r.api_url}/metrics", timeout=5) as response:
        text = response.read().decode()
    assert metric(text, "c4_node_decisions_total") == 4
    assert metric(text, 'c4_node_refusals_total{code="403"}') == 2
    assert metric(text, 'c4_node_refusals_total{code="404"}') == 1
    assert metric(text, 'c4_node_refusals_total{code="other"}') == 0
    assert metric(text, 'c4_node_decision_seconds_bucket{le="+Inf"}') == 4
    assert metric(text, 'c4_node_decision_seconds_bucket{le="0.5"}') == 4  # not one waited half a second


def test_a_helper_started_again_is_counted_in_the_node_metrics(router, tmp_path):
    """c4 health-sync killed: c4 kamailio starts it again, and the node's c4 serve counts it (c4_helper_restarts_total)."""
    import os
    import signal
    import time

    from .flood import find_process

    r = router.start(routing_document(), node_api=True, extra_args=["--rpc-socket", str(tmp_path / "rpc.sock")])
    os.kill(find_process(r.proc.pid, "c4kemi.cli health-sync"), signal.SIGKILL)
    deadline = time.monotonic() + 15
    while True:
        with urllib.request.urlopen(f"{r.api_url}/metrics", timeout=5) as response:
            text = response.read().decode()
        if 'c4_helper_restarts_total{helper="health-sync"} 1.0' in text:
            break
        assert time.monotonic() < deadline, [line for line in text.splitlines() if "helper" in line]
        time.sleep(0.3)
    assert 'c4_helper_restarts_total{helper="feed"} 0.0' in text
