"""The agent's Prometheus metrics (``metrics_listen``), in a registry of its own, all read
at scrape time from counters the parts keep anyway (nothing on the hot path):

* ``workspace_agent_operations_total{action,result}`` — executor operations (ok / error);
* ``workspace_agent_cache_{hits,misses}_total``, ``…_cache_used_bytes``,
  ``…_cache_budget_bytes``, ``…_cache_blobs`` — the blob cache (agent/cache/);
* ``workspace_agent_blob_transfer_bytes_total{source}`` — blob bytes received from the
  service or from peers;
* ``workspace_agent_domains{state}`` — the hypervisor's domains by state.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from agent.cache import BlobCache
from agent.executor import Executor
from agent.reconcile import Action
from agent.virt.base import DomainState, Driver
from workspace.errors import DriverError
from workspace.metrics_http import MetricsServer, new_registry, serve

log = logging.getLogger("agent.metrics")
SOURCES = ("service", "peer")


class AgentCollector(Collector):
    def __init__(self, node: str, cache: BlobCache, executor: Executor, driver: Driver) -> None:
        self.node = node
        self.cache = cache
        self.executor = executor
        self.driver = driver

    def describe(self) -> Iterable[Metric]:
        return []

    def collect(self) -> Iterable[Metric]:
        ops = CounterMetricFamily(
            "workspace_agent_operations",
            "Workspace operations run on this node, by action and result",
            labels=["action", "result"],
        )
        done = dict(self.executor.operations)
        for action in Action:
            for result in ("ok", "error"):
                ops.add_metric([action.value, result], done.get((action.value, result), 0))
        yield ops
        c = self.cache
        yield CounterMetricFamily(
            "workspace_agent_cache_hits", "Blob lookups answered by the cache", value=c.hits
        )
        yield CounterMetricFamily(
            "workspace_agent_cache_misses", "Blob lookups that needed a fetch", value=c.misses
        )
        yield GaugeMetricFamily(
            "workspace_agent_cache_used_bytes", "Bytes of blobs in the cache", value=c.used_bytes()
        )
        yield GaugeMetricFamily(
            "workspace_agent_cache_budget_bytes",
            "The cache's size limit (0 = none)",
            value=c.budget_bytes,
        )
        yield GaugeMetricFamily(
            "workspace_agent_cache_blobs", "Blobs in the cache", value=len(c.digests())
        )
        moved = CounterMetricFamily(
            "workspace_agent_blob_transfer_bytes",
            "Blob bytes received, by source: the service or a peer",
            labels=["source"],
        )
        received = dict(c.received_bytes)
        for source in sorted(set(SOURCES) | set(received)):
            moved.add_metric([source], received.get(source, 0))
        yield moved
        domains = GaugeMetricFamily(
            "workspace_agent_domains", "The hypervisor's domains by state", labels=["state"]
        )
        # None: the hypervisor did not say. Its domains are then unknown, not none: no
        # sample (a dashboard showed every VM gone while libvirtd did not answer).
        states: list[DomainState] | None = None
        try:
            states = [d.state for d in self.driver.list_domains()]
        except DriverError as exc:
            # The hypervisor does not answer: the executor says so once, and the node
            # reports it (hypervisor-unreachable); not a traceback per scrape.
            log.debug("cannot list domains for metrics: %s", exc.message)
        except Exception:
            log.exception("cannot list domains for metrics")
        for st in DomainState if states is not None else ():
            domains.add_metric([st.value], sum(1 for s in states or () if s is st))
        yield domains


class AgentMetrics:
    def __init__(self, node: str, cache: BlobCache, executor: Executor, driver: Driver) -> None:
        self.registry = new_registry()
        self.registry.register(AgentCollector(node, cache, executor, driver))
        self.server: MetricsServer | None = None

    def serve(self, address: str) -> MetricsServer:
        self.server = serve(self.registry, address, "workspace-agent")
        return self.server

    def close(self) -> None:
        if self.server is not None:
            self.server.close()
            self.server = None
