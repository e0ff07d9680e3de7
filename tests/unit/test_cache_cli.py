"""`ws-admin cache list|preload`: parsing, text and JSON output, errors and exit codes."""

from __future__ import annotations

import argparse
import json
from typing import Any

import pytest

from workspace import errors
from workspace.cli import cache_cmds, common
from workspace.v1 import admin_pb2

D1 = "sha256:" + "a" * 64
D2 = "sha256:" + "b" * 64


class FakeClient:
    def __init__(self, fail: errors.WorkspaceError | None = None) -> None:
        self.fail = fail
        self.calls: list[tuple[str, Any]] = []
        self.cached: list[str] = []

    def list_cache(self, node: str) -> admin_pb2.ListCacheResponse:
        self.calls.append(("list", node))
        if self.fail:
            raise self.fail
        resp = admin_pb2.ListCacheResponse(node=node, budget_bytes=2 * 1024**3, used_bytes=3072)
        e = resp.entries.add(digest=D1, size_bytes=1024, pinned=True)
        e.last_used.FromSeconds(1_700_000_000)
        resp.entries.add(digest=D2, size_bytes=2048)
        return resp

    def preload_image(self, image: str, nodes: list[str]) -> admin_pb2.PreloadImageResponse:
        self.calls.append(("preload", (image, nodes)))
        if self.fail:
            raise self.fail
        return admin_pb2.PreloadImageResponse(
            nodes=nodes or ["n1", "n2"], digests=[D1, D2], cached=self.cached
        )


def run(client: FakeClient, *argv: str) -> int:
    parser = argparse.ArgumentParser(prog="ws-admin")
    common.add_global_options(parser)
    sub = parser.add_subparsers(dest="command", required=True)
    cache_cmds.register(sub, common.options_parent(), lambda _args: client)  # type: ignore
    args = parser.parse_args(argv)
    return common.run("ws-admin", args.func, args)


def test_list_text(capsys: pytest.CaptureFixture[str]) -> None:
    client = FakeClient()
    assert run(client, "cache", "list", "node1") == 0
    out = capsys.readouterr().out
    assert client.calls == [("list", "node1")]
    assert out.splitlines()[0] == (
        "node node1: 2 blob(s), 3.0 KiB of 2.0 GiB budget, 1 pinned (in use by workspaces)"
    )
    assert "DIGEST" in out and "LAST_USED" in out
    assert f"{D1}  1.0 KiB  2023-11-14T22:13:20Z  yes" in out
    assert f"{D2}  2.0 KiB  -" in out


def test_list_json(capsys: pytest.CaptureFixture[str]) -> None:
    assert run(FakeClient(), "cache", "list", "node1", "-o", "json") == 0
    data = json.loads(capsys.readouterr().out)
    assert data["node"] == "node1" and data["budget_bytes"] == 2 * 1024**3
    assert [e["digest"] for e in data["entries"]] == [D1, D2]
    assert data["entries"][0]["pinned"] is True


def test_preload_with_nodes(capsys: pytest.CaptureFixture[str]) -> None:
    client = FakeClient()
    assert run(client, "cache", "preload", "img:1", "--nodes", "n1, n3") == 0
    assert client.calls == [("preload", ("img:1", ["n1", "n3"]))]
    assert "2 blob(s) to be fetched in the background by n1, n3" in capsys.readouterr().out


def test_preload_nodes_given_twice_are_all_preloaded() -> None:
    """`--nodes n1 --nodes n2` preloaded n2 alone: the first --nodes did nothing."""
    client = FakeClient()
    assert run(client, "cache", "preload", "img:1", "--nodes", "n1", "--nodes", "n2,n1") == 0
    assert client.calls == [("preload", ("img:1", ["n1", "n2"]))]


def test_preload_names_the_nodes_that_hold_the_image_already(
    capsys: pytest.CaptureFixture[str],
) -> None:
    client = FakeClient()
    client.cached = ["n1"]
    assert run(client, "cache", "preload", "img:1", "--nodes", "n1,n3") == 0
    out = capsys.readouterr().out
    assert out.startswith("image img:1: already cached on n1; 2 blob(s) to be fetched")
    assert "background by n3;" in out
    client.cached = ["n1", "n3"]
    assert run(client, "cache", "preload", "img:1", "--nodes", "n1,n3") == 0
    assert capsys.readouterr().out == "image img:1: already cached on n1, n3\n"


def test_preload_every_node_json(capsys: pytest.CaptureFixture[str]) -> None:
    client = FakeClient()
    assert run(client, "--output", "json", "cache", "preload", "img:1") == 0
    assert client.calls == [("preload", ("img:1", []))]
    assert json.loads(capsys.readouterr().out) == {
        "nodes": ["n1", "n2"],
        "digests": [D1, D2],
        "cached": [],
    }


def test_bad_node_list_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        run(FakeClient(), "cache", "preload", "img", "--nodes", "n1,,n2")
    assert exc.value.code == 2
    assert "node names separated by commas" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("fail", "code"),
    [
        (errors.NotFound("no node 'x'; `ws-admin node list` shows them"), 1),
        (errors.Unavailable("cannot reach the workspace service at unix:/x"), 3),
    ],
)
def test_errors_are_one_line_with_exit_codes(
    fail: errors.WorkspaceError, code: int, capsys: pytest.CaptureFixture[str]
) -> None:
    assert run(FakeClient(fail), "cache", "list", "x") == code
    err = capsys.readouterr().err
    assert err == f"ws-admin: error: {fail.message}\n"
