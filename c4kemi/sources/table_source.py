"""The interface every table source keeps (c4kemi/sources/__init__.py says which ones there are and chooses).

A leaf module: the sources import it, and it imports none of them.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from ..core.compiled import RoutingTable

__all__ = ["ReloadCounters", "TableSource"]


@dataclass
class ReloadCounters:
    """What health and metrics say of a source: when its table was loaded, how many changes it took or refused."""

    loaded_at: float | None = field(default_factory=time.time)
    reloads: int = 0
    failed_reloads: int = 0

    def loaded(self) -> None:
        """A first table (PostgreSQL's, which comes after start)."""
        self.loaded_at = time.time()

    def reloaded(self) -> None:
        self.loaded()
        self.reloads += 1

    def failed(self) -> None:
        self.failed_reloads += 1


class TableSource(Protocol):
    """A routing table that follows its store. ``current()`` is on every call's path: it must be cheap."""

    counters: ReloadCounters

    def current(self) -> RoutingTable:
        """The table to route with now."""
        ...

    def refresh(self) -> bool:
        """Take in what changed; True if a new table is now in use. Never raises for a bad change."""
        ...

    def status(self) -> dict[str, Any]:
        """The store's state for health: ``{"kind": ..., "state": "ok" | "stale", ...}``."""
        ...
