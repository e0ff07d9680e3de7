"""The Slurm variant of the cloud appliance: the same Debian 12 image plus slurmd.

``python -m images.cloud_slurm [--out DIR] [--rebuild]`` (or ``build(DIR)``) writes the
same files as ``images/cloud.py`` into DIR (default ``/var/tmp/ws-cloud-slurm``;
``WS_CLOUD_SLURM_CACHE`` overrides), from the cloud appliance's package list plus
``slurmd``, ``slurm-client`` and ``munge`` (Debian 12: Slurm 22.05).

What differs from the plain image, and why (``configure_slurm``):

* **slurmd does not start at boot.** A guest learns who it is (its Slurm node name and
  controller) from its cloud-init user-data, which ``ws-slurm resume`` writes; cloud-init's
  runcmd starts slurmd with those arguments. A slurmd started before that would register
  under the wrong name or fail and be restarted by systemd in a loop.
* **slurmd may run configless.** Debian's unit has ``ConditionPathExists=
  /etc/slurm/slurm.conf``; a drop-in clears it, so ``slurmd --conf-server HOST`` (the
  options in ``/etc/default/slurmd``) starts without a local slurm.conf.
* **munge is off and has no key.** Debian's package makes a key at install time: every VM
  of the image would share it. A site that uses munge delivers its own key in the
  user-data (``ws-slurm``'s ``munge_key_file``), which also starts munged; a site with
  ``AuthType=auth/none`` (the tests) needs nothing.

The plain cloud appliance keeps its own cache directory and digest (this module changes
neither ``images/cloud.py`` nor its outputs). This module imports neither ``workspace``
nor ``agent``.
"""

from __future__ import annotations

import argparse
import dataclasses
import fcntl
import hashlib
import json
import os
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

from images import cloud

VARIANT = "slurm"
EXTRA_PACKAGES = ("slurmd", "slurm-client", "munge")
PACKAGES = (*cloud.PACKAGES, *EXTRA_PACKAGES)
DEFAULT_OUT = Path("/var/tmp/ws-cloud-slurm")
CACHE_ENV = "WS_CLOUD_SLURM_CACHE"
# Units the packages enable that must not start at boot (cloud-init starts them).
UNITS_OFF = (
    "multi-user.target.wants/slurmd.service",
    "multi-user.target.wants/munge.service",
)
SLURMD_DROPIN_PATH = "etc/systemd/system/slurmd.service.d/10-workspace.conf"
SLURMD_DROPIN = """\
# Written by images/cloud_slurm.py: slurmd may run configless (--conf-server), without a
# local slurm.conf; it is started by cloud-init (ws-slurm's user-data), never at boot.
[Unit]
ConditionPathExists=
"""
MUNGE_KEY = "etc/munge/munge.key"
_TAIL_LINES = 30


def default_out_dir(environ: Mapping[str, str] | None = None) -> Path:
    env = os.environ if environ is None else environ
    return Path(env.get(CACHE_ENV) or DEFAULT_OUT)


def inputs_digest() -> str:
    """The plain image's inputs (its module, the package list, the release) and this
    module's source."""
    h = hashlib.sha256()
    h.update(Path(cloud.__file__).read_bytes())
    h.update(b"\0")
    h.update(Path(__file__).read_bytes())
    return cloud.inputs_digest(h.digest(), PACKAGES, cloud.RELEASE)


def configure_slurm(root: Path) -> None:
    """The variant's changes to the configured tree (files only; nothing runs in it)."""
    system = root / "etc/systemd/system"
    for unit in UNITS_OFF:
        (system / unit).unlink(missing_ok=True)
    (root / MUNGE_KEY).unlink(missing_ok=True)
    dropin = root / SLURMD_DROPIN_PATH
    dropin.parent.mkdir(parents=True, exist_ok=True)
    dropin.write_text(SLURMD_DROPIN)
    dropin.chmod(0o644)


def _run(args: Sequence[str], what: str, timeout_s: float) -> None:
    try:
        proc = subprocess.run(
            list(args),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            errors="replace",
            timeout=timeout_s,
            check=False,
        )
    except subprocess.TimeoutExpired as exc:
        raise cloud.CloudApplianceError(f"{what} timed out after {timeout_s:g} s") from exc
    if proc.returncode != 0:
        tail = "\n".join(proc.stdout.splitlines()[-_TAIL_LINES:])
        raise cloud.CloudApplianceError(f"{what} failed (exit {proc.returncode}):\n{tail}")


def _apt_options() -> list[str]:
    try:
        proc = subprocess.run(
            ["apt-config", "dump"], capture_output=True, text=True, check=False, timeout=30
        )
    except (OSError, subprocess.TimeoutExpired):
        return []
    return cloud.apt_options(proc.stdout) if proc.returncode == 0 else []


def _replace(src: Path, dst: Path) -> None:
    with src.open("rb") as f:
        os.fsync(f.fileno())
    src.replace(dst)


def _make(out: Path, work: Path, digest: str) -> cloud.CloudAppliance:
    started = time.monotonic()
    sources = cloud.host_sources()
    if not sources:
        raise cloud.CloudApplianceError(
            f"no apt source for {cloud.RELEASE} on this host: the image is built from the "
            "host's Debian mirror"
        )
    tree, overlay = work / "tree", work / "overlay"
    cloud.write_overlay(overlay)
    command = cloud.mmdebstrap_command(tree, sources, overlay, _apt_options(), PACKAGES)
    _run(command, "mmdebstrap", cloud.BUILD_TIMEOUT_S)
    cloud.configure_tree(tree)
    configure_slurm(tree)
    kernel, initrd, version = cloud.find_kernel(tree)
    staged = {
        cloud.KERNEL_NAME: work / cloud.KERNEL_NAME,
        cloud.INITRD_NAME: work / cloud.INITRD_NAME,
    }
    staged[cloud.KERNEL_NAME].write_bytes(kernel.read_bytes())
    staged[cloud.INITRD_NAME].write_bytes(initrd.read_bytes())
    raw = work / "root.raw"
    with raw.open("wb") as f:
        f.truncate(cloud.DISK_SIZE_BYTES)
    _run(cloud.mkfs_command(tree, raw), "mkfs.ext4", 600.0)
    if not cloud.remove_work(tree):
        raise cloud.CloudApplianceError(f"mmdebstrap left mounts in {tree}")
    _run(cloud.convert_command(raw, work / cloud.ROOT_NAME), "qemu-img convert", 600.0)
    raw.unlink()
    appliance = cloud.outputs(out, version)
    appliance.record.unlink(missing_ok=True)
    _replace(work / cloud.ROOT_NAME, appliance.root)
    _replace(staged[cloud.KERNEL_NAME], appliance.kernel)
    _replace(staged[cloud.INITRD_NAME], appliance.initrd)
    manifest = cloud.manifest_text(appliance.cmdline).replace("cloud:1", "slurm:1")
    appliance.manifest.write_text(manifest)
    record = {
        **{k: str(v) for k, v in dataclasses.asdict(appliance).items()},
        "variant": VARIANT,
        "release": cloud.RELEASE,
        "packages": list(PACKAGES),
        "root_size_bytes": appliance.root.stat().st_size,
        "virtual_size_bytes": cloud.DISK_SIZE_BYTES,
        "inputs_sha256": digest,
        "build_seconds": round(time.monotonic() - started, 1),
    }
    tmp = appliance.record.with_name(f".{appliance.record.name}.tmp")
    tmp.write_text(json.dumps(record, indent=2, sort_keys=True) + "\n")
    tmp.replace(appliance.record)
    return appliance


def build(out_dir: Path | str | None = None, *, rebuild: bool = False) -> cloud.CloudAppliance:
    """Build (or reuse) the Slurm appliance in ``out_dir``; returns its paths. Cached and
    locked like ``images.cloud.build``."""
    out = Path(out_dir if out_dir is not None else default_out_dir()).resolve()
    out.mkdir(parents=True, exist_ok=True)
    digest = inputs_digest()
    with (out / ".lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        found = None if rebuild else cloud.cached(out, digest)
        if found is not None:
            return found
        if os.geteuid() != 0:
            raise cloud.CloudApplianceError("building the Slurm appliance needs root")
        for stale in out.glob(".build-*"):
            if not cloud.remove_work(stale):
                raise cloud.CloudApplianceError(f"{stale} still has mounts in it")
        work = out / f".build-{os.getpid()}"
        work.mkdir()
        try:
            return _make(out, work, digest)
        finally:
            cloud.remove_work(work)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m images.cloud_slurm",
        description="build the Slurm variant of the cloud appliance (slurmd, munge)",
    )
    parser.add_argument("--out", type=Path, default=None, help=f"default: {DEFAULT_OUT}")
    parser.add_argument("--rebuild", action="store_true", help="ignore the cache")
    args = parser.parse_args(argv)
    try:
        built = build(args.out, rebuild=args.rebuild)
    except cloud.CloudApplianceError as exc:
        print(f"cloud_slurm: error: {exc}", file=sys.stderr)
        return 1
    print(f"slurm appliance in {built.root.parent} (kernel {built.kernel_version})")
    print(f"  push it: ws image push slurm --manifest {built.manifest}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
