"""Channel limits through a real router: trunks and tenants, in both modes (docs/routing.md, "Channel limits")."""

from __future__ import annotations

from .documents import (
    CALLER_NATIONAL,
    DID_NATIONAL,
    OUT_CALLED_E164,
    PBX,
    TRUNK_A,
    TRUNK_B,
    routing_document,
)
from .harness import sip_invite

HOLD_MS = 4000


def limited(document: dict, trunk_a: dict | None = None, tenant: dict | None = None) -> dict:
    for trunk in document["trunks"]:
        if trunk["name"] == "carrier-a-1":
            trunk.update(trunk_a or {})
    document["tenants"][0].update(tenant or {})
    return document


def hold_outbound(sipp, r, count: int):
    """COUNT outbound calls from the IPBX, each answered and held HOLD_MS before its BYE."""
    return [
        sipp.uac("uac_call_hold.xml", r.target, PBX, called=OUT_CALLED_E164, caller="39611111111",
                 hold_ms=HOLD_MS, wait=False, timeout=30)
        for _ in range(count)
    ]


def test_trunk_at_max_channels_sends_the_next_call_to_the_next_trunk(router, sipp):
    trunk_a = sipp.uas("uas_answer.xml", TRUNK_A, calls=2)
    trunk_b = sipp.uas("uas_answer.xml", TRUNK_B)
    r = router.start(limited(routing_document(trunk_a_port=trunk_a.port, trunk_b_port=trunk_b.port), {"max_channels": 2}))

    callers = hold_outbound(sipp, r, 3)

    for caller in callers:
        assert caller.wait(40) == 0, sipp.describe_all()
    assert trunk_a.wait(10) == 0 and trunk_b.wait(10) == 0, sipp.describe_all()
    assert len(trunk_a.received("INVITE")) == 2
    assert len(trunk_b.received("INVITE")) == 1


def test_every_trunk_full_gives_503(router, sipp):
    document = limited(routing_document(), {"max_channels": 0})
    for trunk in document["trunks"]:
        trunk["max_channels"] = 0
    r = router.start(document)

    final = sip_invite(r.address, r.port, PBX, f"sip:{OUT_CALLED_E164}@{r.target}",
                       f"<sip:39611111111@{PBX}>;tag=a", f"<sip:{OUT_CALLED_E164}@{r.target}>")

    assert (final.code, final.reason) == (503, "All Trunks Busy")


def test_tenant_at_max_channels_refuses_new_calls_in_either_direction(router, sipp):
    trunk_a = sipp.uas("uas_answer.xml", TRUNK_A)
    r = router.start(limited(routing_document(trunk_a_port=trunk_a.port), tenant={"max_channels": 1}))

    (held,) = hold_outbound(sipp, r, 1)
    assert trunk_a.received("INVITE") or _wait_for(lambda: trunk_a.received("INVITE")), sipp.describe_all()

    inbound = sip_invite(r.address, r.port, TRUNK_B, f"sip:{DID_NATIONAL}@{r.target}",
                         f"<sip:{CALLER_NATIONAL}@{TRUNK_B}>;tag=b", f"<sip:{DID_NATIONAL}@{r.target}>")
    outbound = sip_invite(r.address, r.port, PBX, f"sip:{OUT_CALLED_E164}@{r.target}",
                          f"<sip:39611111111@{PBX}>;tag=c", f"<sip:{OUT_CALLED_E164}@{r.target}>")

    assert (inbound.code, inbound.reason) == (503, "Tenant Channel Limit")
    assert (outbound.code, outbound.reason) == (503, "Tenant Channel Limit")
    assert held.wait(40) == 0, sipp.describe_all()


def _wait_for(predicate, timeout: float = 5.0):
    import time

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.05)
    return predicate()
