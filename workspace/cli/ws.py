"""ws: create and manage workspaces (VMs) and virtual clusters on a workspace service.

The service is --service ADDR, else $WS_SERVICE, else the local site started by
`ws-admin site up`. Every command takes --output json.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from typing import Any, Protocol, TypeVar, cast

from workspace import errors
from workspace.cli import (
    cluster_cmds,
    clusterspec,
    common,
    console_cmds,
    copy_cmds,
    event_cmds,
    exec_cmds,
    guest_cmds,
    image_cmds,
    key_cmds,
    policy_cmds,
    project_cmds,
    render,
    trust_cmds,
    usage_cmds,
)
from workspace.client import (
    AFFINITIES,
    FAILURE_POLICIES,
    Client,
    cluster_state_name,
    rebooted,
    state_name,
)
from workspace.v1 import clusters_pb2, common_pb2

PROG = "ws"
T = TypeVar("T")
WS = common_pb2.WorkspaceState
CS = clusters_pb2.ClusterState

# Lifecycle commands: (client method, state --wait waits for, help).
ACTIONS: dict[str, tuple[str, int, str]] = {
    "start": ("start_workspace", WS.WORKSPACE_STATE_RUNNING, "start a stopped workspace"),
    "stop": ("stop_workspace", WS.WORKSPACE_STATE_STOPPED, "shut a workspace down"),
    "reboot": (
        "reboot_workspace",
        WS.WORKSPACE_STATE_RUNNING,
        "reboot a running workspace: its guest is asked to reboot (services stopped, disks "
        "synced); one that has not within its stop timeout is reset",
    ),
    "pause": ("pause_workspace", WS.WORKSPACE_STATE_PAUSED, "pause a running workspace"),
    "resume": ("resume_workspace", WS.WORKSPACE_STATE_RUNNING, "resume a paused workspace"),
    "destroy": (
        "destroy_workspace",
        WS.WORKSPACE_STATE_TERMINATED,
        "destroy a workspace and its disks",
    ),
}
# The desired state each action asks (a `--wait` asked another meanwhile ends).
ACTION_DESIRED: dict[str, common_pb2.DesiredState.ValueType] = {
    "start": common_pb2.DESIRED_STATE_RUNNING,
    "stop": common_pb2.DESIRED_STATE_STOPPED,
    "pause": common_pb2.DESIRED_STATE_PAUSED,
    "resume": common_pb2.DESIRED_STATE_RUNNING,
    "destroy": common_pb2.DESIRED_STATE_TERMINATED,
}
# What `ws reboot --wait` waits for (the workspace is RUNNING before and after).
REBOOT_WAIT = (
    "its node reports the reboot carried out and the workspace is RUNNING (a node whose "
    "agent predates that report cannot confirm it: then only until RUNNING, and stderr "
    "says so)"
)
# Cluster commands: (client method, state --wait waits for, help).
CLUSTER_ACTIONS: dict[str, tuple[str, int, str]] = {
    "start": ("start_cluster", CS.CLUSTER_STATE_RUNNING, "start a stopped cluster's members"),
    "stop": ("stop_cluster", CS.CLUSTER_STATE_STOPPED, "shut every member of a cluster down"),
    "destroy": (
        "destroy_cluster",
        CS.CLUSTER_STATE_TERMINATED,
        "destroy a cluster: every member and its disks",
    ),
}
DEFAULT_WAIT_S = 300.0
# A --wait that loses the service says so on stderr (and when it answers again).
WAIT_OUTAGE = common.outage_notice(f"{PROG}: wait")
# What a workspace action named with a cluster's name is for a cluster.
CLUSTER_ACTION = {
    a: f"`ws cluster {a} {{name}}` for every member" for a in ("start", "stop", "destroy")
}


# -- requests ----------------------------------------------------------------------------


def cluster_request(args: argparse.Namespace) -> clusters_pb2.CreateClusterRequest:
    """The CreateClusterRequest `ws cluster create` sends: from --spec FILE (with NAME,
    --affinity, --on-failure and --wait-for-capacity replacing the file's values) or
    from NAME and --member flags."""
    if args.spec:
        clash = [
            flag
            for flag, value in (
                ("--member", args.member),
                ("--network", args.network),
                ("--require", args.require),
            )
            if value
        ]
        if clash:
            raise common.UsageError(
                f"{', '.join(clash)} cannot be combined with --spec: put it in the spec file"
            )
        req = clusterspec.load(args.spec, name=args.name or "")
    else:
        if not args.name or not args.member:
            raise common.UsageError(
                f"give --spec FILE, or NAME and at least one --member {clusterspec.MEMBER_FORMAT}"
            )
        try:
            reqs = clusterspec.requirements(args.require)
        except ValueError as exc:
            raise common.UsageError(str(exc)) from None
        req = clusters_pb2.CreateClusterRequest(name=args.name)
        roles = [m.role for m in args.member]
        for role in roles:
            if roles.count(role) > 1:
                raise common.UsageError(f"--member {role}=...: role {role!r} is given twice")
        for m in args.member:
            member = req.members.add()
            member.CopyFrom(m)
            member.networks.extend(args.network or [])
            member.requirements.update(reqs)
    if args.affinity is not None:
        req.affinity = args.affinity
    if args.on_failure is not None:
        req.on_failure = args.on_failure
    if args.wait_for_capacity is not None:
        req.wait_for_capacity_s = args.wait_for_capacity
    if args.lease is not None:
        req.lease_s = args.lease
    if args.connectivity:
        req.connectivity = args.connectivity
    if args.allow:
        del req.allow[:]
        req.allow.extend(args.allow)
    for name, value in policy_cmds.limits_of(args).items():
        setattr(req.limits, name, value)
    if args.preemptible:
        req.preemptible = True
    if args.user_data:
        user_data = read_user_data(args.user_data)
        for member in req.members:
            if not member.user_data:  # a spec's own context for a role wins
                member.user_data = user_data
    try:
        clusterspec.check(req, args.spec or "")
    except clusterspec.SpecError as exc:
        if args.spec:
            raise
        raise common.UsageError(exc.message) from None
    return req


# -- commands ----------------------------------------------------------------------------


def read_user_data(path: str) -> bytes:
    """What ``--user-data FILE`` names ("-": standard input)."""
    if path == "-":
        return sys.stdin.buffer.read()
    with open(path, "rb") as f:
        return f.read()


class Commands(common.ClientCommands):
    """Handlers; each returns the exit code."""

    def create(self, args: argparse.Namespace) -> int:
        if args.name is not None and not args.name.strip():
            raise common.UsageError("--name is empty: give a name, or leave it out for ws-ID")
        user_data = read_user_data(args.user_data) if args.user_data else b""
        try:
            requirements = clusterspec.requirements(args.require)
        except ValueError as exc:
            raise common.UsageError(str(exc)) from None
        extra_partitions, grow_bytes = image_cmds.disk_options(args)
        client = self.client(args)
        ws = client.create_workspace(
            image=args.image,
            name=args.name or "",
            cpus=args.cpus or 0,
            memory_mib=args.memory_mib or 0,
            networks=args.network or [],
            user_data=user_data,
            request_id=args.request_id,
            requirements=requirements,
            wait_for_capacity_s=args.wait_for_capacity or 0,
            extra_partitions=extra_partitions,
            grow_bytes=grow_bytes,
            project=args.project or "",
            lease_s=args.lease or 0,
            **policy_cmds.policy_kwargs(args),
        )
        if args.wait:
            made, seen = ws, {ws.id: ws}
            ws = _shown_if_wait_fails(
                args,
                made,
                "workspace",
                render.workspace_text,
                lambda: client.wait_for_state(
                    made.id,
                    [WS.WORKSPACE_STATE_RUNNING],
                    _create_wait_s(args, args.wait_for_capacity),
                    _recorded(seen, render.workspace_progress(PROG)),
                    on_outage=WAIT_OUTAGE,
                ),
                lambda: state_name(seen[made.id].state),
            )
        render.emit(args, ws, render.workspace_text(ws))
        return common.EXIT_OK

    def list(self, args: argparse.Namespace) -> int:
        items = self.client(args).list_workspaces(
            include_terminated=args.all, all_users=args.all_users, mine=args.mine
        )
        render.emit_list(
            args,
            items,
            lambda rows: render.workspace_rows(rows, whose=args.all_users),
            "no workspaces; `ws create --image IMAGE` makes one",
        )
        return common.EXIT_OK

    def show(self, args: argparse.Namespace) -> int:
        ws = guest_cmds.get_guest(self.client(args), args.id, "`ws cluster show {name}`")
        render.emit(args, ws, render.workspace_text(ws))
        return common.EXIT_OK

    def console(self, args: argparse.Namespace) -> int:
        if args.attach:
            if render.wants_json(args):
                raise common.UsageError(
                    "--attach relays the console both ways and prints no result: -o json "
                    "is for `ws console NAME` without it (the log, as JSON)"
                )
            client = self.client(args)
            if args.tail is not None:  # the log's end first (it was ignored), then live
                console_cmds.print_log(client, args.id, args.tail)
            return console_cmds.attach(client, args.id)
        client, tail = self.client(args), args.tail or 0
        if render.wants_json(args):
            # The JSON names the workspace by its id and name, not by what was typed.
            ws = guest_cmds.get_guest(client, args.id, console_cmds.CLUSTER_INSTEAD)
            data = client.get_console(ws.id, tail_bytes=tail)
            render.emit(args, render.console_dict(ws, data), "")
        else:
            console_cmds.print_log(client, args.id, tail)
        return common.EXIT_OK

    def action(self, args: argparse.Namespace) -> int:
        """start/stop/reboot/pause/resume/destroy of one workspace or several: each is
        asked in turn, then (--wait) waited for under one deadline."""
        method, target, _ = ACTIONS[args.command]
        client = self.client(args)

        def ask(ref: str, _: None) -> common_pb2.Workspace:
            try:
                if args.command == "stop":
                    # --timeout 0: no wait for a clean shutdown, i.e. power off at once (the
                    # request's timeout_s 0 is the service's default, 60 s, not none).
                    force = args.force or args.timeout == 0
                    return client.stop_workspace(ref, timeout_s=args.timeout or 0, force=force)
                return cast(common_pb2.Workspace, getattr(client, method)(ref))
            except errors.NotFound as missing:  # `ws destroy mpi`: the cluster's command
                raise guest_cmds.cluster_named(
                    client,
                    ref,
                    missing,
                    CLUSTER_ACTION.get(args.command, console_cmds.CLUSTER_INSTEAD),
                ) from None

        asked, ok = _each(args.id, [(ref, None) for ref in args.id], ask)
        # The last each was seen as, for the line an interrupted wait leaves.
        seen = {ws.id or ref: ws for ref, ws in asked}
        if args.wait:
            if args.wait_timeout:
                wait_s = args.wait_timeout
            elif args.command == "stop":  # there --timeout is the clean-shutdown time
                wait_s = max(DEFAULT_WAIT_S, (args.timeout or 0) + 60.0)
            else:
                wait_s = DEFAULT_WAIT_S
            deadline = time.monotonic() + wait_s

            def wait(ref: str, ws: common_pb2.Workspace) -> common_pb2.Workspace:
                left = max(0.0, deadline - time.monotonic())
                if args.command == "reboot":
                    return _wait_rebooted(
                        client, args, ws.id or ref, ws.reboot_count, left, seen, wait_s, ref
                    )
                progress = _recorded(seen, render.workspace_progress(PROG))
                # A timeout says the whole wait (the later ones have what is left of it).
                return client.wait_for_state(
                    ws.id or ref,
                    [target],
                    left,
                    progress,
                    on_outage=WAIT_OUTAGE,
                    waited_s=wait_s,
                    desired=ACTION_DESIRED[args.command],
                    named=ref,  # a hint names it as the user did (`ws watch alice/web1`)
                )

            try:
                asked, waited_ok = _each(args.id, asked, wait)
            except KeyboardInterrupt:
                _say_left_as(args.command, list(seen.values()))
                raise
            ok = ok and waited_ok
        done = [ws for _, ws in asked]
        if len(args.id) == 1:
            render.emit(args, done[0], render.requested_line(done[0]))
        else:
            render.emit(args, done, "\n".join(render.requested_line(ws) for ws in done))
        return common.EXIT_OK if ok else common.EXIT_REQUEST

    def watch(self, args: argparse.Namespace) -> int:
        client = self.client(args)
        ws_id = ""
        if args.id:
            cluster_watch = "`ws cluster events {name} --follow` for its members' changes"
            ws_id = guest_cmds.get_guest(client, args.id, cluster_watch).id
        else:
            client.health()  # fail now (exit 3) rather than retry silently
        # A line per change of state, or of reason to a new one (a lease warning changes
        # only the reason; a reason merely cleared is not news).
        seen: dict[str, tuple[int, str]] = {}

        events = client.watch(
            ws_id,
            include_terminated=args.all or bool(ws_id),
            reconnect=True,
            on_outage=common.outage_notice(f"{PROG}: watch"),
            mine=args.mine,
        )
        try:
            for event in events:
                ws = event.workspace
                before = seen.get(ws.id)
                if before and before[0] == ws.state and ws.reason in ("", before[1]):
                    seen[ws.id] = (ws.state, ws.reason)
                    continue
                seen[ws.id] = (ws.state, ws.reason)
                render.watch_event(args, event)
        finally:  # Ctrl-C: `common.run` says "interrupted" (exit 130), as for every wait
            events.close()
        return common.EXIT_OK

    # clusters

    def cluster_create(self, args: argparse.Namespace) -> int:
        req = cluster_request(args)
        if args.project:
            req.project = args.project
        client = self.client(args)
        c = client.create_cluster(req, request_id=args.request_id)
        if args.wait:
            made, seen_c = c, {c.id: c}
            c = _shown_if_wait_fails(
                args,
                made,
                "cluster",
                render.cluster_text,
                lambda: client.wait_for_cluster_state(
                    made.id,
                    [CS.CLUSTER_STATE_RUNNING],
                    _create_wait_s(args, req.wait_for_capacity_s),
                    _recorded(seen_c, render.cluster_progress(PROG)),
                    on_outage=WAIT_OUTAGE,
                ),
                lambda: cluster_state_name(seen_c[made.id].state),
            )
        render.emit(args, render.cluster_dict(c), render.cluster_text(c))
        return common.EXIT_OK

    def cluster_list(self, args: argparse.Namespace) -> int:
        items = self.client(args).list_clusters(
            include_terminated=args.all, all_users=args.all_users, mine=args.mine
        )
        render.emit_list(
            args,
            items,
            lambda rows: render.cluster_rows(rows, whose=args.all_users),
            "no clusters; `ws cluster create --member ROLE=IMAGE` makes one",
        )
        return common.EXIT_OK

    def cluster_show(self, args: argparse.Namespace) -> int:
        c = self.client(args).get_cluster(args.name)
        render.emit(args, render.cluster_dict(c), render.cluster_text(c))
        return common.EXIT_OK

    def cluster_action(self, args: argparse.Namespace) -> int:
        method, target, _ = CLUSTER_ACTIONS[args.cluster_command]
        client = self.client(args)
        c = getattr(client, method)(args.name)
        if args.wait:
            seen = {c.id: c}
            try:
                c = client.wait_for_cluster_state(
                    c.id or args.name,
                    [target],
                    args.wait_timeout or DEFAULT_WAIT_S,
                    _recorded(seen, render.cluster_progress(PROG)),
                    on_outage=WAIT_OUTAGE,
                )
            except KeyboardInterrupt:
                last = seen[c.id]
                common.say_wait_interrupted(
                    PROG,
                    render.cluster_state_line(last),
                    args.cluster_command,
                    f"ws cluster show {last.id or last.name}",
                )
                raise
        render.emit(args, c, render.cluster_state_line(c))
        return common.EXIT_OK


def _each(
    refs: list[str],
    items: list[tuple[str, T]],
    call: Callable[[str, T], common_pb2.Workspace],
) -> tuple[list[tuple[str, common_pb2.Workspace]], bool]:
    """``call(ref, item)`` for each of ``items``: the workspaces it returned, and whether
    none was refused. With several ``refs`` a refusal is named on stderr and the others
    go on; with one, and whenever the service cannot be reached, it is raised."""
    out: list[tuple[str, common_pb2.Workspace]] = []
    ok = True
    for ref, item in items:
        try:
            out.append((ref, call(ref, item)))
        except errors.WorkspaceError as exc:
            if len(refs) == 1 or isinstance(exc, errors.Unavailable):
                raise
            common.error(PROG, f"{ref}: {exc.message}")
            ok = False
    return out, ok


def _wait_rebooted(
    client: Client,
    args: argparse.Namespace,
    ref: str,
    reboot_count: int,
    wait_s: float,
    seen: dict[str, common_pb2.Workspace],
    waited_s: float | None = None,
    named: str = "",
) -> common_pb2.Workspace:
    """`ws reboot --wait`: until the node reports reboot ``reboot_count`` carried out and
    the workspace RUNNING. A node whose agent does not report reboots (an older release)
    cannot confirm it: then RUNNING is enough, as before, and stderr says so."""
    progress = _recorded(seen, render.reboot_progress(PROG, reboot_count))
    ws = client.wait_for_reboot(
        ref, reboot_count, wait_s, progress, on_outage=WAIT_OUTAGE, waited_s=waited_s, named=named
    )
    if rebooted(ws, reboot_count) is None:
        print(
            f"{PROG}: {render.state_line(ws)}, but the reboot cannot be confirmed: its node's "
            "agent does not report the reboots it carries out (a release older than the "
            "service's)",
            file=sys.stderr,
        )
    return ws


class _HasId(Protocol):
    id: str


H = TypeVar("H", bound=_HasId)


def _recorded(seen: dict[str, H], on_change: Callable[[H], None] | None) -> Callable[[H], None]:
    """``on_change`` for a wait that also keeps, by id, the last each object was seen as
    (``seen``): what an interrupted wait says it left."""

    def record(obj: H) -> None:
        seen[obj.id] = obj
        if on_change is not None:
            on_change(obj)

    return record


def _say_left_as(command: str, seen: list[common_pb2.Workspace]) -> None:
    """Ctrl-C during `ws start|stop|reboot|pause|resume|destroy --wait`: what each asked
    workspace was last seen as (the request stands)."""
    for ws in seen:
        common.say_wait_interrupted(
            PROG, render.requested_line(ws), command, f"ws show {ws.id or ws.name}"
        )


def _create_wait_s(args: argparse.Namespace, wait_for_capacity_s: int | None) -> float:
    """--wait-timeout (or --timeout), else the default plus the time the request may wait
    for capacity."""
    return float(args.wait_timeout or DEFAULT_WAIT_S + (wait_for_capacity_s or 0))


def _shown_if_wait_fails(
    args: argparse.Namespace,
    made: T,
    seen_as: str,
    text: Callable[[T], str],
    wait: Callable[[], T],
    last_state: Callable[[], str],
) -> T:
    """``wait()`` after a create. When it fails (times out, or the object reached a state
    it will not leave), the object exists all the same: it is printed on stdout as last
    seen (the error's ``seen_as`` attribute, else ``made``) so a script learns its id,
    and the error is raised (stderr, exit code as for any failed wait). Interrupted
    (Ctrl-C), only the wait ends: one line on stderr says the object is still there."""
    try:
        return wait()
    except errors.WorkspaceError as exc:
        seen = getattr(exc, seen_as, None) or made
        render.emit(args, seen, text(seen))
        raise
    except KeyboardInterrupt:
        _say_still_there(seen_as, made, last_state())
        raise


def _say_still_there(seen_as: str, made: Any, state: str) -> None:
    """A create's wait was interrupted: the workspace (cluster) stays, queued or booting
    (``state``: as last seen)."""
    ref = made.id or made.name
    label = f"{made.name} ({made.id})" if made.name and made.name != ref else ref
    cmd = "ws" if seen_as == "workspace" else "ws cluster"
    print(
        f"{PROG}: {seen_as} {label} was created and is not destroyed ({state} when last "
        f"seen): `{cmd} show {ref}` follows it, `{cmd} destroy {ref}` removes it",
        file=sys.stderr,
        flush=True,
    )


# -- parser ------------------------------------------------------------------------------


def _add_wait(p: argparse.ArgumentParser, until: str, timeout_flag: bool) -> None:
    p.add_argument("--wait", action="store_true", help=f"wait until {until}")
    if timeout_flag:
        common.add_wait_timeout(p, f"{DEFAULT_WAIT_S:g}")
    else:  # ws stop: --timeout is the clean shutdown's
        common.add_wait_timeout(
            p, f"{DEFAULT_WAIT_S:g}, or --timeout plus 60 when that is longer", old_name=False
        )


def _add_capacity_wait(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--wait-for-capacity",
        type=common.non_negative_int,
        metavar="S",
        help="if the site is full, wait up to S seconds in the service's queue "
        "(PENDING meanwhile) instead of failing at once",
    )


def _add_create_timeout(p: argparse.ArgumentParser) -> None:
    common.add_wait_timeout(p, f"{DEFAULT_WAIT_S:g} plus --wait-for-capacity")


def _add_cluster_parsers(sub: Any, parent: argparse.ArgumentParser, cmds: Commands) -> None:
    p = sub.add_parser(
        "cluster",
        parents=[parent],
        help="virtual clusters: groups of workspaces placed and managed together",
    )
    csub = p.add_subparsers(dest="cluster_command", metavar="COMMAND", required=True)

    p = csub.add_parser(
        "create",
        parents=[parent],
        help="create a cluster from --spec FILE or from --member flags",
        description="Create a cluster, placed all or nothing: from a spec file (TOML, or "
        "JSON in the protobuf mapping; see docs/clusters.md) or from NAME and --member "
        f"{clusterspec.MEMBER_FORMAT} flags (a missing field takes the default). Members "
        "are named NAME-ROLE-I.",
    )
    p.add_argument("name", nargs="?", help="cluster name (with --spec: replaces the file's)")
    p.add_argument("--spec", metavar="FILE", help="cluster spec, .toml or .json")
    p.add_argument(
        "--project", metavar="P", help="the project charged (default: yours, if you have one)"
    )
    p.add_argument(
        "--member",
        action="append",
        type=clusterspec.member_arg,
        metavar=clusterspec.MEMBER_FORMAT,
        help="a role, e.g. head=sci:1.0,cpus=2,memory-mib=4096 or "
        "worker=sci:1.0,count=16 (repeatable)",
    )
    p.add_argument(
        "--affinity",
        type=clusterspec.affinity_arg,
        metavar="|".join(AFFINITIES),
        help="where members go relative to each other (default none)",
    )
    p.add_argument(
        "--on-failure",
        type=clusterspec.failure_policy_arg,
        metavar="|".join(FAILURE_POLICIES),
        help="when a member fails to start: keep the others, or tear the cluster down "
        "(default keep)",
    )
    p.add_argument(
        "--network", action="append", metavar="NET", help="attach every member to NET (repeatable)"
    )
    p.add_argument(
        "--require",
        action="append",
        type=clusterspec.requirement_arg,
        metavar="KEY=VALUE",
        help="a node label every member needs (repeatable)",
    )
    p.add_argument(
        "--user-data",
        metavar="FILE",
        help="context for every member's guest (- for stdin); with --spec, for the roles "
        "the spec gives none",
    )
    _add_capacity_wait(p)
    usage_cmds.add_lease_option(p, "every member")
    policy_cmds.add_policy_options(p, "every member")
    p.add_argument("--request-id", metavar="ID", help="idempotency key (default: a fresh uuid4)")
    p.add_argument(
        "--wait",
        action="store_true",
        help="wait until the cluster is RUNNING (member states on stderr)",
    )
    _add_create_timeout(p)
    p.set_defaults(func=cmds.cluster_create)

    p = csub.add_parser("list", parents=[parent], help="list clusters")
    p.add_argument("--all", action="store_true", help="include terminated clusters")
    p.add_argument("--all-users", action="store_true", help="(admins) every user's, not only yours")
    p.add_argument("--mine", action="store_true", help="only yours, not your project colleagues'")
    p.set_defaults(func=cmds.cluster_list)

    p = csub.add_parser("show", parents=[parent], help="show a cluster and its members")
    p.add_argument("name", help="cluster name or id")
    p.set_defaults(func=cmds.cluster_show)

    for name, (_, state, text) in CLUSTER_ACTIONS.items():
        p = csub.add_parser(name, parents=[parent], help=text)
        p.add_argument("name", help="cluster name or id")
        p.add_argument(
            "--wait",
            action="store_true",
            help=f"wait until the cluster is {cluster_state_name(state)}",
        )
        common.add_wait_timeout(p, f"{DEFAULT_WAIT_S:g}")
        p.set_defaults(func=cmds.cluster_action)

    exec_cmds.register_cluster(csub, parent, cmds.client)
    copy_cmds.register_cluster(csub, parent, cmds.client)
    cluster_cmds.register(csub, parent, cmds.client)
    event_cmds.register_cluster(csub, parent, cmds.client)


def build_parser(cmds: Commands) -> argparse.ArgumentParser:
    parser: argparse.ArgumentParser = common.Parser(
        prog=PROG, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    common.add_global_options(parser)
    parent = common.options_parent()
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    p = sub.add_parser("create", parents=[parent], help="create a workspace")
    p.add_argument("--image", required=True, help="image name")
    p.add_argument("--name", help="workspace name (unique per owner)")
    p.add_argument("--cpus", type=common.positive_int, metavar="N", help="virtual CPUs")
    p.add_argument("--memory-mib", type=common.positive_int, metavar="M", help="memory in MiB")
    p.add_argument("--network", action="append", metavar="NET", help="attach to NET (repeatable)")
    p.add_argument("--user-data", metavar="FILE", help="context for the guest (- for stdin)")
    p.add_argument(
        "--require",
        action="append",
        type=clusterspec.requirement_arg,
        metavar="KEY=VALUE",
        help="a node label the workspace needs, e.g. gpu=1 or hypervisor=kvm (repeatable)",
    )
    image_cmds.add_disk_options(p)
    _add_capacity_wait(p)
    usage_cmds.add_lease_option(p, "the workspace")
    policy_cmds.add_policy_options(p, "the workspace")
    p.add_argument("--request-id", metavar="ID", help="idempotency key (default: a fresh uuid4)")
    p.add_argument(
        "--project", metavar="P", help="the project charged (default: yours, if you have one)"
    )
    p.add_argument("--wait", action="store_true", help="wait until the workspace is RUNNING")
    _add_create_timeout(p)
    p.set_defaults(func=cmds.create)

    p = sub.add_parser("list", parents=[parent], help="list workspaces")
    p.add_argument("--all", action="store_true", help="include terminated workspaces")
    p.add_argument("--all-users", action="store_true", help="(admins) every user's, not only yours")
    p.add_argument("--mine", action="store_true", help="only yours, not your project colleagues'")
    p.set_defaults(func=cmds.list)

    p = sub.add_parser("show", parents=[parent], help="show one workspace")
    p.add_argument("id", help="workspace id or name")
    p.set_defaults(func=cmds.show)

    p = sub.add_parser("console", parents=[parent], help="print a workspace's console log")
    p.add_argument("id", help="workspace id or name")
    p.add_argument(
        "--tail",
        type=common.non_negative_int,
        metavar="BYTES",
        help="only the last BYTES (0: the whole log, as without --tail); with --attach, "
        "the log's last BYTES are printed before the live console",
    )
    console_cmds.add_attach_option(p)
    p.set_defaults(func=cmds.console)

    for name, (_, state, text) in ACTIONS.items():
        p = sub.add_parser(name, parents=[parent], help=text)
        p.add_argument(
            "id",
            nargs="+",
            metavar="ID",
            help="workspace id or name; several: each in turn, a JSON array with -o json",
        )
        if name == "stop":
            p.add_argument(
                "--timeout",
                type=common.non_negative_int,
                metavar="S",
                help="seconds to wait for a clean shutdown before powering off "
                "(default: the service's; 0: power off at once, as --force)",
            )
            p.add_argument(
                "--force",
                action="store_true",
                help="power off at once (also while an earlier stop still waits)",
            )
        until = REBOOT_WAIT if name == "reboot" else f"the workspace is {state_name(state)}"
        _add_wait(p, until, timeout_flag=name != "stop")
        p.set_defaults(func=cmds.action)

    p = sub.add_parser(
        "watch", parents=[parent], help="print workspace state changes (Ctrl-C ends)"
    )
    p.add_argument("id", nargs="?", help="only this workspace (id or name)")
    p.add_argument("--all", action="store_true", help="include terminated workspaces")
    p.add_argument("--mine", action="store_true", help="only yours, not your project colleagues'")
    p.set_defaults(func=cmds.watch)

    policy_cmds.register(sub, parent, cmds.client)
    exec_cmds.register(sub, parent, cmds.client)
    guest_cmds.register(sub, parent, cmds.client)
    copy_cmds.register(sub, parent, cmds.client)
    _add_cluster_parsers(sub, parent, cmds)
    usage_cmds.register_ws(sub, parent, cmds.client)
    event_cmds.register_ws(sub, parent, cmds.client)

    image_sub = image_cmds.register(sub, parent, cmds.client, PROG)
    trust_cmds.register_image(image_sub, parent, cmds.client)
    project_cmds.register_user(sub, parent, cmds.client)
    key_cmds.register(sub, parent, cmds.client)
    return parser


def main(argv: list[str] | None = None, connect: common.Connect | None = None) -> int:
    return common.cli_main(PROG, Commands, build_parser, argv, connect)


if __name__ == "__main__":
    sys.exit(main())
