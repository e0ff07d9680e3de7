"""`ws create --wait` and `ws cluster create --wait` of a request queued behind others say
each change of its place in the queue as it happens, once, before the state lines that
follow (an in-process service and fake-driver agent, through ws.main): the service sends
a waiting workspace's watchers its new place (ops/queue.py), and the cluster wait's reads
see its reason change."""

from __future__ import annotations

import threading
import time

import pytest

from tests.functional.harness import WS, Site
from workspace import client_waits
from workspace.cli import ws
from workspace.client import Client
from workspace.v1 import clusters_pb2, clusters_pb2_grpc

SECOND = "waiting for capacity (2nd in the queue)"
FIRST = "waiting for capacity (1st in the queue)"


@pytest.fixture
def full(site: Site, monkeypatch: pytest.MonkeyPatch) -> Site:
    """One node of 4 vCPUs and 4 GiB, 3.5 GiB of it used by `x`; `ahead` (2 GiB) waits
    first in the queue. The waits' periodic re-read is put out of reach: what they say of
    the queue comes from the service as it changes, not from a re-read 30 s later."""
    monkeypatch.setattr(client_waits, "RESYNC_S", 600.0)
    site.stubs.network()
    site.stubs.import_image("img")
    site.add_agent("node1", cpus=4, memory_mib=4096)
    assert site.stubs.create(name="x", memory_mib=3500).node == "node1"
    ahead = site.stubs.create(name="ahead", memory_mib=2000, wait_for_capacity_s=600)
    assert ahead.state == WS.WORKSPACE_STATE_PENDING
    return site


def _until_said(capsys: pytest.CaptureFixture[str], err: list[str], words: str) -> None:
    """Read stderr as the wait writes it until ``words`` are in it (the wait runs in
    another thread); fail if they are not said within 20 s."""
    end = time.monotonic() + 20
    while words not in "".join(err):
        assert time.monotonic() < end, f"never said {words!r}: {''.join(err)!r}"
        err.append(capsys.readouterr().err)
        time.sleep(0.05)


def _progress(site: Site, capsys: pytest.CaptureFixture[str], argv: list[str]) -> list[str]:
    """Run ``ws ARGV`` (a create that waits 2nd in the queue); once it said so, destroy
    the request ahead (the workspace "ahead"), then free the node once it said it is 1st;
    its stderr lines."""
    code: list[int] = []

    def wait() -> None:
        code.append(ws.main(argv, connect=lambda _s: Client(site.address)))

    t = threading.Thread(target=wait)
    t.start()
    err: list[str] = []
    try:
        _until_said(capsys, err, SECOND)
        site.stubs.ws.DestroyWorkspace(site.stubs.ref(site.stubs.get("ahead").id))
        _until_said(capsys, err, FIRST)
    finally:
        site.stubs.ws.DestroyWorkspace(site.stubs.ref(site.stubs.get("x").id))
        t.join(60)
    err.append(capsys.readouterr().err)
    assert code == [0], "".join(err)
    return "".join(err).splitlines()


def test_a_create_wait_says_its_place_in_the_queue_as_it_changes(
    full: Site, capsys: pytest.CaptureFixture[str]
) -> None:
    site = full
    argv = ["create", "--image", "img", "--name", "b", "--memory-mib", "2000"]
    argv += ["--wait-for-capacity", "600", "--wait", "--wait-timeout", "60"]

    lines = _progress(site, capsys, argv)
    said = [line for line in lines if line.startswith("ws: b (")]
    # One line per change: 2nd, then 1st, then the states of its boot, ending RUNNING.
    assert [SECOND in line for line in said].count(True) == 1, lines
    assert [FIRST in line for line in said].count(True) == 1, lines
    assert SECOND in said[0] and ": PENDING  (" in said[0], lines
    assert FIRST in said[1] and ": PENDING  (" in said[1], lines
    assert said[-1].endswith(": RUNNING"), lines


def test_a_cluster_create_wait_says_its_place_in_the_queue_as_it_changes(
    full: Site, capsys: pytest.CaptureFixture[str]
) -> None:
    site = full
    argv = ["cluster", "create", "pair", "--member", "w=img,count=1,memory-mib=2000"]
    argv += ["--wait-for-capacity", "600", "--wait", "--wait-timeout", "60"]

    lines = _progress(site, capsys, argv)
    said = [line for line in lines if line.startswith("ws: cluster pair")]
    assert [SECOND in line for line in said].count(True) == 1, lines
    assert [FIRST in line for line in said].count(True) == 1, lines
    assert SECOND in said[0] and FIRST in said[1], lines
    assert ": RUNNING" in said[-1], lines
    clusters = clusters_pb2_grpc.ClustersStub(site.stubs.channel)
    got = clusters.GetCluster(clusters_pb2.ClusterRef(id="pair"))
    assert got.state == clusters_pb2.CLUSTER_STATE_RUNNING


def test_a_scale_wait_says_where_its_new_members_wait(
    site: Site, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """`ws cluster scale --wait --wait-for-capacity` printed nothing while its new members
    waited; it says how many run and their place in the queue as that changes."""
    site.stubs.network()
    site.stubs.import_image("img")
    site.add_agent("node1", cpus=4, memory_mib=4096)
    argv = ["cluster", "create", "ela", "--member", "w=img,count=1,memory-mib=600", "--wait"]
    assert ws.main(argv, connect=lambda _s: Client(site.address)) == 0
    assert site.stubs.create(name="x", memory_mib=3200).node == "node1"
    site.stubs.create(name="ahead", memory_mib=2000, wait_for_capacity_s=600)
    capsys.readouterr()
    argv = ["cluster", "scale", "ela", "--role", "w", "--count", "2"]
    argv += ["--wait-for-capacity", "600", "--wait", "--wait-timeout", "60"]

    lines = _progress(site, capsys, argv)
    said = [line for line in lines if line.startswith("ws: cluster ela")]
    assert [SECOND in line for line in said].count(True) == 1, lines
    assert [FIRST in line for line in said].count(True) == 1, lines
    assert "0/1 new members RUNNING" in said[0] and SECOND in said[0], lines
    assert said[-1].endswith(": 1/1 new members RUNNING"), lines


def test_a_shrink_wait_says_nothing_of_new_members(
    site: Site, capsys: pytest.CaptureFixture[str]
) -> None:
    """`ws cluster scale --wait` that only removes members printed "cluster NAME: 0/0 new
    members RUNNING", a line about members that a shrink has none of."""
    site.stubs.network()
    site.stubs.import_image("img")
    site.add_agent("node1", cpus=4, memory_mib=4096)
    argv = ["cluster", "create", "ela", "--member", "w=img,count=2,memory-mib=600", "--wait"]
    assert ws.main(argv, connect=lambda _s: Client(site.address)) == 0
    capsys.readouterr()
    argv = ["cluster", "scale", "ela", "--role", "w", "--count", "1", "--wait"]
    assert ws.main([*argv, "--wait-timeout", "60"], connect=lambda _s: Client(site.address)) == 0
    err = capsys.readouterr().err
    assert "new members" not in err, err
    clusters = clusters_pb2_grpc.ClustersStub(site.stubs.channel)
    got = clusters.GetCluster(clusters_pb2.ClusterRef(id="ela"))
    assert len(got.members) == 1
