"""Numbers and URIs: user parts, visual separators, E.164 normalization.

Pure string work on the hot path, written with str methods rather than a
general URI parser: a routing decision parses three URIs.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import NamedTuple

__all__ = ["MAX_NUMBER_LENGTH", "Profile", "Uri", "parse_uri", "strip_separators", "is_digits"]

# E.164 numbers have at most 15 digits; with an international prefix, a
# '+' or a tech prefix a dialled string stays well below this. Longer
# strings are refused (called) or passed untouched (calling) before any
# document regex sees them, which bounds the work per call.
MAX_NUMBER_LENGTH = 32

_SEPARATORS = str.maketrans("", "", " -.()")
_SEPARATOR = re.compile(r"[ \-.()]")


def is_digits(number: str) -> bool:
    """True for a non-empty string of ASCII digits (str.isdigit alone takes '²')."""
    return number.isascii() and number.isdigit()


def strip_separators(number: str) -> str:
    """Remove the visual separators space, '-', '.', '(' and ')'."""
    # Most numbers have none, and a regex search is a few times cheaper
    # than str.translate (which builds a new string char by char).
    return number.translate(_SEPARATORS) if _SEPARATOR.search(number) is not None else number


class Uri(NamedTuple):
    """A SIP or tel: URI split around its user part, parsed once per call.

    ``head + user + tail`` is the URI. ``tail`` starts with '@' when a SIP
    URI has a user part; for tel: it holds the parameters. URI headers
    (``sip:a@b?Route=...``) are dropped when parsing: they have no place in
    a From or To we rewrite, and a peer could smuggle headers through them.
    """

    text: str
    head: str  # scheme and ':'
    user: str  # the whole user part (a tel: URI's number)
    tail: str
    is_tel: bool

    @property
    def number(self) -> str:
        """The user part without user parameters (';npdi', ';isub=...')."""
        return self.user.partition(";")[0]

    @property
    def host(self) -> str:
        """The host (IPv6 references keep their brackets); '' for tel: or no scheme."""
        if self.is_tel or not self.head:
            return ""
        hostport = self.tail[1:] if self.tail.startswith("@") else self.tail
        if hostport.startswith("["):
            return hostport[: hostport.find("]") + 1]
        # Up to the first of ':', ';', '?', '>': each cut keeps what is before it.
        return hostport.partition(":")[0].partition(";")[0].partition("?")[0].partition(">")[0]

    def with_user(self, user: str) -> str:
        """The URI with its user part (or tel: number) replaced by ``user``."""
        if not self.head:
            return self.text
        if self.is_tel or self.tail.startswith("@"):
            return self.head + user + self.tail
        return self.head + user + "@" + self.tail if user else self.text


# Uri(...) runs the Python __new__ NamedTuple generates; tuple.__new__ makes
# the same object without that frame (parse_uri runs three times a call).
_new_uri = tuple.__new__


def parse_uri(uri: str) -> Uri:
    scheme, colon, after = uri.partition(":")
    if not colon:
        return _new_uri(Uri, (uri, "", "", uri, False))
    head = scheme + ":"
    if scheme.lower() == "tel":
        number, semi, params = after.partition(";")
        return _new_uri(Uri, (uri, head, number, semi + params, True))
    user, at, host = after.rpartition("@")
    if "?" in host:
        host = host.partition("?")[0]
        uri = head + user + at + host
    if not at:
        return _new_uri(Uri, (uri, head, "", host, False))
    return _new_uri(Uri, (uri, head, user, at + host, False))


class Profile:
    """A compiled normalization profile (docs/routing.md, rules 2 and 5)."""

    __slots__ = ("name", "country_code", "intl_prefix", "ld_prefix", "always_plus", "to_rules", "from_rules")

    def __init__(
        self,
        name: str,
        country_code: str = "",
        intl_prefix: str = "",
        ld_prefix: str = "",
        always_plus: bool = False,
        to_e164: Sequence[dict] = (),
        from_e164: Sequence[dict] = (),
    ) -> None:
        self.name = name
        self.country_code = country_code
        self.intl_prefix = intl_prefix
        self.ld_prefix = ld_prefix
        self.always_plus = always_plus
        self.to_rules = tuple(_Rule(r["match"], r["replace"]) for r in to_e164)
        self.from_rules = tuple(_Rule(r["match"], r["replace"]) for r in from_e164)

    def to_e164(self, number: str) -> str:
        """A number as the sender wrote it, to E.164 digits (without '+')."""
        for rule in self.to_rules:  # the first rule that matches
            found = rule.pattern.match(number)
            if found is not None:
                return rule.apply(found, number)
        if number.startswith("+"):
            return number[1:]
        if self.intl_prefix and number.startswith(self.intl_prefix):
            return number[len(self.intl_prefix):]
        if self.ld_prefix and number.startswith(self.ld_prefix):
            return self.country_code + number[len(self.ld_prefix):]
        return number

    def from_e164(self, number: str) -> str:
        """An E.164 number as the receiver wants it."""
        for rule in self.from_rules:
            found = rule.pattern.match(number)
            if found is not None:
                number = rule.apply(found, number)
                break
        return "+" + number if self.always_plus else number


_TEMPLATE_PART = re.compile(r"\\(?:g<([0-9]+|[A-Za-z_][A-Za-z0-9_]*)>|([1-9][0-9]?)|(\\))|([^\\]+)")


class _Rule:
    """A ``{match, replace}`` rule, applied as re.sub(match, replace, number, count=1).

    Once ``re.match`` has matched, the leftmost match is the one at 0, so the
    result is the expanded replacement plus the rest of the number. Simple
    replacements (literals, group references, '\\\\') are parsed once here;
    anything else (other escapes) goes through ``Pattern.sub`` itself.
    """

    __slots__ = ("pattern", "replace", "parts")

    def __init__(self, match: str, replace: str) -> None:
        self.pattern = re.compile(match)
        self.replace = replace
        parts: list[str | int] | None = []
        position = 0
        for part in _TEMPLATE_PART.finditer(replace):
            if part.start() != position:
                parts = None
                break
            position = part.end()
            group, number, backslash, literal = part.groups()
            if literal is not None or backslash is not None:
                parts.append(literal if literal is not None else "\\")
            else:
                name = group or number
                parts.append(int(name) if name.isdigit() else self.pattern.groupindex[name])
        if parts is not None and position != len(replace):
            parts = None
        self.parts = tuple(parts) if parts is not None else None

    def apply(self, found: re.Match, number: str) -> str:
        if self.parts is None:
            return self.pattern.sub(self.replace, number, count=1)
        out = ""
        for part in self.parts:
            out += part if part.__class__ is str else (found.group(part) or "")
        return out + number[found.end():]
