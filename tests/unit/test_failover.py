"""The address-list channel (workspace/failover.py) and the notifier's relay to other
replicas (ops/events.py), without a server."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

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
    safe = [
        "GetWorkspace",
        "ListNodes",
        "CreateWorkspace",
        "StopWorkspace",
        "ReportStatus",
        "WhoAmI",  # a read (ws whoami, a batch system's sweep)
    ]
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
        # Each address tried, with what gRPC said of it, not only the last one's error.
        assert isinstance(err.value, failover.AllFailed)
        assert [a for a, _why in err.value.failures] == [
            "unix:/tmp/nowhere-a.sock",
            "unix:/tmp/nowhere-b.sock",
        ]
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


class _Replica:
    """A gRPC server on a unix socket with three methods of a made-up service: ``Do``
    (unary; ``busy`` makes it answer UNAVAILABLE itself), ``Watch`` (two messages),
    ``Chat`` (a stream both ways) and ``Up`` (a stream of requests, one answer); it counts
    the calls it received."""

    def __init__(self, path: Path, busy: bool = False) -> None:
        self.calls = 0
        self.address = f"unix:{path}"

        def do(request: bytes, context: grpc.ServicerContext) -> bytes:
            self.calls += 1
            if busy:
                context.abort(grpc.StatusCode.UNAVAILABLE, "busy")
            return b"done " + request

        def watch(request: bytes, context: grpc.ServicerContext) -> Iterator[bytes]:
            self.calls += 1
            yield b"one"
            yield b"two"

        def chat(requests: Iterator[bytes], context: grpc.ServicerContext) -> Iterator[bytes]:
            self.calls += 1
            yield from requests

        def up(requests: Iterator[bytes], context: grpc.ServicerContext) -> bytes:
            self.calls += 1
            return b"".join(requests)

        handler = grpc.method_handlers_generic_handler(
            "t.T",
            {
                "Up": grpc.stream_unary_rpc_method_handler(up),
                "Do": grpc.unary_unary_rpc_method_handler(do),
                "Watch": grpc.unary_stream_rpc_method_handler(watch),
                "Chat": grpc.stream_stream_rpc_method_handler(chat),
            },
        )
        self.server = grpc.server(ThreadPoolExecutor(2), handlers=[handler])
        self.server.add_insecure_port(self.address)
        self.server.start()

    def stop(self) -> None:
        self.server.stop(None)


def test_a_call_no_replica_received_goes_to_the_next_and_one_received_does_not(
    tmp_path: Path,
) -> None:
    """A replica that is down refuses the connection: any unary call, and a response
    stream before its first message, is sent to the next one (none of them can have
    acted on it). A call a replica received and failed itself is not sent twice; nor is
    a stream of requests."""
    live = _Replica(tmp_path / "live.sock")
    busy = _Replica(tmp_path / "busy.sock", busy=True)
    dead = f"unix:{tmp_path / 'dead.sock'}"
    try:
        ch = rpc.channel(f"{dead},{live.address}")
        try:
            assert not failover.IDEMPOTENT.search("/t.T/Do")
            assert ch.unary_unary("/t.T/Do")(b"it", timeout=10) == b"done it"
            assert ch.address == live.address and live.calls == 1
            ch.failed(1)  # back to the dead one first
            assert list(ch.unary_stream("/t.T/Watch")(b"", timeout=10)) == [b"one", b"two"]
            assert live.calls == 2
            ch.failed(1)
            with pytest.raises(grpc.RpcError) as err:
                list(ch.stream_stream("/t.T/Chat")(iter([b"a"]), timeout=10))
            assert failover.never_sent(err.value)
            assert ch.address == live.address and live.calls == 2  # moved on, not resent
        finally:
            ch.close()
        ch = rpc.channel(f"{busy.address},{live.address}")
        try:
            with pytest.raises(grpc.RpcError) as err:
                ch.unary_unary("/t.T/Do")(b"it", timeout=10)
            assert err.value.code() == grpc.StatusCode.UNAVAILABLE
            assert not failover.never_sent(err.value)
            assert (busy.calls, live.calls) == (1, 2)  # received once, not repeated
        finally:
            ch.close()
    finally:
        live.stop()
        busy.stop()


def test_a_future_that_fails_unavailable_moves_the_channel_on(tmp_path: Path) -> None:
    """A call made as a future (the client's uploads are, to notice a stalled one) did
    not move the channel on when it failed with UNAVAILABLE: every later upload went to
    the dead replica first in the list again, where a blocking call moves on."""
    live = _Replica(tmp_path / "live.sock")
    dead = f"unix:{tmp_path / 'dead.sock'}"
    ch = rpc.channel(f"{dead},{live.address}")
    try:
        up = ch.stream_unary("/t.T/Up")
        with pytest.raises(grpc.RpcError) as err:
            up.future(iter([b"a", b"b"]), timeout=10).result()
        assert err.value.code() == grpc.StatusCode.UNAVAILABLE
        for _ in range(100):  # the future's callback runs as the call ends
            if ch.address == live.address:
                break
            time.sleep(0.05)
        assert ch.address == live.address
        assert up.future(iter([b"a", b"b"]), timeout=10).result() == b"ab"
        assert live.calls == 1
    finally:
        ch.close()
        live.stop()
