"""The notifier's waits (ops/events.py): each returns when what it waits for changed,
on a resync, or when the notifier closes; a change of one node answers only the streams
waiting for that node (benchmarks/notify.py shows what that saves with many agents)."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

from workspace.ops.events import Notifier

LONG_S = 30.0


class Waiting:
    """``fn()`` in a thread of its own; ``result`` once it returned."""

    def __init__(self, fn: Callable[[], int]) -> None:
        self.result: int | None = None
        self.thread = threading.Thread(target=self._run, args=(fn,), daemon=True)
        self.thread.start()
        time.sleep(0.05)  # waiting by now

    def _run(self, fn: Callable[[], int]) -> None:
        self.result = fn()

    def answered(self, within_s: float = 5.0) -> bool:
        self.thread.join(within_s)
        return not self.thread.is_alive()


def test_a_node_stream_is_answered_by_its_node_s_change_only() -> None:
    n = Notifier()
    seen = n.generation("n1")
    n1 = Waiting(lambda: n.wait_node("n1", seen, LONG_S))
    n.node_changed("n2", "n3")
    assert not n1.answered(0.2)
    n.node_changed("n1")
    assert n1.answered() and n1.result == seen + 1 == n.generation("n1")


def test_a_node_stream_waits_out_its_timeout_when_nothing_changed() -> None:
    n = Notifier()
    seen = n.generation("n1")
    n.node_changed("n2")
    started = time.monotonic()
    assert n.wait_node("n1", seen, 0.2) == seen
    assert time.monotonic() - started >= 0.19


def test_a_change_made_before_the_wait_answers_it_at_once() -> None:
    n = Notifier()
    seen = n.generation("n1")
    n.node_changed("n1")
    assert n.wait_node("n1", seen, LONG_S) == seen + 1


def test_a_resync_answers_every_wait() -> None:
    n = Notifier()
    nodes = [
        Waiting(lambda i=i: n.wait_node(f"n{i}", n.generation(f"n{i}"), LONG_S)) for i in range(5)
    ]
    capacity = Waiting(lambda: n.wait_capacity(0, LONG_S))
    events = Waiting(lambda: n.wait_site_events(n.site_event_generation(), LONG_S))
    n.resync()
    for w in [*nodes, capacity, events]:
        assert w.answered()
    assert all(w.result == 1 for w in nodes)  # every node's generation moved


def test_capacity_and_site_event_waits_answer_their_own_changes() -> None:
    n = Notifier()
    capacity = Waiting(lambda: n.wait_capacity(0, LONG_S))
    events = Waiting(lambda: n.wait_site_events(0, LONG_S))
    n.node_changed("n1")
    assert not capacity.answered(0.1) and not events.answered(0.1)
    n.capacity_changed()
    assert capacity.answered() and capacity.result == 1
    assert not events.answered(0.1)
    n.site_events_elsewhere()
    assert events.answered() and events.result == 1


def test_closing_answers_every_wait_at_once() -> None:
    n = Notifier()
    waits = [
        Waiting(lambda: n.wait_node("n1", 0, LONG_S)),
        Waiting(lambda: n.wait_capacity(0, LONG_S)),
        Waiting(lambda: n.wait_site_events(0, LONG_S)),
    ]
    started = time.monotonic()
    n.close()
    assert all(w.answered() for w in waits)
    assert time.monotonic() - started < 5
    assert n.closed
