"""URI splitting and user-part replacement, on the forms calls really carry."""

from __future__ import annotations

import pytest

from c4kemi.core.numbers import parse_uri


@pytest.mark.parametrize(
    "uri, number, host, replaced",
    [
        ("sip:0612@acme.example.com", "0612", "acme.example.com", "sip:39612@acme.example.com"),
        ("sip:0612@acme.example.com:5060;user=phone", "0612", "acme.example.com", "sip:39612@acme.example.com:5060;user=phone"),
        ("sips:+39612;npdi@[2001:db8::1]:5061", "+39612", "[2001:db8::1]", "sips:39612@[2001:db8::1]:5061"),
        ("sip:c4.example.com", "", "c4.example.com", "sip:39612@c4.example.com"),
        ("sip:0612@10.0.0.1:5060", "0612", "10.0.0.1", "sip:39612@10.0.0.1:5060"),
        ("tel:+39-06-12;phone-context=example.com", "+39-06-12", "", "tel:39612;phone-context=example.com"),
        ("TEL:0612", "0612", "", "TEL:39612"),
        ("not a uri", "", "", "not a uri"),
    ],
)
def test_parse_uri(uri, number, host, replaced):
    parsed = parse_uri(uri)
    assert parsed.head + parsed.user + parsed.tail == uri
    assert parsed.number == number
    assert parsed.host == host
    assert parsed.with_user("39612") == replaced


@pytest.mark.parametrize(
    "uri, replaced",
    [
        ("sip:0612@10.0.0.1?Route=%3Csip:evil.example%3E", "sip:39612@10.0.0.1"),
        ("sip:0612@10.0.0.1:5060;user=phone?subject=x&priority=urgent", "sip:39612@10.0.0.1:5060;user=phone"),
        ("sip:c4.example.com?Route=x", "sip:39612@c4.example.com"),
    ],
)
def test_uri_headers_are_dropped(uri, replaced):
    # A peer must not smuggle headers into the From/To we write.
    assert parse_uri(uri).with_user("39612") == replaced


def test_empty_user_leaves_a_userless_uri_alone():
    assert parse_uri("sip:c4.example.com").with_user("") == "sip:c4.example.com"
