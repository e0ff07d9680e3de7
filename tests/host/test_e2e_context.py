"""End to end on real VMs: into the guest, as a scientist would get there.

An all-in-one site (`ws-admin site up --driver libvirt`) in its own network namespace, the
Debian cloud appliance pushed with `ws image push`, the user's SSH key added with
`ws key add`, and a 3-member virtual cluster booted from it with a user-data script.
Everything below goes through the `ws` CLI, the way a user types it:

* `ws ssh` logs in to every member with the user's key and strict host key checking
  against the host keys the service generated (a wrong key is refused by ssh);
* every member's /etc/hosts lists all three members; member 0 logs in to member 2 with
  the cluster's own key (what MPI launchers need), strictly too;
* the user-data script ran (the head's from the spec, the workers' from `ws cluster
  create --user-data`); `cloud-init status` says done;
* `ws scp` copies files and directories up and down (-r), with the same checks;
  `ws cluster scp` to and from every member at once; `ws ssh -N -L` forwards a port of the
  host (not the node's namespace) to the guest until ws is ended;
* `ws exec` and `ws cluster exec` run commands through the QEMU guest agent (output,
  exit codes, stdin, a missing command, a killed one, a timeout, output over the node's
  cap, one member made to fail, a stopped member, an image without a guest agent);
* `ws console --attach` talks to the serial console both ways;
* `ws cluster scale ctx --role worker --count 3 --wait`: the new member boots with the
  three-worker roster in its seed, and the running members' /etc/hosts and
  /etc/workspace/cluster.json are rewritten through their guest agents to list it;
  `--count 2` removes it and the rosters drop it again;
* the workers' role asks a blank ext4 disk (`blank = [...]` in the spec): every worker,
  the grown one too, has it at /mnt/scratch, the head has none;
* a single workspace beside them, made with `--blank scratch:1GiB:ext4 --blank raw:64MiB`,
  has the ext4 disk mounted at /mnt/scratch for the login user and the other left
  alone, a default route through its network's gateway, and a cloud-config that
  cloud-init's own schema check accepts; `ws reboot --wait` reboots it cleanly (its
  previous boot's journal ends with the shutdown) and SSH and the mount come back;
* the site's network names a DNS server (a dnsmasq the test runs on the gateway address,
  which alone knows one test name): the guests' /etc/resolv.conf lists it and the name
  resolves in them; `ws-admin network set --dns` adds a second one: the node's dnsmasq
  offers both within seconds, and the running guest keeps its first boot's;
* `ws image save` of the stopped single workspace and `ws update --cpus 2 --memory-mib
  768` of it: a copy made from the saved image and the resized original boot at once,
  the copy with the original's files but its own name, host keys and the scientist's
  current keys, the original with 2 vCPUs and the new memory;
* destroying the cluster and the workspace leaves no seed ISO on the node.

The guests boot in parallel (one cluster, ~1-2 min under TCG on two cores) and are
shared by the tests of this module. Later boots come in pairs, so both cores work: the
single workspace reboots while the cluster grows, and the saved copy boots beside the
resized original.
"""

from __future__ import annotations

import contextlib
import hashlib
import ipaddress
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import pytest

from images import cloud
from images.appliance import Appliance
from tests.host.realsite import ROOT, CliSite, Proc, local_site, realvm_lock
from workspace.site.configs import DEFAULT_NETWORK

# TCG boots on a shared machine can outlast the suite's default 300 s per test, which
# pytest-timeout charges the module's fixture to the first test.
pytestmark = [pytest.mark.host, pytest.mark.timeout(1200)]

CLUSTER = "ctx"
MEMBERS = ("ctx-head-0", "ctx-worker-0", "ctx-worker-1")
GROWN = "ctx-worker-2"  # what `ws cluster scale ... --count 3` adds
SOLO = "scratchy"  # a single workspace with blank disks
ALL = {*MEMBERS, GROWN}
ROSTER_S = 300.0  # the service pushes a roster within seconds; a retry waits longer
READY_S = 600.0  # four cloud-init boots at once under TCG on two cores
MARKER = "user-data-ran"
# The network's DNS server: a dnsmasq on the gateway address that knows only this name.
DNS_NAME = "probe.ws-site.test"
DNS_ANSWER = "192.0.2.80"
USER_DATA = f"""#!/bin/sh
echo {MARKER} $(hostname) > /var/tmp/user-data.out
"""


class CloudSite(CliSite):
    """A local site with the cloud image and the scientist's SSH key."""

    def __init__(self, site_dir: Path, home: Path) -> None:
        super().__init__(site_dir, home)
        self.key = home / ".ssh" / "id_ed25519"

    def ssh(
        self, name: str, *cmd: str, timeout: float = 60.0, key: Path | None = None
    ) -> subprocess.CompletedProcess[str]:
        return self.ws("ssh", "-i", str(key or self.key), name, "--", *cmd, timeout=timeout)

    def node_workspace_dirs(self) -> Path:
        record = json.loads((self.dir / "site.json").read_text())
        return Path(str(record["agents"][0]["dir"]))


def wait_ssh(
    site: CloudSite, names: tuple[str, ...], timeout_s: float, key: Path | None = None
) -> None:
    """Until `ws ssh NAME -- cloud-init status --wait` succeeds on every member (with
    ``key``, else the scientist's first key)."""
    deadline = time.monotonic() + timeout_s
    pending = list(names)
    last = ""
    while pending and time.monotonic() < deadline:
        name = pending[0]
        # The guest ends the wait itself (124), so no ssh is left behind; a session
        # that hangs anyway is cut by the timeout here. Either way: ask again.
        left = int(max(10.0, min(120.0, deadline - time.monotonic())))
        cmd = ("timeout", str(left), "cloud-init", "status", "--wait")
        try:
            out = site.ssh(name, *cmd, timeout=left + 30.0, key=key)
        except subprocess.TimeoutExpired:
            last = f"{name}: no answer within {left + 30} s"
            continue
        if out.returncode == 0:
            pending.pop(0)
            continue
        last = out.stderr + out.stdout
        time.sleep(3.0)
    assert not pending, f"no SSH into {pending} after {timeout_s:.0f} s; last: {last}"


@pytest.fixture(scope="module")
def cloud_image() -> cloud.CloudAppliance:
    return cloud.build()


@contextlib.contextmanager
def dns_server(site: CloudSite) -> Iterator[None]:
    """The site's network made again with its gateway as DNS server (as an admin would
    create it on a real site, `--dns`), and a DNS-only dnsmasq answering there, in the
    node's namespace, for ``DNS_NAME`` alone (nothing is forwarded anywhere). It binds
    the gateway address when the agent puts it on the bridge (``--bind-dynamic``); it
    is stopped by its pid (``ip netns exec`` execs it) however the block ends."""
    net = DEFAULT_NETWORK
    hosts = ipaddress.ip_network(net.subnet)
    site.admin("network", "delete", net.name)
    site.admin(
        *("network", "create", net.name, "--subnet", net.subnet, "--gateway", net.gateway),
        *("--bridge", net.bridge, "--dns", net.gateway),
        # The subnet's last host is left out of the range: a second DNS server there
        # (a DNS server may not be an address a workspace could be given).
        *("--range", f"{hosts[2]}-{hosts[-3]}"),
    )
    netns = json.loads((site.dir / "site.json").read_text())["netns"]
    with (site.dir / "dns-server.log").open("wb") as log:
        server = subprocess.Popen(
            ["ip", "netns", "exec", netns, "dnsmasq", "--keep-in-foreground",
             "--conf-file=/dev/null", f"--listen-address={net.gateway}", "--bind-dynamic",
             "--port=53", "--no-resolv", "--no-hosts", f"--host-record={DNS_NAME},{DNS_ANSWER}",
             "--log-queries", "--log-facility=-"],
            stdout=log, stderr=subprocess.STDOUT,
        )  # fmt: skip
    try:
        yield
    finally:
        server.terminate()
        server.wait(timeout=30)


@pytest.fixture(scope="module")
def site(cloud_image: cloud.CloudAppliance, appliance: Appliance) -> Iterator[CloudSite]:
    with contextlib.ExitStack() as stack:
        site_dir, home = stack.enter_context(local_site("ws-ctx"))
        s = CloudSite(site_dir, home)
        s.key.parent.mkdir(mode=0o700)
        subprocess.run(
            ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "scientist", "-f", str(s.key)],
            check=True,
        )
        s.admin("site", "up", "--driver", "libvirt", "--dir", str(site_dir))
        stack.enter_context(dns_server(s))
        s.ok("image", "push", "cloud", "--manifest", str(cloud_image.manifest))
        s.admin("image", "import", "appliance", "--appliance", str(appliance.manifest.parent))
        s.ok("key", "add", f"{s.key}.pub")
        spec = site_dir / "ctx.toml"
        spec.write_text(
            f'name = "{CLUSTER}"\n'
            "[[members]]\n"
            'role = "head"\nimage = "cloud"\nmemory_mib = 768\n'
            f"user_data = '''{USER_DATA}'''\n"
            "[[members]]\n"
            'role = "worker"\nimage = "cloud"\nmemory_mib = 768\ncount = 2\n'
            'blank = ["scratch:1GiB:ext4"]\n'
        )
        # The workers' context comes from --user-data (the roles the spec gives none).
        context = site_dir / "ctx-user-data"
        context.write_text(USER_DATA)
        with realvm_lock():
            s.ok(
                *("cluster", "create", "--spec", str(spec), "--user-data", str(context)),
                *("--wait", "--timeout", "300"),
            )
            s.ok(
                *("create", "--image", "cloud", "--name", SOLO, "--memory-mib", "512"),
                *("--blank", "scratch:1GiB:ext4", "--blank", "raw:64MiB", "--wait"),
            )
            wait_ssh(s, (*MEMBERS, SOLO), READY_S)
        yield s


def node_ssh(site: CloudSite, address: str, *args: str) -> Proc:
    """Plain ssh (not `ws ssh`) as debian@address from the node's namespace, with
    ``args`` and no prompt nor the host's own known hosts."""
    netns = json.loads((site.dir / "site.json").read_text())["agents"][0]["netns"]
    return subprocess.run(
        ["ip", "netns", "exec", netns, "ssh", "-oBatchMode=yes", "-oGlobalKnownHostsFile=/dev/null",
         *args, f"debian@{address}", "true"],
        capture_output=True, text=True, timeout=60, env=site.env, check=False,
    )  # fmt: skip


def test_ssh_logs_in_to_every_member_with_the_users_key(site: CloudSite) -> None:
    for name in MEMBERS:
        out = site.ssh(name, "hostname")
        assert out.returncode == 0, out.stderr
        assert out.stdout.strip() == name
        shown = site.show(name)
        assert shown["login_user"] == "debian"
        whoami = site.ssh(name, "id", "-un")
        assert whoami.stdout.strip() == "debian"


def test_host_keys_are_checked_strictly(site: CloudSite, tmp_path: Path) -> None:
    """Each guest presents exactly the host key the service shows for it: ssh with that
    key succeeds, and with another member's key for the same address ssh refuses."""
    head, worker = site.show(MEMBERS[0]), site.show(MEMBERS[2])
    head_keys, worker_keys = head["host_keys"], worker["host_keys"]
    assert isinstance(head_keys, list) and isinstance(worker_keys, list)
    assert head_keys and worker_keys and set(head_keys).isdisjoint(worker_keys)
    nics = head["nics"]
    assert isinstance(nics, list)
    address = nics[0]["ip"]
    printed = site.ok("ssh", "--print", MEMBERS[0], "--", "true")
    # The command `ws ssh` runs checks host keys strictly against its own known_hosts,
    # which --print keeps for the command printed (removed here, once read).
    assert "StrictHostKeyChecking=yes" in printed
    found = re.search(r"UserKnownHostsFile=(\S+)", printed)
    assert found is not None, printed
    known = Path(found.group(1))
    assert f"{address} {head_keys[0].split()[0]}" in known.read_text()
    shutil.rmtree(known.parent)
    wrong = tmp_path / "known_hosts"
    wrong.write_text("".join(f"{address} {k}\n" for k in worker_keys))
    strict = ("-oStrictHostKeyChecking=yes", f"-oUserKnownHostsFile={wrong}")
    proc = node_ssh(site, address, "-i", str(site.key), *strict)
    assert proc.returncode != 0
    assert "host key" in proc.stderr.lower()


def test_sshd_offers_keys_only(site: CloudSite) -> None:
    """Without a key, ssh gets no other way in: the guest's sshd offers public keys
    alone (no password, no keyboard-interactive), as the image's sshd drop-in says."""
    nics = site.show(MEMBERS[1])["nics"]
    assert isinstance(nics, list)
    no_key = ("-oPubkeyAuthentication=no", "-oStrictHostKeyChecking=no")
    proc = node_ssh(site, nics[0]["ip"], *no_key, "-oUserKnownHostsFile=/dev/null")
    assert proc.returncode == 255
    assert "Permission denied (publickey)." in proc.stderr, proc.stderr


def test_every_member_knows_every_member(site: CloudSite) -> None:
    addresses = {}
    for name in MEMBERS:
        nics = site.show(name)["nics"]
        assert isinstance(nics, list)
        addresses[name] = nics[0]["ip"]
    for name in MEMBERS:
        hosts = site.ssh(name, "cat", "/etc/hosts").stdout
        for other, address in addresses.items():
            assert re.search(rf"^{re.escape(address)}\s+{other}\b", hosts, re.M), (name, hosts)
        roster = json.loads(site.ssh(name, "cat", "/etc/workspace/cluster.json").stdout)
        assert roster["cluster"] == CLUSTER
        assert {m["name"] for m in roster["members"]} == set(MEMBERS)
        me = [m for m in roster["members"] if m["name"] == name]
        assert len(me) == 1 and (roster["role"], roster["index"]) == (me[0]["role"], me[0]["index"])


def test_member_0_logs_in_to_member_2_with_the_cluster_key(site: CloudSite) -> None:
    out = site.ssh(
        MEMBERS[0],
        "ssh",
        "-o",
        "BatchMode=yes",
        "-o",
        "StrictHostKeyChecking=yes",
        MEMBERS[2],
        "hostname",
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == MEMBERS[2]


def test_user_data_ran_and_cloud_init_is_done(site: CloudSite) -> None:
    for name in MEMBERS:
        assert site.ssh(name, "cat", "/var/tmp/user-data.out").stdout.split() == [MARKER, name]
        status = site.ssh(name, "cloud-init", "status")
        assert "status: done" in status.stdout, status.stdout + status.stderr


def test_ws_cluster_scp_reaches_every_member(site: CloudSite, tmp_path: Path) -> None:
    """`ws cluster scp`: one file up to every member at once, and each member's
    /etc/hostname down into a directory named after it."""
    data = os.urandom(64 * 1024)
    (tmp_path / "input.dat").write_bytes(data)
    key = ("-i", str(site.key))
    out = site.ok("cluster", "scp", CLUSTER, *key, str(tmp_path / "input.dat"), ":/tmp/")
    assert out.splitlines()[-1] == "3 members: 3 copied", out
    ran = json.loads(site.ok("-o", "json", "cluster", "exec", CLUSTER, "--", "sha256sum",
                             "/tmp/input.dat"))  # fmt: skip
    digest = hashlib.sha256(data).hexdigest()
    assert sorted(m["name"] for m in ran["members"]) == sorted(MEMBERS)
    assert all(m["stdout"].split()[0] == digest for m in ran["members"]), ran
    into = tmp_path / "names"
    site.ok("cluster", "scp", CLUSTER, *key, ":/etc/hostname", str(into))
    assert {p.name: (p / "hostname").read_text().strip() for p in into.iterdir()} == {
        name: name for name in MEMBERS
    }


def _banner(port: int) -> str:
    """What a TCP server on the host's 127.0.0.1:PORT says first ("" if nothing does)."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
            return s.recv(64).decode(errors="replace").strip()
    except OSError:
        return ""


def test_ws_ssh_forwards_a_host_port_until_it_is_ended(site: CloudSite) -> None:
    """`ws ssh -N -L 127.0.0.1:0:localhost:22 NAME` on the local site: ssh runs in the
    node's namespace, yet the port (a free one, which ws names) is the host's, and it
    reaches the guest's own sshd; SIGTERM to ws ends ssh and the forward."""
    argv = ["ssh", "-i", str(site.key), "-N", "-L", "127.0.0.1:0:localhost:22", MEMBERS[2]]
    tunnel = subprocess.Popen(
        [sys.executable, "-m", "workspace.cli.ws", *argv], env=site.env, cwd=ROOT,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert tunnel.stderr is not None
        said = tunnel.stderr.readline()
        if "sshd does not answer yet" in said:  # a guest still booting: ws says it waits
            said = tunnel.stderr.readline()
        found = re.match(r"ws: forwarding 127\.0\.0\.1:(\d+) to localhost:22 ", said)
        assert found, said
        port = int(found.group(1))
        deadline = time.monotonic() + 60
        while not (got := _banner(port)) and time.monotonic() < deadline:
            if tunnel.poll() is not None:
                break
            time.sleep(1)
        assert got.startswith("SSH-2.0-OpenSSH"), got
    finally:
        tunnel.terminate()
        _, err = tunnel.communicate(timeout=30)
    assert _banner(port) == "", err  # the forward ended with ws


def test_ws_scp_copies_files_and_directories_both_ways(site: CloudSite, tmp_path: Path) -> None:
    """`ws scp` with the user's key, the guest's host keys checked against the service's
    (strictly, as `ws ssh`), from and into the node's namespace: up, down, -r."""
    data = os.urandom(256 * 1024)
    up = tmp_path / "up"
    (up / "sub").mkdir(parents=True)
    (up / "sub" / "blob").write_bytes(data)
    (up / "note.txt").write_text("hello\n")
    key = ("-i", str(site.key))
    name = MEMBERS[1]
    site.ok("scp", *key, "-r", str(up), f"{name}:/tmp/")
    sums = site.ssh(name, "sha256sum", "/tmp/up/sub/blob", "/tmp/up/note.txt").stdout.split()
    assert sums[0::2] == [hashlib.sha256(data).hexdigest(), hashlib.sha256(b"hello\n").hexdigest()]

    back = tmp_path / "back"
    back.mkdir()
    site.ok("scp", *key, f"{name}:/tmp/up/note.txt", f"{name}:/etc/hostname", str(back))
    assert (back / "note.txt").read_text() == "hello\n"
    assert (back / "hostname").read_text().strip() == name
    site.ok("scp", *key, "-r", f"{name}:/tmp/up", str(back))
    assert (back / "up" / "sub" / "blob").read_bytes() == data
    missing = site.ws("scp", *key, f"{name}:/tmp/none", str(back))
    assert missing.returncode == 1 and "No such file" in missing.stderr, missing.stderr


def test_exec_through_the_guest_agent(site: CloudSite) -> None:
    """`ws exec` through the node's libvirt driver and the guest's qemu-guest-agent: the
    command's output, exit code and stdin; a command that does not exist (127), one
    killed (137), one past its timeout, and output over the node's cap (cut, said)."""
    out = site.ws("exec", MEMBERS[1], "--", "cat", "/etc/hostname")
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == MEMBERS[1]
    failed = site.ws("exec", MEMBERS[1], "--", "sh", "-c", "echo out; echo oops >&2; exit 3")
    assert (failed.returncode, failed.stdout, failed.stderr) == (3, "out\n", "oops\n")
    shown = json.loads(site.ok("-o", "json", "exec", MEMBERS[1], "--", "echo", "hi"))
    assert (shown["exit_code"], shown["stdout"], shown["timed_out"]) == (0, "hi\n", False)
    given = site.ws("exec", MEMBERS[1], "--stdin", "--", "cat", stdin="from stdin")
    assert (given.returncode, given.stdout) == (0, "from stdin")
    missing = site.ws("exec", MEMBERS[1], "--", "no-such-command")
    assert missing.returncode == 127 and "no-such-command" in missing.stderr
    killed = site.ws("exec", MEMBERS[1], "--", "sh", "-c", "kill -9 $$")
    assert killed.returncode == 137
    slow = site.ws("exec", MEMBERS[1], "--timeout", "2", "--", "sleep", "30")
    assert slow.returncode == 124 and "ran past its timeout" in slow.stderr
    # Over the node's exec_max_output_bytes (1 MiB by default): the first MiB, and why.
    big = site.ws("exec", MEMBERS[1], "--", "sh", "-c", "head -c 1100000 /dev/zero | tr '\\0' x")
    assert big.returncode == 0 and big.stdout == "x" * 1024 * 1024
    assert f"ws: the output of sh in {MEMBERS[1]} was cut (too long)" in big.stderr


def test_cluster_exec_reports_every_member(site: CloudSite) -> None:
    cmd = ("--", "sh", "-c", f'test "$(hostname)" != {MEMBERS[2]}')
    out = site.ws("cluster", "exec", CLUSTER, *cmd)
    assert out.returncode != 0
    for name in MEMBERS:
        assert name in out.stdout
    report = json.loads(site.ws("-o", "json", "cluster", "exec", CLUSTER, *cmd).stdout)
    codes = {m["name"]: m["exit_code"] for m in report["members"]}
    assert codes == {MEMBERS[0]: 0, MEMBERS[1]: 0, MEMBERS[2]: 1}
    workers = site.ws("cluster", "exec", CLUSTER, "--role", "worker", "--", "true")
    assert workers.returncode == 0 and MEMBERS[0] not in workers.stdout


def test_interactive_console(site: CloudSite) -> None:
    """Keystrokes reach the serial console and its answers come back; Ctrl-] detaches.
    Enter until the guest's getty shows its login prompt, then a user name: the guest
    echoes it and asks for the password."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "workspace.cli.ws", "console", "--attach", MEMBERS[0]],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=site.env,
        cwd=ROOT,
    )
    stdin, stdout = proc.stdin, proc.stdout
    assert stdin is not None and stdout is not None
    seen = bytearray()

    def read() -> None:
        while chunk := os.read(stdout.fileno(), 4096):
            seen.extend(chunk)

    threading.Thread(target=read, daemon=True).start()

    def until(text: bytes, keys: bytes) -> bool:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and text not in seen:
            stdin.write(keys)
            stdin.flush()
            time.sleep(1.0)
        return text in seen

    try:
        assert until(b"login:", b"\r"), bytes(seen)
        assert until(b"Password:", b"nobody-here\r"), bytes(seen)
        assert b"nobody-here" in seen  # echoed by the guest's terminal
        stdin.write(b"\x1d")
        stdin.flush()
        assert proc.wait(timeout=30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_exec_refusals(site: CloudSite) -> None:
    """No guest agent (the busybox appliance), and a stopped workspace: clear errors."""
    site.ok("create", "--image", "appliance", "--name", "bare", "--memory-mib", "256", "--wait")
    out = site.ws("exec", "bare", "--timeout", "10", "--", "true")
    assert out.returncode != 0 and "guest agent" in out.stderr
    site.ok("stop", "bare", "--wait", "--force")
    out = site.ws("exec", "bare", "--", "true")
    assert out.returncode != 0 and "STOPPED" in out.stderr
    site.ok("destroy", "bare", "--wait")


def _scratch(site: CloudSite, name: str) -> list[str]:
    """What is mounted at /mnt/scratch in ``name`` (fstype, target) and its owner."""
    out = site.ssh(
        name, "findmnt -n -r -o FSTYPE,TARGET /mnt/scratch; stat -c %U /mnt/scratch; echo end"
    )
    lines = out.stdout.splitlines()
    assert lines[-1:] == ["end"], (name, out.stderr)  # logged in, the commands ran
    return lines[:-1]


def test_a_roles_blank_disk_is_every_workers_and_not_the_heads(site: CloudSite) -> None:
    for worker in MEMBERS[1:]:
        assert _scratch(site, worker) == ["ext4 /mnt/scratch", "debian"], worker
    assert _scratch(site, MEMBERS[0]) == []


def test_an_ext4_blank_disk_is_mounted_for_the_login_user(site: CloudSite) -> None:
    # One command line: ssh hands the remote shell its words joined by spaces.
    out = site.ssh(
        SOLO,
        "findmnt -n -r -o FSTYPE,TARGET /mnt/scratch; stat -c %U /mnt/scratch; "
        "touch /mnt/scratch/mine && echo wrote; lsblk -n -r -o SIZE,FSTYPE,MOUNTPOINT",
    )
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert lines[:3] == ["ext4 /mnt/scratch", "debian", "wrote"], out.stdout
    disks = [line.split(" ") for line in lines[3:]]
    assert ["1G", "ext4", "/mnt/scratch"] in disks
    assert ["64M", "", ""] in disks  # the blank without a filesystem: left to the user


def test_the_guest_has_its_default_route_and_a_valid_cloud_config(site: CloudSite) -> None:
    gateway = site.show(SOLO)["nics"][0]["gateway"]  # type: ignore[index]
    out = site.ssh(SOLO, "ip -4 route show default; sudo cloud-init schema --system")
    assert out.returncode == 0, out.stdout + out.stderr
    assert out.stdout.splitlines()[0].startswith(f"default via {gateway} "), out.stdout


def test_names_resolve_through_the_networks_dns_server(site: CloudSite) -> None:
    for name in (SOLO, MEMBERS[1]):
        out = site.ssh(name, f"cat /etc/resolv.conf; getent hosts {DNS_NAME}")
        assert out.returncode == 0, out.stderr + out.stdout
        lines = out.stdout.splitlines()
        assert f"nameserver {DEFAULT_NETWORK.gateway}" in lines
        assert lines[-1].split() == [DNS_ANSWER, DNS_NAME]
    asked = (site.dir / "dns-server.log").read_text()
    assert f"query[A] {DNS_NAME} from {site.show(SOLO)['nics'][0]['ip']}" in asked  # type: ignore[index]


def test_new_dns_servers_reach_the_nodes_dhcp_server_and_made_guests_keep_theirs(
    site: CloudSite,
) -> None:
    """`ws-admin network set --dns`: the node's real dnsmasq is restarted offering the
    new list (within seconds: the node is sent its orders again); a guest cloud-init
    configured keeps what its first boot set, and resolving still works there."""
    net = DEFAULT_NETWORK
    other = str(ipaddress.ip_network(net.subnet)[-2])  # in the subnet, not its range; never asked
    pid_file = site.node_workspace_dirs() / "agent" / "dhcp" / net.bridge / "dnsmasq.pid"

    def offered() -> str:
        with contextlib.suppress(OSError, ValueError):
            argv = Path(f"/proc/{int(pid_file.read_text())}/cmdline").read_bytes().split(b"\0")
            found = [a.decode() for a in argv if a.startswith(b"--dhcp-option=option:dns")]
            return found[0] if found else ""
        return ""

    assert offered() == f"--dhcp-option=option:dns-server,{net.gateway}"
    out = site.admin("network", "set", net.name, "--dns", net.gateway, "--dns", other)
    assert f"{net.gateway},{other}" in out
    want = f"--dhcp-option=option:dns-server,{net.gateway},{other}"
    deadline = time.monotonic() + 30
    while offered() != want and time.monotonic() < deadline:
        time.sleep(0.5)
    assert offered() == want
    check = site.ssh(SOLO, f"cat /etc/resolv.conf; getent hosts {DNS_NAME}")
    assert check.returncode == 0, check.stderr + check.stdout
    assert f"nameserver {other}" not in check.stdout.splitlines()
    assert check.stdout.splitlines()[-1].split() == [DNS_ANSWER, DNS_NAME]
    site.admin("network", "set", net.name, "--dns", net.gateway)  # as the module made it


def _roster(site: CloudSite, name: str) -> tuple[set[str], set[str]]:
    """The members named by ``name``'s /etc/workspace/cluster.json and /etc/hosts."""
    text = site.ws("exec", name, "--", "cat", "/etc/workspace/cluster.json").stdout
    try:
        listed = {m["name"] for m in json.loads(text)["members"]}
    except (ValueError, KeyError):
        listed = set()
    hosts = site.ws("exec", name, "--", "cat", "/etc/hosts").stdout
    named = {p[1] for p in map(str.split, hosts.splitlines()) if len(p) > 1 and p[1] in ALL}
    return listed, named


def _rosters_become(site: CloudSite, names: tuple[str, ...], want: set[str]) -> None:
    deadline = time.monotonic() + ROSTER_S
    pending = list(names)
    last: tuple[set[str], set[str]] = (set(), set())
    while pending:
        last = _roster(site, pending[0])
        if last == (want, want):
            pending.pop(0)
            continue
        assert time.monotonic() < deadline, (pending[0], last, want)
        time.sleep(3.0)


@pytest.fixture(scope="module")
def solo_reboot(site: CloudSite) -> Iterator[Future[Proc]]:
    """`ws reboot SOLO --wait`, begun when a test first asks for it and run in the
    background: the scale test asks first, so the reboot and the grown member's boot
    share the two cores instead of taking them in turn; the reboot test takes its end."""
    with ThreadPoolExecutor(max_workers=1) as pool:
        yield pool.submit(site.ws, "reboot", SOLO, "--wait", "--timeout", "600", timeout=660)


def test_scale_grows_and_shrinks_and_the_running_members_learn_it(
    site: CloudSite, solo_reboot: Future[Proc]
) -> None:
    """Meanwhile, the single workspace reboots (``solo_reboot``): two operations of one
    scientist at once, each ending as it would alone."""
    with realvm_lock():
        out = site.ok("cluster", "scale", CLUSTER, "--role", "worker", "--count", "3", "--wait",
                      "--timeout", "600", timeout=660)  # fmt: skip
        assert f"added {GROWN}" in out
        wait_ssh(site, (GROWN,), READY_S)
        solo_reboot.result()  # both boots end inside the lock
    assert _scratch(site, GROWN) == ["ext4 /mnt/scratch", "debian"]  # the role's disk
    ran = site.ssh(GROWN, "cat", "/var/tmp/user-data.out").stdout.split()
    assert ran == [MARKER, GROWN]  # and the role's context, given by --user-data
    _rosters_become(site, (GROWN,), ALL)  # from its seed
    _rosters_become(site, MEMBERS, ALL)  # pushed through the guest agents
    me = json.loads(site.ws("exec", MEMBERS[1], "--", "cat", "/etc/workspace/cluster.json").stdout)
    assert me["name"] == MEMBERS[1]

    out = site.ok("cluster", "scale", CLUSTER, "--role", "worker", "--count", "2", "--wait")
    assert f"removing {GROWN}" in out
    shown = json.loads(site.ok("-o", "json", "cluster", "show", CLUSTER))
    assert sorted(m["name"] for m in shown["members"]) == sorted(MEMBERS)
    _rosters_become(site, MEMBERS, set(MEMBERS))


def test_a_reboot_is_clean_and_ssh_and_the_mount_come_back(
    site: CloudSite, solo_reboot: Future[Proc]
) -> None:
    rebooted = solo_reboot.result()
    assert rebooted.returncode == 0, rebooted.stderr
    wait_ssh(site, (SOLO,), READY_S)  # the host key survived: sshd starts
    out = site.ssh(SOLO, "ls /mnt/scratch; sudo journalctl -b -1 -q --no-pager -n 30")
    assert out.returncode == 0, out.stderr
    assert "mine" in out.stdout.split()
    assert "systemd-shutdown" in out.stdout, out.stdout  # shut down, not reset


def test_a_stopped_workspace_saved_and_resized_boots_beside_its_copy(site: CloudSite) -> None:
    """`ws image save` of the stopped VM, then `ws update --cpus 2 --memory-mib 768` of
    it; the copy (a new workspace of the saved image) and the resized original boot at
    once. The copy has the file the first one wrote, its own hostname and host keys (ssh
    checks them strictly), and of the keys the service gave the first one only those it
    was given itself (the scientist changed keys in between); the original has its new
    size and what it wrote before its save."""
    site.sh(SOLO, "echo kept-by-save > /etc/ws-saved && sync")
    site.ok("stop", SOLO, "--wait", "--timeout", "300")
    saved = json.loads(site.ok("-o", "json", "image", "save", SOLO, "cloud-saved:1"))
    assert [(p["name"], p["format"]) for p in saved["partitions"]] == [("root", "qcow2")]
    assert (saved["context"], saved["login_user"]) == ("nocloud", "debian")
    site.ok("update", SOLO, "--cpus", "2", "--memory-mib", "768")
    shown = site.show(SOLO)
    assert (shown["cpus"], shown["memory_mib"], shown["state"]) == (2, 768, "STOPPED")
    # The scientist's key changes: the copy gets the new one only.
    new_key = site.key.with_name("id_new")
    subprocess.run(
        ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "new", "-f", str(new_key)],
        check=True,
    )
    old = json.loads(site.ok("-o", "json", "key", "list"))
    site.ok("key", "add", f"{new_key}.pub")
    for k in old:
        site.ok("key", "remove", k["fingerprint"])
    try:
        with realvm_lock():
            site.ok("create", "--image", "cloud-saved:1", "--name", "copied", "--memory-mib", "512")
            site.ok("start", SOLO, "--wait", "--timeout", "300")
            wait_ssh(site, ("copied",), READY_S, key=new_key)
            wait_ssh(site, (SOLO,), READY_S)  # its first boot's keys are still its own
    finally:
        site.ok("key", "add", f"{site.key}.pub")
    out = site.ssh("copied", "cat /etc/ws-saved; hostname; cat ~/.ssh/authorized_keys", key=new_key)
    assert out.returncode == 0, out.stderr + out.stdout
    lines = out.stdout.splitlines()
    assert lines[:2] == ["kept-by-save", "copied"]
    assert any(_blob(new_key) in line for line in lines[2:])
    assert not any(_blob(site.key) in line for line in lines[2:]), lines
    site.ok("destroy", "copied", "--wait")
    site.ok("image", "delete", "cloud-saved:1")

    out = site.exec(SOLO, "nproc; grep MemTotal /proc/meminfo; cat /etc/ws-saved; hostname")
    assert out.returncode == 0, out.stderr
    cpus, mem, kept, name = out.stdout.splitlines()
    assert cpus == "2"
    assert 512 * 1024 < int(mem.split()[1]) <= 768 * 1024, mem  # kB; the kernel keeps some
    assert (kept, name) == ("kept-by-save", SOLO)


def _blob(key: Path) -> str:
    """The base64 part of a key pair's public key."""
    return Path(f"{key}.pub").read_text().split()[1]


def test_destroy_leaves_no_seed(site: CloudSite) -> None:
    root = site.node_workspace_dirs()
    assert list(root.rglob("seed.iso")), "the members' seeds should exist while they run"
    site.ok("cluster", "destroy", CLUSTER, "--wait")
    site.ok("destroy", SOLO, "--wait")
    assert not list(root.rglob("seed.iso"))
