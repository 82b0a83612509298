"""The regular expressions a routing document holds, checked before use.

Normalization rules (``match``/``replace``) and DID ``match`` patterns run
with Python's ``re`` on numbers that callers choose. ``re`` backtracks, so a
careless pattern such as ``^(3+)+4$`` costs exponential time in the length
of the number: one INVITE could stall a Kamailio worker for minutes. Two
bounds keep the work per call small whatever a table holds:

- numbers longer than ``c4kemi.core.numbers.MAX_NUMBER_LENGTH`` never reach a
  regex (the decision refuses or passes them untouched first);
- a document pattern may not nest repetition (a quantifier over something
  that itself repeats or alternates, ``(3+)+``, ``(0|00)*``), and holds at
  most ``MAX_VARIABLE_REPEATS`` variable-length quantifiers. Without nesting
  the backtracking is polynomial, of degree at most that count, over at
  most ``MAX_NUMBER_LENGTH`` characters.

We keep ``re`` (its syntax and semantics are the documented ones, and it is
about thirty times faster per match than the RE2 bindings measured here)
and refuse the patterns that could make it slow. The parse tree comes from
``re._parser``, the parser ``re.compile`` itself uses.

A ``replace`` template is checked by applying it once to an empty match of
a pattern with the same groups: every error ``re.sub`` could raise on a
call (bad escapes, unknown groups) is raised here, at check time.
"""

from __future__ import annotations

import re
import re._constants as sre
import re._parser as sre_parse

__all__ = ["MAX_VARIABLE_REPEATS", "PatternError", "compile_pattern", "check_template"]

MAX_VARIABLE_REPEATS = 4
_TEMPLATE_TEXT = re.compile(r"[0-9+*]*")

_REPEATS = {sre.MAX_REPEAT, sre.MIN_REPEAT, sre.POSSESSIVE_REPEAT}


class PatternError(ValueError):
    """A pattern or template a document may not hold; the message says why."""


def compile_pattern(text: str) -> re.Pattern:
    """Compile a document pattern, refusing the ones that can backtrack badly."""
    if "\x00" in text:  # PostgreSQL text cannot hold it; write \x00 to match one
        raise PatternError(f"{text!r} contains a NUL character")
    try:
        pattern = re.compile(text)
        tree = sre_parse.parse(text)
    except re.error as exc:
        raise PatternError(f"bad regular expression {text!r}: {exc}") from None
    variable = _check(tree, inside_repeat=False)
    if variable > MAX_VARIABLE_REPEATS:
        raise PatternError(
            f"{text!r} has {variable} variable-length quantifiers; at most {MAX_VARIABLE_REPEATS} "
            "are allowed, so that matching a number stays fast"
        )
    return pattern


def _children(op, av) -> list:
    """The sub-patterns inside one node of the parse tree."""
    if op is sre.SUBPATTERN:
        return [av[3]]
    if op in _REPEATS:
        return [av[2]]
    if op is sre.BRANCH:
        return list(av[1])
    if op in (sre.ASSERT, sre.ASSERT_NOT):
        return [av[1]]
    if op is sre.ATOMIC_GROUP:
        return [av]
    if op is sre.GROUPREF_EXISTS:
        return [p for p in av[1:] if p is not None]
    return []


def _check(tree, inside_repeat: bool) -> int:
    """Refuse nested repetition; return the number of variable-length quantifiers."""
    variable = 0
    for op, av in tree.data if hasattr(tree, "data") else tree:
        if op in _REPEATS:
            low, high, body = av
            if inside_repeat:
                raise PatternError("nested repetition (a quantifier inside a repeated group) can take exponential time")
            if low != high:
                variable += 1
            # An optional part ('?', {0,1}) is tried at most once: it may hold anything.
            variable += _check(body, inside_repeat=high > 1)
            continue
        if inside_repeat and op in (sre.BRANCH, sre.GROUPREF, sre.GROUPREF_EXISTS):
            raise PatternError("a repeated alternation or group reference can take exponential time")
        for child in _children(op, av):
            variable += _check(child, inside_repeat)
    return variable


def check_template(pattern: re.Pattern, replace: str) -> None:
    """Raise PatternError if ``re.sub(pattern, replace, ...)`` could fail on a match."""
    names = {index: name for name, index in pattern.groupindex.items()}
    probe = "".join(f"(?P<{names[i]}>)" if i in names else "()" for i in range(1, pattern.groups + 1))
    try:
        literal = re.compile(probe).sub(replace, "", count=1)
    except (re.error, IndexError) as exc:
        raise PatternError(f"bad replacement {replace!r}: {exc}") from None
    # The result becomes the user part of a URI: only number characters.
    if not _TEMPLATE_TEXT.fullmatch(literal):
        raise PatternError(f"bad replacement {replace!r}: its text may hold only digits, '+' and '*' besides group references")
