"""A request whose answer is lost on the way back is retried on the next address of the
client's list, and gets what the first one did: the failover promise (README, "Running
several service replicas"; workspace/failover.py) for creates and desired-state calls.

The first address is a proxy that passes each call on to the service, lets the service
act on it, and then answers UNAVAILABLE: the answer lost with the replica that made it.
The client's next address is the service itself, so the retry meets what the first try
did."""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator
from concurrent import futures
from pathlib import Path

import grpc
import pytest

from tests.functional.harness import WS, Site, wait_for
from workspace.client import Client
from workspace.domain.events import SiteEvent
from workspace.errors import FailedPrecondition, Unavailable
from workspace.v1 import admin_pb2, clusters_pb2, workspaces_pb2

CS = clusters_pb2.ClusterState
# Calls whose answers the proxy loses (the client retries each: failover.IDEMPOTENT).
LOST = {
    "CreateWorkspace",
    "StartWorkspace",
    "StopWorkspace",
    "PauseWorkspace",
    "DestroyWorkspace",
    "CreateCluster",
    "StartCluster",
    "StopCluster",
    "DestroyCluster",
}


class LossyProxy(grpc.GenericRpcHandler):
    """Passes unary calls on; loses the answers of the ``LOST`` ones after they acted."""

    def __init__(self, target: str) -> None:
        self.channel = grpc.insecure_channel(target)
        self.lost: list[str] = []

    def service(self, details: grpc.HandlerCallDetails) -> grpc.RpcMethodHandler:
        method = str(details.method)
        onward = self.channel.unary_unary(method)  # bytes in, bytes out

        def handle(request: bytes, context: grpc.ServicerContext) -> bytes:
            try:
                answer = onward(request, timeout=20)
            except grpc.RpcError as exc:
                context.abort(exc.code(), exc.details() or "")
            if method.rsplit("/", 1)[-1] in LOST:
                self.lost.append(method.rsplit("/", 1)[-1])
                context.abort(grpc.StatusCode.UNAVAILABLE, "the answer was lost (test proxy)")
            return answer  # type: ignore[no-any-return]

        return grpc.unary_unary_rpc_method_handler(handle)


@pytest.fixture
def proxy(ready_site: Site, tmp_path: Path) -> Iterator[tuple[LossyProxy, str]]:
    handler = LossyProxy(ready_site.address)
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4), handlers=[handler])
    address = f"unix:{tmp_path / 'lossy.sock'}"
    server.add_insecure_port(address)
    server.start()
    try:
        yield handler, address
    finally:
        server.stop(0)
        handler.channel.close()


def answers(address: str) -> bool:
    with Client(address) as c:
        try:
            c.health(timeout_s=2)
        except Unavailable:
            return False
    return True


@contextlib.contextmanager
def through(proxy: tuple[LossyProxy, str], site: Site) -> Iterator[Client]:
    """A client whose first address loses answers and whose second is the service."""
    with Client(f"{proxy[1]},{site.address}") as c:
        yield c


def test_workspace_calls_whose_answers_were_lost_are_retried_and_act_once(
    ready_site: Site, proxy: tuple[LossyProxy, str]
) -> None:
    site = ready_site
    direct = Client(site.address)
    with through(proxy, site) as c:
        w = c.create_workspace("img", name="once", memory_mib=64, request_id="r-once")
    assert [x.name for x in direct.list_workspaces()] == ["once"]  # one, not two
    assert w.id == direct.get_workspace("once").id
    direct.wait_for_state(w.id, [WS.WORKSPACE_STATE_RUNNING], timeout_s=20)

    steps = [
        (Client.pause_workspace, WS.WORKSPACE_STATE_PAUSED),
        (Client.stop_workspace, WS.WORKSPACE_STATE_STOPPED),
        (Client.start_workspace, WS.WORKSPACE_STATE_RUNNING),
        (Client.destroy_workspace, WS.WORKSPACE_STATE_TERMINATED),
    ]
    for call, state in steps:
        with through(proxy, site) as c:
            shown = call(c, w.id)  # the retry is answered, not refused
        assert shown.id == w.id
        direct.wait_for_state(w.id, [state], timeout_s=20)
    assert proxy[0].lost == [
        "CreateWorkspace",
        "PauseWorkspace",
        "StopWorkspace",
        "StartWorkspace",
        "DestroyWorkspace",
    ]
    # What was not asked before is still refused with its reason.
    with pytest.raises(FailedPrecondition, match="was destroyed"):
        direct.start_workspace(w.id)
    direct.close()


def test_cluster_calls_whose_answers_were_lost_are_retried_and_act_once(
    ready_site: Site, proxy: tuple[LossyProxy, str]
) -> None:
    site = ready_site
    direct = Client(site.address)
    members = [{"role": "w", "image": "img", "count": 2, "memory_mib": 64}]
    with through(proxy, site) as c:
        made = c.create_cluster(name="duo", members=members, request_id="r-duo")
    assert [x.name for x in direct.list_clusters()] == ["duo"]
    assert len(direct.list_workspaces()) == 2

    def state() -> int:
        return int(direct.get_cluster("duo").state)

    wait_for(lambda: state() == CS.CLUSTER_STATE_RUNNING, what="RUNNING")
    for call, target in [
        (Client.stop_cluster, CS.CLUSTER_STATE_STOPPED),
        (Client.start_cluster, CS.CLUSTER_STATE_RUNNING),
        (Client.destroy_cluster, CS.CLUSTER_STATE_TERMINATED),
    ]:
        with through(proxy, site) as c:
            assert call(c, made.id).id == made.id
        wait_for(lambda t=target: int(direct.get_cluster(made.id).state) == t, what=str(target))
    assert proxy[0].lost == ["CreateCluster", "StopCluster", "StartCluster", "DestroyCluster"]
    direct.close()


def test_watches_end_unavailable_when_the_service_stops(ready_site: Site) -> None:
    """A watch cut by a stopping service ends as any outage does (UNAVAILABLE), so that a
    client watches again, on the next replica or here once the service is back, rather
    than take the end for the last word; the Python client's reconnecting watch does."""
    site = ready_site
    site.stubs.create(name="w1", memory_mib=64)
    watch = site.stubs.ws.WatchWorkspaces(workspaces_pb2.WatchWorkspacesRequest())
    assert next(watch).initial
    events = site.stubs.admin.WatchEvents(admin_pb2.WatchEventsRequest(follow=True))
    assert next(events).kind
    assert site.service is not None
    site.service.stop(2.0)  # as the daemon stops: its streams get a moment to end
    site.service = None
    for stream in (watch, events):
        with pytest.raises(grpc.RpcError) as info:
            for _ in stream:
                pass
        assert info.value.code() is grpc.StatusCode.UNAVAILABLE, info.value
        assert "the service is stopping; watch again" in (info.value.details() or "")


def test_following_events_goes_on_across_a_restart_without_repeats(ready_site: Site) -> None:
    """`ws-admin events --follow` (Client.watch_events with reconnect) outlives the
    service's restart: it goes on from the last event it gave, none twice, none lost."""
    site = ready_site
    site.stubs.create(name="before", memory_mib=64)
    seen: list[SiteEvent] = []
    outages: list[str] = []
    done = threading.Event()

    def follow() -> None:
        with Client(site.address) as c:
            for e in c.watch_events(follow=True, reconnect=True, on_outage=outages.append):
                seen.append(e)
                if e.workspace_name == "after" and e.kind == "workspace.created":
                    break
        done.set()

    reader = threading.Thread(target=follow, daemon=True)
    reader.start()
    wait_for(lambda: any(e.workspace_name == "before" for e in seen), what="the history")
    assert site.service is not None
    site.service.stop(2.0)
    site.service = None
    wait_for(lambda: outages, what="the outage noticed")
    site.start_service()
    wait_for(lambda: answers(site.address), what="the service back")
    with Client(site.address) as c:
        c.create_workspace("img", name="after", memory_mib=64)
    assert done.wait(30), f"the new event never came: {seen[-3:]}, {outages}"
    ids = [e.id for e in seen]
    assert ids == sorted(set(ids)), ids  # in order, none twice
    assert outages[0] and outages[-1] == ""  # lost (why), then back
