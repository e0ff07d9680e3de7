"""Consoles relayed between replicas (service/console_relay.py) over a fake channel that
can reorder and lose messages: output is applied in order, a lost message ends the session
with UNAVAILABLE on both sides (never a silent gap), so does a holder gone silent, and
when two replicas both hold a stream of the node only one opens the console; a holder
that answers late is waited for (service/offers.py)."""

from __future__ import annotations

import json
import queue
import threading
import time
from collections.abc import Callable
from typing import Any

import pytest

from workspace.domain.tasks import (
    ConsoleClose,
    ConsoleInput,
    ConsoleOpen,
    ConsoleOutput,
    Task,
    TaskError,
    TaskReply,
)
from workspace.errors import Unavailable
from workspace.ops.taskhub import AgentLine, TaskHub
from workspace.service import console_relay, offers
from workspace.service.task_relay import TaskForwarder

# What the bus does with a payload: deliver it (True) or hold/drop it (False).
Filter = Callable[[dict[str, Any]], bool]


class Bus:
    """Every message to every forwarder on one thread (as LISTEN delivers), through
    ``filter``, which may hold a message back to deliver it later with ``release``."""

    def __init__(self) -> None:
        self.members: list[TaskForwarder] = []
        self.q: queue.Queue[str | None] = queue.Queue()
        self.filter: Filter = lambda _m: True
        threading.Thread(target=self._run, daemon=True).start()

    def _run(self) -> None:
        while (payload := self.q.get()) is not None:
            if self.filter(json.loads(payload)):
                self.deliver(payload)

    def deliver(self, payload: str) -> None:
        for m in self.members:
            m.received(payload)


class FakeRelay:
    def __init__(self, bus: Bus, rid: str) -> None:
        self.bus = bus
        self.replica_id = rid

    def send(self, channel: str, payload: str) -> None:
        self.bus.q.put(payload)


def replicas(n: int, peers: offers.Peers | None = None) -> tuple[Bus, list[TaskHub]]:
    bus = Bus()
    hubs = []
    for i in range(n):
        hub = TaskHub()
        f = TaskForwarder(hub, FakeRelay(bus, f"r{i}"), peers=peers)  # type: ignore[arg-type]
        hub.elsewhere = f
        bus.members.append(f)
        hubs.append(hub)
    return bus, hubs


def opened(line: AgentLine) -> Task:
    task = line.next(5)
    assert task is not None and isinstance(task.kind, ConsoleOpen)
    return task


def test_output_is_applied_in_order_even_when_the_channel_reorders() -> None:
    bus, (origin, holder) = replicas(2)
    line = holder.connect("n1")
    held: list[str] = []

    def swap_first_two_outputs(m: dict[str, Any]) -> bool:
        if m.get("op") == "cout" and m.get("s") == 0:
            held.append(json.dumps(m))
            return False
        if m.get("op") == "cout" and m.get("s") == 1:
            bus.deliver(json.dumps(m))
            bus.deliver(held.pop())
            return False
        return True

    bus.filter = swap_first_two_outputs
    link = origin.open_console("n1", "w1")
    task = opened(line)
    holder.deliver(line, TaskReply(task.task_id, ConsoleOutput(b"a" * 5000)))  # two chunks
    got = b""
    while len(got) < 5000:
        ev = link.next(5)
        assert isinstance(ev, ConsoleOutput)
        got += ev.data
    assert got == b"a" * 5000
    # keystrokes the other way arrive as they were typed
    link.send(b"ls\r")
    keys = line.next(5)
    assert keys is not None and keys.kind == ConsoleInput(b"ls\r")
    link.close()
    close = line.next(5)
    assert close is not None and isinstance(close.kind, ConsoleClose)


def test_a_lost_message_ends_the_session_on_both_sides(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(console_relay, "PING_S", 0.2)
    bus, (origin, holder) = replicas(2)
    line = holder.connect("n1")
    bus.filter = lambda m: not (m.get("op") == "cout" and m.get("s") == 0)  # lost
    link = origin.open_console("n1", "w1")
    task = opened(line)
    holder.deliver(line, TaskReply(task.task_id, ConsoleOutput(b"lost")))
    ev = link.next(5)
    assert isinstance(ev, TaskError) and "lost part of its stream" in ev.message
    assert ev.code == 14  # UNAVAILABLE
    close = line.next(5)  # the holder closed the console on the agent
    assert close is not None and isinstance(close.kind, ConsoleClose)


def test_two_holders_of_the_node_open_it_once() -> None:
    _bus, (origin, h1, h2) = replicas(3)
    lines = [h1.connect("n1"), h2.connect("n1")]
    origin.open_console("n1", "w1")
    opens = [t for t in (line.next(1) for line in lines) if t is not None]
    assert len(opens) == 1 and isinstance(opens[0].kind, ConsoleOpen)


def test_no_replica_holding_the_node_is_unavailable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(offers, "ACK_S", 0.3)  # no picture of the replicas: silence is no
    _bus, (origin, _other) = replicas(2)
    with pytest.raises(Unavailable, match="not connected"):
        origin.open_console("n1", "w1")
    # every live replica says no
    _bus, (origin, _other, _third) = replicas(3, lambda: (time.monotonic(), ["r0", "r1", "r2"]))
    with pytest.raises(Unavailable, match="node n1's agent is not connected"):
        origin.open_console("n1", "w1")


def test_a_holder_that_answers_late_opens_the_console() -> None:
    """The holder's ``cack`` comes 5 s late (its replica loaded): until session 44 the
    attach failed "not connected" after 2 s. It is alive and has not said no: it is
    waited for, and it opens the console."""
    bus, (origin, holder, _other) = replicas(3, lambda: (time.monotonic(), ["r0", "r1", "r2"]))
    line = holder.connect("n1")

    def late(m: dict[str, Any]) -> bool:
        if m.get("op") != "cack":
            return True
        threading.Timer(5, bus.deliver, (json.dumps(m),)).start()
        return False

    bus.filter = late
    link = origin.open_console("n1", "w1")
    task = opened(line)
    holder.deliver(line, TaskReply(task.task_id, ConsoleOutput(b"login: ")))
    ev = link.next(5)
    assert isinstance(ev, ConsoleOutput) and ev.data == b"login: "
    link.close()


def test_lost_keystrokes_end_the_session_on_both_sides(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(console_relay, "PING_S", 0.2)
    bus, (origin, holder) = replicas(2)
    line = holder.connect("n1")
    bus.filter = lambda m: not (m.get("op") == "cin" and m.get("s") == 0)  # lost
    link = origin.open_console("n1", "w1")
    opened(line)
    link.send(b"x")
    close = line.next(5)  # the holder saw the gap at the client's next ping
    assert close is not None and isinstance(close.kind, ConsoleClose)
    ev = link.next(5)
    assert isinstance(ev, TaskError) and "lost part of its stream" in ev.message


def test_a_holder_gone_silent_ends_the_client_side(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(console_relay, "PING_S", 0.2)
    monkeypatch.setattr(console_relay, "IDLE_S", 0.8)
    bus, (origin, holder) = replicas(2)
    line = holder.connect("n1")
    link = origin.open_console("n1", "w1")
    opened(line)
    bus.filter = lambda m: m.get("by") != "r1"  # the holder's replica died
    ev = link.next(5)
    assert isinstance(ev, TaskError) and "stopped answering for 0.8 s" in ev.message
    close = line.next(5)  # told so (had the holder been alive), it let the console go
    assert close is not None and isinstance(close.kind, ConsoleClose)
