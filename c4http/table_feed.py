"""``c4 serve --table FILE`` on its own: the document reaches the service through a feed, as in a node.

Reloading the whole document in the service cost, at 1M DIDs, about 5 s
before a one-DID change showed and held requests up to about 330 ms (the
compile holds the interpreter). So ``c4 serve --table`` takes the launcher's
change path: it starts ``c4 feed`` (the same command, c4kemi.node.launch_plan's
``feed_writer``) on a private directory, reads that feed with
``FeedTableSource`` and takes in each change set, the size of what changed.
The writer runs with the lowest CPU priority; if it dies it is started
again (the service keeps routing with the table it has meanwhile), and it
is stopped with the service.
"""

from __future__ import annotations

import asyncio
import logging
import shutil
import subprocess
import tempfile
import time
from collections.abc import AsyncIterator
from pathlib import Path

from aiohttp import web

from c4kemi.node.launch_plan import Helper, feed_writer
from c4kemi.node.launch_supervision import idle_child, stop_helper

from .logfmt import logfmt
from .web import background

__all__ = ["FeedWriterProcess"]

log = logging.getLogger("c4.http")

RESTART_DELAY = 1.0  # seconds before a writer that died is started again
WATCH_INTERVAL = 0.5  # seconds between looks at the writer


class WriterFailed(RuntimeError):
    """c4 feed exited before it published a first table (it logged why: a refused document)."""


class FeedWriterProcess:
    """``c4 feed`` for one document, publishing to a private directory for as long as the service runs."""

    def __init__(self, table: str | Path) -> None:
        self.table = Path(table).resolve()
        self.directory = Path(tempfile.mkdtemp(prefix="c4-serve-feed-"))  # 0700: the feed holds trunk passwords
        self.helper: Helper = feed_writer(self.table, self.directory)
        self.proc: subprocess.Popen | None = None
        self.restarts = 0

    def start(self) -> None:
        """Start the writer and wait for its first publication (as long as it takes: a large table is checked first)."""
        self._spawn()
        log.info(logfmt(event="waiting", detail=f"c4 feed checks {self.table} before the service starts"))
        while not self.helper.ready():
            code = self.proc.poll()
            if code is not None:
                self.remove()
                raise WriterFailed(f"c4 feed refused {self.table} (exit code {code}, its errors above)")
            time.sleep(0.05)

    def _spawn(self) -> None:
        self.proc = subprocess.Popen(self.helper.argv, stdin=subprocess.DEVNULL, preexec_fn=idle_child)

    async def supervise(self, app: web.Application) -> AsyncIterator[None]:
        """An aiohttp cleanup context: restart the writer if it dies; stop it and remove the feed at shutdown."""
        async with background(self._watch(), "c4-feed-writer"):
            yield
        self.stop()

    async def _watch(self) -> None:
        while True:
            await asyncio.sleep(WATCH_INTERVAL)
            code = self.proc.poll()
            if code is None:
                continue
            self.restarts += 1
            log.error(logfmt(event="feed_writer_exited", code=code, restarts=self.restarts,
                             detail=f"table changes wait; c4 feed started again in {RESTART_DELAY:.0f} s"))
            await asyncio.sleep(RESTART_DELAY)
            self._spawn()

    def stop(self) -> None:
        if self.proc is not None:
            stop_helper(self.proc)
        self.remove()

    def remove(self) -> None:
        shutil.rmtree(self.directory, ignore_errors=True)
