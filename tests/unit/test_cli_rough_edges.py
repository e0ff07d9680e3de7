"""Rough edges of the `ws` CLI and the Python client as a user meets them: a Client
given a non-string address, `ws quota` for a certificate naming an unknown project,
control characters in what other users wrote, `--mine` on every list of owned things."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from workspace import errors, rpc
from workspace.cli import common, ws
from workspace.client import Client
from workspace.v1 import (
    access_pb2,
    images_pb2,
    images_pb2_grpc,
    projects_pb2,
    usage_pb2,
    workspaces_pb2,
    workspaces_pb2_grpc,
)


@pytest.mark.parametrize("address", [1234, None, "", "  ", b"localhost:50051"])
def test_a_client_given_no_address_string_says_so(address: object) -> None:
    """`Client(1234)` raised "TypeError: argument of type 'int' is not iterable"."""
    with pytest.raises(errors.BadArgument) as info:
        Client(address)  # type: ignore[arg-type]
    assert str(info.value) == (
        "Client: address must be the service's address as a string, such as "
        f"'localhost:50051' or 'unix:/run/workspace/service.sock', not {address!r}"
    )


LONG = "/tmp/" + "d" * 100 + "/service.sock"  # 118 bytes


@pytest.mark.parametrize(
    "address", [f"unix:{LONG}", f"unix://{LONG}", f"localhost:7070,unix:{LONG}"]
)
def test_a_unix_socket_path_longer_than_a_socket_address_holds_is_said_so(address: str) -> None:
    """gRPC answered such a path with "Failed to create channel ... the target uri is not
    valid", code UNKNOWN at the first call, which ws-slurm told Slurm as the service
    refusing it (a site made under a deep directory)."""
    with pytest.raises(errors.BadArgument) as info:
        Client(address)
    assert str(info.value) == (
        f"Client: the unix socket path {LONG} is 118 bytes, over the 107 a socket's "
        "address holds: give it a shorter path (a shorter symlink to its directory will do)"
    )


def test_a_unix_socket_path_a_socket_address_holds_is_taken() -> None:
    path = "/tmp/" + "d" * (107 - len("/tmp/") - len("/s")) + "/s"
    assert len(path) == 107
    with Client(f"unix:{path}"):
        pass


class FakeClient:
    """What the commands under test ask of a Client, answered as a service would."""

    def __init__(self, **answers: Any) -> None:
        self.answers = answers

    def __getattr__(self, name: str) -> Any:
        answer = self.answers[name]
        if isinstance(answer, Exception):

            def refuse(*_a: Any, **_k: Any) -> Any:
                raise answer

            return refuse
        return lambda *_a, **_k: answer

    def close(self) -> None:
        pass


def run_ws(fake: FakeClient, *argv: str) -> int:
    return ws.main(list(argv), connect=lambda *_a, **_k: fake)


# An OSC 52 (write the clipboard) and a window title, in a key's comment.
EVIL = "\x1b]52;c;cm0gLXJmIH4=\x07\x1b]0;owned\x07laptop"
SHOWN = "\\x1b]52;c;cm0gLXJmIH4=\\x07\\x1b]0;owned\\x07laptop"


def evil_key() -> access_pb2.SshKey:
    return access_pb2.SshKey(
        fingerprint="SHA256:abc", comment=EVIL, public_key="ssh-ed25519 AAAA " + EVIL
    )


def test_key_remove_prints_no_escape_sequence_of_a_comment(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """`ws key remove` said "removed SSH key ... (COMMENT)" with the comment's escape
    sequences as they were: the terminal acted on them."""
    assert run_ws(FakeClient(remove_ssh_key=evil_key()), "key", "remove", "SHA256:abc") == 0
    out = capsys.readouterr().out
    assert "\x1b" not in out and "\x07" not in out
    assert out == f"removed SSH key SHA256:abc ({SHOWN})\n"


def test_key_list_prints_a_comment_on_its_own_row(capsys: pytest.CaptureFixture[str]) -> None:
    """A comment with a newline made a row of its own in `ws key list`."""
    k = access_pb2.SshKey(fingerprint="SHA256:abc", comment="a\nSHA256:forged", public_key="x")
    assert run_ws(FakeClient(list_ssh_keys=[k, evil_key()]), "key", "list") == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 3  # the header and a row per key
    assert "a\\x0aSHA256:forged" in lines[1] and SHOWN in lines[2]


def test_a_refusal_quoting_a_comment_prints_no_escape_sequence(
    capsys: pytest.CaptureFixture[str],
) -> None:
    refusal = errors.NotFound(f"you have no SSH key with the comment '{EVIL}'")
    assert run_ws(FakeClient(remove_ssh_key=refusal), "key", "remove", EVIL) != 0
    err = capsys.readouterr().err
    assert "\x1b" not in err and "\x07" not in err and "owned" in err


def test_quota_of_a_certificate_naming_an_unknown_project_says_so(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """`ws quota` said "you belong to no project" to a user whose certificate names
    project ghost, which the site does not have."""
    me = workspaces_pb2.Caller(user="alice", projects=["ghost"])
    assert run_ws(FakeClient(quota=[], whoami=me), "quota") == 0
    got = capsys.readouterr()
    assert got.out == ""
    assert got.err == (
        "your certificate names project ghost, which this site does not know (it has no "
        "quota and takes no workspace): an admin makes it with `ws-admin project create "
        "ghost`, or issues you a certificate naming a project that exists\n"
    )


def test_quota_says_which_of_the_certificate_s_projects_is_unknown(
    capsys: pytest.CaptureFixture[str],
) -> None:
    me = workspaces_pb2.Caller(user="alice", projects=["ghost", "physics"])
    uses = [projects_pb2.ProjectQuota(project="physics")]
    assert run_ws(FakeClient(quota=uses, whoami=me), "quota") == 0
    got = capsys.readouterr()
    assert "physics" in got.out and "ghost" not in got.out
    assert got.err.startswith("your certificate names project ghost, which this site does")


def test_quota_of_no_project_still_says_so(capsys: pytest.CaptureFixture[str]) -> None:
    me = workspaces_pb2.Caller(user="alice")
    assert run_ws(FakeClient(quota=[], whoami=me), "quota") == 0
    assert capsys.readouterr().err == "you belong to no project (no project quota applies)\n"


@pytest.mark.parametrize("projects", [[], ["ghost"]])
def test_quota_in_json_says_why_it_is_empty_on_stderr(
    projects: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    """`ws quota -o json` printed `[]` and nothing else, where the text says "you belong
    to no project" (or names the certificate's project the site does not know)."""
    me = workspaces_pb2.Caller(user="alice", projects=projects)
    assert run_ws(FakeClient(quota=[], whoami=me), "quota", "-o", "json") == 0
    got = capsys.readouterr()
    assert json.loads(got.out) == []
    said = "you belong to no project" if not projects else "names project ghost, which"
    assert said in got.err and len(got.err.splitlines()) == 1
    # A project known beside it: its JSON, and the unknown one named on stderr.
    uses = [projects_pb2.ProjectQuota(project="physics")]
    assert run_ws(FakeClient(quota=uses, whoami=me), "-o", "json", "quota") == 0
    got = capsys.readouterr()
    assert [p["name"] for p in json.loads(got.out)] == ["physics"]
    assert "belong to no project" not in got.err
    assert len(got.err.splitlines()) == len(projects) and ("ghost" in got.err) == bool(projects)


# -- --mine on `ws image list` and `ws usage`, as on `ws list` ---------------------------------


class Colleagues(workspaces_pb2_grpc.WorkspacesServicer, images_pb2_grpc.ImagesServicer):
    """A service whose caller, alice, sees her project colleague bob's images and usage
    beside her own (as the real one shows a project's)."""

    def WhoAmI(self, request: Any, context: Any) -> workspaces_pb2.Caller:
        return workspaces_pb2.Caller(user="alice", projects=["physics"])

    def ListImages(self, request: Any, context: Any) -> images_pb2.ListImagesResponse:
        return images_pb2.ListImagesResponse(
            images=[
                images_pb2.Image(name="hers:1", owner="alice", project="physics"),
                images_pb2.Image(name="his:1", owner="bob", project="physics"),
            ]
        )

    def GetUsage(self, request: Any, context: Any) -> usage_pb2.UsageReport:
        row = usage_pb2.UsageRow
        return usage_pb2.UsageReport(
            by=request.by,
            rows=[
                row(key="w1", name="a", owner="alice", project="physics", core_hours=1),
                row(key="w2", name="b", owner="bob", project="physics", core_hours=2),
            ],
        )


@pytest.fixture
def colleagues(tmp_path: Path) -> Iterator[str]:
    server = rpc.server(4)
    svc = Colleagues()
    workspaces_pb2_grpc.add_WorkspacesServicer_to_server(svc, server)
    images_pb2_grpc.add_ImagesServicer_to_server(svc, server)
    address = f"unix:{tmp_path}/s.sock"
    rpc.bind(server, address)
    server.start()
    try:
        yield address
    finally:
        server.stop(0).wait()


def ws_at(address: str, *argv: str) -> int:
    return ws.main(list(argv), connect=lambda *_a, **_k: Client(address))


def test_image_list_mine_keeps_only_yours(
    colleagues: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """`ws image list` had no --mine (`ws list`, `ws cluster list` and `ws watch` have)."""
    assert ws_at(colleagues, "image", "list", "--mine", "-o", "json") == 0
    assert [i["name"] for i in json.loads(capsys.readouterr().out)] == ["hers:1"]
    assert ws_at(colleagues, "image", "list") == 0
    assert "his:1" in capsys.readouterr().out
    with Client(colleagues) as client:
        assert [i.name for i in client.list_images(mine=True)] == ["hers:1"]


@pytest.mark.parametrize("by", ["workspace", "user"])
def test_usage_mine_keeps_only_yours(
    colleagues: str, capsys: pytest.CaptureFixture[str], by: str
) -> None:
    assert ws_at(colleagues, "usage", "--by", by, "--mine", "-o", "json") == 0
    rows = json.loads(capsys.readouterr().out)["rows"]
    assert [r["owner"] for r in rows] == ["alice"]
    with Client(colleagues) as client:
        assert [r.owner for r in client.get_usage(by=by, mine=True).rows] == ["alice"]


def test_usage_mine_by_project_is_refused(
    colleagues: str, capsys: pytest.CaptureFixture[str]
) -> None:
    said = (
        "mine (only your own usage) needs by workspace or user, not 'project': a project's "
        "row adds up its members' use, your colleagues' too"
    )
    assert ws_at(colleagues, "usage", "--by", "project", "--mine") == common.EXIT_USAGE
    assert said in capsys.readouterr().err
    with Client(colleagues) as client, pytest.raises(errors.BadArgument, match="needs by"):
        client.get_usage(by="project", mine=True)
