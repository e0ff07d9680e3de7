"""The agent's link over a list of replicas, against two fake Nodes servers: a replica that
stops answering (hung, its connections up) is left after a failed heartbeat, not kept
until the node is marked DOWN; a report made while the link moves between replicas never
fails its caller and is sent again, in full, on the next replica; a blob being fetched
from a replica that dies is fetched on from the next one."""

from __future__ import annotations

import hashlib
import logging
import os
import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

import grpc
import pytest

from agent.audit import AuditSpool
from agent.backoff import Backoff
from agent.cache import BlobCache
from agent.link import Link
from agent.status import Sight
from images import signing
from tests.functional.harness import wait_for
from workspace import config, rpc
from workspace.config import AgentConfig
from workspace.domain.model import NodeCondition, NodeInfo, NodeOrders, Observation
from workspace.domain.states import Observed
from workspace.errors import Unavailable
from workspace.node.v1 import nodes_pb2, nodes_pb2_grpc


class Replica(nodes_pb2_grpc.NodesServicer):
    """A service replica as the agent sees it; ``hang()`` makes its reports never answer
    (a stopped process: the connection stays up, nothing comes back)."""

    def __init__(self, path: Path) -> None:
        self.address = f"unix:{path}"
        self.registered = 0
        self.full_reports: list[nodes_pb2.ReportStatusRequest] = []
        # FetchBlob: the blob it serves, the offsets asked, and how many bytes it sends
        # before it stalls as a replica does when it dies mid-transfer (0: all of them).
        self.blob = b""
        self.fetched_from: list[int] = []
        self.part = 0
        self.sent_part = threading.Event()
        self.refuse = ""  # Register and reports: UNAVAILABLE with this message
        self.refused = 0
        # FetchBlob: the next this many calls answer UNAVAILABLE with this message (its
        # database away for a moment: the replica and its connections stay up).
        self.fetch_refuse = ""
        self.fetch_refusals = 0
        # FetchBlob: seconds between its 4096-byte messages (a slow link); None: it sends
        # none at all (a stalled one).
        self.pace: float | None = 0.0
        self._hung = threading.Event()
        self._gone = threading.Event()
        self.server = rpc.server(max_workers=8)
        nodes_pb2_grpc.add_NodesServicer_to_server(self, self.server)
        rpc.bind(self.server, self.address)
        self.server.start()

    def hang(self) -> None:
        self._hung.set()

    def stop(self) -> None:
        self._gone.set()
        self.server.stop(0).wait()

    def Register(
        self, request: nodes_pb2.RegisterRequest, context: grpc.ServicerContext
    ) -> nodes_pb2.RegisterResponse:
        if self.refuse:  # a replica that cannot reach its database
            self.refused += 1
            context.abort(grpc.StatusCode.UNAVAILABLE, self.refuse)
        self.registered += 1
        return nodes_pb2.RegisterResponse(heartbeat_interval_s=1)

    def WatchAssignments(
        self, request: nodes_pb2.WatchAssignmentsRequest, context: grpc.ServicerContext
    ) -> Iterator[nodes_pb2.AssignmentSet]:
        yield nodes_pb2.AssignmentSet(generation=1)
        while context.is_active() and not self._gone.wait(0.2):
            pass

    def ReportStatus(
        self, request: nodes_pb2.ReportStatusRequest, context: grpc.ServicerContext
    ) -> nodes_pb2.ReportStatusResponse:
        if self._hung.is_set():
            while context.is_active() and not self._gone.wait(0.2):
                pass
            return nodes_pb2.ReportStatusResponse()
        if self.refuse:
            context.abort(grpc.StatusCode.UNAVAILABLE, self.refuse)
        if request.full:
            self.full_reports.append(request)
        return nodes_pb2.ReportStatusResponse()

    def FetchBlob(
        self, request: nodes_pb2.FetchBlobRequest, context: grpc.ServicerContext
    ) -> Iterator[nodes_pb2.BlobData]:
        self.fetched_from.append(request.offset)
        if self.fetch_refusals > 0:
            self.fetch_refusals -= 1
            context.abort(grpc.StatusCode.UNAVAILABLE, self.fetch_refuse)
        rest = self.blob[request.offset :]
        if self.part:
            yield nodes_pb2.BlobData(data=rest[: self.part], total_size=len(self.blob))
            self.sent_part.set()
            while context.is_active():  # until the server's stop breaks the stream
                time.sleep(0.05)
            return
        if self.pace is None:
            while context.is_active():  # until the caller's deadline ends the call
                time.sleep(0.05)
            return
        for i in range(0, len(rest), 4096):
            if self.pace and not context.is_active():
                return
            time.sleep(self.pace)
            yield nodes_pb2.BlobData(data=rest[i : i + 4096], total_size=len(self.blob))


class Node:
    def node_info(self) -> NodeInfo:
        return NodeInfo(name="n1", hypervisor="fake", cpus=1, memory_mib=1024)

    def take_orders(self, orders: NodeOrders, policy: signing.Policy | None) -> None:
        pass

    def sight(self, ids: Sequence[str] | None) -> Sight:
        return Sight([Observation("w1", Observed.RUNNING)])

    def conditions(self) -> tuple[NodeCondition, ...] | None:
        return None  # not checked yet


@pytest.fixture
def replicas(tmp_path: Path) -> Iterator[list[Replica]]:
    made = [Replica(tmp_path / "a.sock"), Replica(tmp_path / "b.sock")]
    yield made
    for r in made:
        r.stop()


def start_link(tmp_path: Path, replicas: list[Replica]) -> tuple[Link, threading.Event]:
    cfg = config.from_dict(
        AgentConfig,
        {
            "node": "n1",
            "service": ",".join(r.address for r in replicas),
            "driver": "fake",
            "insecure": True,
            "state_dir": str(tmp_path / "agent"),
        },
    )
    (tmp_path / "agent").mkdir()
    stop = threading.Event()
    cache = BlobCache(tmp_path / "cache")
    link = Link(cfg, Node(), cache, AuditSpool(tmp_path / "agent"), stop)
    threading.Thread(target=link.run, daemon=True).start()
    threading.Thread(target=link.heartbeats, daemon=True).start()
    return link, stop


def test_a_replica_that_stops_answering_reports_is_left_for_the_next(
    tmp_path: Path, replicas: list[Replica], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, "agent")
    a, b = replicas
    _link, stop = start_link(tmp_path, replicas)
    try:
        wait_for(lambda: a.full_reports, 10, "a heartbeat on A")
        assert b.registered == 0
        a.hang()
        # The next heartbeat gets no answer: the link registers with B and reports there
        # (a 1 s heartbeat gives each call 2 s; the node would be DOWN after node_grace_s).
        wait_for(lambda: b.full_reports, 15, "the agent registered and reporting on B")
        assert b.registered == 1
        assert [w.workspace_id for w in b.full_reports[-1].workspaces] == ["w1"]
    finally:
        stop.set()
    said = [r.getMessage() for r in caplog.records if r.name == "agent"]
    assert any(
        m.startswith(f"report to {a.address} failed: DEADLINE_EXCEEDED")
        and m.endswith("moving to another replica")
        for m in said
    ), said
    assert f"node n1 registered with {b.address}" in said


def test_reports_while_the_link_moves_never_fail_and_are_sent_again(
    tmp_path: Path, replicas: list[Replica], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, "agent")
    a, b = replicas
    link, stop = start_link(tmp_path, replicas)
    failures: list[BaseException] = []
    done = threading.Event()

    def reporter() -> None:  # an executor reporting each step of its operations
        while not done.is_set():
            try:
                link.report(["w1"])
            except BaseException as exc:  # what used to fail a create
                failures.append(exc)

    try:
        wait_for(lambda: a.full_reports, 10, "a heartbeat on A")
        threads = [threading.Thread(target=reporter) for _ in range(3)]
        for t in threads:
            t.start()
        a.stop()  # the replica dies under the reports
        wait_for(lambda: b.full_reports, 15, "a full report on B")
        done.set()
        for t in threads:
            t.join(10)
    finally:
        done.set()
        stop.set()
    assert failures == []
    assert [w.workspace_id for w in b.full_reports[0].workspaces] == ["w1"]
    # The log names the replica that failed and the one tried next, not the whole list.
    said = [r.getMessage() for r in caplog.records if r.name == "agent"]
    assert any(m.startswith(f"service {a.address}") and f"trying {b.address}" in m for m in said)


def test_a_blob_fetched_from_a_replica_that_dies_comes_from_the_next_one(
    tmp_path: Path, replicas: list[Replica]
) -> None:
    a, b = replicas
    blob = os.urandom(40000)
    digest = "sha256:" + hashlib.sha256(blob).hexdigest()
    a.blob = b.blob = blob
    a.part = 10000
    link, stop = start_link(tmp_path, replicas)
    cache = BlobCache(tmp_path / "node-cache")
    got: list[Path] = []
    failed: list[BaseException] = []

    def fetch() -> None:  # what staging does for a create whose image is not cached
        try:
            got.append(cache.ensure(digest, [link.blob_source()], len(blob)))
        except BaseException as exc:  # what failed the create
            failed.append(exc)

    try:
        wait_for(lambda: a.full_reports, 10, "a heartbeat on A")
        fetching = threading.Thread(target=fetch)
        fetching.start()
        wait_for(a.sent_part.is_set, 10, "part of the blob sent by A")
        a.stop()  # the replica dies mid-transfer; the link moves to B
        fetching.join(60)
    finally:
        stop.set()
    assert failed == []
    assert got and got[0].read_bytes() == blob
    # B sent the rest, from where A stopped: the transfer went on, not again from zero.
    assert a.fetched_from == [0]
    assert b.fetched_from == [10000]


def test_a_blob_fetch_the_service_answers_unavailable_is_tried_again_on_the_same_link(
    tmp_path: Path, replicas: list[Replica], caplog: pytest.LogCaptureFixture
) -> None:
    """The service answers a fetch UNAVAILABLE (its database away for a moment: each
    replica says so) and stays up: the link does not move. The fetch waited for a move
    of the link that never came (30 s), then failed; it is tried again on the same link
    (its channel sends it to the replica it uses now), after a backoff, and the blob
    comes through it."""
    caplog.set_level(logging.INFO, "agent")
    a, b = replicas
    blob = os.urandom(40000)
    digest = "sha256:" + hashlib.sha256(blob).hexdigest()
    a.blob = b.blob = blob
    a.fetch_refuse = b.fetch_refuse = (
        "the service's database cannot be reached right now; try again"
    )
    a.fetch_refusals = b.fetch_refusals = 1
    link, stop = start_link(tmp_path, replicas)
    cache = BlobCache(tmp_path / "node-cache")
    got: list[Path] = []
    failed: list[BaseException] = []

    def fetch() -> None:
        try:
            got.append(cache.ensure(digest, [link.blob_source()], len(blob)))
        except BaseException as exc:  # what failed the create
            failed.append(exc)

    try:
        wait_for(lambda: a.full_reports, 10, "a heartbeat on A")
        fetching = threading.Thread(target=fetch)
        fetching.start()
        fetching.join(60)
    finally:
        stop.set()
    assert failed == []
    assert got and got[0].read_bytes() == blob
    # Refused twice (the link's channel moves to the other replica after an UNAVAILABLE
    # answer), then the whole blob; the link stayed registered where it was.
    assert sorted(a.fetched_from + b.fetched_from) == [0, 0, 0]
    assert (a.registered, b.registered) == (1, 0)
    said = [r.getMessage() for r in caplog.records if r.name == "agent.peers"]
    assert any(
        f"UNAVAILABLE: {a.fetch_refuse}" in m and "again through the same link after 0.5 s" in m
        for m in said
    ), said


def test_a_blob_fetch_cut_by_its_deadline_goes_on_from_the_byte_reached(
    tmp_path: Path, replicas: list[Replica], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A fetch from the service has a deadline (FETCH_TIMEOUT_S, an hour): an image that
    takes longer over a slow link was cut with it. The transfer failed (the create with
    it); bytes kept flowing, so it goes on from the byte reached, through the same link."""
    monkeypatch.setattr("agent.peers.FETCH_TIMEOUT_S", 0.5)
    monkeypatch.setattr("agent.peers.SAME_LINK", Backoff(0.05, 0.05))
    a, b = replicas
    blob = os.urandom(40000)  # 10 messages, one every 0.1 s: twice the deadline
    digest = "sha256:" + hashlib.sha256(blob).hexdigest()
    a.blob = b.blob = blob
    a.pace = b.pace = 0.1
    link, stop = start_link(tmp_path, replicas)
    cache = BlobCache(tmp_path / "node-cache")
    try:
        wait_for(lambda: a.full_reports, 10, "a heartbeat on A")
        got = cache.ensure(digest, [link.blob_source()], len(blob))
    finally:
        stop.set()
    assert got.read_bytes() == blob
    asked = a.fetched_from + b.fetched_from
    assert len(asked) > 1 and asked[0] == 0
    assert asked == sorted(set(asked)), asked  # each call from further on, none from zero


def test_a_blob_fetch_that_brings_no_byte_before_its_deadline_fails_saying_so(
    tmp_path: Path, replicas: list[Replica], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("agent.peers.FETCH_TIMEOUT_S", 0.5)
    a, b = replicas
    a.blob = b.blob = os.urandom(40000)
    a.pace = b.pace = None
    digest = "sha256:" + hashlib.sha256(a.blob).hexdigest()
    link, stop = start_link(tmp_path, replicas)
    cache = BlobCache(tmp_path / "node-cache")
    try:
        wait_for(lambda: a.full_reports, 10, "a heartbeat on A")
        with pytest.raises(Unavailable, match="DEADLINE_EXCEEDED"):
            cache.ensure(digest, [link.blob_source()], len(a.blob))
    finally:
        stop.set()
    assert a.fetched_from + b.fetched_from == [0]


def test_a_registration_refused_by_every_replica_names_each_with_its_own_error(
    tmp_path: Path, replicas: list[Replica], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, "agent")
    a, b = replicas
    a.refuse = "the service's database cannot be reached right now; try again"
    b.stop()  # dead: its address refuses connections

    def said() -> list[str]:
        return [r.getMessage() for r in caplog.records if r.name == "agent"]

    _link, stop = start_link(tmp_path, replicas)
    try:
        wait_for(lambda: len([m for m in said() if m.startswith("service ")]) >= 2, 30, "two turns")
    finally:
        stop.set()
    turns = [m for m in said() if m.startswith("service ")]
    # Each turn tries both (the first one of the turn first): each address with its own
    # error, never the dead one blamed for the other's database.
    for m in turns[:2]:
        assert f"{a.address}: {a.refuse}" in m, m
        assert f"{b.address}: failed to connect" in m, m
        assert f"{b.address}: {a.refuse}" not in m, m


def test_the_services_database_away_is_said_once_and_when_back(
    tmp_path: Path, replicas: list[Replica], caplog: pytest.LogCaptureFixture
) -> None:
    """A site's PostgreSQL outage: every replica answers reports and registrations
    UNAVAILABLE "the service's database cannot be reached". The agent wrote two lines
    for the report that failed, then one at each registration tried (every 5 s), for as
    long as it lasted, and none saying it was over. Now one line, a reminder at most
    every minute, and one when a report is taken again."""
    caplog.set_level(logging.INFO, "agent")
    a, b = replicas
    away = "the service's database cannot be reached right now; try again"
    _link, stop = start_link(tmp_path, replicas)
    try:
        wait_for(lambda: a.full_reports, 10, "a heartbeat on A")
        a.refuse = b.refuse = away
        wait_for(lambda: a.refused + b.refused >= 6, 60, "three turns refused")
        reported = len(a.full_reports) + len(b.full_reports)
        a.refuse = b.refuse = ""
        wait_for(lambda: len(a.full_reports) + len(b.full_reports) > reported, 30, "a report")
    finally:
        stop.set()
    said = [
        r.getMessage()
        for r in caplog.records
        if r.name == "agent" and not r.getMessage().startswith("node n1 registered with ")
    ]
    assert len(said) == 2, said
    assert said[0] == (
        f"the link to the service failed: report to {a.address}: UNAVAILABLE: {away}; "
        "reconnecting at most every 5 s (the node's workspaces run on; their reports follow)"
    )
    assert said[1].startswith("the link to the service works again after ")
