"""The address-list channel (workspace/failover.py) and the notifier's relay to other
replicas (ops/events.py), without a server."""

from __future__ import annotations

import json

import grpc
import pytest

from workspace import failover, rpc
from workspace.ops.events import Change, Notifier
from workspace.service.replicas import PAYLOAD_MAX, PendingChanges


def test_address_lists_split_and_rotate() -> None:
    assert failover.split(" a:1, b:2 ,") == ["a:1", "b:2"]
    assert failover.rotated("a,b,c", 0) == "a,b,c"
    assert failover.rotated("a,b,c", 4) == "b,c,a"
    assert failover.rotated("unix:/x", 3) == "unix:/x"


def test_only_calls_safe_to_repeat_are_retried_elsewhere() -> None:
    safe = ["GetWorkspace", "ListNodes", "CreateWorkspace", "StopWorkspace", "ReportStatus"]
    unsafe = ["Exec", "CreateNetwork", "AddSshKey", "UploadBlob", "ImportImage", "RevokeKey"]
    for m in safe:
        assert failover.IDEMPOTENT.search(f"/workspace.v1.X/{m}"), m
    for m in unsafe:
        assert not failover.IDEMPOTENT.search(f"/workspace.v1.X/{m}"), m


def test_a_list_makes_a_failover_channel_and_loopback_means_every_address() -> None:
    ch = rpc.channel("unix:/tmp/nowhere-a.sock,unix:/tmp/nowhere-b.sock")
    try:
        assert isinstance(ch, failover.FailoverChannel)
        assert ch.address == "unix:/tmp/nowhere-a.sock"
        ch.failed(0)
        assert ch.address == "unix:/tmp/nowhere-b.sock"
        ch.failed(0)  # an older failure of a channel no longer in use changes nothing
        assert ch.address == "unix:/tmp/nowhere-b.sock"
    finally:
        ch.close()
    assert rpc.is_loopback("127.0.0.1:1,unix:/x")
    assert not rpc.is_loopback("127.0.0.1:1,10.0.0.1:2")


def test_an_unreachable_list_fails_unavailable_after_trying_each() -> None:
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    ch = rpc.channel("unix:/tmp/nowhere-a.sock,unix:/tmp/nowhere-b.sock")
    try:
        with pytest.raises(grpc.RpcError) as err:
            health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest(), timeout=2)
        assert err.value.code() == grpc.StatusCode.UNAVAILABLE
    finally:
        ch.close()


def test_local_changes_are_relayed_and_remote_ones_are_not() -> None:
    n = Notifier()
    out: list[Change] = []
    n.set_relay(out.append)
    n.node_changed("n1")
    n.capacity_changed()
    n.node_changed("n2", remote=True)
    n.capacity_changed(remote=True)
    n.site_events_elsewhere()
    assert out == [Change(nodes=("n1",)), Change(capacity=True)]
    before = n.generation("never-seen")
    n.resync()
    assert n.generation("never-seen") != before  # every node stream wakes


def test_pending_changes_fit_in_notifications() -> None:
    p = PendingChanges()
    p.add(Change(nodes=("n1",), capacity=True))
    p.add(Change(workspaces=tuple(f"{i:012x}" for i in range(2000))))
    payloads = p.payloads("r1")
    assert len(payloads) > 1 and all(len(x) <= PAYLOAD_MAX for x in payloads)
    msgs = [json.loads(x) for x in payloads]
    assert sum(len(m["w"]) for m in msgs) == 2000
    assert msgs[0]["c"] == 1 and msgs[0]["n"] == ["n1"] and all(m["r"] == "r1" for m in msgs)
