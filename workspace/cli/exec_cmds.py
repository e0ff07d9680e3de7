"""Commands in a workspace through its QEMU guest agent, from the command line.

    ws exec NAME [--timeout S] [--stdin] [--retry N] -- CMD [ARG...]   the QEMU guest agent
    ws cluster exec NAME [--role R] [--sequential] [--timeout S] -- CMD [ARG...]

``ws exec`` exits with the command's exit code (124 when it ran past --timeout, as
timeout(1) does); at a terminal it waits for a guest that is still booting, as ``ws ssh``
does (cli/guest_cmds.py). ``ws cluster exec`` exits 0 only when every member's command
exited 0. Output follows workspace/cli/render.py (--output json), other exit codes
workspace/cli/common.py.
"""

from __future__ import annotations

import argparse
import os
import stat
import sys
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar

from workspace import errors
from workspace.cli import common, guest_cmds, render
from workspace.client import Client, cluster_state_name, state_name
from workspace.domain import booting
from workspace.domain.tenancy import guess_refused
from workspace.v1 import access_pb2, clusters_pb2, common_pb2

# timeout(1)'s exit code for a command that ran past its time.
EXIT_TIMED_OUT = 124
# Members run at once by `ws cluster exec` (in parallel by default).
CLUSTER_PARALLEL = 16
# How often the main thread looks up from waiting for the members (so Ctrl-C is seen).
_JOIN_S = 0.1
T = TypeVar("T")
R = TypeVar("R")


def _text(data: bytes) -> str:
    return data.decode(errors="replace")


# -- ws exec -----------------------------------------------------------------------------


def result_json(r: access_pb2.ExecResult) -> dict[str, Any]:
    return {
        "id": r.workspace_id,  # as `ws show` and `ws console` name it
        "workspace": r.workspace_id,  # the first name of it, kept for scripts
        "name": r.name,
        "exit_code": r.exit_code,
        "stdout": _text(r.stdout),
        "stderr": _text(r.stderr),
        "timed_out": r.timed_out,
        "truncated": r.truncated,
    }


def _write(stream: Any, data: bytes) -> None:
    stream.flush()
    buf = getattr(stream, "buffer", None)
    if buf is not None:
        buf.write(data)
        buf.flush()
    else:
        stream.write(_text(data))


def input_waiting() -> bool:
    """Whether standard input is a pipe or a non-empty file: input the caller likely
    meant for the command (`ws exec box -- sh -c 'cat > f' < data`). Not a terminal,
    /dev/null, or a closed one (cron, CI)."""
    try:
        st = os.fstat(sys.stdin.fileno())
    except (OSError, ValueError, AttributeError):
        return False
    return stat.S_ISFIFO(st.st_mode) or (stat.S_ISREG(st.st_mode) and st.st_size > 0)


def exec_cmd(args: argparse.Namespace, client: Client, late: guest_cmds.OptionParser) -> int:
    argv = guest_cmds.command_of(args, late, "ws exec")
    stdin = sys.stdin.buffer.read() if args.stdin else b""
    if not args.stdin and input_waiting():
        print(
            "ws: standard input is not sent to the command; give --stdin to send it",
            file=sys.stderr,
        )
    ws = guest_cmds.get_guest(client, args.id, "`ws cluster exec {name} -- CMD` on every member")
    ws = guest_cmds.once_running(client, args, ws, args.id)
    guest_cmds.check_on_its_way(ws)
    wait_s = guest_cmds.boot_wait(args, ws)
    try:
        r = client.exec(
            args.id,
            argv,
            stdin,
            int(args.timeout or 0),
            boot_wait_s=wait_s,
            on_wait=lambda _exc: print(
                f"ws: no guest agent answers in {ws.name} yet{guest_cmds.started_note(ws)}: "
                f"waiting up to {wait_s:.0f} s for the guest to boot",
                file=sys.stderr,
                flush=True,
            ),
        )
    except KeyboardInterrupt:
        # The guest agent runs it on: only our wait for its end is cut.
        ends = f" (its --timeout, {args.timeout} s)" if args.timeout else ""
        print(
            f"ws: {argv[0]} may still run in {ws.name}, if it was started, until it ends{ends}",
            file=sys.stderr,
            flush=True,
        )
        raise
    if render.wants_json(args):
        render.print_json(result_json(r))
    else:
        _write(sys.stdout, r.stdout)
        _write(sys.stderr, r.stderr)
    if r.truncated:
        print(f"ws: the output of {argv[0]} in {r.name} was cut (too long)", file=sys.stderr)
    if r.timed_out:
        print(
            f"ws: {argv[0]} in {r.name} ran past its timeout; it was asked to stop "
            "(it may still run)",
            file=sys.stderr,
        )
        return EXIT_TIMED_OUT
    return int(r.exit_code)


# -- ws cluster exec ---------------------------------------------------------------------


@dataclass
class MemberRun:
    """What one member's command did, or why it did not run."""

    workspace: str
    name: str
    role: str
    result: access_pb2.ExecResult | None = None
    error: str = ""

    @property
    def ok(self) -> bool:
        return self.result is not None and not self.result.timed_out and self.result.exit_code == 0

    @property
    def status(self) -> str:
        if self.result is None:
            return self.error
        if self.result.timed_out:
            return "timed out"
        return f"exit {self.result.exit_code}"

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "id": self.workspace,
            "workspace": self.workspace,
            "name": self.name,
            "role": self.role,
        }
        if self.result is not None:
            out.update(result_json(self.result))
            out["error"] = ""
        else:
            out.update(exit_code=None, stdout="", stderr="", timed_out=False, truncated=False)
            out["error"] = self.error
        return out


class MemberOutcome(Protocol):
    """What was done on one member (`ws cluster exec`, `ws cluster scp`)."""

    @property
    def name(self) -> str: ...
    @property
    def ok(self) -> bool: ...
    @property
    def status(self) -> str: ...


def summary(runs: Sequence[MemberOutcome], done: str = "exited 0") -> str:
    """ "3 members: 2 exited 0, 1 failed (w-1: exit 1)" (``done``: what the good ones
    did)."""
    ok = [r for r in runs if r.ok]
    bad = [r for r in runs if not r.ok]
    word = "member" if len(runs) == 1 else "members"
    text = f"{len(runs)} {word}: {len(ok)} {done}"
    if bad:
        short = "; ".join(f"{r.name}: {r.status.splitlines()[0] if r.status else '?'}" for r in bad)
        text += f", {len(bad)} failed ({short})"
    return text


def run_members(
    client: Client,
    members: Sequence[common_pb2.Workspace],
    argv: Sequence[str],
    stdin: bytes,
    timeout_s: int,
    parallel: bool,
) -> list[MemberRun]:
    """The command on every member, in members' order; failures are kept, never raised."""

    def one(m: common_pb2.Workspace) -> MemberRun:
        run = MemberRun(m.id, m.name, m.role)
        if m.state != guest_cmds.RUNNING:
            run.error = f"not running ({state_name(m.state)})"
            return run
        try:
            run.result = client.exec(m.id, argv, stdin, timeout_s)
        except errors.WorkspaceError as exc:
            run.error = exc.message
        return run

    if not parallel or len(members) < 2:
        return [one(m) for m in members]
    return in_parallel(one, members, CLUSTER_PARALLEL)


def in_parallel(call: Callable[[T], R], items: Sequence[T], workers: int) -> list[R]:
    """``call(item)`` for each of ``items``, ``workers`` at a time; the results in the
    items' order (``call`` keeps its failures: one raised is raised here). The threads are
    daemons and the caller's thread only looks in on them, so Ctrl-C ends the command at
    once: in a ThreadPoolExecutor it waited until every member's command had ended (as
    long as its --timeout, or for good)."""
    results: list[Any] = [None] * len(items)
    raised: list[BaseException] = []
    todo = list(range(len(items)))
    lock = threading.Lock()

    def work() -> None:
        while True:
            with lock:
                if not todo or raised:
                    return
                i = todo.pop(0)
            try:
                results[i] = call(items[i])
            except BaseException as exc:  # raised in the caller's thread below
                with lock:
                    raised.append(exc)

    threads = [
        threading.Thread(target=work, name=f"ws-member-{n}", daemon=True)
        for n in range(min(workers, len(items)))
    ]
    for t in threads:
        t.start()
    for t in threads:
        while t.is_alive():
            t.join(_JOIN_S)
    if raised:
        raise raised[0]
    return results


def chosen_members(
    client: Client, name: str, role: str | None
) -> tuple[clusters_pb2.Cluster, list[common_pb2.Workspace]]:
    """Cluster ``name`` and its members (of ``role``, if given); NotFound if none."""
    cluster = client.get_cluster(name)
    members = [m for m in cluster.members if not role or m.role == role]
    if not members:
        of_role = f" with role {role}" if role else ""
        roles = list(
            dict.fromkeys([*(r.role for r in cluster.spec), *(m.role for m in cluster.members)])
        )
        known = f"; its roles: {', '.join(roles)}" if role and role not in roles and roles else ""
        raise errors.NotFound(f"cluster {cluster.name} has no members{of_role}{known}")
    return cluster, members


def refuse_a_guess(client: Client, ref: str, cluster: clusters_pb2.Cluster, acting: str) -> None:
    """FailedPrecondition when bare name ``ref`` found another user's cluster and the
    caller is an admin, as the service refuses ``ws exec`` so (ops/lifecycle.py
    ``choose_owned``): the members are then asked by id, which names no guess. A user
    who is no admin is refused by each member's exec (only its owner and admins)."""
    if "/" in ref or ref == cluster.id:
        return
    me = client.whoami()
    if me.admin and cluster.owner != me.user:
        seen = (cluster.owner, cluster.id, cluster_state_name(cluster.state))
        raise errors.FailedPrecondition(guess_refused("cluster", ref, acting, [seen]))


def cluster_exec_cmd(
    args: argparse.Namespace, client: Client, late: guest_cmds.OptionParser
) -> int:
    argv = guest_cmds.command_of(args, late, "ws cluster exec")
    stdin = sys.stdin.buffer.read() if args.stdin else b""
    cluster, members = chosen_members(client, args.name, args.role)
    refuse_a_guess(client, args.name, cluster, "run commands in")
    try:
        runs = run_members(
            client, members, argv, stdin, int(args.timeout or 0), not args.sequential
        )
    except KeyboardInterrupt:
        ends = f" (its --timeout, {args.timeout} s)" if args.timeout else ""
        print(
            f"ws: the command may still run in the members of {cluster.name} it was started "
            f"in, until it ends{ends}",
            file=sys.stderr,
            flush=True,
        )
        raise
    line = summary(runs)
    if render.wants_json(args):
        render.print_json(
            {
                # The cluster's id and name, as `ws cluster show -o json` gives them
                # (and "cluster", its name, which came first: a member's "cluster" is
                # its cluster's id).
                "id": cluster.id,
                "name": cluster.name,
                "cluster": cluster.name,
                "members": [r.to_json() for r in runs],
                "summary": {
                    "members": len(runs),
                    "exited_0": sum(r.ok for r in runs),
                    "failed": [r.name for r in runs if not r.ok],
                    "text": line,
                },
            }
        )
    else:
        for r in runs:
            print(f"== {r.name} ({r.role or '-'}): {r.status}", flush=True)
            if r.result is not None:
                out = r.result.stdout
                _write(sys.stdout, out if not out or out.endswith(b"\n") else out + b"\n")
                _write(sys.stderr, r.result.stderr)
        print(line)
    return common.EXIT_OK if all(r.ok for r in runs) else common.EXIT_REQUEST


# -- registration ------------------------------------------------------------------------


def register(sub: Any, parent: argparse.ArgumentParser, client_for: common.ClientFor) -> None:
    """Add `exec` to ws."""
    late = guest_cmds.OptionParser()
    p = sub.add_parser(
        "exec",
        parents=[parent],
        help="run a command in a workspace through its guest agent",
        description="Run CMD in a running workspace through the QEMU guest agent (no network "
        "needed), as root (the guest agent's user), and print its stdout and stderr; ws "
        "exits with the command's exit code "
        f"({EXIT_TIMED_OUT} if it ran past --timeout).",
    )
    p.add_argument("id", metavar="NAME", help="workspace name or id")
    _add_exec_options(p, late)
    guest_cmds.add_option(
        p,
        late,
        "--retry",
        type=common.positive_int,
        metavar="N",
        help="a workspace still starting: wait up to N s for it to be RUNNING, then up to "
        "N s while no guest agent answers (default: at a terminal, one started less than "
        f"{booting.BOOT_WINDOW_S:.0f} s ago is waited for until then; in a script, and "
        "others, fail at once)",
    )
    p.add_argument("command", nargs=argparse.REMAINDER, metavar="-- CMD [ARG...]")
    p.set_defaults(func=lambda a: exec_cmd(a, client_for(a), late))


def _add_exec_options(p: argparse.ArgumentParser, late: guest_cmds.OptionParser) -> None:
    guest_cmds.add_option(
        p,
        late,
        "--timeout",
        type=common.positive_int,
        metavar="S",
        help="give up after S seconds (default: the service's, 60 s unless the site says)",
    )
    guest_cmds.add_option(
        p, late, "--stdin", action="store_true", help="send our stdin to the command"
    )
    guest_cmds.add_late_output(late)


def register_cluster(
    csub: Any, parent: argparse.ArgumentParser, client_for: common.ClientFor
) -> None:
    """Add `cluster exec` to ws."""
    late = guest_cmds.OptionParser()
    p = csub.add_parser(
        "exec",
        parents=[parent],
        help="run a command on every member of a cluster (in parallel)",
        description="Run CMD on every running member (or those of --role) through their "
        "guest agents; print each member's exit code and output, then a summary. Exits 0 "
        "only when every member's command exited 0; a member that failed, timed out, is "
        "not running or has no guest agent is reported as failed.",
    )
    p.add_argument("name", metavar="NAME", help="cluster name or id")
    guest_cmds.add_option(p, late, "--role", metavar="R", help="only the members of role R")
    guest_cmds.add_option(
        p, late, "--sequential", action="store_true", help="one member after another"
    )
    _add_exec_options(p, late)
    p.add_argument("command", nargs=argparse.REMAINDER, metavar="-- CMD [ARG...]")
    p.set_defaults(func=lambda a: cluster_exec_cmd(a, client_for(a), late))
