"""`make demo`: an all-in-one site with a real VM, driven the way a user would.

Builds the test appliance, starts a site with the libvirt driver in a private network
namespace (`ws-admin site up --driver libvirt`), imports the appliance, boots a
workspace and shows its state, address and the READY line from its console. The
site keeps running; `ws-admin site down` stops it and removes every VM. The site keeps
its state (images, workspaces) and its driver for the next `site up`; `ws-admin site
down --purge` removes it all (see workspace.site.local.STATE_RULE).
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

from images.appliance import build

APPLIANCE_DIR = Path(os.environ.get("WS_APPLIANCE_CACHE", "/var/tmp/ws-appliance-cache"))
NAME = "demo"
BOOT_TIMEOUT_S = 180.0


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


def main() -> int:
    if os.geteuid() != 0:
        print("demo: run as root (network namespaces, libvirtd, bridges)", file=sys.stderr)
        return 1
    say("building the test appliance (Debian kernel + busybox initramfs)")
    app = build(APPLIANCE_DIR)
    print(f"    {app.manifest}")

    say("starting the all-in-one site (service, agent, libvirtd, bridge, dnsmasq in a netns)")
    cli("workspace.cli.admin", "site", "up", "--driver", "libvirt")

    listed = cli("workspace.cli.ws", "--output", "json", "image", "list", quiet=True)
    images = json.loads(listed.stdout)
    if not any(i.get("name") == "appliance" for i in images):
        say("importing the appliance as image `appliance`")
        cli(
            "workspace.cli.admin", "image", "import", "appliance", "--appliance", str(APPLIANCE_DIR)
        )

    live = json.loads(cli("workspace.cli.ws", "--output", "json", "list", quiet=True).stdout)
    if not any(w.get("name") == NAME for w in live):
        say(f"booting workspace `{NAME}` (QEMU/TCG here: a few seconds)")
        cli(
            "workspace.cli.ws",
            "create",
            "--image",
            "appliance",
            "--name",
            NAME,
            "--memory-mib",
            "256",
            "--wait",
            "--timeout",
            str(int(BOOT_TIMEOUT_S)),
        )

    say("waiting for the guest's READY line on its serial console")
    deadline = time.monotonic() + BOOT_TIMEOUT_S
    line = ""
    while time.monotonic() < deadline and not line:
        out = subprocess.run(
            [sys.executable, "-m", "workspace.cli.ws", "console", NAME],
            capture_output=True,
            text=True,
            check=False,
        ).stdout
        found = re.findall(r"WORKSPACE-READY ip=\S+ hostname=\S+", out)
        line = found[-1] if found else ""
        time.sleep(0.5)
    cli("workspace.cli.ws", "show", NAME)
    if not line:
        print("demo: no READY line yet; see `ws console demo`", file=sys.stderr)
        return 1
    print(f"\nconsole: {line}")
    shown = json.loads(cli("workspace.cli.ws", "--output", "json", "show", NAME, quiet=True).stdout)
    ip = shown["nics"][0]["ip"] if shown.get("nics") else "?"
    print(f"\nThe guest took {ip} by DHCP from the site's pool, as `ws show` reports.")
    print(
        "\nThe site keeps running. Try:\n"
        "  . .venv/bin/activate\n"
        "  ws list            ws show demo        ws console demo\n"
        "  ws stop demo --wait   ws start demo --wait   ws reboot demo   ws destroy demo\n"
        "  ws create --image appliance --name vm2 --memory-mib 256 --wait\n"
        "Stop it (removes the namespace and every VM; images and workspaces stay for the\n"
        "next `ws-admin site up`, which keeps the libvirt driver):\n"
        "  .venv/bin/ws-admin site down\n"
        "A clean slate (also removes the site's database, images and disks):\n"
        "  .venv/bin/ws-admin site down --purge"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
