"""Watchers get one workspace's changes in the order they were committed: a change is
published before the store's write lock is let go (ops/unit.py ``write``). Published
after it, a writer could be overtaken by the next one, and a watcher's last event for
the workspace showed the older state (a stopped workspace shown as running, or the
reverse) until its next change."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

from tests.unit.test_request_validation import OWNER, build_site
from workspace.domain.model import WorkspaceView
from workspace.domain.states import Op, State
from workspace.node.v1 import nodes_pb2
from workspace.ops import unit
from workspace.store import Workspace


def test_a_watcher_sees_two_writers_changes_in_commit_order(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    site = build_site(tmp_path)
    ws = site.create(name="box")
    site.report(ws.id, nodes_pb2.OBSERVED_STATE_RUNNING)
    watcher = site.core.env.notifier.subscribe(lambda w: w.id == ws.id)
    committed, go = threading.Event(), threading.Event()
    publish = unit.UnitOfWork.publish

    def late_publish(self: unit.UnitOfWork, notifier: object) -> None:
        if not committed.is_set():  # the first writer, its change committed: held here
            committed.set()
            go.wait(2.0)
        publish(self, notifier)  # type: ignore[arg-type]

    monkeypatch.setattr(unit.UnitOfWork, "publish", late_publish)
    first = threading.Thread(target=site.core.operate, args=(OWNER, ws.id, Op.STOP))
    first.start()
    assert committed.wait(10)
    # its node says it stopped (the agent acting on the order the first writer made)
    second = threading.Thread(target=site.report, args=(ws.id, nodes_pb2.OBSERVED_STATE_STOPPED))
    second.start()
    second.join(1.0)  # a bound: with the fix it waits for the first writer's publish
    go.set()
    first.join(10)
    second.join(10)
    seen: list[WorkspaceView] = []
    while not watcher.events.empty():
        v = watcher.events.get_nowait()
        if v is not None:
            seen.append(v)
    assert [v.state for v in seen] == [State.STOPPING, State.STOPPED]
    with site.store.read() as s:  # the last one is the stored state
        row = s.get(Workspace, ws.id)
        assert row is not None and row.state == State.STOPPED.value
