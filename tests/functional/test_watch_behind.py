"""A watch the service ends because its client fell too far behind: the status is
RESOURCE_EXHAUSTED, as docs/api.md says (it was INTERNAL, which no client reopens), and
the Python client's reconnecting watch opens it again with a fresh snapshot."""

from __future__ import annotations

import grpc
import pytest

from tests.functional.harness import WS, Site
from workspace.client import Client
from workspace.ops import events, queries
from workspace.v1 import workspaces_pb2


@pytest.fixture(autouse=True)
def small_queues(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(events, "_WATCH_QUEUE_MAX", 2)  # a watch opened now holds two


def _flood(site: Site, ref: str, times: int = 50) -> None:
    """Publish ``ref``'s view ``times`` times at once: more than a watch's queue holds."""
    assert site.service is not None
    env = site.service.env
    view = queries.get(env, env.cfg.default_owner, ref)
    for _ in range(times):
        env.notifier.workspace_changed(view)


def test_a_watch_that_fell_behind_ends_resource_exhausted(ready_site: Site) -> None:
    site = ready_site
    w = site.stubs.create(name="w")
    site.stubs.wait_state(w.id, WS.WORKSPACE_STATE_RUNNING)
    call = site.stubs.ws.WatchWorkspaces(workspaces_pb2.WatchWorkspacesRequest(), timeout=30)
    assert next(call).initial
    _flood(site, w.id)
    with pytest.raises(grpc.RpcError) as err:
        for _ in call:
            pass
    assert err.value.code() is grpc.StatusCode.RESOURCE_EXHAUSTED, err.value.details()
    assert "fell too far behind" in str(err.value.details())


def test_the_clients_reconnecting_watch_reopens_after_falling_behind(ready_site: Site) -> None:
    site = ready_site
    w = site.stubs.create(name="w")
    site.stubs.wait_state(w.id, WS.WORKSPACE_STATE_RUNNING)
    with Client(site.address) as client:
        watch = client.watch(reconnect=True, timeout_s=30)
        assert next(watch).initial
        _flood(site, w.id)
        # the flood's events, then the first of the reopened watch's fresh snapshot
        assert any(ev.initial for ev in watch)
        site.stubs.ws.StopWorkspace(site.stubs.ref(w.id))
        states = []
        for ev in watch:  # ends at timeout_s if the reopened watch saw nothing
            states.append(ev.workspace.state)
            if ev.workspace.state == WS.WORKSPACE_STATE_STOPPED:
                break
        watch.close()
        assert states[-1:] == [WS.WORKSPACE_STATE_STOPPED], states
