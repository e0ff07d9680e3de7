"""ListClusters and GetUsage are paged as ListWorkspaces and ListImages are (page_size,
page_token, next_page_token): every row comes back once through the bare RPCs, the
client and the CLI; a request without page fields gets them all; a bad token or page
size is INVALID_ARGUMENT. Over the real client, gRPC and servicers (tests/unit/
test_usage_cli.py's site)."""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator
from functools import partialmethod

import grpc
import pytest

from tests.unit.test_usage_cli import HOUR, Served, served
from workspace import errors
from workspace.client import Client
from workspace.node.v1 import nodes_pb2
from workspace.v1 import (
    clusters_pb2,
    clusters_pb2_grpc,
    usage_pb2,
    workspaces_pb2,
    workspaces_pb2_grpc,
)

__all__ = ["served"]  # the fixture, used by name

CLUSTERS = [f"c{i}" for i in range(7)]
BY_USER = usage_pb2.UsageGrouping.USAGE_GROUPING_USER


@pytest.fixture
def channel(served: Served) -> Iterator[grpc.Channel]:
    with grpc.insecure_channel(served.address) as ch:
        yield ch


def clusters_made(served: Served, destroyed: int) -> None:
    """CLUSTERS, made at one moment (so their order is by id), the first ``destroyed``
    of them TERMINATED."""
    for name in CLUSTERS:
        assert served.ws("cluster", "create", name, "--member", "w=img") == 0
    for name in CLUSTERS[:destroyed]:
        (member,) = served.client.get_cluster(name).members
        served.client.destroy_cluster(name)
        served.site.report(member.id, nodes_pb2.OBSERVED_STATE_ABSENT)
        assert served.client.get_cluster(name).state == clusters_pb2.CLUSTER_STATE_TERMINATED


def small_pages(monkeypatch: pytest.MonkeyPatch, size: int) -> None:
    """The client (and so the CLI) asks for pages of ``size`` rows."""
    for method in ("list_clusters", "get_usage"):
        paged = partialmethod(getattr(Client, method), page_size=size)
        monkeypatch.setattr(Client, method, paged)


def test_cluster_pages_give_every_cluster_once(
    served: Served,
    channel: grpc.Channel,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    clusters_made(served, destroyed=4)
    stub = clusters_pb2_grpc.ClustersStub(channel)
    everything = clusters_pb2.ListClustersRequest(include_terminated=True)
    whole = stub.ListClusters(everything)  # an old client: no page fields, every cluster
    assert whole.next_page_token == ""
    order = [c.name for c in whole.clusters]
    assert sorted(order) == CLUSTERS
    pages, everything.page_size = [], 3
    while True:
        page = stub.ListClusters(everything)
        pages.append([c.name for c in page.clusters])
        everything.page_token = page.next_page_token
        if not everything.page_token:
            break
    assert [len(p) for p in pages] == [3, 3, 1]
    assert [name for p in pages for name in p] == order
    small_pages(monkeypatch, 2)
    assert [c.name for c in served.client.list_clusters(include_terminated=True)] == order
    live = [name for name in order if name in CLUSTERS[4:]]
    assert [c.name for c in served.client.list_clusters()] == live
    capsys.readouterr()
    assert served.ws("cluster", "list", "--all", "-o", "json") == 0
    assert [c["name"] for c in json.loads(capsys.readouterr().out)] == order


def test_usage_pages_give_every_row_once_and_one_window(
    served: Served,
    channel: grpc.Channel,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    names = [f"w{i}" for i in range(5)]
    for name in names:
        assert served.ws("create", "--image", "img", "--name", name, "--cpus", "2") == 0
        served.running(name)
    served.site.clock.now += HOUR
    stub = workspaces_pb2_grpc.WorkspacesStub(channel)
    whole = stub.GetUsage(usage_pb2.GetUsageRequest())  # an old client: every row
    assert len(whole.rows) == 5 and whole.next_page_token == ""
    req = usage_pb2.GetUsageRequest(page_size=2)
    first = stub.GetUsage(req)
    rows, sizes = list(first.rows), [len(first.rows)]
    served.site.clock.now += HOUR  # between pages: the report still ends where it began
    req.page_token = first.next_page_token
    while req.page_token:
        page = stub.GetUsage(req)
        assert page.until == first.until
        rows.extend(page.rows)
        sizes.append(len(page.rows))
        req.page_token = page.next_page_token
    assert sizes == [2, 2, 1]
    assert [r.key for r in rows] == [r.key for r in whole.rows]
    assert {r.core_hours for r in rows} == {2.0}
    small_pages(monkeypatch, 2)
    report = served.client.get_usage()
    assert sorted(r.name for r in report.rows) == names
    capsys.readouterr()
    assert served.ws("usage", "-o", "json") == 0
    shown = json.loads(capsys.readouterr().out)
    assert sorted(r["name"] for r in shown["rows"]) == names
    assert {r["core_hours"] for r in shown["rows"]} == {4.0}  # two hours now, one report
    assert served.admin("usage", "--by", "project", "-o", "json") == 0
    assert [r["key"] for r in json.loads(capsys.readouterr().out)["rows"]] == [""]


def test_bad_page_tokens_and_sizes_are_invalid_arguments(
    served: Served, channel: grpc.Channel
) -> None:
    clusters_made(served, destroyed=0)
    served.running("c0-w-0")
    served.site.clock.now += HOUR
    clusters = clusters_pb2_grpc.ClustersStub(channel)
    usage = workspaces_pb2_grpc.WorkspacesStub(channel)
    by_workspace = usage.GetUsage(usage_pb2.GetUsageRequest(page_size=1)).next_page_token
    forged = base64.urlsafe_b64encode(b"usage|inf|workspace|inf|").decode()  # no end
    of_clusters = clusters.ListClusters(clusters_pb2.ListClustersRequest(page_size=1))
    refused = [
        lambda: clusters.ListClusters(clusters_pb2.ListClustersRequest(page_token="no token!")),
        lambda: clusters.ListClusters(clusters_pb2.ListClustersRequest(page_size=-1)),
        lambda: usage.GetUsage(usage_pb2.GetUsageRequest(page_token="no token!")),
        lambda: usage.GetUsage(usage_pb2.GetUsageRequest(page_size=-1)),
        lambda: usage.GetUsage(usage_pb2.GetUsageRequest(page_token=forged)),
        # a token of a report by workspace, given to one by user
        lambda: usage.GetUsage(usage_pb2.GetUsageRequest(page_token=by_workspace, by=BY_USER)),
        # a token of one list given to another (was read as a place in it: a wrong page)
        lambda: clusters.ListClusters(clusters_pb2.ListClustersRequest(page_token=by_workspace)),
        lambda: usage.GetUsage(usage_pb2.GetUsageRequest(page_token=of_clusters.next_page_token)),
        lambda: usage.ListWorkspaces(
            workspaces_pb2.ListWorkspacesRequest(page_token=of_clusters.next_page_token)
        ),
    ]
    for call in refused:
        with pytest.raises(grpc.RpcError) as exc:
            call()
        assert exc.value.code() is grpc.StatusCode.INVALID_ARGUMENT
        assert "page_" in (exc.value.details() or "")
    with pytest.raises(errors.InvalidArgument, match="page_size"):
        served.client.list_clusters(page_size=-1)
