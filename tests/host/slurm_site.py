"""A local libvirt site with Debian's slurmctld in its network namespace, driving ws-slurm
(used by tests/host/test_slurm_real.py and benchmarks/slurm_burst.py; not a test module).

* ``ws-admin site up --driver libvirt`` into a temporary directory; a batch user
  ``slurm`` issued with ``ws-admin pki issue user``; the Slurm appliance
  (images/cloud_slurm.py) pushed by that user;
* ws-slurm's config and mapping files, and three wrapper scripts slurmctld runs as
  ResumeProgram, SuspendProgram and ResumeFailProgram (``python -m workspace.slurm``);
* slurmctld (``-D``, its pid recorded; stopped by that pid) inside the site's namespace,
  listening on the bridge's gateway address, ``AuthType=auth/none`` and
  ``CredType=cred/none`` (no munge; slurm.conf written into the guests) or, with
  ``auth="munge"``, munge and configless slurmd; ``SlurmUser=root``, its state, log and pid files in
  the temporary directory, with two partitions of cloud nodes: ``cloud`` (``c[1-2]``,
  booted as workspaces), ``big`` (``b[1-2]``, feature ``huge``, mapped to more memory
  than the node has: their resume is refused, ws-slurm marks them DOWN with the reason)
  and ``dud`` (``d1``, feature ``nosd``: its workspace boots the Slurm image with slurmd
  masked, so it never registers; ResumeFailProgram runs after the partition's short
  ResumeTimeout).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
GATEWAY = "10.213.0.1"  # the local site's bridge address (workspace/site/configs.py)
NODE_MEMORY_MIB = 640
MUNGE_SOCKET = "/run/munge/munge.socket.2"
DUMMY = "wssl-ctl"  # and wssl-ctlp, its veth peer
SUSPEND_TIME_S = 40
RESUME_TIMEOUT_S = 600
BIG_RESUME_TIMEOUT_S = 40
DUD_RESUME_TIMEOUT_S = 30

MAPPING = f"""\
# Written by tests/host/slurm_site.py
[[node]]
feature = "huge"
image = "slurm"
cpus = 1
memory_mib = 524288  # within the service's limit, more than the node has

[[node]]
feature = "nosd"
image = "slurm"
cpus = 1
memory_mib = {NODE_MEMORY_MIB}
# Boots, but slurmd never starts: the node never registers.
user_data = '''#cloud-config
bootcmd:
  - [systemctl, mask, slurmd]
'''

[[node]]
names = "c[1-2]"
image = "slurm"
cpus = 1
memory_mib = {NODE_MEMORY_MIB}
"""


def slurm_conf(d: Path, host: str, auth: str = "none") -> str:
    """The controller's slurm.conf; ws-slurm writes the same file into the guests
    (``slurm_conf_file``): with ``AuthType=auth/none`` slurmd cannot run configless, for
    its configuration request is authenticated with munge before it knows the AuthType.
    The b nodes never boot: placeholder addresses spare slurmctld resolving their names
    (each failed lookup blocks it for seconds)."""
    return f"""\
# Written by tests/host/slurm_site.py: a controller with cloud nodes only.
ClusterName=wssl
SlurmctldHost={host}({GATEWAY})
SlurmUser=root
SlurmdUser=root
AuthType=auth/{auth}
CredType=cred/{auth}
StateSaveLocation={d}/state
SlurmdSpoolDir=/var/spool/slurmd
SlurmctldPidFile={d}/slurmctld.pid
SlurmctldLogFile={d}/slurmctld.log
SlurmctldDebug=info
SlurmdDebug=info
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
MpiDefault=none
ReturnToService=2
SlurmctldParameters=enable_configless
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
SchedulerType=sched/backfill
ResumeProgram={d}/resume.sh
SuspendProgram={d}/suspend.sh
ResumeFailProgram={d}/resume-fail.sh
ResumeTimeout={RESUME_TIMEOUT_S}
SuspendTime={SUSPEND_TIME_S}
SuspendTimeout=30
ResumeRate=0
SuspendRate=0
TreeWidth=65533
# Powered-down cloud nodes are hidden from sinfo and scontrol without this.
PrivateData=cloud
NodeName=c[1-2] CPUs=1 State=CLOUD Feature=cloud
NodeName=b1 NodeAddr=127.0.0.2 CPUs=1 State=CLOUD Feature=huge
NodeName=b2 NodeAddr=127.0.0.3 CPUs=1 State=CLOUD Feature=huge
NodeName=d1 CPUs=1 State=CLOUD Feature=nosd
PartitionName=cloud Nodes=c[1-2] Default=YES MaxTime=INFINITE State=UP
PartitionName=big Nodes=b[1-2] ResumeTimeout={BIG_RESUME_TIMEOUT_S} State=UP
PartitionName=dud Nodes=d1 ResumeTimeout={DUD_RESUME_TIMEOUT_S} State=UP
"""


WRAPPER = """\
#!/bin/sh
# Written by tests/host/slurm_site.py: slurmctld runs this as its {what}.
export SLURM_CONF={conf}
export PYTHONPATH={root}
exec {python} -m workspace.slurm --config {config} {command} "$@"
"""


class SlurmSite:
    def __init__(self, keep: bool = False, auth: str = "none") -> None:
        """``auth="munge"``: munged runs on this host (its default socket) with a key of
        the test's, ws-slurm gives the guests that key (``munge_key_file``) and slurmd runs
        configless; ``"none"``: no munge, slurm.conf written into the guests."""
        self.auth = auth
        self.munged: subprocess.Popen[bytes] | None = None
        self.dir = Path(tempfile.mkdtemp(prefix="wssl-", dir="/var/tmp"))
        self.dir.chmod(0o755)  # dnsmasq (as nobody) reads hosts files below the site
        self.site_dir = self.dir / "site"
        self.slurm_dir = self.dir / "slurm"
        self.identity = self.dir / "slurm-identity"
        self.keep = keep
        self.env = dict(os.environ, PYTHONPATH=str(ROOT), WS_SITE_DIR=str(self.site_dir))
        self.env.pop("WS_IDENTITY", None)
        self.user_env = dict(self.env, WS_IDENTITY=str(self.identity))
        self.slurm_env = dict(os.environ, SLURM_CONF=str(self.slurm_dir / "slurm.conf"))
        self.netns = ""
        self.address = ""
        self.slurmctld: subprocess.Popen[bytes] | None = None
        self.ws_slurm_log = self.slurm_dir / "ws-slurm.log"

    # -- the workspace site ----------------------------------------------------------------

    def cli(
        self, module: str, *args: str, user: bool = False, timeout: float = 600.0
    ) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", module, *args],
            capture_output=True,
            text=True,
            env=self.user_env if user else self.env,
            cwd=ROOT,
            timeout=timeout,
            check=False,
        )

    def ok(self, module: str, *args: str, user: bool = False) -> str:
        out = self.cli(module, *args, user=user)
        if out.returncode != 0:
            raise AssertionError(f"{module} {' '.join(args)}: {out.stderr}{out.stdout}")
        return out.stdout

    def ws(self, *args: str) -> str:
        """`ws` as the batch user."""
        return self.ok("workspace.cli.ws", *args, user=True)

    def workspaces(self) -> list[dict[str, object]]:
        found: list[dict[str, object]] = json.loads(self.ws("-o", "json", "list"))
        return found

    def clusters(self) -> list[dict[str, object]]:
        found: list[dict[str, object]] = json.loads(self.ws("-o", "json", "cluster", "list"))
        return found

    def up(self, manifest: Path) -> None:
        self.ok("workspace.cli.admin", "site", "up", "--driver", "libvirt", "--dir",
                str(self.site_dir))  # fmt: skip
        record = json.loads((self.site_dir / "site.json").read_text())
        self.netns = str(record["agents"][0]["netns"])
        self.address = str(record["address"])
        self.ok("workspace.cli.admin", "pki", "issue", "user", "slurm", "--out",
                str(self.identity))  # fmt: skip
        self.ws("image", "push", "slurm", "--manifest", str(manifest))
        self.write_slurm_files()

    def write_slurm_files(self) -> None:
        d = self.slurm_dir
        (d / "state").mkdir(parents=True)
        (d / "nodes.toml").write_text(MAPPING)
        config = d / "ws-slurm.toml"
        config.write_text(
            "# Written by tests/host/slurm_site.py\n"
            f'service = "{self.address}"\n'
            f'identity = "{self.identity}"\n'
            f'controller = "{GATEWAY}"\n'
            'mapping_file = "nodes.toml"\n'
            f'log_file = "{self.ws_slurm_log}"\n'
            f'lock_file = "{d / "ws-slurm" / "nodes.lock"}"\n'
            + (
                f'slurm_conf_file = "{d / "slurm.conf"}"\n'
                if self.auth == "none"
                else f'munge_key_file = "{d / "munge" / "munge.key"}"\n'
            )
        )
        conf = d / "slurm.conf"
        conf.write_text(slurm_conf(d, socket.gethostname().split(".")[0], self.auth))
        for command, what in (
            ("resume", "ResumeProgram"),
            ("suspend", "SuspendProgram"),
            ("resume-fail", "ResumeFailProgram"),
        ):
            script = d / f"{command}.sh"
            script.write_text(
                WRAPPER.format(
                    what=what,
                    conf=conf,
                    root=ROOT,
                    python=sys.executable,
                    config=config,
                    command=command,
                )
            )
            script.chmod(0o755)

    # -- munge -------------------------------------------------------------------------------

    def start_munged(self) -> None:
        """munged on its default socket (the guests' and Slurm's default), with our key;
        refused when one already runs there."""
        # A socket left by a munged that was killed (a test run stopped mid-way) answers
        # nothing, and munged --force takes it over.
        if Path(MUNGE_SOCKET).exists() and munged_answers(MUNGE_SOCKET):
            raise FileExistsError(f"{MUNGE_SOCKET} exists: another munged runs on this host")
        d = self.slurm_dir / "munge"
        d.mkdir(mode=0o700)
        key = d / "munge.key"
        key.write_bytes(os.urandom(1024))
        key.chmod(0o400)
        Path(MUNGE_SOCKET).parent.mkdir(mode=0o755, exist_ok=True)
        self.munged = subprocess.Popen(
            ["munged", "-F", "--force", f"--key-file={key}", f"--log-file={d / 'munged.log'}",
             f"--pid-file={d / 'munged.pid'}", f"--seed-file={d / 'munged.seed'}"],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )  # fmt: skip
        wait(lambda: munged_answers(MUNGE_SOCKET), 30, "munged's socket", poll_s=0.2)

    def stop_munged(self) -> None:
        proc, self.munged = self.munged, None
        if proc is None or proc.poll() is not None:
            return
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)

    # -- slurmctld ---------------------------------------------------------------------------

    def start_slurmctld(self) -> None:
        # The agent makes the site's bridge (and its gateway address) only for a first
        # workspace; until then the namespace has no address but loopback, and slurmctld's
        # getaddrinfo(NULL, AI_ADDRCONFIG) for its listening socket fails, and its clients
        # (sinfo, sbatch) cannot reach SlurmctldHost's address. The gateway address as a
        # /32 on a link of our own lets it bind 0.0.0.0:6817 and be reached now; the agent
        # adds the same address (/24) to the bridge later, which Linux allows. (A veth pair:
        # this kernel has no dummy driver.) Both ends go with the namespace at site down.
        ip = ["ip", "-n", self.netns]
        subprocess.run([*ip, "link", "add", DUMMY, "type", "veth", "peer", "name", f"{DUMMY}p"],
                       check=True)  # fmt: skip
        subprocess.run([*ip, "addr", "add", f"{GATEWAY}/32", "dev", DUMMY], check=True)
        subprocess.run([*ip, "link", "set", f"{DUMMY}p", "up"], check=True)
        subprocess.run([*ip, "link", "set", DUMMY, "up"], check=True)
        if self.auth == "munge" and self.munged is None:
            self.start_munged()
        conf = self.slurm_dir / "slurm.conf"
        log = (self.slurm_dir / "slurmctld.out").open("wb")
        self.slurmctld = subprocess.Popen(
            ["ip", "netns", "exec", self.netns, "/usr/sbin/slurmctld", "-D", "-f", str(conf)],
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            env=self.slurm_env,
        )
        log.close()
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if self.slurmctld.poll() is not None:
                raise AssertionError(f"slurmctld exited: {self.tail('slurmctld.log')}")
            if self.slurm("sinfo", check=False).returncode == 0:
                return
            time.sleep(0.5)
        raise AssertionError(f"slurmctld did not answer: {self.tail('slurmctld.log')}")

    def stop_slurmctld(self) -> None:
        proc, self.slurmctld = self.slurmctld, None
        if proc is None or proc.poll() is not None:
            return
        proc.terminate()  # SIGTERM to the pid we started (ip netns exec execs slurmctld)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)

    def slurm(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        out = subprocess.run(
            ["ip", "netns", "exec", self.netns, *args],
            capture_output=True,
            text=True,
            env=self.slurm_env,
            timeout=60,
            check=False,
        )
        if check and out.returncode != 0:
            raise AssertionError(f"{' '.join(args)}: {out.stderr}{out.stdout}")
        return out

    def sbatch(self, *args: str) -> int:
        # The job's working directory: the guests have none of this host's directories.
        out = self.slurm("sbatch", "--parsable", "--chdir=/tmp", *args).stdout
        return int(out.strip().split(";")[0])

    def job_state(self, job: int) -> str:
        out = self.slurm("scontrol", "show", "job", "-o", str(job), check=False).stdout
        m = re.search(r"JobState=(\S+)", out)
        return m[1] if m else ""

    def job_nodes(self, job: int) -> str:
        out = self.slurm("scontrol", "show", "job", "-o", str(job), check=False).stdout
        m = re.search(r" NodeList=(\S+)", out)
        return m[1] if m else ""

    def node_state(self, node: str) -> dict[str, str]:
        out = self.slurm("scontrol", "show", "node", "-o", node).stdout
        return dict(w.split("=", 1) for w in out.split() if "=" in w)

    def node_reason(self, node: str) -> str:
        """The node's Reason (without scontrol's ``[user@time]``), "" if none."""
        out = self.slurm("scontrol", "show", "node", "-o", node).stdout
        m = re.search(r" Reason=(.*?)(?: \[[^\]]*\])?\s*$", out)
        return m[1] if m else ""

    def sinfo_reasons(self) -> dict[str, str]:
        """``sinfo -R``: node -> reason (full width)."""
        out = self.slurm("sinfo", "-R", "-N", "-h", "-o", "%N|%E").stdout
        return dict(line.split("|", 1) for line in out.splitlines() if "|" in line)

    def tail(self, name: str, lines: int = 40) -> str:
        try:
            text = (self.slurm_dir / name).read_text(errors="replace")
        except OSError:
            return f"({name} missing)"
        return "\n".join(text.splitlines()[-lines:])

    def diagnostics(self) -> str:
        parts = [
            f"--- slurmctld.log\n{self.tail('slurmctld.log', 60)}",
            f"--- ws-slurm.log\n{self.tail('ws-slurm.log', 60)}",
        ]
        sinfo = self.slurm("sinfo", "-N", "-l", check=False)
        parts.append(f"--- sinfo\n{sinfo.stdout}{sinfo.stderr}")
        return "\n".join(parts)

    # -- teardown ----------------------------------------------------------------------------

    def down(self) -> None:
        self.stop_slurmctld()
        self.stop_munged()
        if self.site_dir.exists():
            self.cli("workspace.cli.admin", "site", "down", "--dir", str(self.site_dir))
        if self.keep:
            print(f"\nkept {self.dir}")
        else:
            shutil.rmtree(self.dir, ignore_errors=True)


def wait(pred, timeout_s: float, what: str, poll_s: float = 2.0):  # type: ignore[no-untyped-def]
    """Poll ``pred`` until it returns something true; that value."""
    deadline = time.monotonic() + timeout_s
    last = None
    while time.monotonic() < deadline:
        last = pred()
        if last:
            return last
        time.sleep(poll_s)
    raise AssertionError(f"timed out after {timeout_s:.0f} s waiting for {what} (last: {last!r})")


def munged_answers(path: str) -> bool:
    """Whether a process listens on the unix socket ``path`` (a stale one refuses)."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(2.0)
        try:
            sock.connect(path)
        except OSError:
            return False
        return True
