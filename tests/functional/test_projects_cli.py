"""`ws-admin project create|add-user|list`, `ws-admin image publish|unpublish` and
`ws quota` against a real in-process service, through the CLIs' main functions."""

from __future__ import annotations

import json
from pathlib import Path
from types import ModuleType

import pytest

from tests.functional.harness import Site
from workspace.cli import admin, ws
from workspace.client import Client
from workspace.v1 import workspaces_pb2


def run(
    module: ModuleType, site: Site, capsys: pytest.CaptureFixture[str], *argv: str
) -> tuple[int, str, str]:
    try:
        code = module.main(list(argv), connect=lambda _s: Client(site.address))
    except SystemExit as exc:  # argparse's usage errors
        code = int(exc.code or 0)
    out, err = capsys.readouterr()
    return code, out, err


def test_projects_from_the_command_line(
    ready_site: Site, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, err = run(
        admin, ready_site, capsys,
        "project", "create", "phys",
        "--quota", "instances=2,vcpus=4,memory-mib=4096,disk-gib=10,image-bytes=1000000",
        "--default-lease", "8h", "--max-lease", "72h", "--on-expiry", "destroy",
    )  # fmt: skip
    assert code == 0, err
    assert "phys" in out and "instances=2" in out and "destroy" in out
    assert run(admin, ready_site, capsys, "project", "add-user", "phys", "local")[0] == 0
    code, out, _ = run(admin, ready_site, capsys, "-o", "json", "project", "list")
    (listed,) = json.loads(out)
    assert listed["name"] == "phys" and listed["users"] == ["local"]
    assert listed["default_lease_s"] == 8 * 3600 and listed["max_lease_s"] == 72 * 3600
    assert listed["quota"]["instances"] == 2
    # ws create charges the caller's only project; ws quota shows use and limits.
    assert run(ws, ready_site, capsys, "create", "--image", "img", "--name", "a")[0] == 0
    code, out, _ = run(ws, ready_site, capsys, "quota")
    assert code == 0
    row = next(line.split() for line in out.splitlines() if " instances " in f" {line} ")
    assert row == ["phys", "instances", "1", "2"]
    code, out, _ = run(ws, ready_site, capsys, "-o", "json", "quota")
    assert json.loads(out)[0]["used"]["vcpus"] == 1


def test_project_refusals_on_the_command_line(
    ready_site: Site, capsys: pytest.CaptureFixture[str]
) -> None:
    code, _, err = run(admin, ready_site, capsys, "project", "create", "p", "--quota", "cpus=2")
    assert code == 2 and "instances" in err
    code, _, err = run(admin, ready_site, capsys, "project", "create", "p", "--max-lease", "soon")
    assert code == 2 and "not a duration" in err
    code, _, err = run(ws, ready_site, capsys, "create", "--image", "img", "--project", "nope")
    assert code == 1 and "project 'nope' does not exist" in err
    code, _, err = run(admin, ready_site, capsys, "project", "add-user", "nope", "ana")
    assert code == 1 and "does not exist" in err


def test_publish_and_unpublish(ready_site: Site, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(admin, ready_site, capsys, "image", "publish", "img")
    assert code == 0 and "img is public" in out
    code, out, _ = run(admin, ready_site, capsys, "image", "unpublish", "img")
    assert code == 0 and "private" in out
    code, _, err = run(admin, ready_site, capsys, "image", "publish", "nope")
    assert code == 1 and "not found" in err


def test_push_into_a_project(
    site: Site, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    disk = tmp_path / "disk.img"
    disk.write_bytes(b"\0" * 65536)
    assert run(admin, site, capsys, "project", "create", "phys")[0] == 0
    code, _, err = run(ws, site, capsys, "image", "push", "tool:1", str(disk), "--project", "phys")
    assert code == 0, err
    code, out, _ = run(ws, site, capsys, "-o", "json", "image", "show", "tool:1")
    assert json.loads(out)["project"] == "phys"
    code, out, _ = run(ws, site, capsys, "image", "show", "tool:1")
    assert code == 0 and ["project", "phys"] in [line.split() for line in out.splitlines()]
    code, _, err = run(ws, site, capsys, "image", "push", "tool:2", str(disk), "--project", "nope")
    assert code == 1 and "project 'nope' does not exist" in err


def test_a_cluster_over_quota_from_the_command_line(
    ready_site: Site, capsys: pytest.CaptureFixture[str]
) -> None:
    quota = ["--quota", "instances=1"]
    assert run(admin, ready_site, capsys, "project", "create", "p", *quota)[0] == 0
    member = "w=img,count=2,memory-mib=64"
    code, _, err = run(
        ws, ready_site, capsys, "cluster", "create", "c", "--member", member, "--project", "p"
    )
    assert code == 1 and "instances quota of project p" in err
    code, out, _ = run(ws, ready_site, capsys, "-o", "json", "cluster", "list")
    assert code == 0 and json.loads(out) == []
    code, out, _ = run(ws, ready_site, capsys, "-o", "json", "list")
    assert json.loads(out) == []


def test_quota_without_projects_and_list_all_users(
    ready_site: Site, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, _ = run(ws, ready_site, capsys, "quota")
    assert code == 0 and "you belong to no project" in out
    # Another user's workspace: only an admin's --all-users lists it.
    ready_site.service.workspaces.create(  # type: ignore[union-attr]
        "ana", workspaces_pb2.CreateWorkspaceRequest(name="anas", image="img")
    )
    code, out, _ = run(ws, ready_site, capsys, "-o", "json", "list")
    assert [w["name"] for w in json.loads(out)] == []
    code, out, _ = run(ws, ready_site, capsys, "-o", "json", "list", "--all-users")
    assert [(w["name"], w["owner"]) for w in json.loads(out)] == [("anas", "ana")]
