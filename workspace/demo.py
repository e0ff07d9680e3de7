"""`make demo`: an all-in-one site with a real VM you can log in to, driven the way a user would.

Builds the Debian cloud appliance (cloud-init, OpenSSH, qemu-guest-agent; cached under
/var/tmp) and the small busybox test appliance, starts a site with the libvirt driver in
a private network namespace (`ws-admin site up --driver libvirt`), pushes the cloud image
with `ws image push`, adds your SSH public key (if you have one) with `ws key add`, boots
a workspace from it, waits for cloud-init and shows the end of its console, then runs
commands inside the VM: through the QEMU guest agent (`ws exec`) and, with your key,
over SSH with the host key the service vouches for (`ws ssh -i` the key it added). The
site keeps running; `ws-admin site down` stops it and removes every VM. The site keeps
its state (images, workspaces) and its driver for the next `site up`; `ws-admin site
down --purge` removes it all (see workspace.site.local.STATE_RULE).
"""

from __future__ import annotations

import json
import os
import pwd
import re
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
# Lines of the console shown once the guest is up.
CONSOLE_LINES = 6
# Terminal escape sequences (CSI and OSC) in console output.
ANSI = re.compile(r"\x1b(\[[0-?]*[ -/]*[@-~]|\][^\x07\x1b]*(\x07|\x1b\\)|[@-Z\\-_])")


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


def wait_for_guest() -> None:
    """Until cloud-init is done, asked through the guest agent: `ws exec --retry` waits
    for the agent while the guest boots, saying so on stderr (passed through)."""
    started = time.monotonic()
    deadline = started + BOOT_TIMEOUT_S
    while True:
        left = max(1, int(deadline - time.monotonic()))
        probe = subprocess.run(
            [sys.executable, "-m", "workspace.cli.ws", "exec", NAME, "--retry", str(left),
             "--timeout", "120", "--", "cloud-init", "status", "--wait"],
            stdout=subprocess.PIPE,
            text=True,
            check=False,
        )  # fmt: skip
        if probe.returncode == 0:
            print(f"    cloud-init done after {time.monotonic() - started:.0f} s", flush=True)
            return
        if time.monotonic() > deadline:
            sys.stdout.write(probe.stdout)
            raise SystemExit(f"demo: the guest did not come up in {BOOT_TIMEOUT_S:.0f} s")
        print(f"    ... cloud-init not done yet ({time.monotonic() - started:.0f} s)", flush=True)
        time.sleep(5.0)


def user_key(home: Path | None = None) -> Path | None:
    """The caller's SSH public key (in ``home``, $HOME by default), if they have one
    with its private half beside it."""
    ssh_dir = (home or Path.home()) / ".ssh"
    return next(
        (
            ssh_dir / n
            for n in PUBLIC_KEYS
            if (ssh_dir / n).is_file() and (ssh_dir / n).with_suffix("").is_file()
        ),
        None,
    )


def identity(public: Path) -> list[str]:
    """``ws ssh``'s ``-i`` with the private half of ``public``, the key the demo added:
    ssh itself looks in the passwd entry's home, which need not be $HOME."""
    return ["-i", str(public.with_suffix(""))]


def console_tail(text: str, lines: int = CONSOLE_LINES) -> list[str]:
    """The last ``lines`` non-blank lines of console output ``text``, without carriage
    returns and terminal escape sequences (colours, cursor moves)."""
    plain = ANSI.sub("", text).replace("\r", "\n")
    return [line.rstrip() for line in plain.splitlines() if line.strip()][-lines:]


def show_console() -> None:
    """The end of the workspace's console log (cloud-init's final message, the login
    prompt), as `ws console` prints it."""
    log = cli("workspace.cli.ws", "console", NAME, "--tail", "8192", quiet=True)
    print(f"$ ws console {NAME}   (its last lines)", flush=True)
    for line in console_tail(log.stdout):
        print(f"    {line}", flush=True)


def next_steps(key: Path | None, ssh_home: Path | None = None) -> str:
    """What to try once the demo ran; without an SSH key (``key``: the public key it
    added), how to get one into a VM (a key added later reaches only workspaces created
    after it). ``ssh_home``: where ssh looks for keys (the passwd entry's home)."""
    if key is not None:
        looks = (ssh_home or Path(pwd.getpwuid(os.getuid()).pw_dir)) / ".ssh"
        i = "" if key.parent == looks else f"-i {key.with_suffix('')} "
        login = f"ws ssh {i}demo"
        # Two columns while the login fits the first; a long -i path: a line each.
        ssh = (
            f"  {login:<32} ws exec demo -- df -h /\n"
            if len(login) < 32
            else f"  {login}\n  ws exec demo -- df -h /\n"
        )
    else:
        ssh = (
            "  ws exec demo -- df -h /          (you have no SSH key, so no `ws ssh demo`)\n"
            "  ssh-keygen -t ed25519 && ws key add ~/.ssh/id_ed25519.pub\n"
            "  ws create --image cloud --name mine --wait && ws ssh mine\n"
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
    show_console()

    say("running commands inside the VM")
    cli("workspace.cli.ws", "exec", NAME, "--", "cat", "/etc/hostname")
    cli("workspace.cli.ws", "exec", NAME, "--", "uname", "-a")
    if key is not None:
        cli("workspace.cli.ws", "ssh", *identity(key), NAME, "--", "uname", "-a")
    print(next_steps(key))
    return 0


if __name__ == "__main__":
    sys.exit(main())
