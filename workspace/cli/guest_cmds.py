"""Into a workspace with SSH from the command line, and what `ws exec`, `ws scp` and
the cluster commands share with it (cli/exec_cmds.py, cli/copy_cmds.py).

    ws ssh NAME [--user U] [-i KEY] [--retry N] [--print] [-- CMD...]   host keys vouched
                                                        for by the service

Run at a terminal, ``ws exec``, ``ws ssh`` (and ``ws scp``) wait for the guest of a
workspace that started recently (``workspace/domain/booting.py``); ``--retry N`` asks for
it anywhere, scripts included. ``ws ssh`` exits with ssh's exit code.
Output follows workspace/cli/render.py (--output json), other exit codes
workspace/cli/common.py.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import os
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from types import FrameType
from typing import Any

from workspace import errors
from workspace.cli import common, forwards, render, sshwait
from workspace.client import Client, state_name
from workspace.client_guests import boot_wait_for
from workspace.domain import booting
from workspace.site import record as site_record
from workspace.v1 import clusters_pb2, common_pb2

RUNNING = common_pb2.WorkspaceState.WORKSPACE_STATE_RUNNING
TERMINATED = common_pb2.WorkspaceState.WORKSPACE_STATE_TERMINATED
# The states a new (or started) workspace passes on its way to RUNNING.
ON_THE_WAY = frozenset(
    {
        common_pb2.WorkspaceState.WORKSPACE_STATE_PENDING,
        common_pb2.WorkspaceState.WORKSPACE_STATE_SCHEDULED,
        common_pb2.WorkspaceState.WORKSPACE_STATE_PROPAGATING,
        common_pb2.WorkspaceState.WORKSPACE_STATE_STARTING,
    }
)


# -- the command after `--` ----------------------------------------------------------------


class OptionParser(argparse.ArgumentParser):
    """Parses options given between NAME and ``--``; errors instead of exiting."""

    def __init__(self) -> None:
        super().__init__(add_help=False, prog="ws")
        self.option_names: set[str] = set()

    def add(self, *names: str, **kw: Any) -> None:
        self.option_names.update(names)
        self.add_argument(*names, default=argparse.SUPPRESS, **kw)

    def error(self, message: str) -> Any:
        raise common.UsageError(message)


def command_of(
    args: argparse.Namespace, options: OptionParser, what: str, required: bool = True
) -> list[str]:
    """The command of ``args.command`` (everything after NAME): options given after NAME
    and before ``--`` are parsed into ``args`` with ``options``."""
    rest = list(args.command or [])
    if rest and rest[0].startswith("-") and "--" in rest:
        i = rest.index("--")
        head, rest = rest[:i], rest[i + 1 :]
        try:
            options.parse_args(head, namespace=args)
        except SystemExit as exc:
            raise common.UsageError(f"cannot read the options {shlex.join(head)}") from exc
    elif rest and rest[0] in options.option_names:
        if required:
            raise common.UsageError(f"put the command after `--`: {what} NAME [OPTIONS] -- CMD")
        options.parse_args(rest, namespace=args)  # options only, no command
        rest = []
    if required and not rest:
        raise common.UsageError(f"give a command to run: {what} NAME -- CMD [ARG...]")
    return rest


def add_option(p: argparse.ArgumentParser, late: OptionParser, *names: str, **kw: Any) -> None:
    """An option both before NAME (``p``) and between NAME and ``--`` (``late``)."""
    p.add_argument(*names, **kw)
    late.add(*names, **{k: v for k, v in kw.items() if k != "default"})


# -- ws ssh ------------------------------------------------------------------------------


def known_hosts_lines(address: str, host_keys: Sequence[str]) -> str:
    """known_hosts lines for ``address``: each key's type and base64 (comments dropped)."""
    lines = []
    for key in host_keys:
        parts = key.split()
        if len(parts) >= 2:
            lines.append(f"{address} {parts[0]} {parts[1]}\n")
    return "".join(lines)


def site_netns(client_address: str, node: str) -> str:
    """The network namespace of ``node`` when ``client_address`` is a local site's whose
    record names one ("" otherwise: the VM is reachable from here)."""
    dirs = [site_record.default_site_dir()]
    if client_address.startswith("unix:"):
        dirs.append(Path(client_address.removeprefix("unix:").removeprefix("//")).parent)
    for d in dirs:
        try:
            rec = site_record.read_record(d)
        except errors.WorkspaceError:
            continue
        if rec is None or rec.address != client_address:
            continue
        for agent in rec.agents:
            if agent.node == node and agent.netns:
                return agent.netns
    return ""


def openssh_options(
    known_hosts: str, login: str = "", key: str = "", attempts: int = 0
) -> list[str]:
    """The options ssh and scp get from ws: the guest's host keys are checked against
    ``known_hosts`` only (strict: no trust on first use, nothing learnt); ``login`` (ssh's
    ``-l``), ``key`` and ``attempts``, how often to try to connect, a second apart (a guest
    still booting; 0: once), when given."""
    options = [
        "-o", "StrictHostKeyChecking=yes",
        "-o", f"UserKnownHostsFile={known_hosts}",
        "-o", "GlobalKnownHostsFile=/dev/null",
        "-o", "UpdateHostKeys=no",
    ]  # fmt: skip
    if login:
        options += ["-l", login]
    if key:
        options += ["-i", key]
    if attempts:
        # Each attempt ends within ConnectTimeout (a booting guest's port may not answer
        # at all); one that finds no host yet (ARP: ~3 s) ends sooner.
        options += ["-o", f"ConnectionAttempts={attempts}", "-o", "ConnectTimeout=5"]
    return options


def login_user(ws: common_pb2.Workspace, user: str = "") -> str:
    """``user``, else the user ``ws``'s image logs in (FailedPrecondition: none)."""
    login = user or ws.login_user
    if not login:
        raise errors.FailedPrecondition(f"workspace {ws.name} names no login user; give --user")
    return login


def in_netns(netns: str, cmd: list[str]) -> list[str]:
    """``cmd`` run in network namespace ``netns`` (a local site's node), if any."""
    return ["ip", "netns", "exec", netns, *cmd] if netns else cmd


def ssh_command(
    ws: common_pb2.Workspace,
    known_hosts: str,
    user: str = "",
    key: str = "",
    command: Sequence[str] = (),
    netns: str = "",
    attempts: int = 0,
    forwards: Sequence[tuple[str, str]] = (),
    no_command: bool = False,
) -> list[str]:
    """The ssh command line that logs in to ``ws`` checking its host keys against
    ``known_hosts`` only (``openssh_options``). ``forwards``: ssh's port forwards, as
    (``-L``, ``-R`` or ``-D``, its spec), which must succeed or ssh ends at once;
    ``no_command``: ssh's ``-N``, only the forwards."""
    options = openssh_options(known_hosts, login_user(ws, user), key, attempts)
    if forwards:
        options += ["-o", "ExitOnForwardFailure=yes"]
    for flag, spec in forwards:
        options += [flag, spec]
    if no_command:
        options.append("-N")
    return in_netns(netns, ["ssh", *options, "--", ws_address(ws), *command])


def ws_address(ws: common_pb2.Workspace) -> str:
    for nic in ws.nics:
        if nic.ip:
            return str(nic.ip)
    raise errors.FailedPrecondition(f"workspace {ws.name} has no address yet")


# Members a cluster named where a workspace was wanted are listed up to this many.
MEMBERS_NAMED = 6


def get_guest(client: Client, ref: str, instead: str) -> common_pb2.Workspace:
    """Workspace ``ref``. NotFound as the service says it, unless ``ref`` names a cluster
    (``ws ssh mpi``): then that it is one, its members' names, and ``instead``, the
    command that does the same for every member (``{name}`` in it: the cluster's)."""
    try:
        return client.get_workspace(ref)
    except errors.NotFound as missing:
        raise cluster_named(client, ref, missing, instead) from None


def live_cluster(client: Client, ref: str) -> clusters_pb2.Cluster | None:
    """Cluster ``ref``, if the caller may see one of that name or id that is not gone
    (a terminated cluster's name says nothing now)."""
    try:
        cluster = client.get_cluster(ref)
    except errors.WorkspaceError:
        return None
    if cluster.state == clusters_pb2.ClusterState.CLUSTER_STATE_TERMINATED:
        return None
    return cluster


def cluster_named(
    client: Client, ref: str, missing: errors.NotFound, instead: str
) -> errors.NotFound:
    """The error for workspace ``ref`` not found (``missing``, as the service said it),
    unless ``ref`` names a live cluster: then that it is one, its members' names, and
    ``instead`` (``{name}`` in it: the cluster's)."""
    cluster = live_cluster(client, ref)
    if cluster is None:
        return missing
    # Another user's cluster and members by OWNER/NAME: by the bare name a command acts
    # on the caller's own, or refuses a guess (docs/design/cli.md).
    whose = owner_prefix(client, ref, cluster.owner)
    live = [m for m in cluster.members if m.state != TERMINATED]
    names = [whose + m.name for m in live]
    shown = ", ".join(names[:MEMBERS_NAMED])
    if len(names) > MEMBERS_NAMED:
        shown += f", ... ({len(names)} in all)"
    members = f"name one of its members ({shown})" if names else "it has no members now"
    return errors.NotFound(
        f"{ref} is a cluster, not a workspace: {members}, or use "
        + instead.format(name=whose + cluster.name)
    )


def owner_prefix(client: Client, ref: str, owner: str) -> str:
    """How a hint names what ``ref`` found, of ``owner``: "OWNER/" before its name when
    it is not the caller's, "" when it is (as the service names it: ops/lifecycle.py
    ``named_for``). A ``ref`` with a '/' named the owner already (no ``WhoAmI``)."""
    if "/" not in ref and client.whoami().user == owner:
        return ""
    return f"{owner}/"


@contextlib.contextmanager
def naming_clusters(client: Client, ref: str, instead: str) -> Iterator[None]:
    """Around a call on workspace ``ref`` (``ws update mpi``): its NotFound says that
    ``ref`` is a cluster, its members and ``instead``, when it is one (``cluster_named``)."""
    try:
        yield
    except errors.NotFound as missing:
        raise cluster_named(client, ref, missing, instead) from None


def once_running(
    client: Client, args: argparse.Namespace, ws: common_pb2.Workspace, ref: str
) -> common_pb2.Workspace:
    """``ws``; with ``--retry N`` and ``ws`` still on its way to RUNNING (right after
    ``ws create`` without --wait), ``ws`` once RUNNING, waited for up to N seconds with
    its state changes said on stderr (WaitTimeout, WaitFailed otherwise, naming it
    ``ref``, as the user did)."""
    if not args.retry or ws.state not in ON_THE_WAY:
        return ws
    progress = render.workspace_progress("ws")
    return client.wait_for_state(ws.id, [RUNNING], args.retry, progress, named=ref)


def check_on_its_way(ws: common_pb2.Workspace) -> None:
    """FailedPrecondition for ``ws`` still on its way to RUNNING (``once_running`` waited
    for none: no ``--retry``), saying that ``--retry N`` waits for it: right after a ``ws
    create`` without --wait, "workspace box is STARTING" alone left a scientist to try
    again by hand."""
    if ws.state in ON_THE_WAY:
        raise errors.FailedPrecondition(
            f"workspace {ws.name} is {state_name(ws.state)}, not RUNNING yet: give "
            "--retry N to wait up to N s for it and its guest"
        )


def interactive() -> bool:
    """Whether a person runs this command at a terminal (its stderr is one). Only then do
    ``ws exec``/``ssh``/``scp`` wait for a booting guest unasked: a script keeps the
    behaviour it was written for (an answer at once; its own loop, or ``--retry N``)."""
    try:
        return sys.stderr.isatty()
    except (AttributeError, ValueError):  # replaced or closed
        return False


def default_boot_wait(ws: common_pb2.Workspace) -> float:
    """What is left of ``ws``'s boot window for a person at a terminal; 0 for a script,
    and for a workspace that has run for long (``workspace/domain/booting.py``)."""
    return boot_wait_for(ws) if interactive() else 0.0


def boot_wait(args: argparse.Namespace, ws: common_pb2.Workspace) -> float:
    """How long to wait for ``ws``'s guest to answer: ``--retry N``'s N, else
    ``default_boot_wait``."""
    if args.retry:
        return float(args.retry)
    return default_boot_wait(ws)


def started_note(ws: common_pb2.Workspace, *why: str) -> str:
    """``" (WHY; it started 12 s ago)"``: ``why`` and when ``ws`` started, those known
    ("" if neither is)."""
    up = booting.up_for(ws.updated_at.ToNanoseconds() / 1e9, time.time())
    parts = [*why, "" if up is None else f"it started {up:.0f} s ago"]
    said = "; ".join(p for p in parts if p)
    return f" ({said})" if said else ""


def connect_attempts(args: argparse.Namespace, ws: common_pb2.Workspace, netns: str) -> int:
    """ssh's ConnectionAttempts for ``ws``: ``--retry N``'s N; else 0 (one attempt),
    once a workspace that started recently has had the rest of its boot window for its
    sshd to answer (``sshwait``; said once on stderr if it waits; not for ``--print``:
    the command is for later)."""
    if args.retry or args.print:
        return int(args.retry or 0)
    wait_s = default_boot_wait(ws)
    if wait_s > 0:

        def say(why: str, wait_s: float) -> None:
            print(
                f"ws: {ws.name}'s sshd does not answer yet{started_note(ws, why)}: waiting "
                f"up to {wait_s:.0f} s for the guest to boot",
                file=sys.stderr,
                flush=True,
            )

        sshwait.wait_for_sshd(ws_address(ws), in_netns(netns, []), wait_s, say)
    return 0


def check_key_file(key: str) -> None:
    """FailedPrecondition if a private key file ``key`` (-i) is given and is not there."""
    if key and not os.path.isfile(key):
        raise errors.FailedPrecondition(f"no key file {key} (-i): give the private key's path")


def check_ssh(ws: common_pb2.Workspace, user: str = "", key: str = "") -> None:
    """FailedPrecondition unless ssh can reach ``ws`` as ``user`` (or its image's login
    user) with the private key file ``key`` if given (not checked for a command only
    printed): checked before anything is written for it."""
    check_key_file(key)
    if not ws.host_keys:
        raise errors.FailedPrecondition(
            f"workspace {ws.name}'s image takes no contextualization; "
            f"`ws exec {ws.name} -- CMD` or `ws console {ws.name} --attach` reach it"
        )
    if ws.state != RUNNING:
        raise errors.FailedPrecondition(f"workspace {ws.name} is {state_name(ws.state)}")
    login_user(ws, user)
    ws_address(ws)


def json_only_with_print(args: argparse.Namespace, what: str) -> None:
    """UsageError for ``-o json`` without ``--print``: ``what`` (ssh, scp) then runs with
    the terminal and prints no result of ws's, so the JSON a script asked for would never
    come (it was ignored silently)."""
    if render.wants_json(args) and not args.print:
        raise common.UsageError(
            f"-o json prints the {what} command as JSON, with --print; without it {what} "
            f"runs with your terminal and ws prints nothing of its own (exit code: {what}'s)"
        )


def ssh_cmd(args: argparse.Namespace, client: Client, late: OptionParser) -> int:
    command = command_of(args, late, "ws ssh", required=False)
    json_only_with_print(args, "ssh")
    ws = get_guest(client, args.id, "`ws cluster exec {name} -- CMD` on every member")
    ws = once_running(client, args, ws, args.id)
    check_on_its_way(ws)
    check_ssh(ws, args.user or "", "" if args.print else args.key or "")
    netns = site_netns(client.address, ws.node)
    if args.no_command and command:
        raise common.UsageError("-N forwards ports only: give no command with it")
    known = write_known_hosts(ws)
    relay = forwards.Relay(known.parent)
    try:
        wanted = args.forwards or []
        if netns and not args.print:
            wanted = relay.bring_out(wanted)  # the host's ends, not the namespace's
        cmd = ssh_command(
            ws,
            str(known),
            args.user or "",
            args.key or "",
            command,
            netns,
            connect_attempts(args, ws, netns),
            wanted,
            args.no_command,
        )
        rc = print_or_run(args, cmd, known)
    except BaseException:
        shutil.rmtree(known.parent, ignore_errors=True)
        raise
    finally:
        relay.close()
    if rc == SSH_FAILED:
        _hint_still_booting(args, ws, netns)
        hint_about_keys(client, ws, bool(args.key), "ssh", f"ws ssh -i FILE {ws.name}")
    return rc


def _hint_still_booting(args: argparse.Namespace, ws: common_pb2.Workspace, netns: str) -> None:
    """After a failed connection that ws did not wait for (a script, no ``--retry``): if
    ``ws`` started within its boot window and its sshd does not answer a knock, that its
    guest may still be booting and how to wait (ssh alone says "No route to host" or
    "Connection refused"). Not when sshd answers: ssh's 255 was then a login refused, a
    changed host key or the remote command's own exit code, which no wait mends. A guest
    reached through a proxy of the user's ssh configuration cannot be knocked on from
    here: the hint is given."""
    if args.retry or args.print or default_boot_wait(ws) > 0 or boot_wait_for(ws) <= 0:
        return
    address, prefix = ws_address(ws), in_netns(netns, [])
    if not sshwait.proxy_of(address, prefix) and not sshwait.knock(address, prefix):
        return
    print(
        f"ws: {ws.name}'s guest may still be booting{started_note(ws)}; without a "
        f"terminal ws ssh tries once: `ws ssh --retry 60 {ws.name}` makes 60 attempts",
        file=sys.stderr,
    )


def write_known_hosts(ws: common_pb2.Workspace) -> Path:
    """A known_hosts file of ``ws``'s host keys (0600, in a directory of its own, 0700)."""
    tmp = Path(tempfile.mkdtemp(prefix="ws-ssh-"))  # mode 0700
    known = tmp / "known_hosts"
    fd = os.open(known, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(known_hosts_lines(ws_address(ws), ws.host_keys))
    return known


def print_or_run(args: argparse.Namespace, cmd: list[str], known: Path) -> int:
    """With ``--print``, print ``cmd`` (the known_hosts file stays, for it); otherwise run
    it in the foreground, remove the file, and return its exit code."""
    if args.print:
        if render.wants_json(args):
            render.print_json({"command": cmd, "known_hosts": known.read_text()})
        else:
            print(shlex.join(cmd))
        return common.EXIT_OK
    try:
        if shutil.which(cmd[0]) is None:
            raise errors.FailedPrecondition(f"{cmd[0]} is not installed here")
        return run_in_foreground(cmd)
    finally:
        shutil.rmtree(known.parent, ignore_errors=True)


# ssh's own exit code when it could not connect or log in (the command's code otherwise).
SSH_FAILED = 255


def hint_about_keys(
    client: Client, ws: common_pb2.Workspace, key_given: bool, tool: str, again: str
) -> None:
    """After a failed login (``tool``, ssh or scp, exited 255): say so if none of the
    caller's SSH keys at the service is in the guest, the usual reason a scientist cannot
    log in (ssh itself only says "Permission denied"); if one is but no ``-i`` was given,
    that ``tool`` may not have found its private half. ``again``: the command that gives
    it (``ws ssh -i FILE box``)."""
    try:
        mine = {k.fingerprint for k in client.list_ssh_keys()}
    except errors.WorkspaceError:
        return  # the hint is a courtesy; ssh's own message stands
    reach = f"`ws exec {ws.name} -- CMD` and `ws console {ws.name} --attach` reach it without a key"
    if not mine:
        why = "you have no SSH key at the service (`ws key list` is empty)"
    elif not mine & set(ws.ssh_keys):
        had = ", ".join(ws.ssh_keys) or "none"
        why = (
            f"none of your SSH keys at the service is in {ws.name}: it was given its "
            f"owner's keys when it was created ({had})"
        )
    elif key_given:
        return  # it has one of them and ssh was given a key: as ssh said
    else:
        have = ", ".join(sorted(mine & set(ws.ssh_keys)))
        print(
            f'ws: {ws.name} has your key {have}: if {tool} said "Permission denied", it '
            f"did not find the private half where it looks (~/.ssh/id_ed25519, id_ecdsa, "
            f"id_rsa): give it with `{again}`",
            file=sys.stderr,
        )
        return
    print(
        f"ws: {why}, and a key added later reaches only new workspaces: `ws key add "
        f"~/.ssh/id_ed25519.pub`, then create a new one, or log in with a key it has "
        f"(`{again}`); {reach}",
        file=sys.stderr,
    )


def run_in_foreground(cmd: list[str]) -> int:
    """Run ``cmd`` with our terminal; its exit code is ours (128+N if signal N ended
    it). Ctrl-C is its to handle (ws waits for it to end);
    SIGTERM and SIGHUP (a closed terminal) sent to ws go on to it, and ws ends when it
    does, so what ws made for it (``ws ssh``'s known_hosts) is removed then. The
    handlers are in place before it starts: one that arrives first is passed on as
    soon as it runs."""
    started: list[subprocess.Popen[bytes]] = []
    early: list[int] = []

    def forward(signum: int, _frame: FrameType | None) -> None:
        if started:
            started[0].send_signal(signum)
        else:
            early.append(signum)

    # Ctrl-C reaches the child from the terminal (the whole foreground group gets it):
    # ws waits for the child's end rather than ending first. A handler, not SIG_IGN: an
    # ignored signal stays ignored across exec, and ssh and scp keep it so (scp would
    # then wait for ever on an ssh that ignored the SIGINT scp passed on).
    handlers: dict[int, Any] = {
        signal.SIGINT: lambda _signum, _frame: None,
        signal.SIGTERM: forward,
        signal.SIGHUP: forward,
    }
    old = {signum: signal.signal(signum, h) for signum, h in handlers.items()}
    try:
        with subprocess.Popen(cmd) as proc:
            started.append(proc)
            for signum in early:
                proc.send_signal(signum)
            rc = proc.wait()
            return 128 - rc if rc < 0 else rc  # ended by signal N: 128+N, as a shell says
    finally:
        for signum, handler in old.items():
            signal.signal(signum, handler)


# -- registration ------------------------------------------------------------------------


def register(sub: Any, parent: argparse.ArgumentParser, client_for: common.ClientFor) -> None:
    """Add `ssh` to ws."""
    ssh_late = OptionParser()
    p = sub.add_parser(
        "ssh",
        parents=[parent],
        help="log in to a workspace with SSH, checking the host keys the service vouches for",
    )
    p.add_argument("id", metavar="NAME", help="workspace name or id")
    add_option(
        p, ssh_late, "--user", "-l", metavar="U", help="log in as U (default: the image's user)"
    )
    add_option(p, ssh_late, "-i", dest="key", metavar="KEY", help="the private key file to use")
    add_option(
        p, ssh_late, "--print", action="store_true", help="print the ssh command, do not run it"
    )
    add_option(
        p,
        ssh_late,
        "--retry",
        type=common.positive_int,
        metavar="N",
        help="a workspace still starting: wait up to N s for it to be RUNNING, then try "
        "to connect up to N times, a second apart, while the guest boots (ssh's "
        "ConnectionAttempts; each attempt takes up to 5 s, about 4 s while the guest has "
        "no address yet: N attempts can take 5N s). Default: at a terminal, for a workspace "
        f"that started less than {booting.BOOT_WINDOW_S:.0f} s ago, wait until then for its "
        "sshd to answer (said on stderr); in a script, and others: one attempt",
    )
    for flag, what in (
        ("-L", "a local port forwarded to HOST:HOSTPORT as the guest sees it"),
        ("-R", "a port of the guest forwarded to HOST:HOSTPORT as seen from here"),
        ("-D", "a local SOCKS proxy through the guest"),
    ):
        add_option(
            p,
            ssh_late,
            flag,
            dest="forwards",
            action="append",
            type=functools.partial(_forward, flag),
            metavar=_SPECS[flag][0],
            help=f"{what}, as ssh {flag} (repeatable; ssh ends if it cannot open it)",
        )
    add_option(
        p,
        ssh_late,
        "-N",
        dest="no_command",
        action="store_true",
        help="run no command: only the forwards, until Ctrl-C",
    )
    add_late_output(ssh_late)
    p.add_argument("command", nargs=argparse.REMAINDER, metavar="-- CMD [ARG...]")
    p.set_defaults(func=lambda a: ssh_cmd(a, client_for(a), ssh_late))


# Each forward's spec as ssh's help gives it, and how many colon-separated fields its
# forms have (socket and dynamic forms included).
_SPECS = {
    "-L": ("[BIND:]PORT:HOST:HOSTPORT", (2, 3, 4)),
    "-R": ("[BIND:]PORT:HOST:HOSTPORT", (1, 2, 3, 4)),
    "-D": ("[BIND:]PORT", (1, 2)),
}


def _forward(flag: str, spec: str) -> tuple[str, str]:
    """``-L``/``-R``/``-D SPEC`` (an argparse type): the flag and its spec. What ssh
    would refuse only once started -- an empty spec, too few or too many fields, a port
    over 65535 -- is a usage error here; the rest ssh checks."""
    if not spec or spec.startswith("-"):
        raise argparse.ArgumentTypeError(f"{flag} needs a forwarding spec, got {spec!r}")
    form, counts = _SPECS[flag]
    fields = forwards.split_spec(spec)
    if len(fields) not in counts:
        raise argparse.ArgumentTypeError(f"{flag} {spec!r}: give {form}")
    for f in fields:
        if f.isdigit() and int(f) > 65535:
            raise argparse.ArgumentTypeError(f"{flag} {spec!r}: port {f} is over 65535")
    return flag, spec


def add_late_output(late: OptionParser) -> None:
    """The global --output, after NAME too (before `--`), as on every other command."""
    late.add("--output", "-o", choices=render.FORMATS)
