"""The service's RPC metrics as an admin reads them (docs/design/observability.md,
Metrics): the series a scrape carries, and the calls the server refused."""

from __future__ import annotations

import shutil
import subprocess
import threading
from collections.abc import Iterator
from typing import Any, cast

import grpc
import pytest
from prometheus_client import generate_latest
from prometheus_client.openmetrics.exposition import generate_latest as generate_openmetrics

from tests.functional.harness import wait_for
from workspace import rpc
from workspace.domain.events import Kind, SiteEvent
from workspace.ops.unit import Env
from workspace.service.metrics import ServiceMetrics


def test_counters_and_histograms_export_no_created_series() -> None:
    """Each labelled counter and histogram exported a ``*_created`` series beside it (when
    it was first counted), doubling the series a scrape stores: none now, in either
    format Prometheus asks for, and promtool still finds nothing to say."""
    metrics = ServiceMetrics(cast(Env, None))  # the store is read at scrape time only
    metrics.rpc._done("workspace.v1.Workspaces", "CreateWorkspace", "OK", 0.0)
    metrics.on_events(
        [SiteEvent(0.0, Kind.WORKSPACE_PLACED, "system", subject="queue", elapsed_s=3.0)]
    )
    for text in (
        generate_latest(metrics.registry).decode(),
        generate_openmetrics(metrics.registry).decode(),
    ):
        assert "workspace_rpc_requests_total{" in text
        assert "workspace_queue_wait_seconds_count" in text
        assert "_created" not in text, text
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.skip("promtool is not installed (Debian's prometheus; `make deps`)")
    r = subprocess.run(
        [promtool, "check", "metrics"],
        input=generate_latest(metrics.registry).decode(),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert r.returncode == 0 and not (r.stdout + r.stderr).strip(), r.stdout + r.stderr


def test_calls_refused_at_max_concurrent_rpcs_are_counted_and_refused_at_once() -> None:
    """grpcio refused a call beyond ``maximum_concurrent_rpcs`` before any interceptor
    ran: the RPC metrics never counted one, so an admin sizing ``max_concurrent_rpcs``
    could not see it was reached. A real server at a limit of one call, with one thread
    that a held call keeps busy: the next call (a unary and a streaming one) is refused
    at once, not queued behind the held one, and counted."""
    metrics = ServiceMetrics(cast(Env, None))
    srv = rpc.server(1, 1, [metrics.rpc], on_refused=metrics.rpc.refused)
    entered, release = threading.Event(), threading.Event()

    def hold(request: bytes, context: grpc.ServicerContext) -> bytes:
        entered.set()
        release.wait(60)
        return b"done"

    def items(request: bytes, context: grpc.ServicerContext) -> Iterator[bytes]:
        yield b"one"

    srv.add_generic_rpc_handlers(
        (
            grpc.method_handlers_generic_handler(
                "test.Held",
                {
                    "Hold": grpc.unary_unary_rpc_method_handler(hold),
                    "Items": grpc.unary_stream_rpc_method_handler(items),
                },
            ),
        )
    )
    port = srv.add_insecure_port("127.0.0.1:0")
    srv.start()
    channel = grpc.insecure_channel(f"127.0.0.1:{port}")
    try:
        call = channel.unary_unary("/test.Held/Hold")
        stream = channel.unary_stream("/test.Held/Items")
        first = call.future(b"x", timeout=60)
        assert entered.wait(30)
        with pytest.raises(grpc.RpcError) as err:
            call(b"y", timeout=30)  # queued behind the held call, it would time out
        assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED, err.value
        assert "limit of 1 calls at once (max_concurrent_rpcs)" in str(err.value.details())
        with pytest.raises(grpc.RpcError) as err:
            list(stream(b"z", timeout=30))
        assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED, err.value
        registry = metrics.registry
        assert registry.get_sample_value("workspace_rpc_concurrency_refusals_total") == 2
        for method in ("Hold", "Items"):
            labels = {"service": "test.Held", "method": method, "code": "RESOURCE_EXHAUSTED"}
            assert registry.get_sample_value("workspace_rpc_requests_total", labels) == 1
        release.set()
        assert first.result() == b"done"
        # The held call's place is free again once it is done: served (a call may come
        # in the moment between its answer and its end, and be refused).
        wait_for(lambda: _answered(stream), what="a call served after the held one")
    finally:
        release.set()
        channel.close()
        srv.stop(None)


def _answered(stream: Any) -> bool:
    try:
        return list(stream(b"z", timeout=30)) == [b"one"]
    except grpc.RpcError as exc:
        if exc.code() != grpc.StatusCode.RESOURCE_EXHAUSTED:
            raise
        return False
