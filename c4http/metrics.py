"""Prometheus metrics of one c4http application, in a registry of its own.

Request counters and the decision latency histogram are updated by the
routing handler (each update is well under a microsecond). Everything about
the routing table (version, entity counts, reloads) is read from the table
source when scraped, so it is never stale and costs nothing per request.
"""

from __future__ import annotations

import os
import time

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    InfoMetricFamily,
)
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from c4kemi.sources.table_source import TableSource

__all__ = ["Metrics", "CONTENT_TYPE_LATEST", "BAD_REQUEST_REASONS", "REFUSAL_CODES"]

# The decision itself takes about 10-30 us; the tail is there for GC pauses
# and for a table with many regex DID matches.
DECISION_BUCKETS = (5e-6, 1e-5, 2e-5, 5e-5, 1e-4, 2e-4, 5e-4, 1e-3, 2e-3, 5e-3, 1e-2, 5e-2)

REFUSAL_CODES = ("403", "404")
BAD_REQUEST_REASONS = (
    "malformed_json",
    "not_object",
    "invalid_request",
    "body_too_large",
    "unsupported_media_type",
    "forbidden_source",
    "bad_routing_key",
)


# Counters Kamailio keeps (kamailio-base.cfg), served as they are (name + _total).
KAMAILIO_STATISTICS = {
    "c4_cdr_dropped": "Call records Kamailio dropped: the queue to c4 cdr was full, or the event too big (docs/cdr.md)",
    "c4_refused_unknown_source": "New INVITEs refused 403 because their source is in no trunk or IPBX, from Kamailio",
    "c4_targets_down": "Trunk health: times a trunk or IPBX target was marked down, node-wide, from Kamailio (docs/health.md)",
    "c4_targets_up": "Trunk health: times a down trunk or IPBX target came back, node-wide, from Kamailio",
    "c4_overload_refusals": "New INVITEs refused 503 by admission control (the node at its bounds), from Kamailio",
}


# The node's status file, which c4 kamailio names in its helpers' environment (c4kemi/node/launch_supervision.py).
NODE_STATUS_ENV = "C4_NODE_STATUS"
# The node's decisions, counted by Kamailio in both modes (kamailio-base.cfg: route[COUNT_DECISION]).
NODE_REFUSALS = {"403": "c4_refusals_403", "404": "c4_refusals_404", "other": "c4_refusals_other"}
# Buckets of the wait for a decision, in ms (upper bounds), and Kamailio's counter of each (not cumulative).
NODE_DECISION_BUCKETS = (("0.5", "0_5"), ("1", "1"), ("2", "2"), ("5", "5"), ("10", "10"), ("20", "20"), ("50", "50"),
                         ("100", "100"), ("500", "500"), ("+Inf", "inf"))
NODE_STATISTICS = ("c4_decisions", *NODE_REFUSALS.values(), *(f"c4_decision_ms_le_{name}" for _, name in NODE_DECISION_BUCKETS))


class TableCollector:
    """Table facts, read from the source at scrape time."""

    def __init__(self, source: TableSource, started: float) -> None:
        self.source = source
        self.started = started

    def describe(self):
        return []  # families are only known at collect time; nothing to check up front

    def collect(self):
        table = self.source.current()
        counters = self.source.counters
        info = InfoMetricFamily("c4_table", "The routing table in use")
        info.add_metric([], {"version": table.version})
        yield info
        entities = GaugeMetricFamily("c4_table_entities", "Entities in the routing table, by collection", labels=["collection"])
        for name, count in sorted(table.counts.items()):
            entities.add_metric([name], count)
        yield entities
        yield CounterMetricFamily("c4_table_reloads", "Routing table reloads that succeeded", value=counters.reloads)
        yield CounterMetricFamily(
            "c4_table_failed_reloads",
            "Routing table reloads refused (bad document; the previous table kept serving)",
            value=counters.failed_reloads,
        )
        if counters.loaded_at is not None:
            yield GaugeMetricFamily("c4_table_loaded_timestamp_seconds", "When the table in use was loaded", value=counters.loaded_at)
        yield GaugeMetricFamily("c4_uptime_seconds", "Seconds since the service started", value=time.monotonic() - self.started)
        # 0 while /health says "degraded" (PostgreSQL away: routing goes on with the last good table).
        yield GaugeMetricFamily("c4_store_up", "The table's store answers (1) or not (0): PostgreSQL reachable, the feed's writer following",
                                value=1 if self.source.status().get("state") == "ok" else 0)


class ChannelCollector:
    """The calls in progress per tenant and per trunk, and Kamailio's counters, asked of Kamailio at scrape time (c4kemi.call.channels)."""

    def __init__(self, source: TableSource, path: str) -> None:
        from c4kemi.call.channels import KamailioRpc

        self.source = source
        self.rpc = KamailioRpc(path)

    def describe(self):
        return []

    def collect(self):
        from c4kemi.call.channels import RpcError, live_counts

        try:
            counts = live_counts(self.rpc, self.source.current())
        except RpcError:
            yield GaugeMetricFamily("c4_kamailio_up", "Kamailio answered the live channel count query (1) or not (0)", value=0)
            return
        yield GaugeMetricFamily("c4_kamailio_up", "Kamailio answered the live channel count query (1) or not (0)", value=1)
        yield GaugeMetricFamily("c4_calls_in_progress", "Calls in progress (routed, not ended), from Kamailio", value=counts["calls"])
        for kind in ("tenant", "trunk"):
            family = GaugeMetricFamily(
                f"c4_{kind}_calls_in_progress", f"Calls in progress per {kind} (its channels in use), from Kamailio's dialog profiles",
                labels=[kind],
            )
            for name, calls in counts[kind + "s"].items():
                family.add_metric([name], calls)
            yield family
        yield from self._statistics()
        yield from self._health()
        yield from self._cluster()

    def _cluster(self):
        """A cluster node (docs/cluster.md): the other nodes as DMQ sees them; nothing on a node alone (no dmq loaded)."""
        from c4kemi.call.channels import RpcError

        try:
            nodes = self.rpc.call("dmq.list_nodes")
        except RpcError:
            return
        up = GaugeMetricFamily("c4_cluster_node_up", "Cluster: 1 while DMQ sees the other node active, 0 otherwise (docs/cluster.md)",
                               labels=["node"])
        for node in nodes if isinstance(nodes, list) else []:
            if isinstance(node, dict) and not node.get("local"):
                up.add_metric([f"sip:{node.get('host')}:{node.get('port')}"], 1 if node.get("status") == "active" else 0)
        yield up

    def _health(self):
        """Trunk health from Kamailio (c4kemi.call.health): up or down, and changes of state, per trunk and IPBX target."""
        from c4kemi.call.channels import RpcError
        from c4kemi.call.health import health_report
        from c4kemi.core.health import base_targets

        base = self.source.current().base
        try:
            report = health_report(self.rpc, base_targets(base), detail=False)
        except RpcError:
            return
        up = GaugeMetricFamily("c4_trunk_up", "Trunk health: 1 while the trunk's target is up, 0 while down (docs/health.md)", labels=["trunk"])
        changes = CounterMetricFamily("c4_trunk_state_changes", "Trunk health: changes of state of the trunk's target, by new state",
                                      labels=["trunk", "state"])
        ipbx_up = GaugeMetricFamily("c4_ipbx_target_up", "Trunk health: 1 while the IPBX target is up, 0 while down", labels=["ipbx", "target"])
        for entry in report:
            value = 1 if entry["state"] == "up" else 0
            for trunk in entry["trunks"]:
                up.add_metric([trunk], value)
                changes.add_metric([trunk, "down"], entry["went_down"])
                changes.add_metric([trunk, "up"], entry["came_up"])
            for ipbx in entry["ipbxs"]:
                ipbx_up.add_metric([ipbx, entry["target"]], value)
        yield up
        yield changes
        yield ipbx_up

    def _statistics(self):
        """Kamailio's own counters of the router (kamailio-base.cfg, statistics module), as they are now."""
        from c4kemi.call.channels import RpcError

        try:
            lines = self.rpc.call("stats.get_statistics", *KAMAILIO_STATISTICS, *NODE_STATISTICS)
        except RpcError:
            return
        values = {}
        for line in lines if isinstance(lines, list) else []:
            name, _, value = str(line).partition("=")
            try:
                values[name.strip().rpartition(":")[2]] = int(value)
            except ValueError:
                continue
        for name, text in KAMAILIO_STATISTICS.items():
            if name in values:
                yield CounterMetricFamily(name, text, value=values[name])
        yield from node_decisions(values)


def node_decisions(values: dict[str, int]):
    """The node's decisions as Kamailio counted them (both modes): counters, refusals by code, the wait histogram."""
    if "c4_decisions" not in values:
        return
    yield CounterMetricFamily("c4_node_decisions", "Routing decisions the node's Kamailio acted on (both modes)", value=values["c4_decisions"])
    refusals = CounterMetricFamily("c4_node_refusals", "Decisions that refused the call, by SIP code, from Kamailio", labels=["code"])
    for code, name in NODE_REFUSALS.items():
        refusals.add_metric([code], values.get(name, 0))
    yield refusals
    cumulative, buckets = 0, []
    for bound, name in NODE_DECISION_BUCKETS:
        cumulative += values.get(f"c4_decision_ms_le_{name}", 0)
        buckets.append((bound if bound == "+Inf" else str(float(bound) / 1000), cumulative))
    # No _sum: Kamailio's 32-bit counters cannot keep one; histogram_quantile() needs only the buckets.
    yield HistogramMetricFamily("c4_node_decision_seconds", "How long a new INVITE waited for its routing decision, from its "
                                "arrival (KEMI: the decision; HTTP: the API round trip), from Kamailio", buckets=buckets)


class HelperCollector:
    """c4 kamailio's helpers restarted so far, from the node's status file ($C4_NODE_STATUS: c4 serve is one of them)."""

    def __init__(self, path: str) -> None:
        self.path = path

    def describe(self):
        return []

    def collect(self):
        import orjson

        try:
            status = orjson.loads(open(self.path, "rb").read())  # noqa: SIM115 - a small file, read whole
        except (OSError, ValueError):
            return  # not written yet, or being replaced: the next scrape has it
        restarts = CounterMetricFamily("c4_helper_restarts", "Helpers of the node (c4 feed, c4 db follow, c4 serve, c4 cdr, "
                                       "c4 health-sync) started again after they exited, by helper", labels=["helper"])
        for name, entry in sorted(status.items()) if isinstance(status, dict) else []:
            if isinstance(entry, dict) and isinstance(entry.get("restarts"), int):
                restarts.add_metric([str(name)], entry["restarts"])
        yield restarts


class Metrics:
    def __init__(self, source: TableSource, kamailio_rpc: str | None = None) -> None:
        self.started = time.monotonic()
        self.registry = registry = CollectorRegistry(auto_describe=False)
        self.requests = Counter("c4_routing_requests", "Routing queries received (POST /kamailio/rtjson)", registry=registry)
        self.decisions = Counter("c4_routing_decisions", "Routing queries answered with rtjson (routes or a refusal)", registry=registry)
        self._refusals = refusals = Counter("c4_routing_refusals", "Decisions that refused the call, by SIP code", ["code"], registry=registry)
        bad = Counter("c4_routing_bad_requests", "Routing queries refused as malformed, by reason", ["reason"], registry=registry)
        # Children bound once: the handler does no label lookups.
        self.refusals = {int(code): refusals.labels(code) for code in REFUSAL_CODES}
        self.bad_requests = {reason: bad.labels(reason) for reason in BAD_REQUEST_REASONS}
        self.decision_seconds = Histogram(
            "c4_decision_seconds",
            "Time to decide and encode one routing reply",
            buckets=DECISION_BUCKETS,
            registry=registry,
        )
        registry.register(TableCollector(source, self.started))
        if os.environ.get(NODE_STATUS_ENV):  # run by c4 kamailio
            registry.register(HelperCollector(os.environ[NODE_STATUS_ENV]))
        if kamailio_rpc:
            registry.register(ChannelCollector(source, kamailio_rpc))

    def refusal(self, code: int):
        """The counter for a refusal code (codes beyond 403/404 get their own label)."""
        counter = self.refusals.get(code)
        if counter is None:
            counter = self.refusals[code] = self._refusals.labels(str(code))
        return counter

    def exposition(self) -> bytes:
        return generate_latest(self.registry)
