"""What the real-VM host tests share: the lock that keeps two boots apart, and a local
site driven through the `ws` and `ws-admin` CLIs as a user types them.

* ``realvm_lock()``: held while guests boot (or while a measurement must not share the
  CPU with a boot), so two modules never boot at the same moment on two cores.
* ``local_site(prefix)``: a site directory under /var/tmp (0755: dnsmasq, as nobody,
  reads hosts files below it) and a HOME of its own; on exit `ws-admin site down` and
  both removed (``WS_KEEP_SITE=1`` keeps the site directory for a post-mortem).
* ``CliSite``: the CLIs as subprocesses against that site (``WS_SITE_DIR``).
* ``run_module(module, *args)``: ``python -m`` a project module, its output captured.
* ``vcpu_seconds(id)``: the CPU a workspace's vCPU threads used so far, read on the host.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

from images.appliance import Appliance
from tests.functional.harness import Stubs
from workspace import rpc
from workspace.client import resolve_tls
from workspace.site.hostenv import HostEnv

ROOT = Path(__file__).resolve().parents[2]
REALVM_LOCK = "/tmp/ws-realvm.lock"

Proc = subprocess.CompletedProcess[str]


def vcpu_seconds(wid: str) -> float:
    """CPU seconds (user + system) the domain's vCPU threads used so far, from /proc."""
    ticks = os.sysconf("SC_CLK_TCK")
    total = 0.0
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            if f"guest=ws-{wid}," not in (proc / "cmdline").read_bytes().decode(errors="replace"):
                continue
            for task in (proc / "task").iterdir():
                if (task / "comm").read_text().startswith("CPU "):
                    fields = (task / "stat").read_text().rsplit(")", 1)[1].split()
                    total += (int(fields[11]) + int(fields[12])) / ticks
        except OSError:
            continue
    return total


@contextlib.contextmanager
def realvm_lock() -> Iterator[None]:
    with open(REALVM_LOCK, "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def run_module(
    module: str,
    *args: str,
    env: dict[str, str] | None = None,
    stdin: str | None = None,
    timeout: float | None = 300.0,
) -> Proc:
    """``python -m MODULE ARGS`` from the project's root (its output captured as text;
    ``env``: default this process's, with the project on PYTHONPATH)."""
    return subprocess.run(
        [sys.executable, "-m", module, *args],
        capture_output=True,
        text=True,
        env=env if env is not None else dict(os.environ, PYTHONPATH=str(ROOT)),
        cwd=ROOT,
        input=stdin,
        timeout=timeout,
        check=False,
    )


class CliSite:
    """A local site; ``cli`` runs a CLI module against it with its own HOME."""

    def __init__(self, site_dir: Path, home: Path, timeout_s: float = 300.0) -> None:
        self.dir = site_dir
        self.home = home
        self.timeout_s = timeout_s
        self.env = dict(os.environ, PYTHONPATH=str(ROOT), WS_SITE_DIR=str(site_dir))
        self.env["HOME"] = str(home)
        self.env.pop("WS_IDENTITY", None)

    def cli(
        self, module: str, *args: str, stdin: str | None = None, timeout: float | None = None
    ) -> Proc:
        return run_module(
            module, *args, env=self.env, stdin=stdin, timeout=timeout or self.timeout_s
        )

    def ws(self, *args: str, stdin: str | None = None, timeout: float | None = None) -> Proc:
        return self.cli("workspace.cli.ws", *args, stdin=stdin, timeout=timeout)

    def ok(self, *args: str, timeout: float | None = None) -> str:
        out = self.ws(*args, timeout=timeout)
        assert out.returncode == 0, f"ws {' '.join(args)}: {out.stderr}{out.stdout}"
        return out.stdout

    def admin(self, *args: str) -> str:
        out = self.cli("workspace.cli.admin", *args)
        assert out.returncode == 0, f"ws-admin {' '.join(args)}: {out.stderr}{out.stdout}"
        return out.stdout

    def show(self, name: str) -> dict[str, object]:
        shown: dict[str, object] = json.loads(self.ok("-o", "json", "show", name))
        return shown

    def exec(self, name: str, script: str, timeout: float = 60.0) -> Proc:
        """``ws exec NAME -- sh -c SCRIPT`` (as root in the guest, via its guest agent)."""
        return self.ws(
            *("exec", name, "--timeout", str(int(timeout)), "--", "sh", "-c", script),
            timeout=timeout + 60,
        )

    def sh(self, name: str, script: str, timeout: float = 60.0) -> str:
        out = self.exec(name, script, timeout)
        assert out.returncode == 0, f"{name}: {script}: {out.stderr}{out.stdout}"
        return out.stdout


@contextlib.contextmanager
def local_site(prefix: str) -> Iterator[tuple[Path, Path]]:
    """(site directory, HOME) for one module's site; the site is taken down at the end."""
    site_dir = Path(tempfile.mkdtemp(prefix=f"{prefix}-", dir="/var/tmp"))
    site_dir.chmod(0o755)
    home = Path(tempfile.mkdtemp(prefix=f"{prefix}-home-"))
    try:
        yield site_dir, home
    finally:
        run_module("workspace.cli.admin", "site", "down", "--dir", str(site_dir), timeout=None)
        if os.environ.get("WS_KEEP_SITE"):
            print(f"\nkept site directory {site_dir}")
        else:
            shutil.rmtree(site_dir, ignore_errors=True)
        shutil.rmtree(home, ignore_errors=True)


class StubsSite:
    """A 1-node libvirt local site with gRPC stubs to it (as an admin), for tests that
    check the node's libvirtd directly; ``appliance_site`` makes one."""

    def __init__(self, site_dir: Path) -> None:
        self.dir = site_dir
        self.record: dict[str, object] = {}
        self.stubs: Stubs | None = None

    @property
    def address(self) -> str:
        return str(self.record["address"])

    def up(self) -> None:
        out = self.admin("site", "up", "--driver", "libvirt", "--dir", str(self.dir))
        assert out.returncode == 0, out.stderr + out.stdout
        self.record = json.loads((self.dir / "site.json").read_text())
        self.stubs = Stubs(rpc.channel(self.address, resolve_tls(self.address)))

    def admin(self, *argv: str) -> Proc:
        """`ws-admin ARGV` (against this site's service once it is up)."""
        service = ("--service", self.address) if self.record else ()
        return run_module("workspace.cli.admin", *service, *argv)

    def running(self) -> list[str]:
        """The domains the node's libvirtd runs now."""
        uri = HostEnv(self.dir, str(self.record["netns"])).libvirt_uri
        out = subprocess.run(
            ["virsh", "-c", uri, "list", "--name"],
            capture_output=True,
            text=True,
            check=True,
            timeout=60,
        ).stdout
        return [n for n in out.split() if n]


@contextlib.contextmanager
def appliance_site(prefix: str, appliance: Appliance) -> Iterator[StubsSite]:
    """A ``StubsSite`` with the busybox appliance imported, made under the real-VM lock;
    taken down at the end."""
    with realvm_lock(), local_site(prefix) as (site_dir, _home):
        s = StubsSite(site_dir)
        try:
            s.up()
            out = s.admin(
                "image", "import", "appliance", "--appliance", str(appliance.manifest.parent)
            )
            assert out.returncode == 0, out.stderr
            yield s
        finally:
            if s.stubs is not None:
                s.stubs.channel.close()
