"""``c4 health-sync``: keep Kamailio's list of targets to watch equal to the node's routing table.

Where the table is, it comes from:
- the node's table feed (``--feed``: KEMI mode, HTTP mode with
  --serve-api). The feed (c4kemi/sources/feed.py) starts a new generation
  whenever the small collections change, trunks and IPBXs among them, and
  the first line of a generation's snapshot holds them: one line read per
  new generation.
- or the routing API the node asks (``--api``: HTTP mode with a c4 serve
  of its own elsewhere), ``GET /kamailio/health-targets`` with the node's
  routing key; a table it already has costs a 304.
It works out the targets (c4kemi/core/health.py) and hands what changed to
Kamailio (c4kemi/call/health.py, ``ProbeSync``). Once a second it also
checks that Kamailio still has them (a restarted Kamailio gets them all
again). ``c4 kamailio`` runs it beside Kamailio in both modes, at the
lowest CPU priority; while Kamailio or the API does not answer, it tries
again every second and says so once.
"""

from __future__ import annotations

import logging
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path

import orjson

from ..call.channels import KamailioRpc, RpcError
from ..call.health import ProbeSync
from ..core.health import ProbeTarget, base_targets
from ..sources.feed import POINTER, snapshot_path

__all__ = ["api_targets", "feed_targets", "run"]

HEALTH_TARGETS_PATH = "/kamailio/health-targets"  # c4http.web.HEALTH_TARGETS_PATH (no aiohttp here)
ROUTING_KEY_HEADER = "X-C4-Routing-Key"  # c4http.views.ROUTING_KEY_HEADER

log = logging.getLogger("c4.health")


# (version, targets) of the table now, given the version last seen: None when unchanged.
Reader = Callable[[object], tuple[object, dict[str, ProbeTarget]] | None]


def feed_targets(feed: Path) -> Reader:
    """Targets from the feed's current snapshot (OSError or ValueError while it has none)."""

    def read(seen: object) -> tuple[object, dict[str, ProbeTarget]] | None:
        generation = int(orjson.loads((feed / POINTER).read_bytes())["generation"])
        if generation == seen:
            return None
        with snapshot_path(feed, generation).open("rb") as snapshot:
            base = orjson.loads(snapshot.readline())["base"]
        return generation, base_targets(base)

    return read


def api_targets(base_url: str, key: str | None) -> Reader:
    """Targets from the routing API (OSError or ValueError while it does not answer them)."""
    url = base_url.rstrip("/") + HEALTH_TARGETS_PATH

    def read(seen: object) -> tuple[object, dict[str, ProbeTarget]] | None:
        request = urllib.request.Request(url, headers={ROUTING_KEY_HEADER: key or "", **({"If-None-Match": seen} if seen else {})})
        try:
            with urllib.request.urlopen(request, timeout=5) as response:
                body = orjson.loads(response.read())
                etag = response.headers.get("ETag")
        except urllib.error.HTTPError as exc:
            if exc.code == 304:
                return None
            raise OSError(f"{url}: HTTP {exc.code}") from None
        return etag, {uri: ProbeTarget(uri, line, tuple(users)) for uri, line, users in body["targets"]}

    return read


def run(source: Reader, rpc_path: str, interval: float = 1.0) -> int:
    """Follow the table and keep Kamailio in step until stopped."""
    sync = ProbeSync(KamailioRpc(rpc_path))
    version, targets = None, {}
    failing = False
    while True:
        try:
            found = source(version)
            if found is not None:
                version, targets = found
        except (OSError, ValueError, KeyError, TypeError) as exc:
            log.debug("table not readable yet: %s", exc)
        if version is not None:
            try:
                changed = sync.sync(targets)
                if failing:
                    log.info("Kamailio answers on %s again", rpc_path)
                    failing = False
                if changed:
                    log.info("trunk health: %d target(s) watched, %d sent to Kamailio (table %s)", len(targets), changed, version)
            except RpcError as exc:
                if not failing:
                    log.warning("trunk health: cannot reach Kamailio yet (%s); trying again every %.0f s", exc, interval)
                failing = True
        time.sleep(interval)
