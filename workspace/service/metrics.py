"""The service's Prometheus metrics, in a registry of its own (several services may run
in one process: the tests).

* RPCs: ``workspace_rpc_requests_total{service,method,code}`` and, for calls that return
  one answer, ``workspace_rpc_duration_seconds{service,method,code}`` — counted in one
  place, a server interceptor on both servers (``RpcMetrics``); the calls the client server
  refused at ``max_concurrent_rpcs`` (workspace/rpc_limit.py) count there too, as
  RESOURCE_EXHAUSTED, and in ``workspace_rpc_concurrency_refusals_total``.
* From the site events of each commit (Notifier.on_site_events): placements by source
  (request / queue), refusals by reason (capacity / quota / trust), the queue wait of
  each workspace placed from the queue, create → running durations (its first RUNNING),
  and every event by kind.
* Read at scrape time (ops/gauges.py, a GROUP BY and two small queries): workspaces by
  state, the queue's depth and oldest wait, each node's capacity and use, nodes by state.
* ``workspace_leader``: 1 while this replica runs the background loops (service/replicas.py).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any

import grpc
from prometheus_client import Counter, Gauge, Histogram
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from workspace.domain.events import Kind, SiteEvent
from workspace.domain.states import NodeState, State
from workspace.errors import Unavailable
from workspace.log import Throttle
from workspace.metrics_http import MetricsServer, new_registry, serve
from workspace.ops import gauges
from workspace.ops.unit import Env

log = logging.getLogger("workspace.service.metrics")

# Most RPCs answer in milliseconds; some take minutes (Exec runs a command in the guest,
# UploadBlob and ImportImage move an image, SaveImage and PutBlob a saved disk): above 10 s
# their quantiles would all read 10 s (histogram_quantile stops at the last finite bucket).
RPC_BUCKETS = (
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10,
    30, 60, 300, 900, 3600,
)  # fmt: skip
START_BUCKETS = (0.5, 1, 2, 5, 10, 20, 30, 60, 120, 300, 600, 1800, 3600)
WAIT_BUCKETS = (1, 5, 10, 30, 60, 300, 600, 1800, 3600, 7200, 21600, 86400, 604800)
MIB = 1024 * 1024


class ServiceMetrics:
    def __init__(self, env: Env, clock: Callable[[], float] = time.time) -> None:
        self.registry = new_registry()
        r = self.registry
        self.rpcs = Counter(
            "workspace_rpc_requests",
            "RPCs finished, by service, method and gRPC status code",
            ["service", "method", "code"],
            registry=r,
        )
        self.rpc_seconds = Histogram(
            "workspace_rpc_duration_seconds",
            "Time to answer an RPC with one response (streams of responses are not timed)",
            ["service", "method", "code"],
            buckets=RPC_BUCKETS,
            registry=r,
        )
        self.rpc_refusals = Counter(
            "workspace_rpc_concurrency_refusals",
            "RPCs refused because the server ran max_concurrent_rpcs calls at once",
            registry=r,
        )
        self.placements = Counter(
            "workspace_placements",
            "Workspaces placed on a node, by source: request (at create) or queue",
            ["source"],
            registry=r,
        )
        self.refusals = Counter(
            "workspace_refusals",
            "Workspaces refused, by reason: capacity, quota, trust, rights",
            ["reason"],
            registry=r,
        )
        self.queue_wait = Histogram(
            "workspace_queue_wait_seconds",
            "Time a workspace waited for capacity before it was placed",
            buckets=WAIT_BUCKETS,
            registry=r,
        )
        self.create_to_running = Histogram(
            "workspace_create_to_running_seconds",
            "Time from a workspace's create to its first RUNNING",
            buckets=START_BUCKETS,
            registry=r,
        )
        self.preemptions = Counter(
            "workspace_preemptions",
            "Normal requests placed by preempting preemptible workspaces",
            registry=r,
        )
        self.preempted = Counter(
            "workspace_preempted", "Preemptible workspaces preempted", registry=r
        )
        self.site_events = Counter(
            "workspace_site_events", "Site events recorded, by kind", ["kind"], registry=r
        )
        self.leader = Gauge(
            "workspace_leader", "1 if this service runs the background loops", registry=r
        )
        self.leader.set(1)
        for source in ("request", "queue"):
            self.placements.labels(source)
        for reason in ("capacity", "quota", "trust", "rights"):
            self.refusals.labels(reason)
        r.register(SiteCollector(env, clock))
        self.rpc = RpcMetrics(self)
        self.server: MetricsServer | None = None

    def on_events(self, events: Sequence[SiteEvent]) -> None:
        """Count a commit's site events (a Notifier listener)."""
        for e in events:
            self.site_events.labels(e.kind).inc()
            if e.kind == Kind.WORKSPACE_CREATED and e.node:  # created and placed at once
                self.placements.labels("request").inc()
            elif e.kind == Kind.WORKSPACE_PLACED:
                self.placements.labels("queue" if e.subject == "queue" else "request").inc()
                if e.subject == "queue":
                    self.queue_wait.observe(e.elapsed_s)
            elif e.kind == Kind.PREEMPTION:
                self.preemptions.inc()
            elif e.kind == Kind.WORKSPACE_PREEMPTED:
                self.preempted.inc()
            elif e.kind in (Kind.WORKSPACE_REFUSED, Kind.QUOTA_REFUSED):
                self.refusals.labels(e.state or "other").inc()
            elif e.kind == Kind.WORKSPACE_STATE and e.state == State.RUNNING and e.elapsed_s:
                self.create_to_running.observe(e.elapsed_s)

    def serve(self, address: str) -> MetricsServer:
        self.server = serve(self.registry, address, "workspace-service")
        return self.server

    def close(self) -> None:
        if self.server is not None:
            self.server.close()
            self.server = None


# Said by every gauge read from the database: each replica exports the site's value.
SITE_WIDE = " (site-wide: every replica exports the same value; aggregate with max, not sum)"


class SiteCollector(Collector):
    """Gauges read from the store at scrape time: the site's, the same on every replica
    (their HELP says so, for whoever sums them)."""

    def __init__(self, env: Env, clock: Callable[[], float]) -> None:
        self.env = env
        self.clock = clock
        # While the database is away every scrape fails alike: a line a minute says so.
        self._away = Throttle(60.0)

    def describe(self) -> Iterable[Metric]:
        return []  # collected at scrape time only: no store query at registration

    def collect(self) -> Iterable[Metric]:
        try:
            g = gauges.read(self.env)
        except Unavailable as exc:
            muted = self._away.due("gauges")
            if muted is not None:
                log.warning(
                    "cannot read the site's gauges for metrics: %s (%d other scrape(s) "
                    "failed since the last line)",
                    exc.message,
                    muted,
                )
            return
        except Exception:
            log.exception("cannot read the site's gauges for metrics")
            return
        ws = GaugeMetricFamily(
            "workspace_workspaces", "Workspaces by state" + SITE_WIDE, labels=["state"]
        )
        for st in State:
            ws.add_metric([st.value], g.workspaces.get(st.value, 0))
        yield ws
        yield GaugeMetricFamily(
            "workspace_queue_depth",
            "Workspaces waiting for capacity" + SITE_WIDE,
            value=g.queue_depth,
        )
        oldest = max(0.0, self.clock() - g.oldest_queued_at) if g.oldest_queued_at else 0.0
        yield GaugeMetricFamily(
            "workspace_queue_oldest_wait_seconds",
            "How long the oldest workspace waiting for capacity has waited" + SITE_WIDE,
            value=oldest,
        )
        states = GaugeMetricFamily(
            "workspace_nodes", "Nodes by state" + SITE_WIDE, labels=["state"]
        )
        for ns in NodeState:
            states.add_metric([ns.value], sum(1 for n in g.nodes if n.state == ns.value))
        yield states
        fams = {
            "cpus": GaugeMetricFamily(
                "workspace_node_cpus", "A node's cpus" + SITE_WIDE, labels=["node"]
            ),
            "used_cpus": GaugeMetricFamily(
                "workspace_node_used_cpus", "Cpus claimed on a node" + SITE_WIDE, labels=["node"]
            ),
            "memory": GaugeMetricFamily(
                "workspace_node_memory_bytes", "A node's memory" + SITE_WIDE, labels=["node"]
            ),
            "used_memory": GaugeMetricFamily(
                "workspace_node_used_memory_bytes",
                "Memory claimed on a node (with per-VM overhead)" + SITE_WIDE,
                labels=["node"],
            ),
        }
        for n in g.nodes:
            fams["cpus"].add_metric([n.name], n.cpus)
            fams["used_cpus"].add_metric([n.name], n.used_cpus)
            fams["memory"].add_metric([n.name], n.memory_mib * MIB)
            fams["used_memory"].add_metric([n.name], n.used_memory_mib * MIB)
        yield from fams.values()


def _code(context: grpc.ServicerContext, unset: str = "OK") -> str:
    """The status the call ended with (``unset`` if none was set)."""
    code = context.code()
    if code is None:
        return unset
    return str(getattr(code, "name", code))


class RpcMetrics(grpc.ServerInterceptor):
    """Counts and times every RPC, by service, method and status code."""

    def __init__(self, metrics: ServiceMetrics) -> None:
        self.m = metrics

    def refused(self, service: str, method: str) -> None:
        """A call refused at ``max_concurrent_rpcs`` (rpc.server's ``on_refused``): no
        interceptor runs for it."""
        self.m.rpcs.labels(service, method, "RESOURCE_EXHAUSTED").inc()
        self.m.rpc_refusals.inc()

    def _done(self, service: str, method: str, code: str, started: float | None) -> None:
        self.m.rpcs.labels(service, method, code).inc()
        if started is not None:
            elapsed = time.perf_counter() - started
            self.m.rpc_seconds.labels(service, method, code).observe(elapsed)

    def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], grpc.RpcMethodHandler | None],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler | None:
        handler = continuation(handler_call_details)
        if handler is None:
            return None
        service, _, method = handler_call_details.method.strip("/").rpartition("/")
        done = self._done
        if handler.response_streaming:
            inner_stream = handler.stream_stream or handler.unary_stream
            assert inner_stream is not None

            def streams_out(request: Any, context: grpc.ServicerContext) -> Iterator[Any]:
                code = "OK"
                try:
                    yield from inner_stream(request, context)
                    code = _code(context)
                except BaseException:
                    code = _code(context, "CANCELLED")  # closed early: the client went
                    raise
                finally:
                    done(service, method, code, None)

            make = (
                grpc.stream_stream_rpc_method_handler
                if handler.request_streaming
                else grpc.unary_stream_rpc_method_handler
            )
            return make(
                streams_out,
                request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer,
            )
        inner = handler.stream_unary if handler.request_streaming else handler.unary_unary
        assert inner is not None

        def answer(request: Any, context: grpc.ServicerContext) -> Any:
            started = time.perf_counter()
            code = "OK"
            try:
                out = inner(request, context)
                code = _code(context)
                return out
            except BaseException:
                code = _code(context, "UNKNOWN")
                raise
            finally:
                done(service, method, code, started)

        make_unary = (
            grpc.stream_unary_rpc_method_handler
            if handler.request_streaming
            else grpc.unary_unary_rpc_method_handler
        )
        return make_unary(
            answer,
            request_deserializer=handler.request_deserializer,
            response_serializer=handler.response_serializer,
        )
