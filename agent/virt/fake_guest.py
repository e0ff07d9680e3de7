"""What runs inside a fake domain: a handful of commands and a serial console.

Small but faithful where the control plane can tell: exit codes, stdout and stderr, a
command that is not there (127, as a shell says it), a command that runs past its
timeout (``sleep``), a console that prints a login banner and echoes what is typed.

Commands: ``echo ARGS``, ``true``, ``false``, ``hostname``, ``cat /etc/hostname``,
``cat`` (stdin to stdout), ``sleep S``, ``uname [-a]``, ``exit N`` and ``sh -c SCRIPT``
where SCRIPT is such commands joined by ``;`` (``echo X >&2`` writes to stderr). Files:
``cat > PATH`` (stdin to a file), ``cat PATH``, ``mv [-f] A B``, ``mkdir -p``,
``chmod`` and ``set -e`` (no-ops); ``command`` finds nothing (exit 1).
"""

from __future__ import annotations

import queue
import shlex
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from agent.virt.base import ConsoleSession
from workspace.domain.model import ExecOutcome
from workspace.errors import DriverError

# timeout(1)'s exit code for a command that ran too long.
TIMED_OUT = 124
NOT_FOUND = 127


@dataclass
class _Run:
    hostname: str
    stdin: bytes
    deadline: float
    sleep: Callable[[float], None]
    clock: Callable[[], float]
    out: list[str] = field(default_factory=list)
    err: list[str] = field(default_factory=list)
    timed_out: bool = False
    files: dict[str, bytes] = field(default_factory=dict)
    cpus: int = 1  # what nproc and /proc/meminfo say: the domain's size
    memory_mib: int = 512


class _Exit(Exception):
    def __init__(self, code: int) -> None:
        self.code = code


def _command(run: _Run, argv: Sequence[str]) -> int:
    if not argv:
        return 0
    name, args = argv[0].rsplit("/", 1)[-1], list(argv[1:])
    to_err = bool(args) and args[-1] == ">&2"
    if to_err:
        args = args[:-1]
    sink = run.err if to_err else run.out
    if name == "echo":
        sink.append(" ".join(args) + "\n")
        return 0
    if name == "true":
        return 0
    if name == "false":
        return 1
    if name == "hostname" or (name == "cat" and args == ["/etc/hostname"]):
        sink.append(run.hostname + "\n")
        return 0
    if name == "cat" and not args:
        sink.append(run.stdin.decode(errors="replace"))
        return 0
    if name == "cat" and len(args) == 2 and args[0] == ">":
        run.files[args[1]] = run.stdin
        return 0
    if name == "cat" and args == ["/proc/meminfo"]:
        sink.append(f"MemTotal:       {run.memory_mib * 1024} kB\n")
        return 0
    if name == "cat" and args[0] in run.files:
        sink.append(run.files[args[0]].decode(errors="replace"))
        return 0
    if name == "mv":
        paths = [a for a in args if not a.startswith("-")]
        if len(paths) != 2 or paths[0] not in run.files:
            run.err.append(f"mv: cannot move {paths[0] if paths else ''!r}\n")
            return 1
        run.files[paths[1]] = run.files.pop(paths[0])
        return 0
    if name in ("mkdir", "chmod", "set"):
        return 0
    if name == "command":
        return 1
    if name == "cat":
        run.err.append(f"cat: {args[0]}: No such file or directory\n")
        return 1
    if name == "nproc":
        sink.append(f"{run.cpus}\n")
        return 0
    if name == "uname":
        sink.append(f"Linux {run.hostname} 6.1.0-fake x86_64 GNU/Linux\n" if args else "Linux\n")
        return 0
    if name == "exit":
        raise _Exit(int(args[0]) if args else 0)
    if name == "sleep":
        want = float(args[0]) if args else 0.0
        left = run.deadline - run.clock()
        if want > left:
            run.sleep(max(0.0, left))
            run.timed_out = True
            raise _Exit(TIMED_OUT)
        run.sleep(want)
        return 0
    if name in ("sh", "bash") and len(args) >= 2 and args[0] == "-c":
        code = 0
        for part in args[1].split(";"):
            code = _command(run, shlex.split(part))
        return code
    run.err.append(f"sh: 1: {argv[0]}: not found\n")
    return NOT_FOUND


def run(
    argv: Sequence[str],
    stdin: bytes,
    timeout_s: float,
    hostname: str,
    sleep: Callable[[float], None] = time.sleep,
    clock: Callable[[], float] = time.monotonic,
    files: dict[str, bytes] | None = None,
    size: tuple[int, int] = (1, 512),
) -> ExecOutcome:
    """What ``argv`` does in a fake guest named ``hostname`` (``files``: its files,
    changed in place; ``size``: its vCPUs and MiB)."""
    r = _Run(
        hostname,
        stdin,
        clock() + timeout_s,
        sleep,
        clock,
        files={} if files is None else files,
        cpus=size[0],
        memory_mib=size[1],
    )
    try:
        code = _command(r, argv)
    except _Exit as e:
        code = e.code
    except ValueError as exc:  # a bad number, unbalanced quotes
        r.err.append(f"sh: {exc}\n")
        code = 2
    return ExecOutcome(
        exit_code=code,
        stdout="".join(r.out).encode(),
        stderr="".join(r.err).encode(),
        timed_out=r.timed_out,
    )


class FakeConsole(ConsoleSession):
    """A login banner, then every byte written comes back (a terminal's echo); b"" once
    closed (by us, or because the domain stopped)."""

    def __init__(self, hostname: str, on_close: Callable[[FakeConsole], None]) -> None:
        self._out: queue.Queue[bytes] = queue.Queue()
        self._closed = threading.Event()
        self._on_close = on_close
        self._out.put(
            f"\r\nDebian GNU/Linux 12 {hostname} ttyS0\r\n\r\n{hostname} login: ".encode()
        )

    def read(self, timeout_s: float) -> bytes | None:
        if self._closed.is_set() and self._out.empty():
            return b""
        try:
            return self._out.get(timeout=timeout_s)
        except queue.Empty:
            return b"" if self._closed.is_set() else None

    def write(self, data: bytes) -> None:
        if self._closed.is_set():
            raise DriverError("fake: the console is closed")
        self._out.put(data.replace(b"\r", b"\r\n"))

    def close(self) -> None:
        if not self._closed.is_set():
            self._closed.set()
            self._out.put(b"")
            self._on_close(self)
