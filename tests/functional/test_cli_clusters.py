"""ws cluster, ws create --require / --wait-for-capacity, ws-admin node drain|enable,
ws-admin queue and ws-admin schedule end to end: a local site (real service + agent on
the fake driver) started with `ws-admin site up`, driven only through the command lines."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.functional.test_cli import ROOT, Result, cli_env, ok, run, wait_gone
from workspace.site import local

IMAGE = "cc-img"
NODE = "local"


@pytest.fixture(scope="module")
def site_dir(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    d = tmp_path_factory.mktemp("clu") / "site"
    ok(d, "admin", "site", "up", "--driver", "fake", "--dir", str(d))
    disk = d.parent / "disk.img"
    disk.write_bytes(os.urandom(1024 * 1024 + 512))
    try:
        ok(d, "admin", "image", "import", IMAGE, str(disk))
        yield d
    finally:
        record = local.read_record(d)
        run(d, "admin", "site", "down", "--dir", str(d))
        if record is not None:  # nothing may outlive the tests
            for pid in (record.service_pid, record.agent_pid):
                if not wait_gone(pid, 1.0):
                    os.kill(pid, signal.SIGKILL)


def refused(site_dir: Path, module: str, *args: str, match: str = "") -> str:
    """Expect exit 1 and a single "<prog>: error: ..." line; return it."""
    r = run(site_dir, module, *args)
    assert r.code == 1, f"{module} {' '.join(args)} -> {r.code}\n{r.out}\n{r.err}"
    lines = r.err.strip().splitlines()
    assert len(lines) == 1 and ": error: " in lines[0], r.err
    assert match.lower() in lines[0].lower(), r.err
    return lines[0]


def js(site_dir: Path, module: str, *args: str) -> Any:
    return ok(site_dir, module, "-o", "json", *args).json()


def eventually(check: Callable[[], bool], what: str, timeout_s: float = 30.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not check():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.2)


SPEC = f"""\
# two roles from the same image; the workers smaller
name = "duo"
affinity = "soft-anti"
on_failure = "keep"

[[members]]
role = "head"
image = "{IMAGE}"
cpus = 1
memory_mib = 128
networks = ["default"]

[[members]]
role = "worker"
image = "{IMAGE}"
count = 2
memory_mib = 64
"""


def test_cluster_lifecycle_from_a_spec_file(site_dir: Path, tmp_path: Path) -> None:
    spec = tmp_path / "duo.toml"
    spec.write_text(SPEC)
    r = ok(site_dir, "ws", "cluster", "create", "--spec", str(spec), "--wait")
    assert "cluster duo" in r.err and "duo-worker-1" in r.err  # progress on stderr
    assert r.err.strip().splitlines()[-1].endswith(": RUNNING")
    assert r.out.splitlines()[2].split() == ["state", "RUNNING"]

    c = js(site_dir, "ws", "cluster", "show", "duo")
    assert (c["name"], c["state"], c["affinity"], c["on_failure"]) == (
        "duo",
        "RUNNING",
        "SOFT_ANTI",
        "KEEP",
    )
    members = {m["name"]: m for m in c["members"]}
    assert sorted(members) == ["duo-head-0", "duo-worker-0", "duo-worker-1"]
    assert {m["role"] for m in members.values()} == {"head", "worker"}
    assert members["duo-head-0"]["memory_mib"] == 128
    assert members["duo-worker-1"]["memory_mib"] == 64
    ips = {m["nics"][0]["ip"] for m in members.values()}
    assert len(ips) == 3 and all(ip.startswith("10.213.0.") for ip in ips)

    text = ok(site_dir, "ws", "cluster", "show", "duo").out
    rows = {line.split()[0]: line.split() for line in text.splitlines() if line.startswith("duo-")}
    assert sorted(rows) == sorted(members)
    for name, row in rows.items():
        assert row[1:4] == [members[name]["role"], "RUNNING", NODE]
        assert row[4] == members[name]["nics"][0]["ip"]
    listed = ok(site_dir, "ws", "cluster", "list").out.splitlines()
    assert any(line.split()[1:4] == ["duo", "RUNNING", "3/3"] for line in listed[1:])

    r = ok(site_dir, "ws", "cluster", "stop", "duo", "--wait")
    assert r.out.startswith("cluster duo") and "STOPPED" in r.out
    c = js(site_dir, "ws", "cluster", "show", "duo")
    assert c["state"] == "STOPPED" and {m["state"] for m in c["members"]} == {"STOPPED"}
    c = js(site_dir, "ws", "cluster", "start", "duo", "--wait")
    assert c["state"] == "RUNNING" and {m["state"] for m in c["members"]} == {"RUNNING"}

    c = js(site_dir, "ws", "cluster", "destroy", "duo", "--wait")
    assert c["state"] == "TERMINATED"
    assert "duo" not in ok(site_dir, "ws", "cluster", "list").out
    assert "duo" in ok(site_dir, "ws", "cluster", "list", "--all").out
    assert "duo-" not in ok(site_dir, "ws", "list").out
    refused(site_dir, "ws", "cluster", "show", "no-such-cluster", match="no-such-cluster")


def test_a_cluster_start_one_member_refuses_starts_none_and_says_why(site_dir: Path) -> None:
    """A member that cannot start (here PAUSED on its own): `ws cluster start` printed
    STARTING, started the others and left that one, and the cluster stayed STARTING for
    good (`--wait` waited out its timeout). The start is refused whole, naming it."""
    ok(site_dir, "ws", "cluster", "create", "part", "--member", f"w={IMAGE},count=2", "--wait")
    ok(site_dir, "ws", "pause", "part-w-0", "--wait")
    ok(site_dir, "ws", "stop", "part-w-1", "--wait")
    for wait in ((), ("--wait", "--wait-timeout", "60")):
        line = refused(site_dir, "ws", "cluster", "start", "part", *wait)
        assert "cannot start cluster part; nothing was started" in line, line
        assert "workspace part-w-0: it is PAUSED" in line, line
    members = {
        m["name"]: m["state"] for m in js(site_dir, "ws", "cluster", "show", "part")["members"]
    }
    assert members == {"part-w-0": "PAUSED", "part-w-1": "STOPPED"}
    ok(site_dir, "ws", "resume", "part-w-0", "--wait")
    c = js(site_dir, "ws", "cluster", "start", "part", "--wait")
    assert c["state"] == "RUNNING" and {m["state"] for m in c["members"]} == {"RUNNING"}
    ok(site_dir, "ws", "cluster", "destroy", "part", "--wait")


def test_cluster_from_flags_and_a_json_spec(site_dir: Path, tmp_path: Path) -> None:
    c = js(
        site_dir,
        "ws",
        "cluster",
        "create",
        "flags",
        "--member",
        f"a={IMAGE},count=2,memory-mib=64,blank=scratch:8MiB:ext4,blank=raw:1MiB",
        "--affinity",
        "soft",
        "--on-failure",
        "teardown",
        "--network",
        "default",
        "--wait",
        "--timeout",
        "60",
    )
    assert c["state"] == "RUNNING" and [m["name"] for m in c["members"]] == [
        "flags-a-0",
        "flags-a-1",
    ]
    assert (c["affinity"], c["on_failure"]) == ("SOFT", "TEARDOWN")
    assert c["spec"][0]["count"] == 2 and c["spec"][0]["networks"] == ["default"]
    disks = [(x["name"], x.get("ext4", False)) for x in c["spec"][0]["extra_partitions"]]
    assert disks == [("scratch", True), ("raw", False)]
    shown = ok(site_dir, "ws", "cluster", "show", "flags").out
    assert "scratch:8MiB:ext4,raw:1MiB" in shown
    # Each member's disks as it was made: the image's, then the role's blank ones.
    member_disks = [
        [(d["name"], d["mode"], d.get("ext4", False), d["virtual_size_bytes"]) for d in m["disks"]]
        for m in c["members"]
    ]
    assert (
        member_disks
        == [
            [
                ("root", "COW", False, 1024 * 1024 + 512),
                ("scratch", "BLANK", True, 8 * 2**20),
                ("raw", "BLANK", False, 2**20),
            ]
        ]
        * 2
    )
    one = js(site_dir, "ws", "show", "flags-a-0")
    assert [d["name"] for d in one["disks"]] == ["root", "scratch", "raw"]
    text = ok(site_dir, "ws", "show", "flags-a-0").out
    disk_lines = [line.split(None, 1)[1] for line in text.splitlines() if line.startswith("disk ")]
    assert disk_lines == [
        "root COW raw 1.0 MiB",
        "scratch BLANK raw 8.0 MiB ext4",
        "raw BLANK qcow2 1.0 MiB",
    ]
    ok(site_dir, "ws", "cluster", "destroy", "flags", "--wait")

    spec = tmp_path / "j.json"
    spec.write_text(
        json.dumps(
            {
                "name": "jsn",
                "affinity": "AFFINITY_NONE",
                "members": [{"role": "solo", "image": IMAGE, "memoryMib": 64}],
            }
        )
    )
    c = js(site_dir, "ws", "cluster", "create", "--spec", str(spec), "--wait")
    assert c["state"] == "RUNNING" and c["members"][0]["name"] == "jsn-solo-0"
    ok(site_dir, "ws", "cluster", "destroy", "jsn", "--wait")


def test_cluster_that_cannot_fit_names_the_member(site_dir: Path) -> None:
    # hard anti-affinity: every member on a different node, and the site has one node
    line = refused(
        site_dir,
        "ws",
        "cluster",
        "create",
        "big",
        "--member",
        f"head={IMAGE},cpus=1,memory-mib=64",
        "--member",
        f"worker={IMAGE},count=2,cpus=1,memory-mib=64",
        "--affinity",
        "hard-anti",
    )
    assert line.startswith("ws: error: ")
    assert "member big-" in line and "does not fit" in line, line
    assert "big" not in ok(site_dir, "ws", "cluster", "list", "--all").out
    assert "big-" not in ok(site_dir, "ws", "list", "--all").out


def test_bad_spec_is_refused_before_the_service(site_dir: Path, tmp_path: Path) -> None:
    spec = tmp_path / "bad.toml"
    spec.write_text(f'name = "bad"\n[[members]]\nrole = "a"\nimage = "{IMAGE}"\ncount = 0\n')
    line = refused(site_dir, "ws", "cluster", "create", "--spec", str(spec))
    assert f"{spec}:5: members[0].count" in line
    r = run(site_dir, "ws", "cluster", "create", "x", "--member", "noequals")
    assert r.code == 2 and "ROLE=IMAGE" in r.err


def test_requirements_match_node_labels(site_dir: Path) -> None:
    refused(site_dir, "ws", "create", "--image", IMAGE, "--require", "gpu=1", match="gpu")
    w = js(
        site_dir,
        "ws",
        "create",
        "--image",
        IMAGE,
        "--name",
        "req-fake",
        "--memory-mib",
        "64",
        "--require",
        "hypervisor=fake",
        "--wait",
    )
    assert (w["state"], w["node"]) == ("RUNNING", NODE)
    ok(site_dir, "ws", "destroy", "req-fake", "--wait")


def test_drained_node_refuses_new_work_until_enabled(site_dir: Path) -> None:
    node = js(site_dir, "admin", "node", "drain", NODE)
    try:
        assert (node["name"], node["state"]) == (NODE, "DRAINING")
        listed = ok(site_dir, "admin", "node", "list").out
        assert listed.splitlines()[1].split()[:2] == [NODE, "DRAINING"]
        refused(site_dir, "ws", "create", "--image", IMAGE, "--name", "dr", match="DRAINING")
        refused(
            site_dir, "ws", "cluster", "create", "drc", "--member", f"a={IMAGE}", match="DRAINING"
        )
    finally:
        text = ok(site_dir, "admin", "node", "enable", NODE).out
    assert text.splitlines()[1].split()[:2] == [NODE, "READY"]
    w = js(
        site_dir, "ws", "create", "--image", IMAGE, "--name", "dr", "--memory-mib", "64", "--wait"
    )
    assert w["state"] == "RUNNING"
    # a node with a live workspace cannot be removed
    refused(site_dir, "admin", "node", "remove", NODE, match="workspace")
    ok(site_dir, "ws", "destroy", "dr", "--wait")


def _free_memory_mib(site_dir: Path) -> int:
    node = next(n for n in js(site_dir, "admin", "node", "list") if n["name"] == NODE)
    return int(node["memory_mib"]) - int(node["used_memory_mib"])


def test_queued_workspace_starts_when_capacity_is_freed(site_dir: Path) -> None:
    free = _free_memory_mib(site_dir)
    size = free * 6 // 10  # two of these do not fit at once
    if size > 512 * 1024:  # the service's max_memory_mib
        pytest.skip(f"this host has too much memory ({free} MiB free) to fill the site")
    mib = str(size)
    ok(site_dir, "ws", "create", "--image", IMAGE, "--name", "hog", "--memory-mib", mib, "--wait")
    # without waiting: refused at once
    refused(site_dir, "ws", "create", "--image", IMAGE, "--memory-mib", mib, match="fit")
    argv = ["create", "--image", IMAGE, "--name", "waiter", "--memory-mib", mib]
    argv += ["--wait-for-capacity", "120", "--wait", "--timeout", "150"]
    proc = subprocess.Popen(
        [sys.executable, "-m", "workspace.cli.ws", *argv],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=cli_env(site_dir),
        cwd=ROOT,
    )
    try:
        queue: list[Any] = []

        def queued() -> bool:
            queue[:] = js(site_dir, "admin", "queue")
            return bool(queue)

        eventually(queued, "the queue to show the waiting workspace")
        entry = queue[0]
        assert (entry["position"], entry["kind"], entry["name"]) == (1, "workspace", "waiter")
        assert entry["memory_mib"] == size and entry["deadline"] and entry["queued_at"]
        lines = ok(site_dir, "admin", "queue").out.splitlines()
        assert lines[0].split() == [
            "POSITION",
            "KIND",
            "NAME",
            "OWNER",
            "CPUS",
            "MEMORY_MIB",
            "QUEUED",
            "DEADLINE",
            "HOLDS",
            "REASON",
        ]
        assert lines[1].split()[:3] == ["1", "workspace", "waiter"]
        assert entry["holds"] == [NODE]  # the head keeps the only node that could take it
        w = js(site_dir, "ws", "show", "waiter")
        assert w["state"] == "PENDING" and "capacity" in w["reason"]

        ok(site_dir, "ws", "destroy", "hog", "--wait")
        out, err = proc.communicate(timeout=90)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    r = Result(proc.returncode, out, err)
    assert r.code == 0, f"{r.out}\n{r.err}"
    assert "PENDING" in r.err and r.out.splitlines()[2].split() == ["state", "RUNNING"]
    assert js(site_dir, "admin", "queue") == []
    ok(site_dir, "ws", "destroy", "waiter", "--wait")


def test_schedule_dump_and_explain_offline(site_dir: Path, tmp_path: Path) -> None:
    r = ok(site_dir, "admin", "schedule", "dump", "--cpus", "1", "--memory-mib", "64")
    dump = tmp_path / "input.json"
    dump.write_text(r.out)
    data = json.loads(r.out)
    assert [n["name"] for n in data["nodes"]] == [NODE]
    # explain needs no service: point it at a dead one
    dead = ["--service", f"unix:{tmp_path}/nothing.sock"]
    r = ok(site_dir, "admin", *dead, "schedule", "explain", str(dump))
    assert r.out.startswith("Placement: placed") and NODE in r.out
    got = js(site_dir, "admin", *dead, "schedule", "explain", str(dump))
    assert got["placed"] is True and got["placements"][0]["node"] == NODE

    r = ok(site_dir, "admin", "schedule", "dump", "--require", "gpu=1")
    dump.write_text(r.out)
    r = run(site_dir, "admin", *dead, "schedule", "explain", str(dump))
    assert r.code == 1 and "gpu" in r.out and r.err.startswith("ws-admin: error: does not fit")
