"""The metrics of the queue and of boots as an admin reads them (docs/design/
observability.md, Metrics): ``workspace_queue_wait_seconds`` is how long a workspace
waited before the queue placed it, ``workspace_create_to_running_seconds`` how long its
first boot took. Through the servicers' plain methods with a real SQLite store and the
site's clock (tests/unit/test_request_validation.py)."""

from __future__ import annotations

import dataclasses
from pathlib import Path

from tests.unit.test_request_validation import OWNER, build_site
from workspace.domain.states import Op
from workspace.node.v1 import nodes_pb2
from workspace.ops import queue, site_events
from workspace.service.metrics import ServiceMetrics
from workspace.v1 import common_pb2

WS = common_pb2.WorkspaceState


def test_the_queue_wait_is_the_time_a_workspace_waited(tmp_path: Path) -> None:
    """A workspace placed from the queue two minutes after its create was observed as a
    wait of 0 s: the placed event timed the wait from the row's ``updated_at``, which the
    queue's placement never moved (the dashboard's queue-wait panel read 0 whatever the
    wait)."""
    site = build_site(tmp_path, memory_mib=4096)
    metrics = ServiceMetrics(site.core.env)
    site.core.env.notifier.on_site_events(metrics.on_events)
    big = site.create(name="big", memory_mib=3000)
    later = site.create(name="later", memory_mib=2000, wait_for_capacity_s=600)
    assert later.state == WS.WORKSPACE_STATE_PENDING
    site.clock.now += 120
    site.core.operate(OWNER, big.id, Op.DESTROY)
    site.report(big.id, nodes_pb2.OBSERVED_STATE_ABSENT)
    queue.process(site.core.env)
    shown = site.core.get(OWNER, "later")
    assert shown.node == "n1"
    registry = metrics.registry
    assert registry.get_sample_value("workspace_queue_wait_seconds_count") == 1
    assert registry.get_sample_value("workspace_queue_wait_seconds_sum") == 120
    assert registry.get_sample_value("workspace_placements_total", {"source": "queue"}) == 1
    # `ws show` says when it last changed: when the queue placed it.
    assert shown.updated_at.seconds == int(site.clock.now)


def test_a_start_after_event_retention_is_not_a_create_to_running(tmp_path: Path) -> None:
    """A workspace is RUNNING for the first time once: its start weeks later, once
    event_retention had pruned its first RUNNING event, was observed again as its create
    → running, weeks long (the dashboard's p95 of boot times read weeks)."""
    site = build_site(tmp_path)
    env = site.core.env
    metrics = ServiceMetrics(env)
    env.notifier.on_site_events(metrics.on_events)
    box = site.create(name="box", memory_mib=64)
    site.clock.now += 10
    site.report(box.id, nodes_pb2.OBSERVED_STATE_RUNNING)
    site.clock.now += 3600
    site.core.operate(OWNER, box.id, Op.STOP)
    site.report(box.id, nodes_pb2.OBSERVED_STATE_STOPPED)
    kept_one = dataclasses.replace(env, cfg=dataclasses.replace(env.cfg, event_retention="1"))
    assert site_events.prune(kept_one) > 0  # its RUNNING event is gone
    site.clock.now += 40 * 86400
    site.core.operate(OWNER, box.id, Op.START)
    site.report(box.id, nodes_pb2.OBSERVED_STATE_RUNNING)
    assert site.core.get(OWNER, "box").state == WS.WORKSPACE_STATE_RUNNING
    registry = metrics.registry
    assert registry.get_sample_value("workspace_create_to_running_seconds_count") == 1
    assert registry.get_sample_value("workspace_create_to_running_seconds_sum") == 10
