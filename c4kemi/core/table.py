"""The routing table: a checked document compiled for fast lookups, and the ways to get one.

A validated routing document is compiled once into a ``RoutingTable``;
every lookup a decision makes costs a handful of dict probes, whatever the
number of DIDs, routes or sources. A change makes a new table from the old
one at the cost of what changed; reloading swaps the table whole. This
module is where callers get a table; each concern has its own module:

- c4kemi/core/compiled.py: the table and what it holds (endpoints, DIDs, routes);
- c4kemi/core/indexes.py: its lookup indexes (``PrefixIndex``, ``SourceIndex``);
- c4kemi/core/compiler.py: compiling a checked document (``compile_validated``);
- c4kemi/core/incremental.py: a table from a table and a change (``update_table``, ``apply_changes``);
- c4kemi/core/digests.py: the table's version (``document_version``, per-entity digests);
- c4kemi/core/steps.py: the stepped forms' step size and ``finish``.

``compile_table`` and ``load_table`` take a document that is not checked
yet. The other names below are the table's interface as the table sources
(c4kemi/sources/store.py, c4kemi/sources/feed.py, c4kemi/db/source.py) use it, defined in
the modules above.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .compiled import BASE_COLLECTIONS, RoutingTable
from .compiler import compile_did, compile_steps, compile_validated
from .digests import DIGEST_MASK, did_digest, document_version, route_digest
from .document import load_document, validate_document
from .incremental import apply_changes, apply_changes_steps, update_table
from .steps import finish

__all__ = [
    "BASE_COLLECTIONS", "DIGEST_MASK", "RoutingTable", "apply_changes", "apply_changes_steps", "compile_did", "compile_steps",
    "compile_table", "compile_validated", "did_digest", "document_version", "finish", "load_table", "route_digest", "update_table",
]


def compile_table(document: Any) -> RoutingTable:
    """Validate a routing document (parsed JSON/TOML) and compile it.

    Raises DocumentError naming every problem.
    """
    return compile_validated(validate_document(document))


def load_table(path: str | Path) -> RoutingTable:
    """Load, validate and compile a routing document file."""
    return compile_validated(load_document(path))
