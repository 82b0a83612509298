"""A file edit reaches routing through the node's table feed, in both modes.

``c4 kamailio --table`` runs ``c4 feed``: it checks the edited document once
and publishes the changed DID as a change set; the KEMI workers (KEMI mode)
or the c4 serve the launcher runs (HTTP mode, ``--serve-api``) apply it.
"""

from __future__ import annotations

import re
import time

from .documents import CALLER_NATIONAL, DID_NATIONAL, PBX, PBX2, TRUNK_A, routing_document
from .harness import free_tcp_port

FEED_WAIT = 1.5  # c4 feed looks every 0.2 s, readers at most once a second


def start_with_feed(router, document):
    if router.mode == "kemi":
        return router.start(document)  # c4 kamailio --table: the feed is how KEMI workers get the table
    api = f"http://127.0.0.1:{free_tcp_port()}"
    return router.start(document, api=api, extra_args=["--serve-api", "--table", str(router.workdir / "table.json")])


def call_did(r, sipp, pbx) -> None:
    """One call to the DID, answered (and PBX, if given, done with its calls)."""
    caller = sipp.uac("uac_call.xml", r.target, TRUNK_A, called=DID_NATIONAL, caller=CALLER_NATIONAL)
    assert caller.wait() == 0, f"call failed\n{sipp.describe_all()}"
    if pbx is not None:
        assert pbx.wait() == 0, f"IPBX {pbx.name} failed\n{sipp.describe_all()}"


def test_a_did_edit_is_applied_as_a_change_set(router, sipp):
    first = sipp.uas("uas_answer.xml", PBX, calls=4)
    second = sipp.uas("uas_answer.xml", PBX2)
    document = routing_document(pbx_port=first.port, pbx2_port=second.port)
    r = start_with_feed(router, document)
    call_did(r, sipp, None)

    document["dids"][0]["ipbx"] = "acme-pbx-2"
    r.update_table(document)
    time.sleep(FEED_WAIT)
    # A KEMI worker takes a change in over its next calls (STEP_BUDGET of work per call, more as
    # the change ages), routing with the table it has meanwhile: on a loaded machine a call or
    # two after the edit may still reach the first IPBX. Within a few calls the second one has it.
    for _ in range(3):
        call_did(r, sipp, None)
        if second.received("INVITE"):
            break
    assert second.wait() == 0, f"IPBX {second.name} failed\n{sipp.describe_all()}"

    assert r.alive()
    assert len(second.received("INVITE")) == 1, "the edit never reached routing"
    log = r.log_text()
    assert "changes published (generation 1, change set 1)" in log, log[-3000:]
    # Applied by the readers as change set 1 of the first generation: no snapshot compiled again.
    assert re.search(r"feed \S+ reloaded: version \w+ \(generation 1, change set 1\)", log), log[-3000:]
    assert "compiling generation" not in log
