"""The identity the router asserts: optional request members identity_uri and privacy."""

from __future__ import annotations

import pytest

from c4kemi.core.decision import RequestError, decide
from c4kemi.core.table import compile_table
from tables import BASE_DOCUMENT, request

TABLE = compile_table(BASE_DOCUMENT)
PBX = "10.0.0.10"  # acme-pbx: no profile
OUT = "39298765432"
ANON = "sip:anonymous@anonymous.invalid"


def extra(query: dict) -> set[str]:
    reply = decide(TABLE, query)["rtjson"]
    assert reply["success"], reply
    return {route["headers"]["extra"] for route in reply["routes"]}


def anonymous(**members) -> dict:
    return request(PBX, OUT, from_uri=ANON, **members)


def test_without_the_new_members_nothing_changes():
    assert extra(request(PBX, OUT, calling="39611111111")) == {"P-Asserted-Identity: <sip:+39611111111@acme.example.com>\r\n"}
    assert extra(anonymous()) == {""}


def test_a_numeric_caller_is_asserted_from_its_number_whatever_it_claims():
    query = request(PBX, OUT, calling="39611111111", identity_uri="sip:+18005551212@bank.example", privacy="id")
    assert extra(query) == {"P-Asserted-Identity: <sip:+39611111111@acme.example.com>\r\n"}


def test_anonymous_caller_gets_its_claimed_number_asserted_and_private():
    assert extra(anonymous(identity_uri="sip:+39-611-111-111@pbx.example")) == {
        "P-Asserted-Identity: <sip:+39611111111@pbx.example>\r\nPrivacy: id\r\n"}


def test_anonymous_caller_with_its_own_privacy_header_gets_no_second_one():
    assert extra(anonymous(identity_uri="tel:+39611111111", privacy="id;critical")) == {
        "P-Asserted-Identity: <tel:+39611111111>\r\n"}


@pytest.mark.parametrize("claimed", ["sip:bank@bank.example", "sip:+1@h\r\nX-Evil: 1", ""])
def test_anonymous_caller_with_an_unusable_claim_gets_no_identity(claimed):
    assert extra(anonymous(identity_uri=claimed)) == {""}


def test_the_claim_is_normalized_with_the_senders_profile():
    # carrier-a-1 (192.0.2.0/28) has the "it" profile: national 0611... is 39611...
    reply = decide(TABLE, request("192.0.2.1", "0612345678", calling="anonymous", identity_uri="sip:0611111111@carrier.example"))
    assert reply["rtjson"]["success"]
    assert {r["headers"]["extra"] for r in reply["rtjson"]["routes"]} == {
        "P-Asserted-Identity: <sip:+39611111111@carrier.example>\r\nPrivacy: id\r\n"}


@pytest.mark.parametrize("member", ["identity_uri", "privacy"])
def test_the_new_members_must_be_strings(member):
    with pytest.raises(RequestError, match=member):
        decide(TABLE, anonymous(**{member: 5}))



def test_an_over_long_claimed_identity_is_not_asserted():
    # Like any number, one longer than MAX_NUMBER_LENGTH never reaches a normalization regex.
    query = request("10.0.0.11", OUT, from_uri=ANON, identity_uri="sip:" + "3" * 33 + "@pbx.example")  # profile it
    assert extra(query) == {""}
