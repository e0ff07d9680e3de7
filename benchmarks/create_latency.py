#!/usr/bin/env python3
"""Create latency on a real libvirt site, next to a bare `virsh create` of the same XML.

Needs root (network namespace, private libvirtd). In one run it:

1. builds (or reuses) the test appliance, starts a libvirt site in a temp directory under
   /var/tmp (`ws-admin site up --driver libvirt`) and imports the appliance image;
2. warms the node's image cache with one create + destroy, keeping the domain XML of
   that running workspace (`virsh dumpxml ws-<id>`);
3. N times: CreateWorkspace (gRPC) -> RUNNING as delivered by WatchWorkspaces (one stream
   opened before the runs; the event's arrival time is taken), cross-checked by polling
   the libvirt domain state every 10 ms (libvirt-python, persistent connection); then the
   guest's WORKSPACE-READY line, by polling GetConsole every 200 ms (and, for comparison,
   the node's console.log every 20 ms); then DestroyWorkspace -> TERMINATED;
4. interleaved with those runs, the baseline: `virsh create FILE` of the same XML
   (new name and uuid, no ownership metadata, the disk a fresh `qemu-img create -f qcow2
   -b BASE -F raw` overlay made outside the timing, the console log a file of ours, the
   NIC kept on the same bridge with another MAC, or dropped with --drop-nic), timed until
   `virsh domstate` says running; then `virsh destroy`;
5. prints name=value lines (medians and maxima) and an explanation on stderr;
6. always tears down: `ws-admin site down`, then removes the site directory.

    sudo .venv/bin/python benchmarks/create_latency.py [--runs 5] [--drop-nic] [--keep]
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import random
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import grpc
import libvirt

from benchmarks._common import ROOT, emit
from images.appliance import READY_PREFIX, build
from tests.functional.harness import WS, Stubs
from workspace import rpc
from workspace.client import resolve_tls
from workspace.site.hostenv import HostEnv
from workspace.v1 import workspaces_pb2

APPLIANCE_CACHE = Path(os.environ.get("WS_APPLIANCE_CACHE", "/var/tmp/ws-appliance-cache"))
MEMORY_MIB = 256
LIBVIRT_POLL_S = 0.01
CONSOLE_POLL_S = 0.2  # GetConsole
NODE_CONSOLE_POLL_S = 0.02  # the node's console.log file
BASELINE_PREFIX = "wsbench-"  # not "ws-": the agent never looks at these domains
LOG_TIME = re.compile(r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}) ")


def say(msg: str) -> None:
    print(f"create_latency: {msg}", file=sys.stderr, flush=True)


def module(*args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    out = subprocess.run(
        [sys.executable, "-m", *args],
        capture_output=True,
        text=True,
        env=env,
        cwd=ROOT,
        timeout=timeout,
        check=False,
    )
    if out.returncode != 0:
        raise SystemExit(f"{' '.join(args[:3])} failed:\n{out.stderr}{out.stdout}")
    return out


def median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


# -- watching workspace events ---------------------------------------------------------


class Events:
    """WatchWorkspaces (include_terminated) in a thread: arrival time of every event."""

    def __init__(self, stubs: Stubs) -> None:
        self._cond = threading.Condition()
        self._seen: list[tuple[float, str, int]] = []  # (monotonic, id, state)
        self._initial = threading.Event()
        self._error: BaseException | None = None
        self._stream = stubs.ws.WatchWorkspaces(
            workspaces_pb2.WatchWorkspacesRequest(include_terminated=True)
        )
        self._thread = threading.Thread(target=self._run, name="watch", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        try:
            for ev in self._stream:
                now = time.monotonic()
                if ev.initial:
                    self._initial.set()
                with self._cond:
                    self._seen.append((now, ev.workspace.id, ev.workspace.state))
                    self._cond.notify_all()
        except grpc.RpcError as exc:
            if exc.code() != grpc.StatusCode.CANCELLED:
                self._error = exc
        with self._cond:
            self._cond.notify_all()

    def wait_subscribed(self, timeout_s: float = 10) -> None:
        """The watch is live once its snapshot (needs one workspace, even terminated) came."""
        if not self._initial.wait(timeout_s):
            raise SystemExit("WatchWorkspaces sent no snapshot")

    def first(self, wid: str, state: int, after: float, timeout_s: float) -> float:
        """Arrival time of the first event (after ``after``) showing ``wid`` in ``state``."""
        deadline = time.monotonic() + timeout_s
        with self._cond:
            while True:
                for t, i, s in self._seen:
                    if t >= after and i == wid and s == state:
                        return t
                if self._error is not None:
                    raise SystemExit(f"WatchWorkspaces failed: {self._error}")
                left = deadline - time.monotonic()
                if left <= 0:
                    raise SystemExit(f"{wid} not {WS.Name(state)} after {timeout_s} s")
                self._cond.wait(left)

    def close(self) -> None:
        self._stream.cancel()
        self._thread.join(5)


# -- the site ----------------------------------------------------------------------------


class Bench:
    def __init__(self, site_dir: Path, args: argparse.Namespace) -> None:
        self.dir = site_dir
        self.args = args
        self.record: dict[str, Any] = {}
        self.stubs: Stubs | None = None
        self.events: Events | None = None
        self.conn: Any = None
        self.uri = ""
        self.baseline_running: set[str] = set()
        self.scratch = site_dir / "bench"

    # setup / teardown

    def up(self, appliance_dir: Path) -> None:
        module("workspace.cli.admin", "site", "up", "--driver", "libvirt", "--dir", str(self.dir))
        self.record = json.loads((self.dir / "site.json").read_text())
        self.uri = HostEnv(self.dir, str(self.record["netns"])).libvirt_uri
        address = str(self.record["address"])
        module(
            "workspace.cli.admin",
            "--service",
            address,
            "image",
            "import",
            "appliance",
            "--appliance",
            str(appliance_dir),
        )
        self.stubs = Stubs(rpc.channel(address, resolve_tls(address)))
        libvirt.registerErrorHandler(lambda _ctx, _err: None, None)
        self.conn = libvirt.open(self.uri)
        self.scratch.mkdir(mode=0o755)

    def close(self) -> None:
        for name in sorted(self.baseline_running):
            self.virsh("destroy", name, check=False)
        if self.events is not None:
            self.events.close()
        if self.conn is not None:
            self.conn.close()
        if self.stubs is not None:
            self.stubs.channel.close()

    def virsh(self, *args: str, check: bool = True) -> str:
        out = subprocess.run(
            ["virsh", "-q", "-c", self.uri, *args],
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        if check and out.returncode != 0:
            raise SystemExit(f"virsh {' '.join(args)}: {out.stderr.strip()}")
        return out.stdout

    # our path

    def domain_state(self, name: str) -> int | None:
        try:
            return int(self.conn.lookupByName(name).state(0)[0])
        except libvirt.libvirtError as exc:
            if exc.get_error_code() == libvirt.VIR_ERR_NO_DOMAIN:
                return None
            raise

    def create_run(self, name: str, keep_xml: bool = False) -> dict[str, Any]:
        assert self.stubs is not None
        ws = self.stubs.ws
        wall0 = time.time()
        t0 = time.monotonic()
        w = ws.CreateWorkspace(
            workspaces_pb2.CreateWorkspaceRequest(
                name=name, image="appliance", memory_mib=MEMORY_MIB
            )
        )
        t_resp = time.monotonic()
        wid = w.id
        dom = f"ws-{wid}"
        deadline = t0 + self.args.boot_timeout
        while self.domain_state(dom) != libvirt.VIR_DOMAIN_RUNNING:
            if time.monotonic() > deadline:
                raise SystemExit(f"domain {dom} not running after {self.args.boot_timeout} s")
            time.sleep(LIBVIRT_POLL_S)
        t_dom = time.monotonic()
        if self.events is None:  # warm-up: the watch needs one workspace for its snapshot
            self.stubs.wait_state(wid, WS.WORKSPACE_STATE_RUNNING, self.args.boot_timeout)
            t_run = time.monotonic()
        else:
            t_run = self.events.first(wid, WS.WORKSPACE_STATE_RUNNING, t0, self.args.boot_timeout)
        xml = self.virsh("dumpxml", dom) if keep_xml else ""

        # READY: GetConsole every 200 ms; the node's console.log every 20 ms
        node_log = self.dir / "agent" / "workspaces" / wid / "console.log"
        t_guest = t_ready = None
        next_rpc = time.monotonic()
        while t_ready is None or t_guest is None:
            now = time.monotonic()
            if now > deadline:
                raise SystemExit(f"{wid}: no {READY_PREFIX} line after {self.args.boot_timeout} s")
            if (
                t_guest is None
                and node_log.exists()
                and READY_PREFIX in node_log.read_text(errors="replace")
            ):
                t_guest = now
            if t_ready is None and now >= next_rpc:
                data = ws.GetConsole(workspaces_pb2.GetConsoleRequest(id=wid)).data
                if READY_PREFIX.encode() in data:
                    t_ready = time.monotonic()
                next_rpc += CONSOLE_POLL_S
            time.sleep(NODE_CONSOLE_POLL_S)

        t_d0 = time.monotonic()
        ws.DestroyWorkspace(workspaces_pb2.WorkspaceRef(id=wid))
        while self.domain_state(dom) is not None:
            if time.monotonic() > t_d0 + 60:
                raise SystemExit(f"domain {dom} still there 60 s after DestroyWorkspace")
            time.sleep(LIBVIRT_POLL_S)
        t_gone = time.monotonic()
        if self.events is None:
            self.stubs.wait_state(wid, WS.WORKSPACE_STATE_TERMINATED, 60)
            t_term = time.monotonic()
        else:
            t_term = self.events.first(wid, WS.WORKSPACE_STATE_TERMINATED, t_d0, 60)
        return {
            "id": wid,
            "wall0": wall0,
            "xml": xml,
            "response": t_resp - t0,
            "domain_running": t_dom - t0,
            "running": t_run - t0,
            "guest_ready": t_guest - t0,  # type: ignore[operator]
            "ready": t_ready - t0,
            "destroy": t_term - t_d0,
            "domain_gone": t_gone - t_d0,
        }

    # the baseline

    def baseline_xml(self, template: str, n: int) -> tuple[str, str, float]:
        """(domain name, path of its XML file, seconds qemu-img took) for baseline run n."""
        root = ET.fromstring(template)
        root.attrib.pop("id", None)
        name = f"{BASELINE_PREFIX}{os.getpid()}-{n}"
        root.find("name").text = name  # type: ignore[union-attr]
        root.find("uuid").text = str(uuid.uuid4())  # type: ignore[union-attr]
        for tag in ("title", "metadata", "seclabel"):
            for el in root.findall(tag):
                root.remove(el)
        devices = root.find("devices")
        assert devices is not None
        disks = devices.findall("disk")
        if len(disks) != 1:
            raise SystemExit(f"expected one disk in the domain XML, found {len(disks)}")
        disk = disks[0]
        source = disk.find("source")
        backing = disk.find("backingStore/source")
        fmt = disk.find("backingStore/format")
        if source is None or backing is None:
            raise SystemExit("the domain XML has no disk source with a backing store")
        overlay = self.scratch / f"{name}.qcow2"
        t = time.monotonic()
        subprocess.run(
            [
                "qemu-img",
                "create",
                "-q",
                "-f",
                "qcow2",
                "-b",
                backing.attrib["file"],
                "-F",
                fmt.attrib["type"] if fmt is not None else "raw",
                str(overlay),
            ],
            check=True,
            capture_output=True,
            timeout=60,
        )
        qemu_img_s = time.monotonic() - t
        overlay.chmod(0o644)
        source.attrib.clear()
        source.set("file", str(overlay))
        for el in disk.findall("backingStore"):
            disk.remove(el)
        for iface in devices.findall("interface"):
            if self.args.drop_nic:
                devices.remove(iface)
                continue
            mac = iface.find("mac")
            assert mac is not None
            mac.set("address", f"52:54:00:fe:{random.randrange(256):02x}:{n % 256:02x}")
            for el in iface.findall("target"):
                iface.remove(el)
        console_log = str(self.scratch / f"{name}.console.log")
        for tag in ("serial", "console"):
            for chardev in devices.findall(tag):
                chardev.attrib.pop("tty", None)
                for el in chardev.findall("source"):
                    chardev.remove(el)
                for el in chardev.findall("log"):
                    el.set("file", console_log)
        path = self.scratch / f"{name}.xml"
        path.write_text(ET.tostring(root, encoding="unicode"))
        return name, str(path), qemu_img_s

    def virsh_run(self, template: str, n: int) -> dict[str, float]:
        name, path, qemu_img_s = self.baseline_xml(template, n)
        t0 = time.monotonic()
        self.virsh("create", path)
        self.baseline_running.add(name)
        t_cmd = time.monotonic()
        deadline = t0 + self.args.boot_timeout
        while self.virsh("domstate", name).strip() != "running":
            if time.monotonic() > deadline:
                raise SystemExit(f"baseline domain {name} not running")
            time.sleep(LIBVIRT_POLL_S)
        t_run = time.monotonic()
        self.virsh("destroy", name)
        t_gone = time.monotonic()
        self.baseline_running.discard(name)
        return {
            "create_cmd": t_cmd - t0,
            "running": t_run - t0,
            "destroy": t_gone - t_run,
            "qemu_img": qemu_img_s,
        }

    # where the time goes, from the logs

    def log_times(self, log: str, pattern: str) -> float | None:
        """Wall-clock time of the first line of site_dir/LOG matching ``pattern``."""
        rx = re.compile(pattern)
        for line in (self.dir / log).read_text(errors="replace").splitlines():
            m = LOG_TIME.match(line)
            if m and rx.search(line):
                return dt.datetime.strptime(m.group(1), "%Y-%m-%d %H:%M:%S,%f").timestamp()
        return None

    def breakdown(self, run: dict[str, Any]) -> dict[str, float]:
        wid, wall0 = run["id"], run["wall0"]
        sched = self.log_times("service.log", rf"workspace {wid} \(.*\) scheduled")
        pick = self.log_times("agent.log", rf"workspace {wid}: create$")
        started = self.log_times("agent.log", rf"workspace {wid} \(.*\) defined and started")
        out: dict[str, float] = {}
        if sched is not None:
            out["scheduled"] = sched - wall0
        if pick is not None:
            out["agent_pickup"] = pick - wall0
        if pick is not None and started is not None:
            out["agent_create"] = started - pick
            out["report"] = run["running"] - (started - wall0)
        return out


def run(bench: Bench, runs: int) -> None:
    assert bench.stubs is not None
    say("warm-up: one create + destroy (fills the node's image cache, starts QEMU once)")
    warm = bench.create_run("warmup", keep_xml=True)
    template = warm["xml"]
    say(f"warm-up took {warm['running']:.2f} s to RUNNING, {warm['ready']:.2f} s to READY")
    bench.events = Events(bench.stubs)
    bench.events.wait_subscribed()
    bench.virsh_run(template, 0)  # warm-up of the baseline too

    ours: list[dict[str, Any]] = []
    base: list[dict[str, float]] = []
    parts: list[dict[str, float]] = []
    for i in range(1, runs + 1):
        r = bench.create_run(f"bench{i}")
        ours.append(r)
        parts.append(bench.breakdown(r))
        b = bench.virsh_run(template, i)
        base.append(b)
        say(
            f"run {i}: RUNNING {r['running']:.3f} s (domain running {r['domain_running']:.3f} s), "
            f"READY {r['ready']:.3f} s (node console {r['guest_ready']:.3f} s), "
            f"destroy {r['destroy']:.3f} s | virsh create {b['running']:.3f} s"
        )

    def col(rows: list[dict[str, Any]], key: str) -> list[float]:
        return [float(r[key]) for r in rows if key in r]

    running, virsh_s = col(ours, "running"), col(base, "running")
    fig: dict[str, float | int] = {"runs": runs}
    fig["create_to_running_s"] = median(running)
    fig["create_to_running_max_s"] = max(running)
    fig["virsh_create_s"] = median(virsh_s)
    fig["virsh_create_max_s"] = max(virsh_s)
    fig["overhead_ratio"] = fig["create_to_running_s"] / fig["virsh_create_s"]
    fig["create_to_ready_s"] = median(col(ours, "ready"))
    fig["create_to_ready_max_s"] = max(col(ours, "ready"))
    fig["create_to_domain_running_s"] = median(col(ours, "domain_running"))
    fig["create_rpc_s"] = median(col(ours, "response"))
    fig["guest_ready_s"] = median(col(ours, "guest_ready"))
    fig["console_delay_s"] = median([r["ready"] - r["guest_ready"] for r in ours])
    fig["virsh_create_cmd_s"] = median(col(base, "create_cmd"))
    fig["qemu_img_overlay_s"] = median(col(base, "qemu_img"))
    for key in ("scheduled", "agent_pickup", "agent_create", "report"):
        values = col(parts, key)
        if values:
            fig[f"{key}_s"] = median(values)
    fig["destroy_to_terminated_s"] = median(col(ours, "destroy"))
    fig["destroy_to_domain_gone_s"] = median(col(ours, "domain_gone"))
    fig["virsh_destroy_s"] = median(col(base, "destroy"))
    emit(fig)
    explain(fig, bench.args.drop_nic)


def explain(f: dict[str, float | int], drop_nic: bool) -> None:
    nic = "without its NIC" if drop_nic else "with its NIC on the same bridge, another MAC"
    lines = [
        "",
        f"create_to_running_s: CreateWorkspace sent -> RUNNING event received on a "
        f"WatchWorkspaces stream (median of {f['runs']}); libvirt says the domain runs after "
        f"{f['create_to_domain_running_s']:.3f} s (10 ms polling).",
        f"virsh_create_s: `virsh create` of the same domain XML ({nic}, fresh qcow2 overlay "
        f"made beforehand) until `virsh domstate` says running; the create command alone "
        f"takes {f['virsh_create_cmd_s']:.3f} s. overhead_ratio = {f['overhead_ratio']:.2f}.",
    ]
    if "agent_pickup_s" in f:
        lines.append(
            f"where the time goes (agent/service logs, ms resolution): CreateWorkspace returns "
            f"after {f['create_rpc_s']:.3f} s; the agent starts its create "
            f"{f['agent_pickup_s']:.3f} s after the call; define + start (cache hit, overlay, "
            f"status reports) take {f.get('agent_create_s', float('nan')):.3f} s; RUNNING "
            f"reaches the client {f.get('report_s', float('nan')):.3f} s after the agent logged "
            "the start."
        )
    lines.append(
        f"create_to_ready_s: until GetConsole (polled every 200 ms) shows the guest's "
        f"WORKSPACE-READY line; the node's console.log has it at {f['guest_ready_s']:.3f} s; "
        f"a median {f['console_delay_s']:.3f} s per run is console forwarding (the agent "
        "pushes new console bytes every 0.25 s) plus our 200 ms polling."
    )
    for line in lines:
        print(line, file=sys.stderr)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--runs", type=int, default=5)
    p.add_argument("--drop-nic", action="store_true", help="baseline domain without the NIC")
    p.add_argument("--boot-timeout", type=float, default=90.0)
    p.add_argument("--appliance-cache", type=Path, default=APPLIANCE_CACHE)
    p.add_argument("--keep", action="store_true", help="keep the site directory (logs)")
    args = p.parse_args()
    if args.runs < 1:
        p.error("--runs must be at least 1")
    if os.geteuid() != 0:
        raise SystemExit("create_latency needs root (network namespace, libvirtd, dnsmasq)")

    def on_term(signum: int, _frame: object) -> None:
        raise SystemExit(f"signal {signum}")

    signal.signal(signal.SIGTERM, on_term)
    signal.signal(signal.SIGHUP, on_term)

    say(f"appliance in {args.appliance_cache}")
    appliance = build(args.appliance_cache)
    site_dir = Path(tempfile.mkdtemp(prefix="ws-bench-create-", dir="/var/tmp"))
    site_dir.chmod(0o755)  # dnsmasq (as nobody) reads hosts files below it
    bench = Bench(site_dir, args)
    try:
        say(f"site up in {site_dir}")
        bench.up(appliance.manifest.parent)
        run(bench, args.runs)
    finally:
        try:
            bench.close()
        finally:
            down = subprocess.run(
                [
                    sys.executable,
                    "-m",
                    "workspace.cli.admin",
                    "site",
                    "down",
                    "--dir",
                    str(site_dir),
                ],
                capture_output=True,
                text=True,
                env=dict(os.environ, PYTHONPATH=str(ROOT)),
                cwd=ROOT,
                timeout=300,
                check=False,
            )
            if down.returncode != 0:
                say(f"site down failed; left {site_dir}:\n{down.stderr}")
            elif args.keep:
                say(f"kept {site_dir}")
            else:
                shutil.rmtree(site_dir, ignore_errors=True)


if __name__ == "__main__":
    main()
