"""One log line per event, as ``key=value`` pairs (logfmt).

Values that are not plain tokens are JSON-quoted, so a line always parses
back into the same pairs whatever a SIP header contained.
"""

from __future__ import annotations

import logging
import re

import orjson

__all__ = ["logfmt", "log_event"]

_PLAIN = re.compile(r"[A-Za-z0-9_.:/@+\-\[\]]+")


def _value(value: object) -> str:
    text = value if isinstance(value, str) else str(value)
    if _PLAIN.fullmatch(text):
        return text
    return orjson.dumps(text).decode()


def logfmt(**fields: object) -> str:
    """``key=value`` pairs in the given order; None values are left out."""
    return " ".join(f"{key}={_value(value)}" for key, value in fields.items() if value is not None)


def log_event(logger: logging.Logger, level: int, event: str, **fields: object) -> None:
    if logger.isEnabledFor(level):
        logger.log(level, logfmt(event=event, **fields))
