"""Backfill on real VMs: a 1-node libvirt local site, `ws-admin backfill set appliance
--max 2` → the leader's pass boots two busybox appliance VMs, RUNNING, seen by the node's
libvirtd; `ws-admin backfill clear appliance` → they are destroyed and their domains gone.

The site runs the service's default `backfill_interval_s` (10 s): this also checks the
loop runs on a real site. Boots hold /tmp/ws-realvm.lock (one booting helper at a time).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from images.appliance import Appliance
from tests.functional.harness import WS, Stubs, wait_for
from tests.host.realsite import realvm_lock
from tests.host.test_e2e_site import run
from workspace import rpc
from workspace.client import resolve_tls
from workspace.domain.tenancy import BACKFILL_OWNER
from workspace.site.hostenv import HostEnv
from workspace.v1 import admin_pb2, common_pb2, workspaces_pb2

pytestmark = pytest.mark.host
BOOT_S = 240.0


class BackfillSite:
    def __init__(self, site_dir: Path) -> None:
        self.dir = site_dir
        self.record: dict[str, object] = {}
        self.stubs: Stubs | None = None

    @property
    def address(self) -> str:
        return str(self.record["address"])

    def up(self) -> None:
        out = run(
            "workspace.cli.admin", "site", "up", "--driver", "libvirt", "--dir", str(self.dir),
            check=False,
        )  # fmt: skip
        assert out.returncode == 0, out.stderr + out.stdout
        self.record = json.loads((self.dir / "site.json").read_text())
        self.stubs = Stubs(rpc.channel(self.address, resolve_tls(self.address)))

    def admin(self, *argv: str) -> subprocess.CompletedProcess[str]:
        return run("workspace.cli.admin", "--service", self.address, *argv, check=False)

    def domains(self) -> list[str]:
        uri = HostEnv(self.dir, str(self.record["netns"])).libvirt_uri
        out = subprocess.run(
            ["virsh", "-c", uri, "list", "--name"],
            capture_output=True,
            text=True,
            check=True,
            timeout=60,
        ).stdout
        return [n for n in out.split() if n]


@pytest.fixture(scope="module")
def site(appliance: Appliance) -> Iterator[BackfillSite]:
    site_dir = Path(tempfile.mkdtemp(prefix="wsb-", dir="/var/tmp"))
    site_dir.chmod(0o755)  # dnsmasq (as nobody) reads hosts files below it
    s = BackfillSite(site_dir)
    try:
        with realvm_lock():
            s.up()
            out = s.admin(
                "image", "import", "appliance", "--appliance", str(appliance.manifest.parent)
            )
            assert out.returncode == 0, out.stderr
            yield s
    finally:
        run("workspace.cli.admin", "site", "down", "--dir", str(site_dir), check=False)
        if s.stubs is not None:
            s.stubs.channel.close()
        if not os.environ.get("WS_KEEP_SITE"):
            shutil.rmtree(site_dir, ignore_errors=True)


def backfill_workspaces(stubs: Stubs) -> list[common_pb2.Workspace]:
    req = workspaces_pb2.ListWorkspacesRequest(all_users=True)
    return [w for w in stubs.ws.ListWorkspaces(req).workspaces if w.owner == BACKFILL_OWNER]


def test_backfill_boots_two_appliance_vms_and_clear_removes_them(site: BackfillSite) -> None:
    stubs = site.stubs
    assert stubs is not None
    assert site.domains() == []
    out = site.admin("backfill", "set", "appliance", "--max", "2", "--memory-mib", "128")
    assert out.returncode == 0, out.stderr
    entry = wait_for(
        lambda: next(
            (
                e
                for e in stubs.admin.ListBackfill(admin_pb2.ListBackfillRequest()).entries
                if e.running == 2
            ),
            None,
        ),
        BOOT_S,
        "two backfill VMs RUNNING",
    )
    assert (entry.live, entry.running) == (2, 2)
    made = backfill_workspaces(stubs)
    assert sorted(w.name for w in made) == ["backfill-appliance-1", "backfill-appliance-2"]
    assert all(w.preemptible and w.state == WS.WORKSPACE_STATE_RUNNING for w in made)
    assert len(site.domains()) == 2  # the node's libvirtd runs exactly these two
    # No third: the pass keeps the count at max.
    out = site.admin("-o", "json", "backfill", "list")
    assert out.returncode == 0 and [e["live"] for e in json.loads(out.stdout)] == [2]

    out = site.admin("-o", "json", "backfill", "clear", "appliance")
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["live"] == 2
    for w in made:
        stubs.wait_state(w.id, WS.WORKSPACE_STATE_TERMINATED, BOOT_S)
    wait_for(lambda: site.domains() == [], BOOT_S, "the backfill domains gone")
