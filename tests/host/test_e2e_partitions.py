"""End to end on real VMs: a multi-partition image pushed with `ws image push --manifest`
(cow root = the appliance's disk, a read-only data disk, a blank ext4 disk, direct
boot), two workspaces from it sharing the read-only base, each one's console telling
what the guest sees, and a write to one VM's cow partition invisible to the other.

The appliance prints (images/appliance.py)::

    WORKSPACE-DISKS vda:<bytes>:<ro> ...
    WORKSPACE-HEADS vda=<first line of the disk or -> ...
    WORKSPACE-EXT4 <disks with an ext4 superblock>
    WORKSPACE-MARKED vda=WORKSPACE-MARK:<hostname>   (it wrote that to a zero vda)
    WORKSPACE-READY ip=... hostname=...
"""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from pathlib import Path

import pytest

from images.appliance import Appliance
from tests.functional.harness import WS, wait_for
from tests.host.test_e2e_site import BOOT_S, E2ESite, run

pytestmark = pytest.mark.host
MiB = 1024 * 1024
IMAGE = "parts:1"
RO_TEXT = "RODATA:parts-1"


@pytest.fixture(scope="module")
def site(appliance: Appliance) -> Iterator[E2ESite]:
    site_dir = Path(tempfile.mkdtemp(prefix="ws-e2e-parts-", dir="/var/tmp"))
    site_dir.chmod(0o755)
    s = E2ESite(site_dir)
    try:
        s.up()
        yield s
    finally:
        run("workspace.cli.admin", "site", "down", "--dir", str(site_dir), check=False)
        if s.stubs is not None:
            s.stubs.channel.close()
        if not os.environ.get("WS_KEEP_SITE"):
            shutil.rmtree(site_dir, ignore_errors=True)


def push(
    site: E2ESite, appliance: Appliance, tmp: Path, name: str
) -> tuple[dict[str, object], str]:
    data = tmp / "data.raw"
    with data.open("wb") as f:
        f.write(f"{RO_TEXT}\n".encode())
        f.truncate(MiB)
    manifest = tmp / "parts.toml"
    manifest.write_text(
        f"""
kernel = "{appliance.kernel}"
initrd = "{appliance.initrd}"
cmdline = "{appliance.cmdline}"

[[partitions]]
name = "root"
file = "{appliance.disk}"
mode = "cow"
format = "{appliance.disk_format}"

[[partitions]]
name = "data"
file = "data.raw"
mode = "readonly"

[[partitions]]
name = "scratch"
mode = "blank"
size = "32MiB"
ext4 = true
"""
    )
    out = run(
        "workspace.cli.ws",
        "--service",
        str(site.record["address"]),
        "-o",
        "json",
        "image",
        "push",
        name,
        "--manifest",
        str(manifest),
        check=False,
    )
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout), out.stderr


def line(site: E2ESite, wid: str, prefix: str, boot: int = 1) -> str:
    """The rest of the ``prefix`` line of boot number ``boot`` (1 = first)."""
    found = re.findall(rf"{prefix}([^\r\n]*)", site.console(wid))
    assert len(found) >= boot, f"{prefix} line of boot {boot} not found in:\n{site.console(wid)}"
    return str(found[boot - 1]).strip()


def create(site: E2ESite, name: str, *extra: str) -> str:
    out = site.ws(
        "-o", "json", "create", "--image", IMAGE, "--name", name, "--memory-mib", "256",
        *extra, "--wait", "--timeout", str(int(BOOT_S)),
    )  # fmt: skip
    ws = json.loads(out)
    assert ws["state"] == "RUNNING"
    wid = str(ws["id"])
    try:
        wait_for(lambda: site.ready_lines(wid), BOOT_S, f"READY of {name}")
    except AssertionError as exc:
        raise AssertionError(f"{exc}\nconsole of {name}:\n{site.console(wid)}") from None
    return wid


def disk_sources(site: E2ESite, wid: str) -> dict[str, tuple[str, str, bool, bool]]:
    """target -> (source file, driver type, readonly, shareable) from the live domain."""
    root = ET.fromstring(site.virsh("dumpxml", f"ws-{wid}"))
    out = {}
    for d in root.iter("disk"):
        target = d.find("target")
        source = d.find("source")
        driver = d.find("driver")
        assert target is not None and source is not None and driver is not None
        out[target.get("dev", "")] = (
            source.get("file", ""),
            driver.get("type", ""),
            d.find("readonly") is not None,
            d.find("shareable") is not None,
        )
    return out


def test_push_is_content_addressed(site: E2ESite, appliance: Appliance, tmp_path: Path) -> None:
    img, err = push(site, appliance, tmp_path, IMAGE)
    assert "4 blob(s) sent" in err, err
    modes = [(p["name"], p["mode"]) for p in img["partitions"]]  # type: ignore[attr-defined]
    assert modes == [("root", "COW"), ("data", "READONLY"), ("scratch", "BLANK")]
    _, err = push(site, appliance, tmp_path, "parts:1-again")
    assert "0 blob(s) sent (0 B), 4 already there" in err, err


def test_two_workspaces_share_the_readonly_base_and_not_their_cow(site: E2ESite) -> None:
    # A: the image's three partitions, root grown from 16 MiB to 24 MiB
    a = create(site, "pa", "--grow", "root:24MiB")
    assert line(site, a, "WORKSPACE-DISKS") == (f"vda:{24 * MiB}:0 vdb:{MiB}:1 vdc:{32 * MiB}:0")
    assert line(site, a, "WORKSPACE-HEADS") == f"vda=- vdb={RO_TEXT} vdc=-"
    assert line(site, a, "WORKSPACE-EXT4") == "vdc"
    assert line(site, a, "WORKSPACE-MARKED") == "vda=WORKSPACE-MARK:pa"

    # B: the same image as it is, plus an extra blank ext4 disk for this workspace only
    b = create(site, "pb", "--blank", "extra:8MiB:ext4")
    assert line(site, b, "WORKSPACE-DISKS") == (
        f"vda:{16 * MiB}:0 vdb:{MiB}:1 vdc:{32 * MiB}:0 vdd:{8 * MiB}:0"
    )
    # A's mark is in A's overlay only: B's root starts zero, like the base
    assert line(site, b, "WORKSPACE-HEADS") == f"vda=- vdb={RO_TEXT} vdc=- vdd=-"
    assert line(site, b, "WORKSPACE-EXT4") == "vdc vdd"
    assert line(site, b, "WORKSPACE-MARKED") == "vda=WORKSPACE-MARK:pb"

    # one read-only base file attached read-only and shareable to both; own overlays
    da, db = disk_sources(site, a), disk_sources(site, b)
    assert da["vdb"] == db["vdb"]
    assert da["vdb"][1:] == ("raw", True, True)
    assert da["vda"][0] != db["vda"][0]
    assert da["vda"][1:] == db["vda"][1:] == ("qcow2", False, False)
    assert da["vdc"][1] == "raw" and da["vdc"][0] != db["vdc"][0]

    # A's write persisted in A's overlay: after a reboot A finds its own mark and
    # writes nothing; B still does not see it
    site.stubs.ws.RebootWorkspace(site.stubs.ref(a))  # type: ignore[union-attr]
    wait_for(lambda: len(site.ready_lines(a)) == 2, BOOT_S, "READY after the reboot")
    assert line(site, a, "WORKSPACE-HEADS", boot=2).startswith("vda=WORKSPACE-MARK:pa ")
    assert site.console(a).count("WORKSPACE-MARKED") == 1
    assert line(site, b, "WORKSPACE-HEADS") == f"vda=- vdb={RO_TEXT} vdc=- vdd=-"


def test_image_in_use_cannot_be_deleted(site: E2ESite) -> None:
    out = run(
        "workspace.cli.ws", "--service", str(site.record["address"]),
        "image", "delete", IMAGE, check=False,
    )  # fmt: skip
    assert out.returncode == 1
    assert "in use by 2 live workspace(s)" in out.stderr and "local/pa" in out.stderr
    s = site.stubs
    assert s is not None
    for name in ("pa", "pb"):
        site.ws("destroy", name, "--wait")
        assert s.get(name).state == WS.WORKSPACE_STATE_TERMINATED
    site.ws("image", "delete", IMAGE)
    site.ws("image", "delete", "parts:1-again")
    images = json.loads(site.ws("-o", "json", "image", "list"))
    assert images == []
    usage = json.loads(site.ws("-o", "json", "image", "usage"))
    assert usage["used_bytes"] == 0
