"""The service's RPC metrics as an admin reads them (docs/design/observability.md,
Metrics): the series a scrape carries, and the calls the server refused."""

from __future__ import annotations

import shutil
import subprocess
from typing import cast

import pytest
from prometheus_client import generate_latest
from prometheus_client.openmetrics.exposition import generate_latest as generate_openmetrics

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
        pytest.skip("promtool is not installed (Debian's prometheus; `make install-deps`)")
    r = subprocess.run(
        [promtool, "check", "metrics"],
        input=generate_latest(metrics.registry).decode(),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert r.returncode == 0 and not (r.stdout + r.stderr).strip(), r.stdout + r.stderr
