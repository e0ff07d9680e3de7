"""Leases and usage on the command line: `ws lease extend`, `ws usage`, `ws-admin usage`
(docs/design/usage.md). `ws create --lease` and `ws cluster create --lease` are in ws.py."""

from __future__ import annotations

import argparse
import time
from typing import Any

from workspace import errors
from workspace.cli import common, guest_cmds, render
from workspace.cli.usage_text import usage_report
from workspace.client_choices import own_usage_by_project
from workspace.v1 import clusters_pb2

GROUPINGS = ("workspace", "user", "project")


def add_lease_option(p: argparse.ArgumentParser, what: str) -> None:
    p.add_argument(
        "--lease",
        type=common.lease_duration_s,
        metavar="DURATION",
        help=f"stop (or destroy, per the project) {what} after DURATION, "
        f"{common.DURATION_FORMAT}; default: the project's lease",
    )


def _add_usage_options(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--since", type=common.point_in_time, metavar="T", help=f"from T: {common.TIME_FORMAT}"
    )
    p.add_argument(
        "--until",
        type=common.point_in_time,
        metavar="T",
        help=f"up to T (default now): {common.TIME_FORMAT}",
    )
    p.add_argument(
        "--by", choices=GROUPINGS, default="workspace", help="one row per ... (default workspace)"
    )
    p.set_defaults(csv=True)


def _usage(client_for: common.ClientFor, all_users: bool) -> common.Handler:
    def run(args: argparse.Namespace) -> int:
        since, until = args.since or 0.0, args.until or 0.0
        if since and until and until <= since:
            raise common.UsageError("--until must be later than --since")
        if since and not until and since > time.time():
            raise common.UsageError(
                "--since is in the future: there is no usage after now "
                "(--until must be later than --since, and is now unless given)"
            )
        mine = getattr(args, "mine", False)
        if mine and args.by == "project":
            raise common.UsageError(own_usage_by_project(args.by))
        own = {"mine": True} if mine else {}
        r = client_for(args).get_usage(since, until, args.by, all_users=all_users, **own)
        usage_report(args, r)
        return common.EXIT_OK

    return run


def register_ws(sub: Any, parent: argparse.ArgumentParser, client_for: common.ClientFor) -> None:
    """Add `lease extend` and `usage` to ws."""

    def extend(args: argparse.Namespace) -> int:
        client = client_for(args)
        try:
            ws = client.extend_lease(args.id, args.duration)
        except errors.NotFound:
            # Not a workspace: a cluster's every live member (a workspace's name wins).
            cluster = guest_cmds.live_cluster(client, args.id)
            if cluster is None:
                raise
            c = client.extend_cluster_lease(cluster.id, args.duration)
            render.emit(args, render.cluster_dict(c), _cluster_lease_line(c))
            return common.EXIT_OK
        render.emit(args, ws, render.lease_line(ws))
        return common.EXIT_OK

    p = sub.add_parser("lease", parents=[parent], help="workspace leases")
    lsub = p.add_subparsers(dest="lease_command", metavar="COMMAND", required=True)
    q = lsub.add_parser(
        "extend",
        parents=[parent],
        help="make a workspace's (or a cluster's) lease end later",
        description="The lease ends DURATION later (from now, if it has ended); never "
        "more than the project's maximum lease from now. Given a cluster, every live "
        "member's lease, or none if one of them cannot be extended so far.",
        negative="a lease cannot be shortened: DURATION must be more than 0",
    )
    q.add_argument("id", help="workspace (or cluster) id or name")
    q.add_argument("duration", type=common.lease_duration_s, help=common.DURATION_FORMAT)
    q.set_defaults(func=extend)

    p = sub.add_parser(
        "usage",
        parents=[parent],
        help="core-, memory- and disk-hours of your workspaces (and your projects')",
        description="Core-hours, memory-GiB-hours and disk-GiB-hours in [--since, --until) "
        "per workspace, user or project; -o json or -o csv for machines.",
    )
    _add_usage_options(p)
    p.add_argument(
        "--mine",
        action="store_true",
        help="only your own workspaces' usage, not your project colleagues' "
        "(--by workspace or user)",
    )
    p.set_defaults(func=_usage(client_for, all_users=False))


def _cluster_lease_line(c: clusters_pb2.Cluster) -> str:
    """``cluster mpi: lease of 16 member(s) ends at T`` (from T1 to T2: extended apart)."""
    ends = sorted(m.lease_expires_at.seconds for m in c.members if m.HasField("lease_expires_at"))
    when = render.fmt_epoch(ends[0])
    if ends[-1] != ends[0]:
        when = f"from {when} to {render.fmt_epoch(ends[-1])}"
    return f"cluster {c.name}: lease of {len(ends)} member(s) ends at {when}"


def register_admin(sub: Any, parent: argparse.ArgumentParser, client_for: common.ClientFor) -> None:
    """Add `usage` (every workspace) to ws-admin."""
    p = sub.add_parser(
        "usage",
        parents=[parent],
        help="core-, memory- and disk-hours of every workspace",
        description="Core-hours, memory-GiB-hours and disk-GiB-hours of every workspace in "
        "[--since, --until), per workspace, user or project; -o json or -o csv.",
    )
    _add_usage_options(p)
    p.set_defaults(func=_usage(client_for, all_users=True))
