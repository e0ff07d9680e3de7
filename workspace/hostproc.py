"""Daemons on this host, by recorded pid only (never by name).

One process supervisor for everything that starts a background program and must
stop it again later, possibly from another process: the local site (service and
agents), a site's private libvirtd and virtlogd (``workspace.site.hostenv``) and the
agent's dnsmasq (``agent.net.dhcp``).

* **Start**: ``spawn_daemon`` runs a command in a session of its own (no terminal
  signals; it survives its starter), its output appended to a log file. The caller
  records the pid (a record file, or the daemon's own pid file).
* **Ours?**: a recorded pid is ours only while the process is alive, not a zombie,
  and its ``/proc/<pid>/cmdline`` is the command we started (a matcher, e.g.
  ``cmdline_has`` or ``argv_includes``). A stale pid now used by another program is
  never signalled.
* **Stop**: ``stop_process``: SIGTERM, wait, SIGKILL, re-checking the identity before
  each signal. ``stop_session`` also stops what is left of the session the daemon
  led (its children). ``terminate_all`` stops a set of pids that some test (e.g.
  membership of a network namespace) makes ours. ``stop_sessions`` stops several
  daemons at once, and a Ctrl-C ends its wait at once.

PID 1 on the machines this runs on does not always reap orphans: a killed daemon may
stay a zombie, which counts as gone. Our own children are reaped here.
"""

from __future__ import annotations

import contextlib
import enum
import os
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

from workspace import errors
from workspace.files import private_fd

STOP_TIMEOUT_S = 15.0
KILL_WAIT_S = 5.0
POLL_INTERVAL_S = 0.05
# While a stop waits for a process to go after its SIGTERM, ``waiting`` is told so this
# often (a daemon that finishes its work first may take a minute: the waiter says why).
PROGRESS_S = 10.0
# Told, while a stop waits: the seconds since SIGTERM (0 right after it was sent).
Waiting = Callable[[float], None]

Matcher = Callable[[list[str]], bool]


class Stopped(enum.StrEnum):
    """What ``stop_process`` found and did."""

    NOT_RUNNING = "not running"
    NOT_OURS = "no longer ours"
    STOPPED = "stopped"
    KILLED = "killed"


# -- reading /proc -----------------------------------------------------------------------


def process_cmdline(pid: int) -> list[str] | None:
    """The argv of a live process, or None if it is gone or a zombie."""
    if pid <= 0:
        return None
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return None
    if not raw:  # zombie or kernel thread
        return None
    return raw.rstrip(b"\0").decode(errors="replace").split("\0")


def process_stat(pid: int) -> tuple[str, int] | None:
    """(state letter, session id) of ``pid``, or None if there is no such process."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return None
    # The state follows the command name in parentheses, which may contain spaces.
    fields = raw[raw.rfind(")") + 2 :].split()
    if len(fields) < 4:
        return None
    return fields[0], int(fields[3])


def reap(pid: int) -> None:
    """Wait for ``pid`` if it is our exited child (else it would stay a zombie)."""
    with contextlib.suppress(ChildProcessError, OSError):
        os.waitpid(pid, os.WNOHANG)


def process_alive(pid: int) -> bool:
    """True while the process exists and is not a zombie (our zombie child is reaped)."""
    if pid <= 0:
        return False
    st = process_stat(pid)
    if st is None or st[0] in ("Z", "X"):
        if st is not None:
            reap(pid)
        return False
    return True


def session_members(sid: int) -> list[int]:
    """Live processes of session ``sid`` (a daemon started with its own session)."""
    members = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            st = process_stat(int(entry.name))
            if st is not None and st[1] == sid and st[0] not in ("Z", "X"):
                members.append(int(entry.name))
    return members


# -- pid files and identity ----------------------------------------------------------------


def read_pid_file(path: Path) -> int | None:
    try:
        text = path.read_text().strip()
    except (FileNotFoundError, NotADirectoryError):
        return None
    return int(text) if text.isdigit() and int(text) > 0 else None


def write_pid_file(path: Path, pid: int) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(f"{pid}\n")
    tmp.replace(path)


def cmdline_has(argv0_name: str, *args: str) -> Matcher:
    """A matcher: argv[0]'s basename is ``argv0_name`` and ``args`` appear in order."""

    def matches(argv: list[str]) -> bool:
        if not argv or Path(argv[0]).name != argv0_name:
            return False
        n = len(args)
        return n == 0 or any(argv[i : i + n] == list(args) for i in range(1, len(argv)))

    return matches


def argv_includes(*items: str | os.PathLike[str]) -> Matcher:
    """A matcher: every one of ``items`` is an argument (e.g. ``-m MODULE --config PATH``)."""
    wanted = [str(i) for i in items]

    def matches(argv: list[str]) -> bool:
        return all(w in argv for w in wanted)

    return matches


# How long a live process may show an empty command line before it is judged by it. The
# kernel wakes a process that started another (its exec's close-on-exec pipe, which
# subprocess.Popen waits on) before the new program's arguments are set up: right after
# spawn_daemon returns, /proc/<pid>/cmdline can still be empty for a moment.
EXEC_SETTLE_S = 1.0


def pid_if_ours(pid: int | None, matches: Matcher) -> int | None:
    """``pid`` if it still runs a command line we started, else None. A live process whose
    command line reads empty (still in its exec) is read again, for up to EXEC_SETTLE_S."""
    if pid is None:
        return None
    deadline = time.monotonic() + EXEC_SETTLE_S
    while True:
        argv = process_cmdline(pid)
        if argv is not None:
            return pid if matches(argv) and process_alive(pid) else None
        if not process_alive(pid) or time.monotonic() >= deadline:
            return None
        time.sleep(POLL_INTERVAL_S / 5)


# -- start ------------------------------------------------------------------------------


def spawn_daemon(
    argv: Sequence[str],
    log_path: Path,
    *,
    cwd: Path | None = None,
    env: Mapping[str, str] | None = None,
) -> subprocess.Popen[bytes]:
    """Start ``argv`` in a session of its own, stdout and stderr appended to ``log_path``
    (made 0600: a daemon's log names users, workspaces and addresses)."""
    with os.fdopen(private_fd(log_path, os.O_WRONLY | os.O_APPEND), "ab") as log:
        return subprocess.Popen(
            list(argv),
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=cwd,
            env=dict(env) if env is not None else None,
            start_new_session=True,
            close_fds=True,
        )


def stop_child(proc: subprocess.Popen[bytes], timeout_s: float = STOP_TIMEOUT_S) -> None:
    """Stop a child we still hold the Popen of: SIGTERM, wait, SIGKILL."""
    if proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(timeout_s)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


# -- stop -------------------------------------------------------------------------------


def _gone(pid: int, still_ours: Callable[[int], bool]) -> bool:
    """Whether a signalled process has gone. One on its way out already shows an empty
    command line (so it no longer matches) while it still exists: that is not gone yet."""
    if not process_alive(pid):
        return True
    if still_ours(pid):
        return False
    return bool(process_cmdline(pid))  # alive with another command line: the pid was reused


def terminate_all(
    pids: Sequence[int],
    still_ours: Callable[[int], bool],
    timeout_s: float,
    kill_wait_s: float = KILL_WAIT_S,
    waiting: Waiting | None = None,
) -> tuple[list[int], list[int]]:
    """SIGTERM ``pids``, wait up to ``timeout_s``, SIGKILL the survivors.

    Each pid is re-checked with ``still_ours`` before every signal, so a pid reused
    meanwhile is left alone. ``waiting`` is called once SIGTERM is sent (with 0) and then
    every ``PROGRESS_S`` while the wait for them goes on (with the seconds waited).
    Returns (the pids that needed SIGKILL, those left after it).
    """
    killed: list[int] = []
    for sig, wait_s in ((signal.SIGTERM, timeout_s), (signal.SIGKILL, kill_wait_s)):
        targets = [pid for pid in pids if still_ours(pid)]
        if not targets:
            return killed, []
        if sig == signal.SIGKILL:
            killed = targets
        for pid in targets:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, sig)
        started = time.monotonic()
        deadline = started + wait_s
        told = 0
        while True:
            for pid in targets:
                reap(pid)
            if all(_gone(pid, still_ours) for pid in targets):
                break
            now = time.monotonic()
            if now >= deadline:
                break
            if waiting is not None and sig == signal.SIGTERM and now - started >= told * PROGRESS_S:
                waiting(told * PROGRESS_S)  # 0 at once, then every PROGRESS_S
                told += 1
            time.sleep(POLL_INTERVAL_S)
    return killed, [pid for pid in pids if still_ours(pid)]


def stop_process(
    pid: int | None,
    matches: Matcher,
    timeout_s: float = STOP_TIMEOUT_S,
    waiting: Waiting | None = None,
) -> Stopped:
    """SIGTERM, wait, SIGKILL a process we started (re-checked before each signal;
    ``waiting`` as for ``terminate_all``).

    Does nothing when ``pid`` is gone (NOT_RUNNING) or now runs another command line
    (NOT_OURS: a stale pid). Raises Unavailable if it survives SIGKILL.
    """
    if pid is None or not process_alive(pid):
        return Stopped.NOT_RUNNING
    if pid_if_ours(pid, matches) is None:
        return Stopped.NOT_OURS
    killed, left = terminate_all(
        [pid], lambda p: pid_if_ours(p, matches) is not None, timeout_s, waiting=waiting
    )
    if left:
        raise errors.Unavailable(f"pid {pid} survived SIGKILL (stuck in the kernel?)")
    return Stopped.KILLED if killed else Stopped.STOPPED


def stop_session(
    pid: int, matches: Matcher, timeout_s: float = STOP_TIMEOUT_S, waiting: Waiting | None = None
) -> str:
    """Stop a daemon we started with its own session, then whatever is left of that session
    (``waiting`` as for ``terminate_all``: told while the daemon is waited for).

    Returns what happened, for the user ("stopped", "killed (+1 child process(es))",
    "pid 12 is no longer ours (left alone)", "not running", "not started", or
    "not stopped: ..." when it survived SIGKILL).
    """
    if pid <= 0:
        return "not started"
    try:
        outcome = stop_process(pid, matches, timeout_s, waiting)
    except errors.Unavailable as exc:
        return f"not stopped: {exc.message}"
    if outcome is Stopped.NOT_OURS:
        return f"pid {pid} is no longer ours (left alone)"
    text = str(outcome)
    # Its session id is its pid. While the leader is gone, no other process can hold
    # that pid, so the members left are our daemon's children.
    if not process_alive(pid):
        rest = session_members(pid)
        if rest:

            def in_session(p: int) -> bool:
                st = process_stat(p)
                return st is not None and st[1] == pid and st[0] not in ("Z", "X")

            terminate_all(rest, in_session, 2.0)
            text += f" (+{len(rest)} child process(es))"
    return text


def stop_sessions(
    daemons: Sequence[tuple[int, Matcher, Waiting | None]], timeout_s: float
) -> list[str]:
    """``stop_session`` for each (pid, matcher, waiting) at once, each on a thread of its
    own (one after another, N daemons that finish their work took N times
    ``timeout_s``); what happened to each, in order.

    The caller's thread only waits for them, so a KeyboardInterrupt (Ctrl-C) ends the
    wait at once and is raised: each daemon already signalled is then left to finish
    its stop on its own, never killed (the threads, told to, give up within a poll).
    """
    abandoned = threading.Event()
    outcomes: list[str | BaseException] = ["" for _ in daemons]

    def stop(i: int, pid: int, matches: Matcher, waiting: Waiting | None) -> None:
        def still_ours(argv: list[str]) -> bool:  # given up: no longer ours to signal
            return not abandoned.is_set() and matches(argv)

        try:
            outcomes[i] = stop_session(pid, still_ours, timeout_s, waiting)
        except BaseException as exc:  # raised to the caller below
            outcomes[i] = exc

    threads = [
        threading.Thread(target=stop, args=(i, *d), name=f"stop-{d[0]}", daemon=True)
        for i, d in enumerate(daemons)
    ]
    try:
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    except BaseException:
        abandoned.set()
        raise
    for outcome in outcomes:
        if isinstance(outcome, BaseException):
            raise outcome
    return [str(o) for o in outcomes]
