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
from workspace.v1 import clusters_pb2, workspaces_pb2


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
    assert out.splitlines()[1].split()[2:5] == ["8h", "3d", "destroy"]  # 72h reads as 3d
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
    # `ws project list`, where a user looks first, lists the same.
    assert run(ws, ready_site, capsys, "-o", "json", "project", "list")[1] == out


def test_a_member_sees_the_lease_policy_of_their_projects(
    ready_site: Site, capsys: pytest.CaptureFixture[str]
) -> None:
    """A scientist had no way to learn their project's default and maximum lease but a
    refused `ws create --lease` or `ws lease extend`: `ws quota` and `ws project show`
    showed quotas only (the settings were in the admins' `ws-admin project list`)."""
    for argv in (
        ("project", "create", "phys", "--default-lease", "8h", "--max-lease", "72h",
         "--on-expiry", "destroy"),
        ("project", "create", "open"),
        ("project", "add-user", "phys", "local"),
        ("project", "add-user", "open", "local"),
    ):  # fmt: skip
        assert run(admin, ready_site, capsys, *argv)[0] == 0
    code, out, _ = run(ws, ready_site, capsys, "quota")
    assert code == 0
    assert (
        "project phys: a new workspace's lease is 8h, at most 3d from now (--lease, "
        "`ws lease extend`); at its end the workspace is destroyed"
    ) in out.splitlines()
    assert "project open: no lease (its workspaces live until destroyed)" in out
    code, out, _ = run(ws, ready_site, capsys, "-o", "json", "project", "show", "phys")
    assert json.loads(out)["leases"] == {
        "default_lease_s": 8 * 3600,
        "max_lease_s": 72 * 3600,
        "on_expiry": "DESTROY",
    }


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
    assert code == 1 and "does not exist; `ws-admin project list` shows them\n" in err
    # An admin was sent to `ws quota`, which lists only their own projects (often none).
    code, _, err = run(admin, ready_site, capsys, "project", "show", "nope")
    assert code == 1 and "does not exist; `ws-admin project list` shows them\n" in err


def test_quota_given_twice_sets_both(ready_site: Site, capsys: pytest.CaptureFixture[str]) -> None:
    """`--quota instances=3 --quota vcpus=8` set vcpus alone: argparse kept the last
    --quota, and the project had no instance limit, without a word."""
    argv = ["-o", "json", "project", "create", "q2", "--quota", "instances=3", "--quota", "vcpus=8"]
    code, out, err = run(admin, ready_site, capsys, *argv)
    assert code == 0, err
    quota = json.loads(out)["quota"]
    assert (quota["instances"], quota["vcpus"]) == (3, 8)
    argv = [
        "-o",
        "json",
        "project",
        "set",
        "q2",
        "--quota",
        "memory-mib=100",
        "--quota",
        "instances=4",
    ]
    code, out, err = run(admin, ready_site, capsys, *argv)
    assert code == 0, err
    quota = json.loads(out)["quota"]
    assert (quota["instances"], quota["vcpus"], quota["memory_mib"]) == (4, 8, 100)


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
    # One that fits is shown as the project's.
    member = "w=img,count=1,memory-mib=64"
    code, _, err = run(
        ws, ready_site, capsys, "cluster", "create", "c", "--member", member, "--project", "p"
    )
    assert code == 0, err
    code, out, _ = run(ws, ready_site, capsys, "cluster", "show", "c")
    assert ["project", "p"] in [line.split() for line in out.splitlines()]


def test_quota_without_projects_and_list_all_users(
    ready_site: Site, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, err = run(ws, ready_site, capsys, "quota")
    # An empty list: nothing on stdout, why on stderr (README).
    assert code == 0 and out == "" and "you belong to no project" in err
    # Another user's workspace: only an admin's --all-users lists it.
    ready_site.service.workspaces.create(  # type: ignore[union-attr]
        "ana", workspaces_pb2.CreateWorkspaceRequest(name="anas", image="img")
    )
    code, out, _ = run(ws, ready_site, capsys, "-o", "json", "list")
    assert [w["name"] for w in json.loads(out)] == []
    code, out, _ = run(ws, ready_site, capsys, "-o", "json", "list", "--all-users")
    assert [(w["name"], w["owner"]) for w in json.loads(out)] == [("anas", "ana")]
    # Whose each is, as the README says, even when all are one user's: the columns
    # were there only when the list held two owners.
    code, out, _ = run(ws, ready_site, capsys, "list", "--all-users")
    head, row = (line.split() for line in out.splitlines())
    assert head[:4] == ["ID", "NAME", "OWNER", "PROJECT"] and row[1:4] == ["anas", "ana", "-"]
    code, out, _ = run(ws, ready_site, capsys, "cluster", "list", "--all-users")
    assert code == 0 and out == ""  # no clusters
    ready_site.service.clusters.create(  # type: ignore[union-attr]
        "ana",
        clusters_pb2.CreateClusterRequest(
            name="anac", members=[clusters_pb2.ClusterMember(role="w", image="img")]
        ),
    )
    code, out, _ = run(ws, ready_site, capsys, "cluster", "list", "--all-users")
    head, row = (line.split() for line in out.splitlines())
    assert head[:4] == ["ID", "NAME", "OWNER", "PROJECT"] and row[1:4] == ["anac", "ana", "-"]


def test_cluster_list_all_users(ready_site: Site, capsys: pytest.CaptureFixture[str]) -> None:
    """`ws cluster list --all-users` was a usage error and Client.list_clusters had no
    all_users, though `ws list --all-users` and ListClustersRequest.all_users exist."""
    ready_site.service.clusters.create(  # type: ignore[union-attr]
        "ana",
        clusters_pb2.CreateClusterRequest(
            name="anac", members=[clusters_pb2.ClusterMember(role="w", image="img")]
        ),
    )
    run(ws, ready_site, capsys, "cluster", "create", "mine", "--member", "w=img")
    code, out, _ = run(ws, ready_site, capsys, "-o", "json", "cluster", "list")
    assert code == 0 and [c["name"] for c in json.loads(out)] == ["mine"]
    code, out, err = run(ws, ready_site, capsys, "-o", "json", "cluster", "list", "--all-users")
    assert code == 0, err
    assert sorted((c["name"], c["owner"]) for c in json.loads(out)) == [
        ("anac", "ana"),
        ("mine", "local"),
    ]
    code, out, _ = run(ws, ready_site, capsys, "cluster", "list", "--all-users")
    assert out.splitlines()[0].split()[:4] == ["ID", "NAME", "OWNER", "PROJECT"]
    with Client(ready_site.address) as c:
        assert [x.name for x in c.list_clusters(all_users=True)] == ["anac", "mine"]


def test_a_projects_quotas_leases_and_members_change_after_it_is_made(
    ready_site: Site, capsys: pytest.CaptureFixture[str]
) -> None:
    """Once `project create` had run, only the default limits and the preemptible
    quotas could change (`project set --quota` was an ambiguous option), and no member
    could be taken out."""
    site = ready_site
    args = ("--quota", "instances=1,vcpus=8", "--max-lease", "72h", "--default-lease", "8h")
    assert run(admin, site, capsys, "project", "create", "phys", *args)[0] == 0
    assert run(admin, site, capsys, "project", "add-user", "phys", "local")[0] == 0
    assert run(ws, site, capsys, "create", "--image", "img", "--name", "a")[0] == 0
    code, _, err = run(ws, site, capsys, "create", "--image", "img", "--name", "b")
    assert code == 1 and "instances quota of project phys" in err
    # Raise one quota: the other of its class and the lease policy stay.
    code, out, err = run(
        admin, site, capsys, "-o", "json", "project", "set", "phys", "--quota", "instances=3"
    )
    assert code == 0, err
    shown = json.loads(out)
    assert shown["quota"]["instances"] == 3 and shown["quota"]["vcpus"] == 8
    assert shown["max_lease_s"] == 72 * 3600 and shown["default_lease_s"] == 8 * 3600
    assert run(ws, site, capsys, "create", "--image", "img", "--name", "b")[0] == 0
    # The lease policy: what is given changes.
    code, out, err = run(
        admin, site, capsys, "-o", "json", "project", "set", "phys",
        "--max-lease", "1h30m", "--default-lease", "1h", "--on-expiry", "destroy",
    )  # fmt: skip
    assert code == 0, err
    shown = json.loads(out)
    assert (shown["default_lease_s"], shown["max_lease_s"]) == (3600, 5400)
    assert shown["on_expiry"] == "DESTROY" and shown["quota"]["instances"] == 3
    code, _, err = run(ws, site, capsys, "create", "--image", "img", "--name", "c", "--lease", "2h")
    assert code == 1 and "maximum lease of 1h30m" in err
    # Nothing given changes nothing (it once wiped the default limits); 0 is no lease.
    code, _, err = run(admin, site, capsys, "project", "set", "phys")
    assert code == 2 and "nothing to change" in err
    code, out, err = run(
        admin, site, capsys, "-o", "json", "project", "set", "phys", "--max-lease", "none"
    )
    assert code == 0 and json.loads(out)["max_lease_s"] == 0, err
    code, out, err = run(
        admin, site, capsys, "-o", "json", "project", "set", "phys", "--max-lease", "1h30m"
    )
    assert code == 0 and json.loads(out)["max_lease_s"] == 5400, err
    # Bad settings change nothing.
    for bad in (("--default-lease", "2h"), ("--max-lease", "4000d")):
        code, _, err = run(admin, site, capsys, "project", "set", "phys", *bad)
        assert code == 1 and "lease" in err, err
    # A member taken out is no member.
    code, out, err = run(admin, site, capsys, "project", "remove-user", "phys", "local")
    assert code == 0 and "no longer a recorded member" in out, err
    code, out, _ = run(admin, site, capsys, "-o", "json", "project", "list")
    (listed,) = json.loads(out)
    assert listed["users"] == [] and listed["max_lease_s"] == 5400
    code, _, err = run(admin, site, capsys, "project", "remove-user", "phys", "local")
    assert code == 1 and "not a recorded member" in err


def test_a_project_is_deleted_once_nothing_live_belongs_to_it(
    ready_site: Site, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    site = ready_site
    disk = tmp_path / "disk.img"
    disk.write_bytes(b"\0" * 65536)
    assert run(admin, site, capsys, "project", "create", "phys")[0] == 0
    assert run(admin, site, capsys, "project", "add-user", "phys", "local")[0] == 0
    assert run(ws, site, capsys, "image", "push", "tool:1", str(disk), "--project", "phys")[0] == 0
    code, out, err = run(ws, site, capsys, "-o", "json", "create", "--image", "img", "--name", "a")
    assert code == 0, err
    wid = json.loads(out)["id"]
    assert (
        run(admin, site, capsys, "backfill", "set", "img", "--max", "0", "--project", "phys")[0]
        == 0
    )

    # Refused, with each thing that still belongs to it and how to end it; nothing changes.
    code, _, err = run(admin, site, capsys, "project", "delete", "phys")
    assert code == 1, err
    assert "1 workspace(s) not terminated" in err
    assert "1 image(s)" in err and "backfill of img" in err
    code, out, _ = run(admin, site, capsys, "-o", "json", "project", "list")
    assert [(p["name"], p["users"]) for p in json.loads(out)] == [("phys", ["local"])]

    assert run(ws, site, capsys, "destroy", wid, "--wait")[0] == 0
    assert run(ws, site, capsys, "image", "delete", "tool:1")[0] == 0
    code, _, err = run(admin, site, capsys, "project", "delete", "phys")
    assert code == 1 and "still has backfill of img" in err, err
    assert "workspace(s)" not in err and "image(s)" not in err
    assert run(admin, site, capsys, "backfill", "clear", "img")[0] == 0

    code, out, err = run(admin, site, capsys, "-o", "json", "project", "delete", "phys")
    assert code == 0, err
    assert json.loads(out)["name"] == "phys" and json.loads(out)["users"] == ["local"]
    code, out, _ = run(admin, site, capsys, "-o", "json", "project", "list")
    assert json.loads(out) == []
    # Its past usage is still reported under its name; it takes nothing new.
    code, out, err = run(admin, site, capsys, "-o", "json", "usage", "--by", "project")
    assert code == 0, err
    assert "phys" in [r["key"] for r in json.loads(out)["rows"]]
    code, _, err = run(ws, site, capsys, "create", "--image", "img", "--project", "phys")
    assert code == 1 and "project 'phys' does not exist" in err
    code, _, err = run(admin, site, capsys, "project", "delete", "phys")
    assert code == 1 and "does not exist" in err


def test_a_quota_lowered_below_use_says_so(
    ready_site: Site, capsys: pytest.CaptureFixture[str]
) -> None:
    """The admin learns that the project is now over the quota, and what that means."""
    site = ready_site
    argv = ("project", "create", "phys", "--quota", "instances=3")
    assert run(admin, site, capsys, *argv)[0] == 0
    for name in ("a", "b"):
        assert (
            run(ws, site, capsys, "create", "--image", "img", "--name", name, "--project", "phys")[
                0
            ]
            == 0
        )
    code, out, err = run(admin, site, capsys, "project", "set", "phys", "--quota", "instances=1")
    assert code == 0, err
    assert (
        "project phys uses 2 instances, more than its quota of 1: new workspaces are "
        "refused until it is back under; those it has stay" in out
    )
    # Not over: nothing said; -o json stays the project alone.
    code, out, _ = run(admin, site, capsys, "project", "set", "phys", "--quota", "instances=2")
    assert code == 0 and "more than its quota" not in out
    code, out, _ = run(
        admin, site, capsys, "-o", "json", "project", "set", "phys", "--quota", "instances=1"
    )
    assert json.loads(out)["quota"]["instances"] == 1
    # A member's `ws quota` and `ws project show`, and `ws-admin project show`, say it
    # too: they showed USED 2, LIMIT 1 alone, and the member whose create was refused
    # could not tell an admin had lowered the quota from a bug.
    said = "project phys uses 2 instances, more than its quota of 1: new workspaces are refused"
    assert run(admin, site, capsys, "project", "add-user", "phys", "local")[0] == 0
    for module, argv in (
        (ws, ("quota",)),
        (ws, ("project", "show", "phys")),
        (admin, ("project", "show", "phys")),
    ):
        code, out, err = run(module, site, capsys, *argv)
        assert code == 0, err
        table, rest = out.split("\n\n", 1)
        assert said not in table and said in rest
    code, out, _ = run(ws, site, capsys, "-o", "json", "quota")
    assert json.loads(out)[0]["used"]["instances"] == 2  # JSON: the figures alone
