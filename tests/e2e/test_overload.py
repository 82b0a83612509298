"""Overload protection, both modes: past ``--max-transactions`` SIP transactions
in progress, or short of ``--shm-reserve`` MiB of free shared memory, new
INVITEs get a stateless 503 with Retry-After, while calls already admitted
complete (their ACK and BYE go through) and OPTIONS is answered throughout.

The bound is made tiny (2) and held by two calls that a real sipp callee
takes a few seconds to answer (a 100 Trying, no ringing); a burst of raw
INVITEs sent meanwhile is refused. Calls that ring (an early dialog) do not
hold the bound: they wait for a person, not for the node. No timing is
asserted: the slow answer only has to outlast the burst.
"""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor

from .documents import CALLER_NATIONAL, DID_NATIONAL, NO_DID_NATIONAL, PBX, TRUNK_A, routing_document
from .harness import sip_options_ok
from .test_http_mode import invite  # a raw INVITE from the carrier, negative finals ACKed

BOUND = 2
RING_MS = 6000  # time to answer: long enough for the burst on a loaded machine; not asserted
BURST = 8
# tmx sums the transaction counts of all processes at most every 1/8 s per
# process: give every worker's copy time to see the ringing calls.
TMX_REFRESH = 0.5


def wait_for_invites(uas, count: int, timeout: float = 20.0) -> None:
    """Until the callee has received COUNT INVITEs: those calls are admitted and ringing."""
    deadline = time.monotonic() + timeout
    while len(uas.received("INVITE")) < count:
        assert uas.proc.poll() is None and time.monotonic() < deadline, uas.describe()
        time.sleep(0.05)


def test_past_the_bound_new_invites_get_503_and_admitted_calls_complete(router, sipp):
    pbx = sipp.uas("uas_slow_answer.xml", PBX, calls=BOUND, ring_ms=RING_MS)
    extra = ["--max-transactions", str(BOUND), "--retry-after", "7"]
    if router.mode == "http":
        extra += ["--max-inflight", str(BOUND)]  # cannot exceed the node's bound
    r = router.start(routing_document(pbx_port=pbx.port), extra_args=extra)

    callers = [
        sipp.uac("uac_call.xml", r.target, TRUNK_A, called=DID_NATIONAL, caller=CALLER_NATIONAL, wait=False)
        for _ in range(BOUND)
    ]
    wait_for_invites(pbx, BOUND)
    time.sleep(TMX_REFRESH)

    # The node is at its bound: a burst of new calls is refused at once, statelessly.
    with ThreadPoolExecutor(BURST) as pool:
        finals = list(pool.map(lambda _: invite(r, NO_DID_NATIONAL), range(BURST)))
    assert [f.code for f in finals] == [503] * BURST, finals
    assert all(f.message.header("Retry-After") == "7" for f in finals), [f.message.text for f in finals]
    assert sip_options_ok(r.address, r.port), "OPTIONS not answered at the bound"

    # The admitted calls complete: 200, then ACK and BYE through the router.
    for caller in callers:
        assert caller.wait() == 0, f"admitted call failed\n{caller.describe()}"
        assert caller.received_finals() == [200]
    assert pbx.wait() == 0, pbx.describe()
    assert len(pbx.received("ACK")) == BOUND and len(pbx.received("BYE")) == BOUND
    assert len(pbx.received("INVITE")) == BOUND, "a refused INVITE reached the callee"

    # Below the bound again: a new call is admitted (this number has no DID: 404).
    assert invite(r, NO_DID_NATIONAL).code == 404
    assert sip_options_ok(r.address, r.port) and r.alive()


def test_ringing_calls_do_not_hold_the_bound(router, sipp):
    pbx = sipp.uas("uas_ring_answer.xml", PBX, calls=BOUND, ring_ms=RING_MS)
    extra = ["--max-transactions", str(BOUND)]
    if router.mode == "http":
        extra += ["--max-inflight", str(BOUND)]
    r = router.start(routing_document(pbx_port=pbx.port), extra_args=extra)
    callers = [
        sipp.uac("uac_call.xml", r.target, TRUNK_A, called=DID_NATIONAL, caller=CALLER_NATIONAL, wait=False)
        for _ in range(BOUND)
    ]
    wait_for_invites(pbx, BOUND)
    time.sleep(TMX_REFRESH)  # the callee's 180s reach the router: two early dialogs

    # Two transactions in progress, both ringing: a new call is admitted (no DID: 404, not 503).
    assert [invite(r, NO_DID_NATIONAL).code for _ in range(3)] == [404] * 3
    for caller in callers:
        assert caller.wait() == 0, f"ringing call failed\n{caller.describe()}"
    assert pbx.wait() == 0, pbx.describe()


def test_short_of_shared_memory_every_new_invite_gets_503_and_options_still_200(router):
    # A reserve as large as shared memory itself: never that much free.
    r = router.start(routing_document(), shm=64, extra_args=["--shm-reserve", "64"])
    finals = [invite(r, NO_DID_NATIONAL) for _ in range(3)]
    assert [f.code for f in finals] == [503] * 3, finals
    assert all(f.message.header("Retry-After") == "2" for f in finals)
    assert sip_options_ok(r.address, r.port) and r.alive()
