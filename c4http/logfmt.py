"""One log line per event, as ``key=value`` pairs (logfmt).

Values that are not plain tokens are quoted as JSON strings, with every
control character, line separator and lone surrogate escaped, so a line
always parses back into the same pairs whatever a SIP header or a URL
contained: no value can end the line or pass for another pair. Keys are
the code's own names, never input.
"""

from __future__ import annotations

import logging
import re

__all__ = ["logfmt", "log_event"]

_PLAIN = re.compile(r"[A-Za-z0-9_.:/@+\-\[\]]+")
# In a quoted value: what would end or bend the quoting, and what a terminal
# or a line-based reader would act on (C0, DEL, C1, U+2028/9), and lone
# surrogates, which no UTF-8 encoder writes.
_ESCAPED = re.compile(r'["\\\x00-\x1f\x7f-\x9f\u2028\u2029\ud800-\udfff]')
_SHORT = {'"': '\\"', "\\": "\\\\", "\n": "\\n", "\r": "\\r", "\t": "\\t"}


def _escape(match: re.Match) -> str:
    char = match.group()
    return _SHORT.get(char) or f"\\u{ord(char):04x}"


def _value(value: object) -> str:
    text = value if isinstance(value, str) else str(value)
    if _PLAIN.fullmatch(text):
        return text
    return '"' + _ESCAPED.sub(_escape, text) + '"'


def logfmt(**fields: object) -> str:
    """``key=value`` pairs in the given order; None values are left out."""
    return " ".join(f"{key}={_value(value)}" for key, value in fields.items() if value is not None)


def log_event(logger: logging.Logger, level: int, event: str, **fields: object) -> None:
    if logger.isEnabledFor(level):
        logger.log(level, logfmt(event=event, **fields))
