#!/usr/bin/env python3
"""Create -> SSH-ready for the Debian cloud appliance, next to the floor the guest sets.

On this machine (root; QEMU/TCG): an all-in-one site (`ws-admin site up --driver
libvirt`) in its own network namespace, the cloud appliance pushed, the user's key added.

* ``create_to_ssh_s``: median over --runs of `ws create --image cloud` until `ssh` with
  the user's key and the service's host key runs `true` in the guest (the image is cached
  on the node after a warm-up create that is not counted).
* ``bare_to_ssh_s``: the floor: the same domain XML (taken from the last workspace, with
  our metadata removed so the agent leaves it alone), a fresh overlay on the same cached
  base and a copy of the same seed, started with a bare `virsh create` and polled the
  same way (same address, same host key, same ssh command). Median over --runs.
* ``ssh_overhead_ratio``: create_to_ssh_s / bare_to_ssh_s.
* ``cluster4_to_ssh_s``: `ws cluster create` of 4 members until every member answers ssh.

    .venv/bin/python benchmarks/ssh_ready.py [--runs 3]

Each guest takes about a minute under TCG; the whole script takes ~10 minutes.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks._common import ROOT, emit
from images import cloud
from workspace.site.hostenv import HostEnv

POLL_S = 0.5
READY_TIMEOUT_S = 600.0


def say(msg: str) -> None:
    print(f"ssh_ready: {msg}", file=sys.stderr, flush=True)


class Site:
    def __init__(self, site_dir: Path, home: Path) -> None:
        self.dir = site_dir
        self.env = dict(os.environ, PYTHONPATH=str(ROOT), WS_SITE_DIR=str(site_dir))
        self.key = home / "id_ed25519"
        self.netns = ""
        self.uri = ""

    def cli(self, module: str, *args: str) -> str:
        proc = subprocess.run(
            [sys.executable, "-m", module, *args],
            capture_output=True,
            text=True,
            env=self.env,
            cwd=ROOT,
            timeout=900,
            check=False,
        )
        if proc.returncode != 0:
            raise SystemExit(f"`{module} {' '.join(args)}` failed: {proc.stderr}{proc.stdout}")
        return proc.stdout

    def ws(self, *args: str) -> str:
        return self.cli("workspace.cli.ws", *args)

    def up(self, image: cloud.CloudAppliance) -> None:
        subprocess.run(
            ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(self.key)], check=True
        )
        self.cli("workspace.cli.admin", "site", "up", "--driver", "libvirt", "--dir", str(self.dir))
        record = json.loads((self.dir / "site.json").read_text())
        agent = record["agents"][0]
        self.netns = str(agent["netns"])
        self.uri = HostEnv(Path(str(agent["dir"])), self.netns).libvirt_uri
        self.ws("image", "push", "cloud", "--manifest", str(image.manifest))
        self.ws("key", "add", f"{self.key}.pub")

    def show(self, name: str) -> dict[str, object]:
        shown: dict[str, object] = json.loads(self.ws("-o", "json", "show", name))
        return shown

    def virsh(self, *args: str) -> str:
        return subprocess.run(
            ["virsh", "-c", self.uri, *args], capture_output=True, text=True, check=True
        ).stdout


def target(shown: dict[str, object]) -> tuple[str, list[str]]:
    nics = shown["nics"]
    keys = shown["host_keys"]
    assert isinstance(nics, list) and isinstance(keys, list)
    return str(nics[0]["ip"]), [str(k) for k in keys]


def wait_ssh(site: Site, address: str, host_keys: list[str], tmp: Path) -> None:
    """Until `ssh debian@address true` succeeds with exactly these host keys."""
    known = tmp / f"known-{address}"
    known.write_text("".join(f"{address} {k}\n" for k in host_keys))
    cmd = ["ip", "netns", "exec", site.netns, "ssh", "-i", str(site.key), "-o", "BatchMode=yes"]
    cmd += ["-o", "ConnectTimeout=2", "-o", "StrictHostKeyChecking=yes"]
    cmd += ["-o", f"UserKnownHostsFile={known}", "-o", "GlobalKnownHostsFile=/dev/null"]
    cmd += [f"debian@{address}", "true"]
    deadline = time.monotonic() + READY_TIMEOUT_S
    while time.monotonic() < deadline:
        if subprocess.run(cmd, capture_output=True, timeout=60, check=False).returncode == 0:
            return
        time.sleep(POLL_S)
    raise SystemExit(f"no ssh into {address} within {READY_TIMEOUT_S:.0f} s")


def create_to_ssh(site: Site, name: str, tmp: Path) -> float:
    t0 = time.monotonic()
    site.ws("create", "--image", "cloud", "--name", name, "--memory-mib", "1024")
    address, keys = target(site.show(name))
    wait_ssh(site, address, keys, tmp)
    return time.monotonic() - t0


def bare_domain(site: Site, name: str, tmp: Path) -> tuple[str, str, list[str]]:
    """The XML of workspace ``name``'s domain made bare (its own overlay and seed copy,
    no metadata), its address and host keys; the workspace is destroyed after."""
    shown = site.show(name)
    address, keys = target(shown)
    xml = site.virsh("dumpxml", "--inactive", f"ws-{shown['id']}")
    files = tmp / "bare"
    files.mkdir(mode=0o711, exist_ok=True)
    for source in re.findall(r"<source file='([^']+)'", xml):
        path = Path(source)
        if path.name == "seed.iso":
            copy = files / "seed.iso"
            shutil.copyfile(path, copy)
        elif path.suffix == ".qcow2" and path.parent.name == str(shown["id"]):
            info = json.loads(
                subprocess.run(
                    ["qemu-img", "info", "-U", "--output", "json", str(path)],
                    capture_output=True,
                    text=True,
                    check=True,
                ).stdout
            )
            copy = files / path.name
            backing = ["-b", info["backing-filename"], "-F", info["backing-filename-format"]]
            size = str(info["virtual-size"])
            subprocess.run(
                ["qemu-img", "create", "-q", "-f", "qcow2", *backing, str(copy), size], check=True
            )
        else:
            continue  # shared read-only bases stay where they are
        os.chmod(copy, 0o600)
        xml = xml.replace(f"'{source}'", f"'{copy}'")
    xml = re.sub(r"<metadata>.*?</metadata>", "", xml, flags=re.S)
    xml = re.sub(r"<uuid>.*?</uuid>", "", xml)
    xml = re.sub(r"<name>.*?</name>", "<name>ws-bench-bare</name>", xml)
    xml = re.sub(r"<log file='[^']+'", f"<log file='{files / 'console.log'}'", xml)
    site.ws("destroy", name, "--wait")
    return xml, address, keys


def bare_to_ssh(site: Site, xml: str, address: str, keys: list[str], tmp: Path) -> float:
    path = tmp / "bare.xml"
    path.write_text(xml)
    overlay = next((tmp / "bare").glob("*.qcow2"))
    fresh = tmp / "bare" / "pristine"
    if not fresh.exists():
        shutil.copyfile(overlay, fresh)  # an overlay nothing has booted from yet
    shutil.copyfile(fresh, overlay)
    t0 = time.monotonic()
    site.virsh("create", str(path))
    try:
        wait_ssh(site, address, keys, tmp)
        return time.monotonic() - t0
    finally:
        site.virsh("destroy", "ws-bench-bare")


def cluster_to_ssh(site: Site, members: int, tmp: Path) -> float:
    t0 = time.monotonic()
    site.ws("cluster", "create", "c4", "--member", f"w=cloud,count={members},memory-mib=768")
    for i in range(members):
        address, keys = target(site.show(f"c4-w-{i}"))
        wait_ssh(site, address, keys, tmp)
    return time.monotonic() - t0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--cluster-members", type=int, default=4)
    args = parser.parse_args()
    if os.geteuid() != 0:
        raise SystemExit("ssh_ready: run as root (network namespaces, libvirtd)")
    say("building (or reusing) the cloud appliance")
    image = cloud.build()
    tmp = Path(tempfile.mkdtemp(prefix="ws-bench-ssh-", dir="/var/tmp"))
    tmp.chmod(0o711)
    site = Site(tmp / "site", tmp)
    (tmp / "site").mkdir(mode=0o755)
    try:
        site.up(image)
        say("warm-up create (fills the node's cache)")
        create_to_ssh(site, "warm", tmp)
        site.ws("destroy", "warm", "--wait")
        created = []
        for i in range(args.runs):
            created.append(create_to_ssh(site, f"run{i}", tmp))
            say(f"create -> ssh run {i}: {created[-1]:.1f} s")
            if i < args.runs - 1:
                site.ws("destroy", f"run{i}", "--wait")
        xml, address, keys = bare_domain(site, f"run{args.runs - 1}", tmp)
        bare = []
        for i in range(args.runs):
            bare.append(bare_to_ssh(site, xml, address, keys, tmp))
            say(f"bare virsh create -> ssh run {i}: {bare[-1]:.1f} s")
        cluster = cluster_to_ssh(site, args.cluster_members, tmp)
        c, b = statistics.median(created), statistics.median(bare)
        emit(
            {
                "create_to_ssh_s": c,
                "bare_to_ssh_s": b,
                "ssh_overhead_ratio": c / b,
                f"cluster{args.cluster_members}_to_ssh_s": cluster,
            }
        )
    finally:
        subprocess.run(
            [sys.executable, "-m", "workspace.cli.admin", "site", "down", "--dir", str(site.dir)],
            env=site.env,
            cwd=ROOT,
            capture_output=True,
            check=False,
        )
        shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
