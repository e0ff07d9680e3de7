"""A local site's day 2 (fake driver, through the command lines): a node certificate
`site up` issues anew (renewal, or names an upgrade adds) does not strand the node;
`site up` waits for heartbeats of this start and `site status` calls a silent READY node
STALE; an admin's log_level survives `site up`; `site up` right after a daemon's
SIGTERM waits for it to go and starts it again."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

from tests.functional.test_cli import ROOT, cli_env, ok, run, wait_gone
from workspace import hostproc, pki
from workspace.site import local

IMAGE = "day2-img"


def stop_site(d: Path) -> None:
    record = local.read_record(d)
    run(d, "admin", "site", "down", "--dir", str(d))
    if record is not None:  # nothing may outlive the tests (ours: by pid)
        for pid in (record.service_pid, *(a.pid for a in record.agents)):
            if pid and not wait_gone(pid, 1.0):
                os.kill(pid, signal.SIGKILL)


@pytest.fixture
def site(tmp_path: Path) -> Iterator[Path]:
    d = tmp_path / "site"
    ok(d, "admin", "site", "up", "--driver", "fake", "--dir", str(d))
    try:
        yield d
    finally:
        stop_site(d)


def node(d: Path, name: str = "local") -> dict[str, Any]:
    nodes = ok(d, "admin", "-o", "json", "node", "list").json()
    assert isinstance(nodes, list)
    return next((n for n in nodes if n["name"] == name), {"state": "", "reason": ""})


def heartbeat(n: dict[str, Any]) -> float:
    return datetime.fromisoformat(n["last_heartbeat"][:26].rstrip("Z") + "+00:00").timestamp()


def until(what: str, check: Any, timeout_s: float = 30.0) -> Any:
    deadline = time.monotonic() + timeout_s
    while True:
        got = check()
        if got:
            return got
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.5)


def test_a_node_certificate_issued_anew_by_site_up_registers(site: Path, tmp_path: Path) -> None:
    """`site up` issues a node a new certificate (here because the identity's copy of the
    CA certificate differs: one of the reasons it does, as renewal in the last 30 days
    and names an upgrade adds are): the one the node is bound to is revoked, so the agent
    registers with the new one, its reports are taken and its workspace is found."""
    d = site
    disk = tmp_path / "disk.img"
    disk.write_bytes(os.urandom(1024 * 1024 + 17))
    ok(d, "admin", "image", "import", IMAGE, str(disk))
    ok(d, "ws", "create", "--image", IMAGE, "--name", "kept", "--wait")
    node_dir = d / "identities" / "node-local"
    old = pki.identity_of_dir(node_dir).serial
    ok(d, "admin", "site", "down", "--dir", str(d))
    with (node_dir / pki.CA_CERT).open("a") as f:
        f.write("\n")  # not the CA's copy byte for byte: `site up` issues anew

    start = time.time()
    ok(d, "admin", "site", "up", "--dir", str(d))
    new = pki.identity_of_dir(node_dir).serial
    assert new != old
    listed = {r.serial: r for r in pki.CA(d / "pki").issued()}
    assert listed[old].revoked and not listed[new].revoked
    # (to the second, as every time in -o json)
    assert node(d)["state"] == "READY" and heartbeat(node(d)) >= int(start)
    # Its reports go on being taken (no PERMISSION_DENIED) and its workspace is found.
    after = time.time()
    until("a heartbeat after the start", lambda: heartbeat(node(d)) > after + 1)
    assert node(d)["state"] == "READY"
    until(
        "the workspace RUNNING",
        lambda: ok(d, "ws", "-o", "json", "show", "kept").json()["state"] == "RUNNING",  # type: ignore[index]
    )
    assert "another certificate" not in (d / "agent.log").read_text()


def test_a_store_restored_under_a_new_ca_is_said_and_left_running(
    site: Path, tmp_path: Path
) -> None:
    """A backup restored into a fresh site directory without the old `pki/`: a new CA,
    so the node's agent is refused for the serial the store binds it to. `site up` says
    the node does not report (not "running") and leaves the site running; `pki revoke`
    of that serial says it is another CA's; destroying the node's workspaces and
    removing it lets its agent register anew (docs/security.md, "Restoring a site")."""
    disk = tmp_path / "disk.img"
    disk.write_bytes(os.urandom(1024 * 1024 + 17))
    ok(site, "admin", "image", "import", IMAGE, str(disk))
    ok(site, "ws", "create", "--image", IMAGE, "--name", "old", "--wait")
    backup = tmp_path / "backup"
    svc = ["-m", "workspace.service.main", "--config"]
    assert (
        subprocess.run(
            [sys.executable, *svc, str(site / "service.toml"), "backup", str(backup)],
            env=cli_env(site),
            cwd=ROOT,
            capture_output=True,
        ).returncode
        == 0
    )
    d = tmp_path / "fresh"
    try:
        ok(d, "admin", "site", "up", "--driver", "fake", "--dir", str(d))
        ok(d, "admin", "site", "down", "--dir", str(d))
        assert (
            subprocess.run(
                [sys.executable, *svc, str(d / "service.toml"), "restore", str(backup)],
                env=cli_env(d),
                cwd=ROOT,
                capture_output=True,
            ).returncode
            == 0
        )
        r = run(d, "admin", "site", "up", "--dir", str(d), "--timeout", "15")
        assert r.code == 1 and "node local did not become READY" in r.err, r.err
        assert "no heartbeat since this start" in r.err and "left running" in r.err, r.err
        assert "registered with another certificate" in (d / "agent.log").read_text()
        bound = re.search(r"another certificate \(serial (0x[0-9a-f]+)\)", r.err)
        assert bound is not None, r.err
        revoke = run(d, "admin", "pki", "revoke", bound.group(1))
        assert revoke.code == 1 and "another CA's" in revoke.err, revoke.err
        # DOWN after node_grace_s, saying why
        down = until("the node DOWN", lambda: node(d)["state"] == "DOWN" and node(d), 70.0)
        assert down["reason"].startswith("its agent is refused: registered with another")
        # the way out without the old CA: the node starts over
        ok(d, "ws", "destroy", "old")
        ok(d, "admin", "node", "remove", "local")
        until("the node registered anew", lambda: node(d)["state"] == "READY")
        assert heartbeat(node(d)) > time.time() - 10
    finally:
        stop_site(d)


def test_site_up_right_after_a_kill_starts_the_daemon_still_stopping_again(
    site: Path, tmp_path: Path
) -> None:
    """README, "Restarting one daemon": `kill PID`, then `ws-admin site up`. An agent
    finishes the operation it runs before it exits (here a create, slowed by the fake
    driver's boot delay), so it still ran when `site up` looked: `site up` said the site
    was running and the agent was gone a moment later. Now `site up` waits for it and
    starts it again."""
    d = site
    conf = d / "agent.toml"
    conf.write_text(conf.read_text().replace("boot_delay_s = 0.0", "boot_delay_s = 20.0"))
    first = local.read_record(d)
    assert first is not None
    os.kill(first.agents[0].pid, signal.SIGTERM)
    assert wait_gone(first.agents[0].pid, 10.0)
    ok(d, "admin", "site", "up", "--dir", str(d))  # the agent with the boot delay
    disk = tmp_path / "disk.img"
    disk.write_bytes(os.urandom(1024 * 1024 + 17))
    ok(d, "admin", "image", "import", IMAGE, str(disk))
    ok(d, "ws", "create", "--image", IMAGE, "--name", "slow")
    until(
        "the create under way on the node",
        lambda: ok(d, "ws", "-o", "json", "show", "slow").json()["state"] == "STARTING",  # type: ignore[index]
    )
    log = d / "agent.log"
    stops = log.read_text().count("shutting down")
    busy = local.read_record(d)
    assert busy is not None
    old = busy.agents[0].pid
    os.kill(old, signal.SIGTERM)
    until("the agent stopping", lambda: log.read_text().count("shutting down") > stops)
    up = ok(d, "admin", "site", "up", "--dir", str(d))
    assert f"waiting for workspace-agent of node local (pid {old})" in up.err, up.err
    after = local.read_record(d)
    assert after is not None and after.agents[0].pid != old
    assert hostproc.process_alive(after.agents[0].pid)
    assert run(d, "admin", "site", "status", "--dir", str(d)).code == 0
    until(
        "the workspace RUNNING",
        lambda: ok(d, "ws", "-o", "json", "show", "slow").json()["state"] == "RUNNING",  # type: ignore[index]
        60.0,
    )
