"""Where compiled tables come from, and how they are swapped on change.

``FileTableSource`` watches a .json/.toml routing document. ``current()`` is
cheap enough for every call: at most once per ``check_interval`` it stats the
file, and when the file changed it checks the new document and swaps in a
new table, made from the current one by applying what changed
(``update_table``: DIDs and routes one by one, anything else a full
compile). A document that fails to load is logged and refused, and the
last good table keeps serving. Synchronous on purpose: Kamailio workers
(KEMI mode) have no running threads or event loop.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ..core.document import DocumentError, load_document
from ..core.table import RoutingTable, load_table, update_table
from .files import file_stamp
from .table_source import ReloadCounters

__all__ = ["CHECK_INTERVAL", "FileTableSource", "PolledSource"]

log = logging.getLogger("c4.store")

CHECK_INTERVAL = 1.0  # seconds between looks at the file


class PolledSource:
    """A TableSource (c4kemi/sources/__init__.py) whose ``current()`` looks for changes (``refresh()``) at most once per ``check_interval``."""

    check_interval: float
    counters: ReloadCounters
    _next_check: float
    _table: RoutingTable

    def refresh(self) -> bool:
        raise NotImplementedError

    def current(self) -> RoutingTable:
        """The table to route with now (changes taken in first, at most once per check_interval)."""
        now = time.monotonic()
        if now >= self._next_check:
            self._next_check = now + self.check_interval
            self.refresh()
        return self._table


class FileTableSource(PolledSource):
    def __init__(
        self,
        path: str | Path,
        check_interval: float = CHECK_INTERVAL,
        on_reload: Callable[[RoutingTable], None] | None = None,
        on_error: Callable[[DocumentError], None] | None = None,
    ) -> None:
        self.path = Path(path)
        self.check_interval = check_interval
        self.on_reload = on_reload
        self.on_error = on_error
        self.counters = ReloadCounters()
        self._stamp = file_stamp(self.path)
        self._table = load_table(self.path)  # the first load must succeed
        self._next_check = time.monotonic() + check_interval

    def refresh(self) -> bool:
        """Reload if the file changed; True if a new table is now in use."""
        stamp = file_stamp(self.path)
        if stamp is None or stamp == self._stamp:
            return False
        self._stamp = stamp  # a bad document is refused once, not every second
        try:
            # Only what changed is compiled (DIDs and routes); see update_table.
            table = update_table(self._table, load_document(self.path))
        except Exception as exc:  # whatever fails, the call must not: refuse the reload
            if not isinstance(exc, DocumentError):
                log.exception("routing table %s could not be loaded", self.path)
                exc = DocumentError([f"cannot load: {type(exc).__name__}: {exc}"], str(self.path))
            self.counters.failed()
            log.error("routing table %s refused, still serving version %s: %s", self.path, self._table.version, exc)
            if self.on_error:
                self.on_error(exc)
            return False
        self._table = table
        self.counters.reloaded()
        log.info("routing table %s reloaded: version %s", self.path, table.version)
        if self.on_reload:
            self.on_reload(table)
        return True

    def status(self) -> dict[str, Any]:
        return {"kind": "file", "state": "ok"}
