"""ws and ws-admin end to end: a local site (real service + agent on the fake driver)
started with `ws-admin site up`, driven only through the command lines."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

import pytest

from workspace.site import local

ROOT = Path(__file__).resolve().parents[2]
IMAGE = "cli-img"


@dataclass
class Result:
    code: int
    out: str
    err: str

    def json(self) -> object:
        return json.loads(self.out)


def cli_env(site_dir: Path) -> dict[str, str]:
    env = dict(os.environ)
    env.pop("WS_SERVICE", None)
    env[local.SITE_ENV] = str(site_dir)
    return env


def run(site_dir: Path, module: str, *args: str, timeout_s: float = 120.0) -> Result:
    proc = subprocess.run(
        [sys.executable, "-m", f"workspace.cli.{module}", *args],
        capture_output=True,
        text=True,
        env=cli_env(site_dir),
        cwd=ROOT,
        timeout=timeout_s,
    )
    return Result(proc.returncode, proc.stdout, proc.stderr)


def ok(site_dir: Path, module: str, *args: str) -> Result:
    r = run(site_dir, module, *args)
    assert r.code == 0, f"{module} {' '.join(args)} -> {r.code}\n{r.out}\n{r.err}"
    return r


def failed(site_dir: Path, code: int, *args: str, match: str = "") -> str:
    """Run ws, expect exit ``code`` and a single "ws: error: ..." line; return it."""
    r = run(site_dir, "ws", *args)
    assert r.code == code, f"ws {' '.join(args)} -> {r.code}\n{r.out}\n{r.err}"
    lines = r.err.strip().splitlines()
    if code != 2:  # argparse prints its usage first
        assert len(lines) == 1, r.err
    assert lines[-1].startswith("ws"), r.err
    assert match.lower() in lines[-1].lower(), r.err
    return lines[-1]


def gone(pid: int) -> bool:
    try:
        st = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True
    return st[st.rfind(")") + 2] in "ZX"


def wait_gone(pid: int, timeout_s: float = 30.0) -> bool:
    deadline = time.monotonic() + timeout_s
    while not gone(pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    return gone(pid)


def until(check: Callable[[], object], what: str, timeout_s: float = 60.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not check():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


@pytest.fixture(scope="module")
def site_dir(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    d = tmp_path_factory.mktemp("cli") / "site"
    ok(d, "admin", "site", "up", "--driver", "fake", "--dir", str(d))
    disk = d.parent / "disk.img"
    disk.write_bytes(os.urandom(3 * 1024 * 1024 + 512))
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


def test_site_up_again_says_already_running(site_dir: Path) -> None:
    r = ok(site_dir, "admin", "site", "up", "--dir", str(site_dir))
    assert "already running" in r.out and "ws-admin site down" in r.out
    st = json.loads(ok(site_dir, "admin", "-o", "json", "site", "status").out)
    assert st["state"] == "running" and st["node"] == {"name": "local", "state": "READY"}


def test_admin_lists(site_dir: Path) -> None:
    nodes = ok(site_dir, "admin", "node", "list", "--output", "json").json()
    assert [(n["name"], n["state"], n["hypervisor"]) for n in nodes] == [  # type: ignore[index, union-attr]
        ("local", "READY", "fake")
    ]
    # What may be placed there, the default overcommit (4 vCPUs per CPU, memory 1:1)
    # applied; the table counts use against it, not against the hardware.
    (node,) = nodes  # type: ignore[misc]
    assert (node["cpu_capacity"], node["memory_capacity_mib"]) == (
        4 * node["cpus"],
        node["memory_mib"],
    )
    header, row = ok(site_dir, "admin", "node", "list").out.splitlines()
    cells = dict(zip(header.split(), row.split(), strict=False))
    used = node.get("used_cpus", 0)
    assert cells["CPUS"] == f"{used}/{4 * node['cpus']}"
    nets = ok(site_dir, "admin", "-o", "json", "network", "list").json()
    net = nets[0]  # type: ignore[index]
    assert (net["name"], net["subnet"], net["gateway"], net["bridge"]) == (
        "default",
        "10.213.0.0/24",
        "10.213.0.1",
        "wsbr0",
    )
    images = ok(site_dir, "ws", "image", "list", "-o", "json").json()
    img = next(i for i in images if i["name"] == IMAGE)  # type: ignore[union-attr, index]
    part = img["partitions"][0]
    assert (part["name"], part["mode"], part["format"]) == ("root", "COW", "raw")
    assert part["size_bytes"] == 3 * 1024 * 1024 + 512 and part["digest"].startswith("sha256:")
    text = ok(site_dir, "ws", "image", "show", IMAGE).out
    assert "root" in text and "COW" in text
    assert IMAGE in ok(site_dir, "admin", "image", "list").out


def test_every_program_and_node_says_its_version(site_dir: Path) -> None:
    release = metadata.version("workspace-service")
    for prog, module in [
        ("ws", "workspace.cli.ws"),
        ("ws-admin", "workspace.cli.admin"),
        ("workspace-service", "workspace.service.main"),
        ("workspace-agent", "agent.main"),
        ("ws-slurm", "workspace.slurm"),
    ]:
        proc = subprocess.run(
            [sys.executable, "-m", module, "--version"], capture_output=True, text=True, cwd=ROOT
        )
        assert (proc.returncode, proc.stdout) == (0, f"{prog} {release}\n"), proc
    # The agent registers with its release: an admin sees which node runs which.
    (node,) = ok(site_dir, "admin", "node", "list", "-o", "json").json()  # type: ignore[misc]
    assert node["agent_version"] == release
    header, row = ok(site_dir, "admin", "node", "list").out.splitlines()
    # (CONDITIONS: what keeps it from serving some workspaces; REASON, last: why a node
    # is DOWN; "-" while there is none)
    assert header.split()[-3:] == ["AGENT", "CONDITIONS", "REASON"]
    assert row.split()[-3:] == [release, "-", "-"]


def test_an_empty_list_says_so_on_stderr_only(site_dir: Path) -> None:
    # Nothing in stdout for a script to mistake for a row; the person reading is told
    # what is empty and how to fill it.
    for module, args, hint in [
        ("ws", ["cluster", "list"], "no clusters; `ws cluster create"),
        ("ws", ["key", "list"], "you have no SSH keys; add one with `ws key add"),
        ("admin", ["project", "list"], "no projects; `ws-admin project create"),
        ("admin", ["queue"], "no requests wait for capacity"),
    ]:
        r = ok(site_dir, module, *args)
        assert r.out == "" and r.err.startswith(hint), r
        assert ok(site_dir, module, *args, "-o", "json").json() == []
        assert run(site_dir, module, *args, "-o", "json").err == ""


def test_lifecycle_through_the_cli(site_dir: Path) -> None:
    r = ok(site_dir, "ws", "create", "--image", IMAGE, "--name", "cli-life", "--wait")
    assert "RUNNING" in r.err  # state changes reported on stderr while waiting
    assert r.out.splitlines()[2].split() == ["state", "RUNNING"]
    w = ok(site_dir, "ws", "--output", "json", "show", "cli-life").json()
    assert isinstance(w, dict)
    wid = w["id"]
    assert (w["name"], w["state"], w["image"], w["node"]) == ("cli-life", "RUNNING", IMAGE, "local")
    assert w["nics"][0]["network"] == "default" and w["nics"][0]["ip"].startswith("10.213.0.")
    listed = ok(site_dir, "ws", "list").out
    assert any(line.split()[:3] == [wid, "cli-life", "RUNNING"] for line in listed.splitlines())

    steps = [
        (["stop", wid, "--timeout", "5"], "STOPPED"),
        (["start", wid], "RUNNING"),
        (["pause", wid], "PAUSED"),
        (["resume", wid], "RUNNING"),
        (["reboot", wid], "RUNNING"),
    ]
    for args, state in steps:
        r = ok(site_dir, "ws", *args, "--wait")
        assert r.out.strip().endswith(f": {state}"), (args, r.out)
        assert ok(site_dir, "ws", "-o", "json", "show", wid).json()["state"] == state  # type: ignore[index]

    deadline = time.monotonic() + 20
    console = ""
    while console.count("WORKSPACE-READY") < 3 and time.monotonic() < deadline:
        console = ok(site_dir, "ws", "console", wid).out
        time.sleep(0.2)
    assert console.count("WORKSPACE-READY") == 3, console  # create, start, reboot
    tail = ok(site_dir, "ws", "console", wid, "--tail", "10").out
    assert len(tail.rstrip("\n")) <= 10
    data = ok(site_dir, "ws", "console", "cli-life", "-o", "json").json()
    assert isinstance(data, dict) and "WORKSPACE-READY" in data["data"]
    # named by its id and name, as `ws show` names it, not by what was typed
    assert (data["id"], data["name"]) == (wid, "cli-life")

    r = ok(site_dir, "ws", "destroy", wid, "--wait", "-o", "json")
    assert r.json()["state"] == "TERMINATED"  # type: ignore[index]
    assert wid not in ok(site_dir, "ws", "list").out
    assert wid in ok(site_dir, "ws", "list", "--all").out
    # Destroyed already: a destroy again shows it so (a retried one must not fail); a
    # start is refused with the reason.
    again = ok(site_dir, "ws", "destroy", wid, "-o", "json").json()
    assert again["state"] == "TERMINATED"  # type: ignore[index]
    failed(site_dir, 1, "start", wid, match="was destroyed")


def test_several_workspaces_at_once(site_dir: Path) -> None:
    for name in ("cli-many-a", "cli-many-b"):
        ok(site_dir, "ws", "create", "--image", IMAGE, "--name", name, "--wait")
    # One the service refuses is named on stderr; the others are stopped all the same.
    r = run(site_dir, "ws", "stop", "cli-many-a", "no-such-ws", "cli-many-b", "--wait")
    assert r.code == 1, r
    assert r.err.count("ws: error: ") == 1 and "ws: error: no-such-ws: " in r.err, r.err
    assert [line.split(": ")[-1] for line in r.out.splitlines()] == ["STOPPED", "STOPPED"], r.out
    for name in ("cli-many-a", "cli-many-b"):
        assert ok(site_dir, "ws", "-o", "json", "show", name).json()["state"] == "STOPPED"  # type: ignore[index]
    # Several in JSON: an array of what was asked, in the order given.
    done = ok(site_dir, "ws", "destroy", "cli-many-b", "cli-many-a", "--wait", "-o", "json").json()
    assert [(w["name"], w["state"]) for w in done] == [  # type: ignore[union-attr, index]
        ("cli-many-b", "TERMINATED"),
        ("cli-many-a", "TERMINATED"),
    ]


def test_create_with_request_id_is_idempotent(site_dir: Path) -> None:
    args = ["-o", "json", "create", "--image", IMAGE, "--name", "cli-idem", "--request-id", "r-1"]
    first = ok(site_dir, "ws", *args).json()
    again = ok(site_dir, "ws", *args).json()
    assert first["id"] == again["id"]  # type: ignore[index]
    ok(site_dir, "ws", "destroy", "cli-idem", "--wait")


def test_errors_exit_non_zero_with_one_line(site_dir: Path) -> None:
    failed(site_dir, 1, "create", "--image", "no-such-image", match="no-such-image")
    failed(site_dir, 1, "create", "--image", IMAGE, "--cpus", "1000", match="cpus")
    failed(site_dir, 2, "create", "--image", IMAGE, "--cpus", "0", match="--cpus")
    failed(site_dir, 1, "create", "--image", IMAGE, "--network", "nonet", match="nonet")
    failed(site_dir, 1, "show", "no-such-workspace", match="no-such-workspace")
    failed(site_dir, 1, "stop", "no-such-workspace")
    failed(site_dir, 3, "--service", f"unix:{site_dir}/nothing.sock", "list", match="reach")
    r = run(site_dir / "elsewhere", "ws", "list")  # no site there, no WS_SERVICE
    assert r.code == 3 and "ws-admin site up" in r.err


def test_watch_prints_state_changes_and_ends_on_ctrl_c(site_dir: Path) -> None:
    # Ctrl-C as at a terminal: a runner that started this test in the background (`cmd &`
    # without job control, or a pytest-xdist worker) passes SIGINT on ignored, and Python
    # then installs no KeyboardInterrupt handler; the child puts it back before it runs
    # `ws` (`python -m workspace.cli.ws`). Not with a preexec_fn: that forks this process,
    # which holds gRPC channels, and gRPC's fork handlers then abort the child now and
    # then before it runs anything ("epoll_wait error: Bad file descriptor", grpc#43055).
    sigint = "import runpy, signal; signal.signal(signal.SIGINT, signal.default_int_handler); "
    ws = sigint + "runpy.run_module('workspace.cli.ws', run_name='__main__', alter_sys=True)"
    # Waited for by what it prints, not for a fixed time: started on a busy machine, `ws`
    # took more than the second once given to subscribe, and missed the create.
    ok(site_dir, "ws", "create", "--image", IMAGE, "--name", "cli-watch-mark")
    proc = subprocess.Popen(
        [sys.executable, "-c", ws, "-o", "json", "watch"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=cli_env(site_dir),
        cwd=ROOT,
    )
    lines: list[str] = []

    def read() -> None:
        for line in proc.stdout or ():
            lines.append(line)

    reader = threading.Thread(target=read, daemon=True)
    reader.start()

    def states(name: str) -> list[str]:
        events = [json.loads(line) for line in list(lines)]
        return [e["workspace"]["state"] for e in events if e["workspace"]["name"] == name]

    try:
        until(lambda: states("cli-watch-mark"), "the watch's snapshot: it has subscribed")
        ok(site_dir, "ws", "create", "--image", IMAGE, "--name", "cli-watch", "--wait")
        ok(site_dir, "ws", "destroy", "cli-watch", "--wait")
        until(lambda: "TERMINATED" in states("cli-watch"), "the watch to print TERMINATED")
        proc.send_signal(signal.SIGINT)
        proc.wait(60)
        reader.join(60)
        err = proc.stderr.read() if proc.stderr else ""
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        ok(site_dir, "ws", "destroy", "cli-watch-mark", "--wait")
    # Ended by Ctrl-C as every wait of ws is: exit 130 and one word on stderr (it was 0).
    assert proc.returncode == 130, err
    assert "Traceback" not in err and err.splitlines()[-1] == "ws: interrupted", err
    states_seen = states("cli-watch")
    assert states_seen[-1] == "TERMINATED" and "RUNNING" in states_seen
    assert len(states_seen) == len(set(states_seen)) or states_seen.count("RUNNING") == 1


def test_site_down_leaves_no_process_and_restarts_after_a_crash(tmp_path: Path) -> None:
    d = tmp_path / "site2"
    ok(d, "admin", "site", "up", "--dir", str(d))
    rec = local.read_record(d)
    assert rec is not None and rec.address == f"unix:{d}/service.sock"
    # A crash: both daemons die without cleaning up (we started them; we kill them by pid).
    for pid in (rec.service_pid, rec.agent_pid):
        os.kill(pid, signal.SIGKILL)
        assert wait_gone(pid)
    st = run(d, "admin", "site", "status", "--dir", str(d))
    assert st.code == 3 and "NOT RUNNING" in st.out
    r = ok(d, "admin", "site", "up", "--dir", str(d))
    assert "already" not in r.out
    new = local.read_record(d)
    assert new is not None and {new.service_pid, new.agent_pid}.isdisjoint(
        {rec.service_pid, rec.agent_pid}
    )
    assert ok(d, "ws", "-o", "json", "list").json() == []
    ok(d, "admin", "site", "down", "--dir", str(d))
    for pid in (new.service_pid, new.agent_pid):
        assert wait_gone(pid), f"pid {pid} still running after site down"
    assert local.read_record(d) is None
    assert (d / "service" / "service.db").exists()  # the data stays
    assert run(d, "admin", "site", "status", "--dir", str(d)).code == 3
    assert "no site running" in ok(d, "admin", "site", "down", "--dir", str(d)).out


def test_a_site_keeps_its_state_and_driver_until_purged(tmp_path: Path) -> None:
    d = tmp_path / "site3"
    ok(d, "admin", "site", "up", "--driver", "fake", "--dir", str(d))
    disk = tmp_path / "disk.img"
    disk.write_bytes(os.urandom(1024 * 1024 + 512))
    ok(d, "admin", "image", "import", "kept-img", str(disk))
    ok(d, "ws", "create", "--image", "kept-img", "--name", "kept", "--wait")
    (d / "notes.txt").write_text("not the site's")
    ok(d, "admin", "site", "down", "--dir", str(d))
    # another driver for the existing site: refused, nothing started
    r = run(d, "admin", "site", "up", "--driver", "libvirt", "--dir", str(d))
    assert r.code == 1 and "driver fake" in r.err and "site down --purge" in r.err, r.err
    assert local.read_record(d) is None and not (d / "libvirt").exists()
    r = run(d, "admin", "site", "up", "--nodes", "2", "--dir", str(d))
    assert r.code == 1 and "1 node(s)" in r.err and "--purge" in r.err, r.err
    assert local.read_record(d) is None
    # up without --driver: the recorded one, with the old workspace still there
    r = ok(d, "admin", "site", "up", "--dir", str(d))
    assert "driver fake" in r.out
    assert ok(d, "ws", "-o", "json", "show", "kept").json()["state"] == "RUNNING"  # type: ignore[index]
    rec = local.read_record(d)
    assert rec is not None
    # down --purge: stopped, and everything the site wrote is gone (nothing else)
    r = ok(d, "admin", "site", "down", "--purge", "--dir", str(d))
    assert f"purged {d}" in r.out
    for pid in (rec.service_pid, rec.agent_pid):
        assert wait_gone(pid), f"pid {pid} still running after site down --purge"
    assert sorted(p.name for p in d.iterdir()) == ["notes.txt"]
    # a clean slate: no refusal any more, no old workspace
    ok(d, "admin", "site", "up", "--driver", "fake", "--dir", str(d))
    try:
        assert ok(d, "ws", "-o", "json", "list").json() == []
    finally:
        ok(d, "admin", "site", "down", "--purge", "--dir", str(d))
    assert sorted(p.name for p in d.iterdir()) == ["notes.txt"]
