"""`make demo`: an all-in-one site with a real VM you can log in to, driven the way a user would.

Builds the Debian cloud appliance (cloud-init, OpenSSH, qemu-guest-agent; cached under
/var/tmp) and the small busybox test appliance, starts a site with the libvirt driver in
a private network namespace (`ws-admin site up --driver libvirt`), pushes the cloud image
with `ws image push`, adds your SSH public key (if you have one) with `ws key add`, boots
a workspace from it and waits for cloud-init, then runs commands inside the VM: through
the QEMU guest agent (`ws exec`) and, with your key, over SSH with the host key the
service vouches for (`ws ssh`). The site keeps running; `ws-admin site down` stops it and
removes every VM. The site keeps its state (images, workspaces) and its driver for the
next `site up`; `ws-admin site down --purge` removes it all (see
workspace.site.local.STATE_RULE).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

from images import cloud
from images.appliance import build

APPLIANCE_DIR = Path(os.environ.get("WS_APPLIANCE_CACHE", "/var/tmp/ws-appliance-cache"))
NAME = "demo"
BOOT_TIMEOUT_S = 300.0
PUBLIC_KEYS = ("id_ed25519.pub", "id_ecdsa.pub", "id_rsa.pub")


def say(msg: str) -> None:
    print(f"==> {msg}", flush=True)


def cli(module: str, *args: str, quiet: bool = False) -> subprocess.CompletedProcess[str]:
    cmd = [sys.executable, "-m", module, *args]
    shown = "ws" if module.endswith(".ws") else "ws-admin"
    if not quiet:
        print(f"$ {shown} {' '.join(args)}", flush=True)
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if proc.stdout and not quiet:
        print(proc.stdout.rstrip(), flush=True)
    if proc.returncode != 0:
        sys.stderr.write(proc.stderr)
        raise SystemExit(f"demo: `{shown} {' '.join(args)}` failed")
    return proc


def run_cli(module: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", module, *args], capture_output=True, text=True, check=False
    )


def wait_for_guest() -> None:
    """Until the guest agent answers and cloud-init is done (progress on stdout)."""
    deadline = time.monotonic() + BOOT_TIMEOUT_S
    started = time.monotonic()
    while True:
        probe = run_cli(
            "workspace.cli.ws",
            "exec",
            NAME,
            "--timeout",
            "120",
            "--",
            "cloud-init",
            "status",
            "--wait",
        )
        if probe.returncode == 0:
            print(f"    cloud-init done after {time.monotonic() - started:.0f} s", flush=True)
            return
        if time.monotonic() > deadline:
            sys.stderr.write(probe.stderr)
            raise SystemExit(f"demo: the guest did not come up in {BOOT_TIMEOUT_S:.0f} s")
        print(f"    ... booting ({time.monotonic() - started:.0f} s)", flush=True)
        time.sleep(5.0)


def user_key() -> Path | None:
    """The caller's SSH public key, if they have one."""
    ssh_dir = Path.home() / ".ssh"
    return next((ssh_dir / n for n in PUBLIC_KEYS if (ssh_dir / n).is_file()), None)


def next_steps(has_key: bool) -> str:
    """What to try once the demo ran; without an SSH key, how to get one into a VM (a key
    added later reaches only workspaces created after it)."""
    if has_key:
        ssh = "  ws ssh demo                      ws exec demo -- df -h /\n"
    else:
        ssh = (
            "  ws exec demo -- df -h /          (you have no SSH key, so no `ws ssh demo`)\n"
            "  ssh-keygen -t ed25519 && ws key add ~/.ssh/id_ed25519.pub\n"
            "  ws create --image cloud --name mine --wait && ws ssh --retry 120 mine\n"
        )
    return (
        "\nThe site keeps running. Try:\n"
        "  . .venv/bin/activate\n"
        f"{ssh}"
        "  ws console demo --attach         (Ctrl-] detaches)\n"
        "  ws cluster create mpi --member head=cloud --member worker=cloud,count=2 --wait\n"
        "  ws cluster exec mpi -- cat /etc/workspace/cluster.json\n"
        "  ws list   ws stop demo --wait   ws start demo --wait   ws destroy demo\n"
        "Stop it (removes the namespace and every VM; images and workspaces stay for the\n"
        "next `ws-admin site up`, which keeps the libvirt driver):\n"
        "  .venv/bin/ws-admin site down\n"
        "A clean slate (also removes the site's database, images and disks):\n"
        "  .venv/bin/ws-admin site down --purge"
    )


def main() -> int:
    if os.geteuid() != 0:
        print("demo: run as root (network namespaces, libvirtd, bridges)", file=sys.stderr)
        return 1
    say("building the Debian cloud appliance (mmdebstrap; cached after the first time)")
    image = cloud.build()
    print(f"    {image.manifest}")
    app = build(APPLIANCE_DIR)

    say("starting the all-in-one site (service, agent, libvirtd, bridge, dnsmasq in a netns)")
    cli("workspace.cli.admin", "site", "up", "--driver", "libvirt")

    listed = cli("workspace.cli.ws", "--output", "json", "image", "list", quiet=True)
    names = {i.get("name") for i in json.loads(listed.stdout)}
    if "cloud" not in names:
        say("pushing the cloud appliance as image `cloud`")
        cli("workspace.cli.ws", "image", "push", "cloud", "--manifest", str(image.manifest))
    if "appliance" not in names:
        cli(
            "workspace.cli.admin",
            "image",
            "import",
            "appliance",
            "--appliance",
            str(app.manifest.parent),
            quiet=True,
        )

    key = user_key()
    if key is not None:
        say(f"adding your SSH public key {key}")
        cli("workspace.cli.ws", "key", "add", str(key))

    live = json.loads(cli("workspace.cli.ws", "--output", "json", "list", quiet=True).stdout)
    if not any(w.get("name") == NAME for w in live):
        say(f"booting workspace `{NAME}` from the cloud image (QEMU/TCG here: about a minute)")
        cli(
            "workspace.cli.ws",
            "create",
            "--image",
            "cloud",
            "--name",
            NAME,
            "--memory-mib",
            "1024",
            "--wait",
            "--timeout",
            str(int(BOOT_TIMEOUT_S)),
        )
    cli("workspace.cli.ws", "show", NAME)

    say("waiting for cloud-init inside the guest (asked through the QEMU guest agent)")
    wait_for_guest()

    say("running commands inside the VM")
    cli("workspace.cli.ws", "exec", NAME, "--", "cat", "/etc/hostname")
    cli("workspace.cli.ws", "exec", NAME, "--", "uname", "-a")
    if key is not None:
        cli("workspace.cli.ws", "ssh", NAME, "--", "uname", "-a")
    print(next_steps(key is not None))
    return 0


if __name__ == "__main__":
    sys.exit(main())
