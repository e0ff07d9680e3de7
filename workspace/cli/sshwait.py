"""Waiting for the sshd of a guest that has just started (``ws ssh``, ``ws scp``).

Right after ``ws create --wait`` the domain is RUNNING but the guest boots for a minute
more (under TCG): ssh would fail with "No route to host" or "Connection refused". Within
the boot window (``workspace/domain/booting.py``) ws first knocks on the guest's port 22
(a TCP connect, in the node's network namespace on a local site, where the guest is
reachable) about once a second, up to the end of the window, saying once on stderr that
it waits; then ssh runs once and gives its own error if the guest still does not answer.
A guest that ssh reaches through a ProxyJump or ProxyCommand of the user's ssh
configuration (a node's network this machine has no route to) is not knocked on: no
knock from here could be answered, and ws waited out the whole window for nothing.
ssh's own retries (``ConnectionAttempts``, ``--retry N``) are silent and bounded by
attempts, not time: a guest that drops packets makes each one last ConnectTimeout.
"""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Callable, Sequence

# The port ssh connects to (ws gives it no -p).
SSH_PORT = 22
# How long one knock may take, and the pause between knocks.
KNOCK_TIMEOUT_S = 3.0
KNOCK_EVERY_S = 1.0
_KNOCK = """\
import socket, sys
try:
    socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=float(sys.argv[3])).close()
except OSError as exc:
    print(exc.strerror or exc)
    sys.exit(1)
"""


def knock(address: str, prefix: Sequence[str] = ()) -> str:
    """ "" if ``address`` accepts a connection on the ssh port, else why not (ssh's
    words: "No route to host", "Connection refused", "timed out"). ``prefix``: the
    command it runs under (``ip netns exec NS`` on a local site)."""
    cmd = [*prefix, sys.executable, "-c", _KNOCK, address, str(SSH_PORT), str(KNOCK_TIMEOUT_S)]
    try:
        done = subprocess.run(
            cmd, capture_output=True, text=True, timeout=KNOCK_TIMEOUT_S + 10, check=False
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        return str(exc)
    if done.returncode == 0:
        return ""
    return done.stdout.strip() or done.stderr.strip() or f"exit {done.returncode}"


def proxy_of(address: str, prefix: Sequence[str] = ()) -> str:
    """The ProxyJump or ProxyCommand the user's ssh configuration gives ``address``
    (``ssh -G``; "" when none, or when ssh cannot say). A guest on a network this
    machine has no route to is reached that way (``Host 10.0.0.*`` / ``ProxyJump
    node``): a knock from here would never be answered."""
    try:
        done = subprocess.run(
            [*prefix, "ssh", "-G", "--", address],
            capture_output=True,
            text=True,
            timeout=KNOCK_TIMEOUT_S + 10,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired):
        return ""
    if done.returncode != 0:
        return ""
    for line in done.stdout.splitlines():
        key, _, value = line.partition(" ")
        if key.lower() in ("proxyjump", "proxycommand") and value.strip() not in ("", "none"):
            return value.strip()
    return ""


def wait_for_sshd(
    address: str, prefix: Sequence[str], wait_s: float, say: Callable[[str, float], None]
) -> bool:
    """Knock until ``address``'s sshd port answers or ``wait_s`` has passed; ``say(why,
    wait_s)`` once, at the first knock that found none. Whether it answered. Not at all
    (False at once) when ssh reaches ``address`` through a proxy (``proxy_of``): ssh
    then gives its own answer at once, where knocks from here would wait for nothing."""
    if proxy_of(address, prefix):
        return False
    deadline = time.monotonic() + wait_s
    said = False
    while True:
        why = knock(address, prefix)
        if not why:
            return True
        left = deadline - time.monotonic()
        if left <= 0:
            return False
        if not said:
            say(why, wait_s)
            said = True
        time.sleep(min(KNOCK_EVERY_S, left))
