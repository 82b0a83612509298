"""Parity: the same SIP requests give byte-identical rtjson in every mode.

A corpus of varied INVITEs goes through a real Kamailio in HTTP mode and in
KEMI mode; every relayed call reaches a peer that answers 486, so each call
ends at once with a code that says what the router did. What each mode
decided is captured where it is handed over:

- HTTP mode: the body c4 serve answered, recorded by tests/e2e/api_stub.py
  sitting between Kamailio and c4 serve (along with the query Kamailio sent);
- KEMI mode: the exact bytes the handler passes to ``rtjson`` (or answers a
  refusal from), dumped with ``C4_RTJSON_DUMP`` (see c4kemi/call/kemi.py);
- ``c4 route`` on the query each mode built.

All three must agree byte for byte for every call.
"""

from __future__ import annotations

import subprocess
import sys

import orjson
import pytest

from .documents import CALLER_NATIONAL, DID_NATIONAL, NO_DID_NATIONAL, PBX, PBX2, STRANGER, TRUNK_A, TRUNK_B, routing_document
from .harness import REPO_ROOT, BusyPeers, RouterFactory, free_tcp_port, sip_invite, start_api_stub, write_json_atomically

# The host in R-URIs and To: the same in both runs (the router's port is not),
# since To's URI goes into the rtjson headers. The router relays to dst_uri.
R = "c4.test"

# (name, source address, R-URI, From, To, final code the caller gets[, extra headers]);
# bytes are sent as they are (not UTF-8: an old PBX's ISO-8859-1).
CORPUS = [
    ("inbound-did", TRUNK_A, f"sip:{DID_NATIONAL}@{R}", f'"Alice" <sip:{CALLER_NATIONAL}@{TRUNK_A}>', f"<sip:{DID_NATIONAL}@{R}>", 486),
    ("inbound-did-dots", TRUNK_A, f"sip:06.1234.5678@{R}", f"<sip:{CALLER_NATIONAL}@{TRUNK_A}>", f'"Desk" <sip:06.1234.5678@{R}>', 486),
    ("inbound-did-dashes-parens", TRUNK_B, f"sip:(06)1234-5678@{R}", f"<sip:061-111-1111@{TRUNK_B}>", f"<sip:{DID_NATIONAL}@{R}>", 486),
    ("inbound-intl-prefix", TRUNK_A, f"sip:0039612345678@{R}", f"<sip:0044201234567@{TRUNK_A}>", f"<sip:0039612345678@{R}>", 486),
    ("inbound-tel-ruri", TRUNK_A, "tel:+39612345678", f"<sip:{CALLER_NATIONAL}@{TRUNK_A}>", "<tel:+39612345678>", 486),
    ("inbound-tel-from", TRUNK_A, f"sip:{DID_NATIONAL}@{R}", "<tel:0611111111>", f"<sip:{DID_NATIONAL}@{R}>", 486),
    ("inbound-anonymous", TRUNK_A, f"sip:{DID_NATIONAL}@{R}", '"Anonymous" <sip:anonymous@anonymous.invalid>', f"<sip:{DID_NATIONAL}@{R}>", 486),
    ("inbound-user-param", TRUNK_A, f"sip:{DID_NATIONAL};npdi@{R}", f"<sip:{CALLER_NATIONAL}@{TRUNK_A}>", f"<sip:{DID_NATIONAL}@{R}>", 486),
    ("inbound-no-did", TRUNK_A, f"sip:{NO_DID_NATIONAL}@{R}", f"<sip:{CALLER_NATIONAL}@{TRUNK_A}>", f"<sip:{NO_DID_NATIONAL}@{R}>", 404),
    ("outbound-default-route", PBX, f"sip:39298765432@{R}", f'"Bob" <sip:39611111111@{PBX}>', f"<sip:39298765432@{R}>", 486),
    ("outbound-plus", PBX2, f"sip:+39298765432@{R}", f"<sip:+39611111111@{PBX2}>", f"<sip:+39298765432@{R}>", 486),
    ("outbound-weighted-alpha", PBX, f"sip:442071234567@{R}", f"<sip:39611111111@{PBX}>", f"<sip:442071234567@{R}>", 486),
    ("outbound-weighted-bravo", PBX, f"sip:442071234567@{R}", f"<sip:39611111111@{PBX}>", f"<sip:442071234567@{R}>", 486),
    ("outbound-weighted-charlie", PBX, f"sip:442071234567@{R}", f"<sip:39611111111@{PBX}>", f"<sip:442071234567@{R}>", 486),
    ("outbound-weighted-delta", PBX, f"sip:442071234567@{R}", f"<sip:39611111111@{PBX}>", f"<sip:442071234567@{R}>", 486),
    ("outbound-on-net", PBX2, f"sip:39612345678@{R}", f"<sip:39611111111@{PBX2}>", f"<sip:39612345678@{R}>", 486),
    ("outbound-anonymous", PBX, f"sip:39298765432@{R}", "<sip:anonymous@anonymous.invalid>", f"<sip:39298765432@{R}>", 486),
    ("outbound-not-a-number", PBX, f"sip:alice@{R}", f"<sip:39611111111@{PBX}>", f"<sip:alice@{R}>", 404),
    ("outbound-forged-identity", PBX, f"sip:39298765432@{R}", f"<sip:39611111111@{PBX}>", f"<sip:39298765432@{R}>", 486,
     "P-Asserted-Identity: <sip:+18005551212@bank.example>\r\nRemote-Party-ID: <sip:+18005551212@bank.example>;screen=yes\r\n"),
    ("outbound-anonymous-claimed", PBX, f"sip:39298765432@{R}", "<sip:anonymous@anonymous.invalid>", f"<sip:39298765432@{R}>", 486,
     "P-Asserted-Identity: <sip:+39-611-111-111@pbx.test>\r\n"),
    ("outbound-anonymous-preferred-private", PBX, f"sip:39298765432@{R}", "<sip:anonymous@anonymous.invalid>", f"<sip:39298765432@{R}>", 486,
     "P-Preferred-Identity: <sip:+39611111111@pbx.test>\r\nPrivacy: id;header\r\n"),
    ("inbound-anonymous-claimed", TRUNK_A, f"sip:{DID_NATIONAL}@{R}", "<sip:anonymous@anonymous.invalid>", f"<sip:{DID_NATIONAL}@{R}>", 486,
     "P-Asserted-Identity: <sip:0611111111@carrier-a.test>\r\n"),
    ("outbound-latin1-names", PBX, f"sip:39298765432@{R}", b'"Zo\xe9" <sip:39611111111@' + PBX.encode() + b">",
     b'"Bj\xf6rn" <sip:39298765432@' + R.encode() + b">", 486),
    ("outbound-latin1-ruri", PBX, b"sip:3929876543\xe9@" + R.encode(), f"<sip:39611111111@{PBX}>", f"<sip:39298765432@{R}>", 404),
    ("unknown-source", STRANGER, f"sip:{DID_NATIONAL}@{R}", f"<sip:{CALLER_NATIONAL}@{STRANGER}>", f"<sip:{DID_NATIONAL}@{R}>", 403),
]


def parity_document(peers: BusyPeers) -> dict:
    document = routing_document(
        pbx_port=peers.ports[PBX], pbx2_port=peers.ports[PBX2],
        trunk_a_port=peers.ports[TRUNK_A], trunk_b_port=peers.ports[TRUNK_B],
    )  # fmt: skip
    # Weighted trunks at one priority: the order depends on the Call-ID.
    document["routes"].append(
        {"tenant": "acme", "prefix": "44", "trunks": [
            {"trunk": "carrier-a-1", "priority": 1, "weight": 1},
            {"trunk": "carrier-b-1", "priority": 1, "weight": 3},
        ]}
    )  # fmt: skip
    document["ipbxs"][1]["branch_flags"] = 2
    return document


def send_corpus(router) -> dict[str, int | None]:
    finals = {}
    for index, (name, source, ruri, from_, to, _code, *headers) in enumerate(CORPUS):
        tag = f";tag=t{index}"
        final = sip_invite(
            router.address, router.port, source, ruri, from_ + (tag.encode() if isinstance(from_, bytes) else tag), to,
            call_id=f"parity-{name}@c4.test", timeout=10, headers=headers[0] if headers else "",
        )  # fmt: skip
        finals[name] = final.code
    return finals


def c4_route(table, queries: list[bytes]) -> list[bytes]:
    run = subprocess.run(
        [sys.executable, "-m", "c4kemi.cli", "route", "--table", str(table)],
        input=b"\n".join(queries) + b"\n", capture_output=True, cwd=REPO_ROOT, timeout=60,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr.decode()
    return run.stdout.splitlines()


@pytest.fixture
def peers():
    busy = BusyPeers([TRUNK_A, TRUNK_B, PBX, PBX2])
    yield busy
    busy.close()


def test_same_requests_give_identical_rtjson_in_every_mode(processes, tmp_path, peers):
    document = parity_document(peers)
    expected = {name: code for name, _source, _ruri, _from, _to, code, *_ in CORPUS}

    # HTTP mode: Kamailio -> recording stub -> c4 serve.
    http_dir = tmp_path / "http"
    http_dir.mkdir()
    http = RouterFactory("http", processes, http_dir)
    write_json_atomically(http_dir / "table.json", document)
    serve_port = free_tcp_port()
    http.serve(http_dir / "table.json", serve_port)
    stub = start_api_stub(processes, http_dir, upstream_port=serve_port, record=True)
    r = http.start(document, api=stub.url)
    assert send_corpus(r) == expected, r.log_text()[-3000:]
    served = {}
    for exchange in stub.exchanges():
        assert exchange["status"] == 200, exchange
        query = orjson.loads(exchange["request"])
        served[query["call_id"]] = (exchange["request"].encode(), exchange["response"].encode())

    # KEMI mode: the handler dumps what it hands to rtjson.
    kemi_dir = tmp_path / "kemi"
    (kemi_dir / "dump").mkdir(parents=True)
    kemi = RouterFactory("kemi", processes, kemi_dir)
    r = kemi.start(document, env={"C4_RTJSON_DUMP": str(kemi_dir / "dump")})
    assert send_corpus(r) == expected, r.log_text()[-3000:]
    handed = {}
    for dump in (kemi_dir / "dump").glob("rtjson-*.tsv"):
        for line in dump.read_bytes().splitlines():
            query, _, rtjson = line.partition(b"\t")
            handed[orjson.loads(query)["call_id"]] = (query, rtjson)

    call_ids = [f"parity-{name}@c4.test" for name, *_ in CORPUS]
    assert sorted(served) == sorted(call_ids), "HTTP mode did not ask the API once per call"
    assert sorted(handed) == sorted(call_ids), "KEMI mode did not decide once per call"

    # The CLI dry run on the query each mode built gives the same bytes again.
    from_http = c4_route(http_dir / "table.json", [served[c][0] for c in call_ids])
    from_kemi = c4_route(kemi_dir / "table.json", [handed[c][0] for c in call_ids])
    orders = set()
    for call_id, cli_http, cli_kemi in zip(call_ids, from_http, from_kemi):
        http_body = served[call_id][1]
        kemi_reply = b'{"rtjson":' + handed[call_id][1] + b"}"
        assert http_body == kemi_reply, f"{call_id}: HTTP mode and KEMI mode differ"
        assert cli_http == http_body, f"{call_id}: c4 route differs from c4http"
        assert cli_kemi == kemi_reply, f"{call_id}: c4 route differs from the KEMI handler"
        if "weighted" in call_id:
            orders.add(tuple(route["dst_uri"] for route in orjson.loads(http_body)["rtjson"]["routes"]))
    assert len(orders) == 2, "the weighted calls should not all get the same trunk order"
