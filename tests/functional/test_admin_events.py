"""Admins' tenancy changes in the site events (`ws-admin events --kind project|backfill`):
projects made, changed (old -> new), deleted; members added and removed; backfill entries
set and cleared. Each says who did it. Through the CLIs' main functions."""

from __future__ import annotations

import json
from typing import Any

import pytest

from tests.functional.harness import Site
from tests.functional.test_projects_cli import run
from workspace.cli import admin


def events(site: Site, capsys: pytest.CaptureFixture[str], *kinds: str) -> list[dict[str, Any]]:
    argv = [a for k in kinds for a in ("--kind", k)]
    code, out, err = run(admin, site, capsys, "-o", "json", "events", *argv)
    assert code == 0, err
    return [json.loads(line) for line in out.splitlines()]


def said(evs: list[dict[str, Any]]) -> list[tuple[str, str, str]]:
    return [(e["kind"], e.get("subject", ""), e.get("reason", "")) for e in evs]


def ok(site: Site, capsys: pytest.CaptureFixture[str], *argv: str) -> str:
    code, out, err = run(admin, site, capsys, *argv)
    assert code == 0, err
    return out


def test_project_changes_are_site_events_with_who_and_what(
    ready_site: Site, capsys: pytest.CaptureFixture[str]
) -> None:
    site = ready_site
    ok(site, capsys, "project", "create", "chem", "--quota", "instances=2,vcpus=8",
       "--default-lease", "8h", "--max-lease", "72h")  # fmt: skip
    ok(site, capsys, "project", "set", "chem", "--quota", "vcpus=16", "--max-lease", "7d")
    ok(site, capsys, "project", "set", "chem", "--quota-preemptible-instances", "50",
       "--default-net-mbps", "100")  # fmt: skip
    ok(site, capsys, "project", "set", "chem", "--quota-preemptible-instances", "50")  # no change
    ok(site, capsys, "project", "add-user", "chem", "carol")
    ok(site, capsys, "project", "add-user", "chem", "carol")  # already: nothing changes
    ok(site, capsys, "project", "add-user", "chem", "local")
    site.stubs.create(name="w", project="chem")
    ok(site, capsys, "project", "remove-user", "chem", "carol")
    ok(site, capsys, "project", "remove-user", "chem", "local")
    site.stubs.ws.DestroyWorkspace(site.stubs.ref("w"))
    ok(site, capsys, "project", "create", "gone")
    ok(site, capsys, "project", "delete", "gone")
    evs = events(site, capsys, "project")
    assert {e["who"] for e in evs} == {"user:local"}
    assert said(evs) == [
        (
            "project.created",
            "chem",
            "quota instances=2, vcpus=8; leases default 8h, max 3d, on expiry STOP; "
            "default limits none",
        ),
        ("project.updated", "chem", "quota vcpus 8 -> 16; max lease 3d -> 7d"),
        (
            "project.updated",
            "chem",
            "quota preemptible-instances none -> 50; default limits none -> net-mbps=100",
        ),
        ("project.user_added", "chem", "user carol"),
        ("project.user_added", "chem", "user local"),
        ("project.user_removed", "chem", "user carol"),
        ("project.user_removed", "chem", "user local; 1 live workspace(s) of theirs stay in it"),
        (
            "project.created",
            "gone",
            "quota none; leases default none, max none, on expiry STOP; default limits none",
        ),
        (
            "project.deleted",
            "gone",
            "quota none; leases default none, max none, on expiry STOP; default limits none; "
            "recorded members none",
        ),
    ]
    # A kind of the family alone.
    assert [e["subject"] for e in events(site, capsys, "project.deleted")] == ["gone"]


def test_backfill_changes_are_site_events(
    ready_site: Site, capsys: pytest.CaptureFixture[str]
) -> None:
    site = ready_site
    ok(site, capsys, "project", "create", "grid")
    ok(site, capsys, "backfill", "set", "img", "--max", "3", "--cpus", "1", "--memory-mib",
       "256", "--grace", "30")  # fmt: skip
    ok(site, capsys, "backfill", "set", "img", "--max", "1", "--cpus", "1", "--memory-mib",
       "256", "--grace", "30", "--project", "grid")  # fmt: skip
    ok(site, capsys, "backfill", "clear", "img")
    evs = events(site, capsys, "backfill")
    assert {e["who"] for e in evs} == {"user:local"}
    assert said(evs) == [
        (
            "backfill.set",
            "img",
            "max 3, 1 vCPU(s), 256 MiB, grace 30 s, networks default, project none",
        ),
        ("backfill.set", "img", "max 3 -> 1; project none -> grid"),
        (
            "backfill.cleared",
            "img",
            "0 workspace(s) destroyed; was max 1, 1 vCPU(s), 256 MiB, grace 30 s, "
            "networks default, project grid",
        ),
    ]
