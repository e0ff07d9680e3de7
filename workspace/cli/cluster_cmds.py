"""Elastic clusters on the command line (docs/design/elastic-clusters.md):

    ws cluster scale NAME --role ROLE --count N [--wait-for-capacity S] [--wait [--timeout S]]
    (--wait's default: 600 s plus --wait-for-capacity)
    ws cluster autoscale NAME --role R --min A --max B --signal SIGNAL [--cooldown S]
    ws cluster autoscale NAME --role R --off

SIGNAL is ``slurm-queue``, ``slurm-queue:PARTITION`` or ``command:/ABS/PATH`` (a program
on the service's host that prints the wanted count).
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from typing import Any

from workspace import errors
from workspace.cli import common, render
from workspace.cli.elastic_text import autoscale_line
from workspace.client import Client, cluster_state_name
from workspace.client_waits import Outage
from workspace.v1 import clusters_pb2, common_pb2

CS = clusters_pb2.ClusterState
WS = common_pb2.WorkspaceState
_BAD = (WS.WORKSPACE_STATE_FAILED, WS.WORKSPACE_STATE_LOST)
DEFAULT_WAIT_S = 600.0
POLL_S = 1.0


def wait_scaled(
    client: Client,
    resp: clusters_pb2.ScaleClusterResponse,
    timeout_s: float,
    seen: list[clusters_pb2.Cluster] | None = None,
    on_change: Callable[[clusters_pb2.Cluster], None] | None = None,
) -> clusters_pb2.Cluster:
    """Until the new members run and the removed ones are gone (FAILED: an error naming
    the member). ``seen``: the cluster as last read is kept there; ``on_change`` is
    called with each read (render.scale_progress says what changed). A service that does
    not answer (it restarts) is read again until the deadline, saying so on stderr once
    when it is lost and once when it answers again, as every other ``--wait``."""
    deadline = time.monotonic() + timeout_s
    added, removed = set(resp.added), set(resp.removed)
    ref = resp.cluster.id
    outage = Outage(common.outage_notice("ws: wait"))
    c = resp.cluster
    while True:
        try:
            c = client.get_cluster(ref)
        except errors.Unavailable as exc:
            outage.lost(exc.message)
            if time.monotonic() > deadline:
                raise errors.FailedPrecondition(
                    f"cluster {c.name} was {cluster_state_name(c.state)} when last seen; "
                    f"waited {timeout_s:g} s (--wait-timeout){outage.note()}"
                ) from None
            time.sleep(POLL_S)
            continue
        outage.back()
        if seen is not None:
            seen[:] = [c]
        if on_change is not None:
            on_change(c)
        names = {m.name: m for m in c.members}
        bad = [m for m in c.members if m.name in added and m.state in _BAD]
        if c.state == CS.CLUSTER_STATE_FAILED or bad:
            why = c.reason or (f"member {bad[0].name} failed: {bad[0].reason}" if bad else "")
            raise errors.FailedPrecondition(f"cluster {c.name} FAILED during the scale: {why}")
        up = all(names[n].state == WS.WORKSPACE_STATE_RUNNING for n in added if n in names)
        gone = not (removed & set(names))
        # A stopped cluster may shrink (not grow): it stays STOPPED, and waiting for
        # RUNNING outlasted every timeout although the scale was done.
        settled = c.state == CS.CLUSTER_STATE_RUNNING or (
            not added and c.state == CS.CLUSTER_STATE_STOPPED
        )
        if up and gone and settled:
            return c
        if time.monotonic() > deadline:
            raise errors.FailedPrecondition(
                f"cluster {c.name} is still {cluster_state_name(c.state)} after {timeout_s:g} s "
                "(--wait-timeout)"
            )
        time.sleep(POLL_S)


def scale_cmd(args: argparse.Namespace, client: Client) -> int:
    resp = client.scale_cluster(args.name, args.role, args.count, args.wait_for_capacity or 0)
    cluster = resp.cluster
    if args.wait and (resp.added or resp.removed):
        seen = [cluster]
        try:
            # A grow may wait for capacity first: that time comes on top, as for a create
            # (it gave up waiting while the grow still had its turn in the queue).
            wait_s = args.wait_timeout or DEFAULT_WAIT_S + (args.wait_for_capacity or 0)
            progress = render.scale_progress("ws", resp.added)
            cluster = wait_scaled(client, resp, wait_s, seen, progress)
        except KeyboardInterrupt:
            last = seen[-1]
            common.say_wait_interrupted(
                "ws", render.cluster_state_line(last), "scale", f"ws cluster show {last.id}"
            )
            raise
        except errors.WorkspaceError:
            # The scale was made (members added or removing): said as for a create whose
            # wait fails, with the cluster as last seen, before the error.
            _emit_scaled(args, resp, seen[-1])
            raise
    _emit_scaled(args, resp, cluster)
    return common.EXIT_OK


def _emit_scaled(
    args: argparse.Namespace,
    resp: clusters_pb2.ScaleClusterResponse,
    cluster: clusters_pb2.Cluster,
) -> None:
    # The cluster's id and name (as `ws cluster exec` gives them) and the role scaled:
    # the response named the role nowhere, and the cluster only inside "cluster".
    data = {"id": cluster.id, "name": cluster.name, "role": args.role, **render.plain(resp)}
    data["cluster"] = render.plain(cluster)
    render.emit(args, data, resp.message)


def autoscale_cmd(args: argparse.Namespace, client: Client) -> int:
    if args.off:
        given = [
            flag
            for flag, value in (
                ("--min", args.min),
                ("--max", args.max),
                ("--signal", args.signal),
                ("--cooldown", args.cooldown),
            )
            if value is not None
        ]
        if given:
            raise common.UsageError(f"--off cannot be combined with {', '.join(given)}")
    elif args.min is None or args.max is None or not args.signal:
        raise common.UsageError("give --min, --max and --signal (or --off)")
    c = client.set_autoscale(
        args.name,
        args.role,
        min=args.min or 0,
        max=args.max or 0,
        signal=args.signal or "",
        cooldown_s=args.cooldown or 0,
        off=args.off,
    )
    mine = [a for a in c.autoscale if a.role == args.role]
    text = autoscale_line(mine[0]) if mine else f"autoscale {args.role}: off"
    render.emit(args, c, f"cluster {c.name}: {text}")
    return common.EXIT_OK


def register(csub: Any, parent: argparse.ArgumentParser, client_for: common.ClientFor) -> None:
    """Add `cluster scale` and `cluster autoscale` to ws."""
    p = csub.add_parser(
        "scale",
        parents=[parent],
        help="grow or shrink one role of a cluster",
        description="Scale ROLE to N members: new members (NAME-ROLE-I at the lowest free "
        "indices, like the role's) are placed all or nothing; a shrink destroys the members "
        "of highest index first. Running members learn the new roster (/etc/hosts, "
        "/etc/workspace/cluster.json). Scaling to the current count changes nothing.",
    )
    p.add_argument("name", metavar="NAME", help="cluster name or id")
    p.add_argument("--role", required=True, metavar="ROLE", help="the role to grow or shrink")
    p.add_argument(
        "--count",
        required=True,
        type=common.non_negative_int,
        metavar="N",
        help="the role's new count",
    )
    p.add_argument(
        "--wait-for-capacity",
        type=common.non_negative_int,
        metavar="S",
        help="if the site is full, wait up to S seconds in the queue instead of failing",
    )
    p.add_argument(
        "--wait",
        action="store_true",
        help="wait until the new members run and the removed ones are gone",
    )
    common.add_wait_timeout(p, f"{DEFAULT_WAIT_S:g} plus --wait-for-capacity")
    p.set_defaults(func=lambda a: scale_cmd(a, client_for(a)))

    p = csub.add_parser(
        "autoscale",
        parents=[parent],
        help="scale a role on a signal (Slurm's queue, a command)",
        description="Scale ROLE between --min and --max on a signal, at most once per "
        "cool-down: slurm-queue[:PARTITION] wants the nodes of the pending and running jobs; "
        "command:/PATH runs PATH on the service's host (env WS_CLUSTER, WS_ROLE, WS_CURRENT, "
        "WS_MIN, WS_MAX) and wants the count it prints. `ws cluster show` explains the last "
        "decision. --off stops it.",
    )
    p.add_argument("name", metavar="NAME", help="cluster name or id")
    p.add_argument("--role", required=True, metavar="ROLE", help="the role to scale")
    p.add_argument(
        "--min", type=common.non_negative_int, metavar="A", help="never fewer members than A"
    )
    p.add_argument(
        "--max", type=common.non_negative_int, metavar="B", help="never more members than B"
    )
    p.add_argument("--signal", metavar="SIGNAL", help="slurm-queue[:PARTITION] or command:PATH")
    # At least 1: the request's cooldown_s 0 is the service's default, so a 0 given here
    # was a cool-down of 60 s, not none.
    p.add_argument(
        "--cooldown",
        type=common.positive_int,
        metavar="S",
        help="seconds between two changes, at least 1 (default: the service's "
        "autoscale_cooldown_s)",
    )
    p.add_argument("--off", action="store_true", help="stop scaling this role on a signal")
    p.set_defaults(func=lambda a: autoscale_cmd(a, client_for(a)))
