"""`ws console NAME --attach`: the workspace's serial console both ways, relayed by the
service from its node's agent; Ctrl-] detaches."""

from __future__ import annotations

import argparse
import contextlib
import os
import queue
import sys
import threading
import time
from collections.abc import Iterator
from typing import BinaryIO

from workspace import errors
from workspace.cli import common, render, termfilter
from workspace.cli.guest_cmds import RUNNING, get_guest
from workspace.client import Client

# What `ws console CLUSTER` suggests besides a member's name (cli/guest_cmds.py get_guest).
CLUSTER_INSTEAD = "`ws cluster show {name}` for every member's state"

DETACH = b"\x1d"  # Ctrl-]: leaves an attached console (as telnet and virsh console do)


# After the end of input (keystrokes piped in), how long the guest's answer to the last
# of them is still shown before ws detaches.
EOF_GRACE_S = 2.0


class Keystrokes:
    """Bytes read from ``fd`` (a thread of its own) until Ctrl-] (``detached``), the end
    of input (``eof``; the iteration ends ``EOF_GRACE_S`` later, so the answer to what was
    piped in is seen), or ``close``; iterate to get them."""

    def __init__(self, fd: int, eof_grace_s: float = EOF_GRACE_S) -> None:
        self.fd = fd
        self.eof_grace_s = eof_grace_s
        self.detached = threading.Event()
        self.eof = threading.Event()
        self._q: queue.Queue[bytes | None] = queue.Queue()
        threading.Thread(target=self._read, name="console-stdin", daemon=True).start()

    def _read(self) -> None:
        try:
            while True:
                data = os.read(self.fd, 1024)
                if not data:
                    self.eof.set()
                    break
                before, hit, _ = data.partition(DETACH)
                if before:
                    self._q.put(before)
                if hit:
                    self.detached.set()
                    break
        except OSError:
            pass
        if self.eof.is_set():
            time.sleep(self.eof_grace_s)
        self._q.put(None)

    def close(self) -> None:
        """The session ended: end the iteration (the reader thread may stay blocked)."""
        self._q.put(None)

    def __iter__(self) -> Iterator[bytes]:
        while True:
            item = self._q.get()
            if item is None:
                return
            yield item


@contextlib.contextmanager
def raw_terminal(fd: int) -> Iterator[bool]:
    """``fd`` in raw mode while inside (restored on the way out, errors included);
    yields whether it is a terminal at all."""
    if not os.isatty(fd):
        yield False
        return
    import termios
    import tty

    saved = termios.tcgetattr(fd)
    try:
        tty.setraw(fd)
        yield True
    finally:
        termios.tcsetattr(fd, termios.TCSADRAIN, saved)


def print_log(client: Client, ref: str, tail: int) -> None:
    """`ws console NAME`: the log's last ``tail`` bytes (0: all of it) on stdout."""
    try:
        data = client.get_console(ref, tail_bytes=tail)
    except errors.NotFound:
        # `ws console mpi` for a cluster: say it is one and name its members.
        get_guest(client, ref, CLUSTER_INSTEAD)
        raise
    render.console(data)


def attach(
    client: Client,
    ref: str,
    stdin_fd: int | None = None,
    out: BinaryIO | None = None,
) -> int:
    """Relay the console of ``ref``: input to the guest, its output to ``out``."""
    # Said only for one that runs: for any other the service's refusal is the one line.
    running = get_guest(client, ref, CLUSTER_INSTEAD).state == RUNNING
    fd = sys.stdin.fileno() if stdin_fd is None else stdin_fd
    sink = out if out is not None else sys.stdout.buffer
    keys = Keystrokes(fd)
    try:
        with raw_terminal(fd) as tty_mode:
            if running:
                nl = "\r\n" if tty_mode else "\n"
                sys.stderr.write(f"ws: attached to the console of {ref}; Ctrl-] detaches{nl}")
                sys.stderr.flush()
            shown = termfilter.Filter() if _is_terminal(sink) else None
            for data in client.attach_console(ref, keys):
                sink.write(shown.feed(data) if shown is not None else data)
                sink.flush()
    finally:
        keys.close()
    if keys.detached.is_set():
        why = "detached"
    elif keys.eof.is_set():
        why = "end of input: detached"
    else:
        why = "the console ended"
    print(f"\nws: {why}", file=sys.stderr)
    return common.EXIT_OK


def _is_terminal(sink: BinaryIO) -> bool:
    try:
        return sink.isatty()
    except (AttributeError, ValueError):
        return False


def add_attach_option(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--attach",
        action="store_true",
        help="the interactive serial console, both ways (Ctrl-] detaches)",
    )
