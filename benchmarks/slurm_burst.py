#!/usr/bin/env python3
"""A 2-node Slurm job bursting onto workspaces, next to one create -> SSH-ready.

On this machine (root; QEMU/TCG): the site of tests/host/slurm_site.py — a local libvirt
site, the Slurm appliance pushed by the batch user `slurm`, Debian's slurmctld in the
site's namespace with cloud nodes c[1-2] whose ResumeProgram is ws-slurm. The image is
preloaded onto the node first, so neither figure includes the first blob transfer.

* ``ssh_ready_s``: `ws create --image slurm` (same size as a Slurm node) until `ssh` with
  the user's key and the service's host key runs `true` in the guest (the floor: one
  guest's boot, the same image);
* ``submit_to_start_s``: `sbatch -N 2 --wrap 'srun hostname'` until Slurm shows the job
  RUNNING (ws-slurm's creates, two guests booting at once, slurmd registering);
* ``submit_to_end_s``: until the job is COMPLETED (its output is checked: both hostnames);
* ``resume_program_s``: how long ws-slurm's resume took (from its log): what slurmctld
  waits for.

    .venv/bin/python benchmarks/slurm_burst.py

VMs boot under ``flock /tmp/ws-realvm.lock``. Takes ~5 minutes under TCG.
"""

from __future__ import annotations

import argparse
import fcntl
import json
import re
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks._common import emit
from benchmarks.ssh_ready import target, wait_ssh
from images import cloud_slurm
from tests.host.slurm_site import NODE_MEMORY_MIB, SlurmSite, wait

LOCK = "/tmp/ws-realvm.lock"
POLL_S = 0.5
JOB_TIMEOUT_S = 900.0


def say(msg: str) -> None:
    print(f"slurm_burst: {msg}", file=sys.stderr, flush=True)


class SshTarget:
    """What benchmarks.ssh_ready.wait_ssh needs of a site."""

    def __init__(self, netns: str, key: Path) -> None:
        self.netns = netns
        self.key = key


def ssh_ready(site: SlurmSite) -> float:
    key = site.dir / "id_ed25519"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)], check=True)
    site.ws("key", "add", f"{key}.pub")
    t0 = time.monotonic()
    site.ws("create", "--image", "slurm", "--name", "probe", "--memory-mib",
            str(NODE_MEMORY_MIB), "--cpus", "1")  # fmt: skip
    shown = json.loads(site.ws("-o", "json", "show", "probe"))
    address, keys = target(shown)
    wait_ssh(SshTarget(site.netns, key), address, keys, site.dir)  # type: ignore[arg-type]
    took = time.monotonic() - t0
    site.ws("destroy", "probe", "--wait")
    return took


def burst(site: SlurmSite) -> tuple[float, float]:
    t0 = time.monotonic()
    job = site.sbatch("-N", "2", "-p", "cloud", "-o", "/tmp/job-%j.out", "--wrap",
                      "srun hostname")  # fmt: skip
    started = 0.0
    deadline = t0 + JOB_TIMEOUT_S
    state = ""
    while time.monotonic() < deadline:
        state = site.job_state(job)
        if state == "RUNNING" and not started:
            started = time.monotonic() - t0
        if state in ("COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL"):
            break
        time.sleep(POLL_S)
    ended = time.monotonic() - t0
    if state != "COMPLETED":
        raise SystemExit(f"job {job} ended {state or 'never'}:\n{site.diagnostics()}")
    out = site.ws("exec", f"slurm-{job}-c1-0", "--", "cat", f"/tmp/job-{job}.out")
    if sorted(out.split()) != ["c1", "c2"]:
        raise SystemExit(f"job {job} printed {out!r}, not c1 and c2")
    return started or ended, ended


def resume_seconds(site: SlurmSite) -> float:
    found = re.findall(r"resume done in ([0-9.]+) s", site.tail("ws-slurm.log", 1000))
    return float(found[0]) if found else 0.0


def main(argv: list[str] | None = None) -> int:
    # No options: it runs on this machine as the docstring says (--help prints that).
    argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    ).parse_args(argv)
    say("building (or reusing) the Slurm appliance")
    image = cloud_slurm.build()
    with open(LOCK, "w") as lock:
        say(f"waiting for {LOCK}")
        fcntl.flock(lock, fcntl.LOCK_EX)
        site = SlurmSite()
        try:
            say("site up, batch user, image push")
            site.up(image.manifest)
            site.ok("workspace.cli.admin", "cache", "preload", "slurm")
            wait(
                lambda: len(json.loads(site.ok("workspace.cli.admin", "-o", "json", "cache",
                                               "list", "local")).get("entries", [])) >= 3,
                300,
                "the image's three blobs (root, kernel, initrd) in the node's cache",
            )  # fmt: skip
            site.start_slurmctld()
            say("create -> ssh of one guest")
            ssh_s = ssh_ready(site)
            say(f"ssh_ready_s {ssh_s:.1f}; now a 2-node job")
            start_s, end_s = burst(site)
            emit(
                {
                    "submit_to_start_s": start_s,
                    "submit_to_end_s": end_s,
                    "ssh_ready_s": ssh_s,
                    "resume_program_s": resume_seconds(site),
                }
            )
        finally:
            site.down()
    return 0


if __name__ == "__main__":
    sys.exit(main())
