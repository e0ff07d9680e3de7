"""End to end on real VMs: `ws-admin site up --driver libvirt`, then what a user does.

Real service, agent, private libvirtd, QEMU (TCG), bridge and dnsmasq, all inside the
site's own network namespace; the test appliance takes its address by DHCP and
prints it on its serial console.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from images.appliance import Appliance
from tests.functional.harness import WS, Stubs, wait_for
from workspace import rpc
from workspace.client import resolve_tls
from workspace.v1 import admin_pb2, workspaces_pb2

pytestmark = pytest.mark.host
ROOT = Path(__file__).resolve().parents[2]
BOOT_S = 90.0  # TCG boots take ~7 s here; generous for a loaded CI machine


def run(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    return subprocess.run(
        [sys.executable, "-m", *args],
        capture_output=True,
        text=True,
        env=env,
        cwd=ROOT,
        check=check,
        timeout=300,
    )


class E2ESite:
    def __init__(self, site_dir: Path) -> None:
        self.dir = site_dir
        self.record: dict[str, object] = {}
        self.stubs: Stubs | None = None

    def up(self) -> None:
        out = run(
            "workspace.cli.admin",
            "site",
            "up",
            "--driver",
            "libvirt",
            "--dir",
            str(self.dir),
            check=False,
        )
        assert out.returncode == 0, out.stderr + out.stdout
        self.record = json.loads((self.dir / "site.json").read_text())
        if self.stubs is None:
            address = str(self.record["address"])
            self.stubs = Stubs(rpc.channel(address, resolve_tls(address)))

    def ws(self, *args: str) -> str:
        out = run("workspace.cli.ws", "--service", str(self.record["address"]), *args, check=False)
        assert out.returncode == 0, f"ws {' '.join(args)}: {out.stderr}"
        return out.stdout

    def virsh(self, *args: str) -> str:
        from workspace.site.hostenv import HostEnv

        uri = HostEnv(self.dir, str(self.record["netns"])).libvirt_uri
        return subprocess.run(
            ["virsh", "-c", uri, *args], capture_output=True, text=True, check=True, timeout=60
        ).stdout

    def console(self, wid: str) -> str:
        assert self.stubs is not None
        return self.stubs.ws.GetConsole(workspaces_pb2.GetConsoleRequest(id=wid)).data.decode(
            errors="replace"
        )

    def ready_lines(self, wid: str) -> list[str]:
        return re.findall(r"WORKSPACE-READY ip=\S+ hostname=\S+", self.console(wid))

    def hosts_file(self) -> str:
        files = list((self.dir / "agent" / "dhcp").glob("*/hosts"))
        return "".join(f.read_text() for f in files)


@pytest.fixture(scope="module")
def site(appliance: Appliance) -> Iterator[E2ESite]:
    site_dir = Path(tempfile.mkdtemp(prefix="ws-e2e-", dir="/var/tmp"))
    site_dir.chmod(0o755)
    s = E2ESite(site_dir)
    try:
        s.up()
        s.ws("--output", "json", "image", "list")  # the CLI reaches the site
        out = run(
            "workspace.cli.admin",
            "--service",
            str(s.record["address"]),
            "image",
            "import",
            "appliance",
            "--appliance",
            str(appliance.manifest.parent),
            check=False,
        )
        assert out.returncode == 0, out.stderr
        yield s
    finally:
        run("workspace.cli.admin", "site", "down", "--dir", str(site_dir), check=False)
        if s.stubs is not None:
            s.stubs.channel.close()
        if not os.environ.get("WS_KEEP_SITE"):
            shutil.rmtree(site_dir, ignore_errors=True)


def create(site: E2ESite, name: str) -> dict[str, object]:
    out = site.ws(
        "--output",
        "json",
        "create",
        "--image",
        "appliance",
        "--name",
        name,
        "--memory-mib",
        "256",
        "--wait",
        "--timeout",
        str(int(BOOT_S)),
    )
    ws = json.loads(out)
    assert ws["state"] == "RUNNING"
    return ws


def test_console_ip_equals_the_allocated_ip(site: E2ESite) -> None:
    ws = create(site, "vm1")
    wid = str(ws["id"])
    shown = json.loads(site.ws("--output", "json", "show", "vm1"))
    ip = shown["nics"][0]["ip"]
    line = wait_for(lambda: site.ready_lines(wid), BOOT_S, "the READY line")[0]
    assert line == f"WORKSPACE-READY ip={ip} hostname=vm1"
    assert shown["nics"][0]["mac"].lower() in site.hosts_file().lower()


def test_the_site_keeps_its_files_to_its_owner(site: E2ESite) -> None:
    """With a VM running from it (the test above): the directories QEMU crosses are
    traverse-only, what names users, workspaces and addresses is the owner's."""
    assert stat.S_IMODE(site.dir.stat().st_mode) == 0o711
    assert stat.S_IMODE((site.dir / "agent").stat().st_mode) == 0o711
    for name in ("service.toml", "service.log", "agent.toml", "agent.log", "site.json"):
        assert stat.S_IMODE((site.dir / name).stat().st_mode) == 0o600, name
    for name in ("hostenv.json", "hostenv.lock", "setup.json", "site.lock"):
        assert stat.S_IMODE((site.dir / name).stat().st_mode) == 0o600, name


def test_stop_start_pause_resume_reboot(site: E2ESite) -> None:
    s = site.stubs
    assert s is not None
    wid = s.get("vm1").id
    wait_for(lambda: len(site.ready_lines(wid)) == 1, BOOT_S, "first boot")
    # stop: the guest's ACPI handler powers it off by itself (no forced power-off)
    s.ws.StopWorkspace(workspaces_pb2.StopWorkspaceRequest(id=wid, timeout_s=60))
    s.wait_state(wid, WS.WORKSPACE_STATE_STOPPED, BOOT_S)
    wait_for(lambda: "WORKSPACE-POWEROFF" in site.console(wid), 10, "the ACPI power-off line")
    assert "forcing" not in (site.dir / "agent.log").read_text()
    assert "shut off" in site.virsh("domstate", f"ws-{wid}")

    s.ws.StartWorkspace(s.ref(wid))
    s.wait_state(wid, WS.WORKSPACE_STATE_RUNNING, BOOT_S)
    wait_for(lambda: len(site.ready_lines(wid)) == 2, BOOT_S, "READY after start")

    s.ws.PauseWorkspace(s.ref(wid))
    s.wait_state(wid, WS.WORKSPACE_STATE_PAUSED, 30)
    assert "paused" in site.virsh("domstate", f"ws-{wid}")
    s.ws.ResumeWorkspace(s.ref(wid))
    s.wait_state(wid, WS.WORKSPACE_STATE_RUNNING, 30)
    assert "running" in site.virsh("domstate", f"ws-{wid}")

    # RUNNING before and after: --wait returns once the node reports the reboot done.
    out = site.ws("--output", "json", "reboot", "vm1", "--wait", "--timeout", str(int(BOOT_S)))
    done = json.loads(out)
    assert (done["state"], done["reboot_count"], done["applied_reboot_count"]) == ("RUNNING", 1, 1)
    wait_for(lambda: len(site.ready_lines(wid)) == 3, BOOT_S, "a READY line after reboot")
    assert s.get(wid).state == WS.WORKSPACE_STATE_RUNNING
    # A clean reboot: the guest was asked (its ACPI handler ran, as for the stop) and
    # rebooted by itself; it was not reset.
    assert site.console(wid).count("WORKSPACE-POWEROFF") == 2
    assert "resetting" not in (site.dir / "agent.log").read_text()


def test_agent_kill_9_finds_the_vm_again(site: E2ESite) -> None:
    s = site.stubs
    assert s is not None
    wid = s.get("vm1").id
    os.kill(int(site.record["agent_pid"]), signal.SIGKILL)  # type: ignore[call-overload]
    time.sleep(1)
    site.up()  # starts what is not running: the agent
    assert site.record["agent_pid"] != 0
    wait_for(
        lambda: any(
            n.state == admin_pb2.NODE_STATE_READY
            for n in s.admin.ListNodes(admin_pb2.ListNodesRequest()).nodes
        ),
        60,
    )
    time.sleep(3)  # let it reconcile a few times
    names = site.virsh("list", "--all", "--name").split()
    assert names.count(f"ws-{wid}") == 1
    assert len([n for n in names if n.startswith("ws-")]) == 1
    assert s.get(wid).state == WS.WORKSPACE_STATE_RUNNING
    assert len(site.ready_lines(wid)) == 3  # not rebooted, not recreated


def test_domain_destroyed_behind_our_back_is_repaired(site: E2ESite) -> None:
    s = site.stubs
    assert s is not None
    wid = s.get("vm1").id
    boots = len(site.ready_lines(wid))
    site.virsh("destroy", f"ws-{wid}")
    w = wait_for(
        lambda: "found shut off" in (x := s.get(wid)).reason and x, 60, "the repair to be reported"
    )
    assert "not by us" in w.reason
    wait_for(lambda: len(site.ready_lines(wid)) == boots + 1, BOOT_S, "the VM booted again")
    s.wait_state(wid, WS.WORKSPACE_STATE_RUNNING, 30)


def test_destroy_leaves_nothing_and_frees_the_ip(site: E2ESite) -> None:
    s = site.stubs
    assert s is not None
    w = s.get("vm1")
    wid, ip, mac = w.id, w.nics[0].ip, w.nics[0].mac
    site.ws("destroy", "vm1", "--wait")
    assert s.get(wid).state == WS.WORKSPACE_STATE_TERMINATED
    assert f"ws-{wid}" not in site.virsh("list", "--all", "--name").split()
    assert not (site.dir / "agent" / "workspaces" / wid).exists()
    assert mac.lower() not in site.hosts_file().lower()
    nets = s.admin.ListNetworks(admin_pb2.ListNetworksRequest()).networks
    assert sum(n.allocated for n in nets) == 0
    # the freed address is handed out again, and the new VM really gets it by DHCP
    ws2 = create(site, "vm2")
    assert ws2["nics"][0]["ip"] == ip  # type: ignore[index]
    wid2 = str(ws2["id"])
    line = wait_for(lambda: site.ready_lines(wid2), BOOT_S, "READY of vm2")[0]
    assert line == f"WORKSPACE-READY ip={ip} hostname=vm2"
    site.ws("destroy", "vm2", "--wait")


def test_site_down_removes_namespace_and_vms(site: E2ESite) -> None:
    s = site.stubs
    assert s is not None
    s.create(name="leftover", image="appliance", memory_mib=256)
    pids = [int(site.record["service_pid"]), int(site.record["agent_pid"])]  # type: ignore[call-overload]
    netns = str(site.record["netns"])
    out = run("workspace.cli.admin", "site", "down", "--dir", str(site.dir), check=False)
    assert out.returncode == 0, out.stderr
    for pid in pids:
        assert not Path(f"/proc/{pid}").exists() or "Z" in Path(f"/proc/{pid}/stat").read_text()
    listed = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    assert netns not in listed
