"""Work done in steps: a generator that yields between chunks and returns its result.

Compiling a table, applying a change and merging an index are written as
generators (``compile_steps``, ``apply_changes_steps``,
``PrefixIndex.updated_steps``) so a Kamailio worker can spread a large
change over calls (c4kemi/sources/feed_reader.py); ``finish`` runs one to the end at once.
"""

from __future__ import annotations

from collections.abc import Generator
from typing import TypeVar

__all__ = ["STEP", "finish"]

# A step: this many DIDs or routes (a few ms). The stepped functions read it
# when they start (``steps.STEP``), so a test can make the steps smaller.
STEP = 1000
T = TypeVar("T")


def finish(steps: Generator[None, None, T]) -> T:
    """Run compile_steps, apply_changes_steps or PrefixIndex.updated_steps to the end: what it returns."""
    while True:
        try:
            next(steps)
        except StopIteration as done:
            return done.value
