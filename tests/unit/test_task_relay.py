"""Execs forwarded between replicas (service/task_relay.py) over a fake channel: the
answer comes back whole, errors keep their class, when two replicas both still hold a
stream of the node only one runs the command, and a command larger than one notification
goes in parts; a replica that holds the node's stream and answers late is waited for,
while every replica saying no is "not connected" (service/offers.py)."""

from __future__ import annotations

import json
import os
import queue
import threading
import time
from collections.abc import Callable
from typing import Any

import pytest

from workspace.domain.model import ExecOutcome
from workspace.domain.tasks import ExecTask
from workspace.errors import NotFound, Unavailable
from workspace.service import offers
from workspace.service.task_relay import TaskForwarder


class Bus:
    """Every message to every forwarder, in order, on one thread (as LISTEN delivers)."""

    def __init__(self) -> None:
        self.members: list[TaskForwarder] = []
        self.q: queue.Queue[str | None] = queue.Queue()
        self.longest = 0  # the longest payload sent (PostgreSQL takes under 8000 bytes)
        # Whether to deliver a message now (False: held back, or lost).
        self.filter: Callable[[dict[str, Any]], bool] = lambda _m: True
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
        self.on_task: Any = None

    def send(self, channel: str, payload: str) -> None:
        self.bus.longest = max(self.bus.longest, len(payload.encode()))
        self.bus.q.put(payload)


class FakeHub:
    def __init__(self, nodes: set[str], answer: Any) -> None:
        self.nodes = nodes
        self.answer = answer
        self.runs = 0
        self.elsewhere: Any = None

    def connected(self, node: str) -> bool:
        return node in self.nodes

    def exec(
        self, node: str, workspace_id: str, task: ExecTask, wait_s: float, forward: bool = True
    ) -> ExecOutcome:
        assert not forward
        self.runs += 1
        if isinstance(self.answer, Exception):
            raise self.answer
        return ExecOutcome(0, stdout=task.stdin * 3, stderr=b"e")


def replicas(*hubs: FakeHub, peers: offers.Peers | None = None) -> list[TaskForwarder]:
    bus = Bus()
    out = []
    for i, hub in enumerate(hubs):
        f = TaskForwarder(hub, FakeRelay(bus, f"r{i}"), peers=peers)  # type: ignore[arg-type]
        bus.members.append(f)
        out.append(f)
    return out


def test_the_answer_comes_back_in_parts_and_errors_keep_their_class() -> None:
    origin, _ = replicas(FakeHub(set(), None), FakeHub({"n1"}, None))
    out = origin.exec("n1", "w1", ExecTask(("cat",), stdin=b"x" * 4000), 5)
    assert out.stdout == b"x" * 12000 and out.stderr == b"e"
    origin2, _ = replicas(FakeHub(set(), None), FakeHub({"n1"}, NotFound("no such file")))
    with pytest.raises(NotFound, match="no such file"):
        origin2.exec("n1", "w1", ExecTask(("x",)), 5)


def test_no_replica_with_the_agent_is_unavailable() -> None:
    origin, _ = replicas(FakeHub(set(), None), FakeHub({"other"}, None))
    with pytest.raises(Unavailable, match="not connected"):
        origin.exec("n1", "w1", ExecTask(("true",)), 5)


def test_two_replicas_holding_the_node_run_it_once() -> None:
    a, b = FakeHub({"n1"}, None), FakeHub({"n1"}, None)
    origin, _, _ = replicas(FakeHub(set(), None), a, b)
    for _ in range(5):
        assert origin.exec("n1", "w1", ExecTask(("true",), stdin=b"1"), 5).stdout == b"111"
    assert a.runs + b.runs == 5


def test_an_exec_whose_replica_is_gone_is_not_waited_for() -> None:
    """The replica running a forwarded exec dies (its registry lock free): the one the
    exec arrived at fails it with UNAVAILABLE saying so, not after the exec's time limit."""
    release = threading.Event()

    class Stuck(FakeHub):
        def exec(
            self, node: str, workspace_id: str, task: ExecTask, wait_s: float, forward: bool = True
        ) -> ExecOutcome:
            release.wait(60)  # its replica died: no answer comes
            return super().exec(node, workspace_id, task, wait_s, forward)

    bus = Bus()
    dead: set[str] = set()
    origin = TaskForwarder(FakeHub(set(), None), FakeRelay(bus, "r0"), dead.__contains__)  # type: ignore[arg-type]
    holder = TaskForwarder(Stuck({"n1"}, None), FakeRelay(bus, "r1"))  # type: ignore[arg-type]
    bus.members += [origin, holder]
    threading.Timer(0.5, lambda: dead.add("r1")).start()
    try:
        with pytest.raises(Unavailable, match=r"holding node n1's agent \(r1\) is gone"):
            origin.exec("n1", "w1", ExecTask(("sleep", "300")), 300)
    finally:
        release.set()


def test_a_command_larger_than_one_notification_goes_in_parts() -> None:
    """`ws exec --stdin` with more than about 5 KiB through a replica that does not hold
    the agent: until session 40 refused, "too large to forward; try again" (and the
    next try went to the same replica)."""
    holder = FakeHub({"n1"}, None)
    origin, _ = replicas(FakeHub(set(), None), holder)
    stdin = os.urandom(300_000)
    out = origin.exec("n1", "w1", ExecTask(("cat",), stdin=stdin), 30)
    assert out.stdout == stdin * 3 and holder.runs == 1
    assert origin.relay.bus.longest < 8000  # type: ignore[attr-defined]


def test_a_large_command_for_a_replica_of_an_older_release_is_refused_not_run() -> None:
    """A replica of an older release does not say it takes a task in parts: it would run
    the offer without its fields, so it is not told to run it."""

    class Older(FakeRelay):
        def send(self, channel: str, payload: str) -> None:
            msg = json.loads(payload)
            msg.pop("parts", None)  # its acknowledgement says nothing of parts
            super().send(channel, json.dumps(msg))

    bus = Bus()
    holder = FakeHub({"n1"}, None)
    origin = TaskForwarder(FakeHub(set(), None), FakeRelay(bus, "r0"))  # type: ignore[arg-type]
    old = TaskForwarder(holder, Older(bus, "r1"))  # type: ignore[arg-type]
    bus.members += [origin, old]
    with pytest.raises(Unavailable, match="older release"):
        origin.exec("n1", "w1", ExecTask(("cat",), stdin=os.urandom(20_000)), 5)
    assert origin.exec("n1", "w1", ExecTask(("cat",), stdin=b"small"), 5).stdout == b"small" * 3
    assert holder.runs == 1


def live(*ids: str) -> offers.Peers:
    """A registry's picture of ``ids``, read just now."""
    return lambda: (time.monotonic(), list(ids))


def test_a_holder_that_answers_late_is_waited_for() -> None:
    """Under load the replica holding the agent's stream said so after more than the 2 s
    the exec's replica waited until session 44: "node n1's agent is not connected" while
    it was. It is alive and has not said no: it is waited for, and runs the exec once. It
    keeps its offer until told to run it, though another exec it took meanwhile (4.5 s
    on) dropped the offers it had kept longer than it kept them then (4 s)."""
    holder = FakeHub({"n1"}, None)
    origin, _, _ = replicas(
        FakeHub(set(), None), holder, FakeHub(set(), None), peers=live("r0", "r1", "r2")
    )
    bus = origin.relay.bus  # type: ignore[attr-defined]
    held: list[str] = []

    def hold_the_first_ack(m: dict[str, Any]) -> bool:
        if m.get("op") != "ack" or held:
            return True
        held.append(json.dumps(m))
        return False

    bus.filter = hold_the_first_ack
    first: list[bytes] = []

    def the_late_one() -> None:
        first.append(origin.exec("n1", "w1", ExecTask(("cat",), stdin=b"late"), 30).stdout)

    waiting = threading.Thread(target=the_late_one)
    waiting.start()
    while not held:
        time.sleep(0.05)
    time.sleep(4.5)  # the holder's kept offer grows old (no assertion on time)
    assert not first
    # another exec, whole, while the first one's ack is still on its way
    assert origin.exec("n1", "w1", ExecTask(("cat",), stdin=b"2"), 30).stdout == b"222"
    bus.deliver(held[0])  # the first one's ack, at last
    waiting.join()
    assert first == [b"late" * 3] and holder.runs == 2


def test_every_replica_saying_no_is_not_connected() -> None:
    origin, _, _ = replicas(
        FakeHub(set(), None),
        FakeHub({"other"}, None),
        FakeHub(set(), None),
        peers=live("r0", "r1", "r2"),
    )
    with pytest.raises(Unavailable, match="node n1's agent is not connected"):
        origin.exec("n1", "w1", ExecTask(("true",)), 5)


def test_a_replica_that_does_not_answer_is_named(monkeypatch: pytest.MonkeyPatch) -> None:
    """A live replica that never answers (stopped, or deaf to the channel) is not taken
    for one without the agent: the caller is told it did not answer."""
    monkeypatch.setattr(offers, "ANSWER_S", 0.5)
    # r1 is not in the picture: whether its no comes within 0.5 s does not matter
    origin, _ = replicas(FakeHub(set(), None), FakeHub(set(), None), peers=live("r0", "r9"))
    with pytest.raises(Unavailable, match=r"\(r9 did not answer whether it does\)"):
        origin.exec("n1", "w1", ExecTask(("true",)), 5)
    origin, _ = replicas(FakeHub(set(), None), FakeHub(set(), None), peers=live("r0", "r8", "r9"))
    with pytest.raises(Unavailable, match=r"\(r8 and r9 did not answer whether they do\)"):
        origin.exec("n1", "w1", ExecTask(("true",)), 5)


def test_a_replica_newer_than_the_picture_is_waited_for() -> None:
    """The registry's picture was read before replica r2 started; r2 holds the agent's
    stream now and answers late. Every replica of the old picture said no, but that is
    not the answer until a picture read after the offer was made shows no other."""
    picture: dict[str, Any] = {"at": 0.0, "ids": ["r0", "r1"]}
    holder = FakeHub({"n1"}, None)
    origin, _, _ = replicas(
        FakeHub(set(), None),
        FakeHub(set(), None),
        holder,
        peers=lambda: (picture["at"], picture["ids"]),
    )
    bus = origin.relay.bus  # type: ignore[attr-defined]
    acks: list[str] = []

    def hold_r2s_ack(m: dict[str, Any]) -> bool:
        if m.get("op") == "ack" and m.get("by") == "r2":
            acks.append(json.dumps(m))
            return False
        return True

    def registry_reads() -> None:  # r2 is in the next picture; its ack comes after
        picture.update(at=time.monotonic(), ids=["r0", "r1", "r2"])
        while not acks:
            time.sleep(0.05)
        bus.deliver(acks.pop())

    bus.filter = hold_r2s_ack
    threading.Timer(0.5, registry_reads).start()
    assert origin.exec("n1", "w1", ExecTask(("cat",), stdin=b"new"), 30).stdout == b"new" * 3
    assert holder.runs == 1
