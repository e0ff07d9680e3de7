"""The cloud appliance: a small Debian 12 image with cloud-init, built with mmdebstrap.

``python -m images.appliance --cloud [--out DIR]`` (or ``build(DIR)``) writes into DIR
(default ``/var/tmp/ws-cloud-appliance``; ``WS_CLOUD_APPLIANCE_CACHE`` overrides):

* ``root.qcow2``: the root disk, an ext4 filesystem on the whole disk (``root=/dev/vda``),
  2 GiB virtual, made from the mmdebstrap tree by ``mkfs.ext4 -d`` (no loop device);
* ``vmlinuz`` and ``initrd.img``: the image's own kernel and initrd (Debian's cloud
  kernel), for direct kernel boot, which is faster under TCG than a bootloader;
* ``image.toml``: the push manifest (``ws image push cloud:1 --manifest DIR/image.toml``)
  with the kernel, initrd, command line, the root partition and two keys for the
  service: ``context = "nocloud"`` (the image reads a NoCloud seed) and
  ``login_user = "debian"`` (cloud-init's default user);
* ``cloud-appliance.json``: the record of the build (paths, kernel version, the input
  digest). It is written last: an output directory without it holds no finished image.

Inside the image: cloud-init reads only a NoCloud seed (``datasource_list: [NoCloud,
None]``: it never probes a network metadata service), with the module lists trimmed to
what runs without a network (no apt, snap or package modules; the locale is C.UTF-8, so
nothing is generated at boot); the default user ``debian`` may sudo without a password;
SSH password login is off; no SSH host keys and an empty ``/etc/machine-id``, so every
VM makes (or is given) its own; qemu-guest-agent starts when its virtio-serial port
appears; a serial getty comes from ``console=ttyS0``.

The build is cached like the busybox appliance: nothing is rebuilt while the record's
digest matches the inputs (this file, the package list, the release); an flock lets
parallel callers build once. This module imports neither ``workspace`` nor ``agent``.
"""

from __future__ import annotations

import dataclasses
import fcntl
import hashlib
import json
import os
import re
import shutil
import subprocess
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

RELEASE = "bookworm"
PACKAGES = (
    "systemd-sysv",
    "udev",
    "cloud-init",
    "openssh-server",
    "qemu-guest-agent",
    "ifupdown",
    "resolvconf",  # applies the dns-nameservers lines cloud-init writes for ifupdown
    "isc-dhcp-client",
    "linux-image-cloud-amd64",
    "e2fsprogs",
    "netbase",
    "iproute2",
    "locales",
    "sudo",
    "dbus",  # systemctl/hostnamectl for the login user; without it: "Failed to connect to bus"
    # for the in-guest checks of the tests and benchmarks
    "iputils-ping",
    "iperf3",
)
DEFAULT_OUT = Path("/var/tmp/ws-cloud-appliance")
CACHE_ENV = "WS_CLOUD_APPLIANCE_CACHE"
LOGIN_USER = "debian"
CONTEXT = "nocloud"
DISK_SIZE_BYTES = 2 * 1024**3
CMDLINE = "root=/dev/vda rw console=ttyS0 quiet no_timer_check"  # see appliance.CMDLINE
ROOT_NAME = "root.qcow2"
KERNEL_NAME = "vmlinuz"
INITRD_NAME = "initrd.img"
MANIFEST_NAME = "image.toml"
RECORD_NAME = "cloud-appliance.json"
BUILD_TIMEOUT_S = 1800.0
# Host apt settings carried into the build (sources come from the host's files).
HOST_APT_OPTIONS = (
    "Acquire::http::Proxy",
    "Acquire::https::Proxy",
    "Acquire::Check-Valid-Until",
    "Acquire::Check-Date",
)
# Documentation, man pages and translations are not installed (about 60 MiB less).
DPKG_OPTIONS = (
    "path-exclude=/usr/share/doc/*",
    "path-include=/usr/share/doc/*/copyright",
    "path-exclude=/usr/share/man/*",
    "path-exclude=/usr/share/info/*",
    "path-exclude=/usr/share/locale/*",
    "path-include=/usr/share/locale/locale.alias",
)
_TAIL_LINES = 30
_TERM_GRACE_S = 60.0

CLOUD_CFG = f"""\
# Written by images/cloud.py: the workspace service's cloud appliance.
# Only the NoCloud seed (a cidata disk) is read: no network metadata service is probed.
datasource_list: [NoCloud, None]
locale: C.UTF-8
# No ssh_pwauth: the image's sshd drop-in (sshd_config.d/90-workspace.conf) keeps password
# login off, and sshd takes the first value it reads. With ssh_pwauth set, set-passwords
# edits sshd_config and restarts sshd at every first boot (3.3 s under TCG).
disable_root: true
ssh_genkeytypes: [ed25519, ecdsa]
# Keep /etc/hosts (a cluster's lines may be written there), only add the VM's own name.
manage_etc_hosts: localhost
system_info:
  default_user:
    name: {LOGIN_USER}
# Modules that need a network, a package manager or software this image lacks are left out.
cloud_init_modules:
  - migrator
  - seed_random
  - bootcmd
  - write-files
  - resizefs
  - disk_setup
  - mounts
  - set_hostname
  - update_hostname
  - update_etc_hosts
  - ca-certs
  - users-groups
  - ssh
cloud_config_modules:
  - locale
  - set-passwords
  - timezone
  - runcmd
cloud_final_modules:
  - write-files-deferred
  - scripts-vendor
  - scripts-per-once
  - scripts-per-boot
  - scripts-per-instance
  - scripts-user
  - ssh-authkey-fingerprints
  - keys-to-console
  - phone-home
  - final-message
  - power-state-change
"""
# The initrd holds only what mounting root=/dev/vda needs (MODULES=most: 15 MiB, and
# slower to unpack under TCG); written before the kernel is installed, by a setup hook.
INITRAMFS_CONF = "# Written by images/cloud.py\nMODULES=list\n"
INITRAMFS_HOOK = """\
#!/bin/sh
# Written by images/cloud.py: the modules the root disk needs (MODULES=list).
PREREQ=""
prereqs() { echo "$PREREQ"; }
case "$1" in prereqs) prereqs; exit 0 ;; esac
. /usr/share/initramfs-tools/hook-functions
for m in virtio_pci virtio_blk; do force_load "$m"; done
"""
SSHD_CONFIG = """\
# Written by images/cloud.py: keys only.
PasswordAuthentication no
KbdInteractiveAuthentication no
PermitRootLogin prohibit-password
"""
FSTAB = "# Written by images/cloud.py\n/dev/vda / ext4 defaults,errors=remount-ro 0 0\n"
# The system locale cloud-init's locale module finds set (Debian's file names none): with
# it, a boot that keeps `locale: C.UTF-8` runs no update-locale (a Perl script: 3.4 s
# of a first boot under TCG); a seed that asks another locale still gets it.
DEFAULT_LOCALE = "# Written by images/cloud.py\nLANG=C.UTF-8\n"
# Units that only slow the boot down or do nothing useful in a short-lived VM.
UNITS_DISABLED = (
    "timers.target.wants/apt-daily.timer",
    "timers.target.wants/apt-daily-upgrade.timer",
    "timers.target.wants/dpkg-db-backup.timer",
    "timers.target.wants/e2scrub_all.timer",
    "timers.target.wants/fstrim.timer",
    "multi-user.target.wants/e2scrub_reap.service",
    "getty.target.wants/getty@tty1.service",
)
UNITS_MASKED = (
    "getty-static.service",  # gettys on tty2-6: there is no screen
    "systemd-networkd-wait-online.service",
    "ifupdown-wait-online.service",
)


class CloudApplianceError(RuntimeError):
    """The cloud appliance cannot be built here; the message says why and what to do."""


@dataclass(frozen=True)
class CloudAppliance:
    """Paths of a built cloud appliance and how to boot it."""

    root: Path  # qcow2, ext4 on the whole disk
    kernel: Path
    initrd: Path
    manifest: Path  # image.toml, for ws image push --manifest
    record: Path  # cloud-appliance.json
    cmdline: str
    login_user: str = LOGIN_USER
    kernel_version: str = ""


def default_out_dir(environ: Mapping[str, str] | None = None) -> Path:
    env = os.environ if environ is None else environ
    return Path(env.get(CACHE_ENV) or DEFAULT_OUT)


def inputs_digest(source: bytes, packages: Sequence[str] = PACKAGES, release: str = RELEASE) -> str:
    """What the image is made of: this module's source, the package list, the release."""
    h = hashlib.sha256()
    h.update(source)
    h.update(("\0".join((release, *packages)) + "\0").encode())
    return h.hexdigest()


# --- the host's apt configuration --------------------------------------------------


def host_sources(release: str = RELEASE, etc_apt: Path = Path("/etc/apt")) -> list[Path]:
    """The host's apt source files that name ``release`` (one-line or deb822 format)."""
    candidates = [etc_apt / "sources.list"]
    parts = etc_apt / "sources.list.d"
    if parts.is_dir():
        candidates += sorted(p for p in parts.iterdir() if p.suffix in (".list", ".sources"))
    word = re.compile(rf"(^|\s){re.escape(release)}(-[a-z]+)?(\s|$)", re.MULTILINE)
    found = []
    for path in candidates:
        try:
            text = path.read_text()
        except OSError:
            continue
        live = "\n".join(line for line in text.splitlines() if not line.lstrip().startswith("#"))
        if word.search(live):
            found.append(path)
    return found


def apt_options(dump: str, keys: Sequence[str] = HOST_APT_OPTIONS) -> list[str]:
    """``Key "value";`` settings for ``keys`` from ``apt-config dump`` output."""
    wanted = {k.lower(): k for k in keys}
    out = []
    for line in dump.splitlines():
        m = re.fullmatch(r'\s*(\S+)\s+"(.*)";\s*', line)
        if m and m[1].lower() in wanted:
            out.append(f'{m[1]} "{m[2]}";')
    return out


def _host_apt_options() -> list[str]:
    try:
        proc = subprocess.run(
            ["apt-config", "dump"], capture_output=True, text=True, check=False, timeout=30
        )
    except (OSError, subprocess.TimeoutExpired):
        return []
    return apt_options(proc.stdout) if proc.returncode == 0 else []


# --- commands --------------------------------------------------------------------------


def mmdebstrap_command(
    tree: Path,
    sources: Sequence[Path],
    overlay: Path,
    aptopts: Sequence[str] = (),
    packages: Sequence[str] = PACKAGES,
    release: str = RELEASE,
) -> list[str]:
    """mmdebstrap building the image's tree into the directory ``tree`` (root mode);
    ``overlay`` is copied into the tree before any package is installed."""
    args = ["mmdebstrap", "--mode=root", "--variant=apt", "--format=directory"]
    args += [f"--aptopt={opt}" for opt in aptopts]
    args += [f"--dpkgopt={opt}" for opt in DPKG_OPTIONS]
    args += [f"--setup-hook=sync-in {overlay} /"]
    args += [f"--include={','.join(packages)}", release, str(tree)]
    return args + [str(s) for s in sources]


def mkfs_command(tree: Path, disk: Path) -> list[str]:
    """mkfs.ext4 filling the raw file ``disk`` with ``tree`` (inode tables written now)."""
    return [
        _tool("mkfs.ext4", "e2fsprogs"),
        "-q",
        "-F",
        "-t",
        "ext4",
        "-L",
        "root",
        "-E",
        "lazy_itable_init=0,lazy_journal_init=0,root_owner=0:0",
        "-d",
        str(tree),
        str(disk),
    ]


def convert_command(raw: Path, qcow2: Path) -> list[str]:
    """qemu-img writing a compressed qcow2 of ``raw`` (zero clusters are left out)."""
    return [_tool("qemu-img", "qemu-utils"), "convert", "-q", "-c", "-f", "raw", "-O", "qcow2",
            str(raw), str(qcow2)]  # fmt: skip


def _tool(name: str, package: str) -> str:
    found = shutil.which(name) or shutil.which(name, path="/usr/sbin:/sbin")
    if found is None:
        raise CloudApplianceError(f"{name} is not installed (install {package})")
    return found


def _run(args: Sequence[str], what: str, timeout_s: float) -> None:
    """Run a step; on failure, its last lines of output in the error. A step that runs
    too long gets SIGTERM first, so mmdebstrap can unmount what it mounted in the tree."""
    proc = subprocess.Popen(
        list(args),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        errors="replace",
    )
    try:
        output, _ = proc.communicate(timeout=timeout_s)
    except subprocess.TimeoutExpired as exc:
        proc.terminate()
        try:
            proc.communicate(timeout=_TERM_GRACE_S)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.communicate()
        raise CloudApplianceError(f"{what} timed out after {timeout_s:g} s") from exc
    if proc.returncode != 0:
        tail = "\n".join(output.splitlines()[-_TAIL_LINES:])
        raise CloudApplianceError(f"{what} failed (exit {proc.returncode}):\n{tail}")


def mounts_below(path: Path, mountinfo: Path = Path("/proc/self/mountinfo")) -> list[str]:
    """Mount points at or below ``path`` (mmdebstrap binds the host's /dev files and /sys
    into the tree while it runs; a killed mmdebstrap may leave them there)."""
    top = str(path)
    found = []
    for line in mountinfo.read_text().splitlines():
        fields = line.split()
        if len(fields) < 5:
            continue
        point = re.sub(r"\\([0-7]{3})", lambda m: chr(int(m[1], 8)), fields[4])
        if point == top or point.startswith(top + "/"):
            found.append(point)
    return found


def remove_work(work: Path) -> bool:
    """Remove a work directory, never through a mount point (rmtree would delete the
    host's files, or its cgroups under /sys). Mounts are detached first; if any remain,
    the directory is left and False returned."""
    for point in sorted(mounts_below(work), key=len, reverse=True):
        subprocess.run(["umount", "--lazy", point], capture_output=True, check=False)
    if mounts_below(work):
        return False
    shutil.rmtree(work, ignore_errors=True)
    return True


# --- the tree ------------------------------------------------------------------------


def _write(path: Path, text: str, mode: int = 0o644) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    path.chmod(mode)


def write_overlay(overlay: Path) -> None:
    """The files that must be in the tree before the packages are installed."""
    _write(overlay / "etc/initramfs-tools/conf.d/90-workspace", INITRAMFS_CONF)
    _write(overlay / "etc/initramfs-tools/hooks/workspace-virtio", INITRAMFS_HOOK, 0o755)


def configure_tree(root: Path) -> None:
    """Turn mmdebstrap's tree into the appliance (files only; nothing runs in it)."""
    etc = root / "etc"
    _write(etc / "cloud/cloud.cfg.d/90_workspace.cfg", CLOUD_CFG)
    _write(etc / "ssh/sshd_config.d/90-workspace.conf", SSHD_CONFIG)
    _write(etc / "fstab", FSTAB)
    _write(etc / "hostname", "localhost\n")
    _write(etc / "default/locale", DEFAULT_LOCALE)
    _write(etc / "machine-id", "", 0o444)
    (root / "var/lib/dbus/machine-id").unlink(missing_ok=True)
    # The build host's resolver and apt settings are not the guest's. resolvconf made
    # /etc/resolv.conf its link into /run (written at boot from the NICs' dns-nameservers
    # lines) and kept the host's file as "original": only that copy goes.
    resolv = etc / "resolv.conf"
    if not resolv.is_symlink():
        resolv.unlink(missing_ok=True)
        _write(resolv, "")
    (etc / "resolvconf/resolv.conf.d/original").unlink(missing_ok=True)
    (etc / "apt/apt.conf.d/99mmdebstrap").unlink(missing_ok=True)
    for key in etc.glob("ssh/ssh_host_*"):
        key.unlink()
    system = etc / "systemd/system"
    for unit in UNITS_DISABLED:
        (system / unit).unlink(missing_ok=True)
    for unit in UNITS_MASKED:
        link = system / unit
        link.unlink(missing_ok=True)
        link.symlink_to("/dev/null")


def find_kernel(root: Path) -> tuple[Path, Path, str]:
    """(vmlinuz, initrd, version) of the newest kernel in the tree's /boot."""
    kernels = sorted((root / "boot").glob("vmlinuz-*"))
    if not kernels:
        raise CloudApplianceError(f"no kernel in {root}/boot (is linux-image-cloud-amd64 listed?)")
    kernel = kernels[-1]
    version = kernel.name.removeprefix("vmlinuz-")
    initrd = root / "boot" / f"initrd.img-{version}"
    if not initrd.is_file():
        raise CloudApplianceError(f"{initrd} is missing (initramfs-tools did not run?)")
    return kernel, initrd, version


# --- outputs -------------------------------------------------------------------------


def manifest_text(cmdline: str = CMDLINE, *, service_keys: bool = True) -> str:
    """The push manifest. ``service_keys=False`` leaves out ``context`` and ``login_user``
    (for a service whose manifest parser does not know them yet)."""
    extra = f'context = "{CONTEXT}"\nlogin_user = "{LOGIN_USER}"\n' if service_keys else ""
    return (
        "# The cloud appliance (images/cloud.py):\n"
        "#   ws image push cloud:1 --manifest image.toml\n"
        f'kernel = "{KERNEL_NAME}"\n'
        f'initrd = "{INITRD_NAME}"\n'
        f"cmdline = {json.dumps(cmdline)}\n"
        f"{extra}"
        "\n[[partitions]]\n"
        'name = "root"\n'
        f'file = "{ROOT_NAME}"\n'
        'mode = "cow"\n'
        'format = "qcow2"\n'
    )


def outputs(out: Path, kernel_version: str = "") -> CloudAppliance:
    """Where the appliance's files are (or will be) in ``out``."""
    return CloudAppliance(
        root=out / ROOT_NAME,
        kernel=out / KERNEL_NAME,
        initrd=out / INITRD_NAME,
        manifest=out / MANIFEST_NAME,
        record=out / RECORD_NAME,
        cmdline=CMDLINE,
        kernel_version=kernel_version,
    )


def cached(out: Path, inputs_sha256: str) -> CloudAppliance | None:
    """The appliance in ``out`` if its record matches ``inputs_sha256`` and its files exist."""
    try:
        data = json.loads((out / RECORD_NAME).read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(data, dict) or data.get("inputs_sha256") != inputs_sha256:
        return None
    appliance = outputs(out, str(data.get("kernel_version", "")))
    files = (appliance.root, appliance.kernel, appliance.initrd, appliance.manifest)
    return appliance if all(p.is_file() for p in files) else None


def _write_atomic(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    with tmp.open("wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    tmp.replace(path)


def _move_atomic(src: Path, dst: Path) -> None:
    with src.open("rb") as f:
        os.fsync(f.fileno())
    src.replace(dst)


def _check_host() -> None:
    if os.geteuid() != 0:
        raise CloudApplianceError(
            "building the cloud appliance needs root (mmdebstrap in root mode; the image's "
            "files must belong to their real owners): run it as root, or use a cached build"
        )
    if shutil.which("mmdebstrap") is None:
        raise CloudApplianceError("mmdebstrap is not installed (install mmdebstrap)")
    _tool("mkfs.ext4", "e2fsprogs")
    _tool("qemu-img", "qemu-utils")


def _make(out: Path, work: Path, inputs_sha256: str) -> CloudAppliance:
    started = time.monotonic()
    sources = host_sources()
    if not sources:
        raise CloudApplianceError(
            f"no apt source for {RELEASE} on this host (/etc/apt/sources.list, "
            "/etc/apt/sources.list.d/): the image is built from the host's Debian mirror"
        )
    tree, overlay = work / "tree", work / "overlay"
    write_overlay(overlay)
    command = mmdebstrap_command(tree, sources, overlay, _host_apt_options())
    _run(command, "mmdebstrap", BUILD_TIMEOUT_S)
    configure_tree(tree)
    kernel, initrd, version = find_kernel(tree)
    shutil.copyfile(kernel, work / KERNEL_NAME)
    shutil.copyfile(initrd, work / INITRD_NAME)
    raw = work / "root.raw"
    with raw.open("wb") as f:
        f.truncate(DISK_SIZE_BYTES)
    _run(mkfs_command(tree, raw), "mkfs.ext4", 600.0)
    if not remove_work(tree):
        raise CloudApplianceError(f"mmdebstrap left mounts in {tree}: {mounts_below(tree)}")
    _run(convert_command(raw, work / ROOT_NAME), "qemu-img convert", 600.0)
    raw.unlink()

    appliance = outputs(out, version)
    # Invalidate first, then move each file into place; the record is written last.
    appliance.record.unlink(missing_ok=True)
    _move_atomic(work / ROOT_NAME, appliance.root)
    _move_atomic(work / KERNEL_NAME, appliance.kernel)
    _move_atomic(work / INITRD_NAME, appliance.initrd)
    _write_atomic(appliance.manifest, manifest_text(appliance.cmdline).encode())
    record = {
        **{k: str(v) for k, v in dataclasses.asdict(appliance).items()},
        "release": RELEASE,
        "packages": list(PACKAGES),
        "root_size_bytes": appliance.root.stat().st_size,
        "virtual_size_bytes": DISK_SIZE_BYTES,
        "inputs_sha256": inputs_sha256,
        "build_seconds": round(time.monotonic() - started, 1),
    }
    _write_atomic(appliance.record, (json.dumps(record, indent=2, sort_keys=True) + "\n").encode())
    return appliance


def build(out_dir: Path | str | None = None, *, rebuild: bool = False) -> CloudAppliance:
    """Build (or reuse) the cloud appliance in ``out_dir``; returns its paths.

    Safe to call from several processes at once (an flock on ``out_dir/.lock``): one
    builds, the others wait and reuse its result. ``rebuild`` ignores the cache.
    """
    out = Path(out_dir if out_dir is not None else default_out_dir()).resolve()
    out.mkdir(parents=True, exist_ok=True)
    digest = inputs_digest(Path(__file__).read_bytes())
    with (out / ".lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        found = None if rebuild else cached(out, digest)
        if found is not None:
            return found
        _check_host()
        for stale in out.glob(".build-*"):  # left by a killed build (we hold the lock)
            if not remove_work(stale):
                raise CloudApplianceError(
                    f"{stale} still has mounts in it ({', '.join(mounts_below(stale))}):"
                    " unmount them, then remove it"
                )
        work = out / f".build-{os.getpid()}"
        work.mkdir()
        try:
            return _make(out, work, digest)
        finally:
            remove_work(work)  # if a mount is left, the next build refuses to go on
