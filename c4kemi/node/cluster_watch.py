"""``c4 cluster-watch``: end the calls of a cluster node that is gone, so its channels come back.

Every call is replicated to every node (dialog replication over DMQ,
kamailio-base.cfg), and each node counts the cluster's calls against the
limits. When a node dies its calls stay in the others' counts: Kamailio
5.6's dialog module keeps a replicated call until its BYE or its timeout
(C4_DIALOG_TIMEOUT, hours). So each node runs this watcher beside Kamailio:

- DMQ pings the nodes (``dmq.list_nodes``); a node that stops answering
  leaves the ``active`` state within about one ping interval.
- Once a node has not been active for ``--grace`` seconds, the watcher
  lists its calls (the ``c4_node`` profile names the node each call went
  through) and ends each with ``dlg.terminate_dlg``: a BYE to both parties,
  sent from this node. Every node frees the channel, and so do the
  carrier and the PBX, which would otherwise go on counting the call.

The grace is there for a node that is only restarting: its calls are
still up, and it learns them back from the others when it returns (DMQ
sync). A node that comes back within the grace loses nothing.
"""

from __future__ import annotations

import logging
import time

from ..call.channels import KamailioRpc, RpcError

__all__ = ["NodeWatch", "run"]

log = logging.getLogger("c4.cluster")

NODE_PROFILE = "c4_node"  # kamailio-call.cfg, route[CHANNELS]: the DMQ address of the node a call went through


class NodeWatch:
    """What one look at the cluster found; ``lost`` tells which nodes are past their grace."""

    def __init__(self, grace: float) -> None:
        self.grace = grace
        self.inactive_since: dict[str, float] = {}  # DMQ URI -> monotonic time first seen not active
        self.ended: set[str] = set()  # nodes whose calls were ended since they were lost

    def look(self, nodes: list[dict], now: float) -> list[str]:
        """The nodes (DMQ URIs) lost for longer than the grace and not yet dealt with."""
        seen = set()
        lost = []
        for node in nodes:
            if node.get("local"):
                continue
            uri = f"sip:{node.get('host')}:{node.get('port')}"
            seen.add(uri)
            if node.get("status") == "active":
                if uri in self.inactive_since:
                    log.warning("cluster node %s is back", uri)
                self.inactive_since.pop(uri, None)
                self.ended.discard(uri)
                continue
            since = self.inactive_since.setdefault(uri, now)
            if now - since >= self.grace and uri not in self.ended:
                lost.append(uri)
        for uri in set(self.inactive_since) - seen:  # DMQ forgot it: nothing to end any more
            del self.inactive_since[uri]
        return lost


def end_calls(rpc: KamailioRpc, node: str) -> int:
    """End every call that went through NODE; the number ended."""
    listed = rpc.call("dlg.profile_list", NODE_PROFILE, node) or []
    ended = 0
    for call in listed:
        try:
            rpc.call("dlg.terminate_dlg", call["call-id"], call["caller"]["tag"], call["callee"]["tag"])
            ended += 1
        except (RpcError, KeyError, TypeError) as exc:  # not answered yet (no To tag): nothing to end
            log.debug("cannot end call %s of %s: %s", call.get("call-id") if isinstance(call, dict) else call, node, exc)
    return ended


def run(rpc_path: str, grace: float, interval: float = 1.0) -> int:
    rpc = KamailioRpc(rpc_path)
    watch = NodeWatch(grace)
    failing = False
    while True:
        try:
            for node in watch.look(rpc.call("dmq.list_nodes") or [], time.monotonic()):
                ended = end_calls(rpc, node)
                watch.ended.add(node)
                log.warning("cluster node %s lost for %.0f s: ended its %d call(s), their channels are free", node, grace, ended)
            if failing:
                log.info("Kamailio answers on %s again", rpc_path)
            failing = False
        except RpcError as exc:
            if not failing:
                log.warning("cluster watch: cannot reach Kamailio yet (%s); trying again every %.0f s", exc, interval)
            failing = True
        time.sleep(interval)
