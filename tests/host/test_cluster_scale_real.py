"""Elastic clusters on real VMs: the running members learn the new roster.

An all-in-one libvirt site (`ws-admin site up --driver libvirt`, its own network
namespace) with the Debian cloud appliance; a 2-member cluster. Through the `ws` CLI:

* `ws cluster scale wse --role worker --count 3 --wait`: the third member boots, and
  both old members' /etc/hosts and /etc/workspace/cluster.json list it (rewritten by the
  service through their guest agents); the new member booted with all three;
* `ws cluster scale wse --role worker --count 2 --wait`: it is gone, and the rosters of
  the two left say so.

Boots hold ``/tmp/ws-realvm.lock`` (the whole module: one booted site, two waves).
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from images import cloud
from tests.host.realsite import CliSite, local_site, realvm_lock

# Cloud-init boots under TCG on a shared machine can outlast the suite's default 300 s
# per test (pytest-timeout charges the module's fixture to the first test).
pytestmark = [pytest.mark.host, pytest.mark.timeout(1200)]

OLD = ("wse-worker-0", "wse-worker-1")
NEW = "wse-worker-2"
BOOT_S = 600.0  # cloud-init boots under TCG on two shared cores
ROSTER_S = 300.0


class CloudSite(CliSite):
    def __init__(self, site_dir: Path, home: Path) -> None:
        super().__init__(site_dir, home, timeout_s=900.0)

    def cat(self, name: str, path: str) -> str:
        out = self.cli("workspace.cli.ws", "exec", name, "--", "cat", path, timeout=120)
        return out.stdout if out.returncode == 0 else ""

    def booted(self, name: str, timeout_s: float = BOOT_S) -> str:
        """Until ``cloud-init status --wait`` answers through the guest agent (which starts
        a while after the domain runs); "" when it did, else the last error."""
        deadline = time.monotonic() + timeout_s
        last = ""
        while time.monotonic() < deadline:
            out = self.cli(
                "workspace.cli.ws", "exec", name, "--timeout", "300", "--",
                "cloud-init", "status", "--wait", timeout=400,
            )  # fmt: skip
            if out.returncode in (0, 2):  # 2: done with recoverable errors
                return ""
            last = out.stderr + out.stdout
            time.sleep(5.0)
        return last or "timed out"


def roster(site: CloudSite, name: str) -> set[str]:
    text = site.cat(name, "/etc/workspace/cluster.json")
    try:
        return {m["name"] for m in json.loads(text)["members"]}
    except (ValueError, KeyError):
        return set()


def hosts(site: CloudSite, name: str) -> set[str]:
    names = set()
    for line in site.cat(name, "/etc/hosts").splitlines():
        parts = line.split()
        if len(parts) >= 2 and parts[1].startswith("wse-"):
            names.add(parts[1])
    return names


def wait(pred, timeout_s: float, what: str) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout_s
    last = None
    while time.monotonic() < deadline:
        last = pred()
        if last:
            return
        time.sleep(3.0)
    raise AssertionError(f"timed out after {timeout_s:.0f} s waiting for {what} (last {last!r})")


@pytest.fixture(scope="module")
def site() -> Iterator[CloudSite]:
    image = cloud.build()
    with realvm_lock(), local_site("wse") as (site_dir, home):
        s = CloudSite(site_dir, home)
        s.admin("site", "up", "--driver", "libvirt", "--dir", str(site_dir))
        s.ok("image", "push", "cloud", "--manifest", str(image.manifest))
        s.ok(
            "cluster", "create", "wse", "--member", "worker=cloud,count=2,memory-mib=640",
            "--wait", "--timeout", str(int(BOOT_S)), timeout=BOOT_S + 60,
        )  # fmt: skip
        for name in OLD:
            assert not (why := s.booted(name)), f"{name}: cloud-init did not finish: {why}"
        yield s


def test_grow_then_shrink_rewrites_the_running_members_rosters(site: CloudSite) -> None:
    assert roster(site, OLD[0]) == set(OLD)
    out = site.ok(
        "cluster", "scale", "wse", "--role", "worker", "--count", "3",
        "--wait", "--timeout", str(int(BOOT_S)), timeout=BOOT_S + 60,
    )  # fmt: skip
    assert f"added {NEW}" in out
    everyone = {*OLD, NEW}
    assert not (why := site.booted(NEW)), why
    assert roster(site, NEW) == everyone and hosts(site, NEW) == everyone  # from its seed
    for name in OLD:
        wait(lambda n=name: roster(site, n) == everyone, ROSTER_S, f"{name}'s cluster.json")
        assert hosts(site, name) == everyone
        me = json.loads(site.cat(name, "/etc/workspace/cluster.json"))
        assert me["name"] == name

    out = site.ok("cluster", "scale", "wse", "--role", "worker", "--count", "2", "--wait")
    assert f"removing {NEW}" in out
    shown = json.loads(site.ok("-o", "json", "cluster", "show", "wse"))
    assert sorted(m["name"] for m in shown["members"]) == list(OLD)
    for name in OLD:
        wait(lambda n=name: roster(site, n) == set(OLD), ROSTER_S, f"{name}'s roster after")
        assert hosts(site, name) == set(OLD)
