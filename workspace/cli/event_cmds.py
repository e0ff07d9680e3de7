"""`ws-admin events`: the site's events — who did what, and why; `ws events WORKSPACE`:
one workspace's; `ws cluster events CLUSTER`: one cluster's (docs/design/observability.md)."""

from __future__ import annotations

import argparse
import dataclasses
import sys
from collections.abc import Callable, Generator
from datetime import UTC, datetime
from typing import Any

from workspace import errors
from workspace.cli import common, guest_cmds, render, termfilter
from workspace.client import Client
from workspace.domain.events import EventFilter, Kind, SiteEvent


def iso(epoch_s: float) -> str:
    return datetime.fromtimestamp(epoch_s, UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


def as_dict(e: SiteEvent) -> dict[str, Any]:
    """An event as JSON-ready data: every field, ``time`` in RFC 3339."""
    data = dataclasses.asdict(e)
    data.pop("elapsed_s", None)
    data["time"] = iso(data.pop("at"))
    return {"id": data.pop("id"), "time": data.pop("time"), **data}


# What an event's subject is, by its kind or the first word of its kind.
_NOUNS = {
    "network": "network",
    "image": "image",
    Kind.WORKSPACE_SAVING.value: "as image",
    Kind.WORKSPACE_SAVED.value: "as image",
    Kind.WORKSPACE_SAVE_FAILED.value: "as image",
    Kind.WORKSPACE_RELEASED.value: "released",
    Kind.NODE_CONDITION.value: "condition",
}


def line(e: SiteEvent) -> str:
    """One event as one line: time, kind, what, the state change, who, and why."""
    what = e.workspace_name or e.workspace_id
    if e.workspace_name and e.workspace_id:
        what = f"{e.workspace_name} ({e.workspace_id})"
    parts = [iso(e.at), e.kind]
    if what:
        parts.append(f"workspace {what}")
    if e.cluster:
        parts.append(f"cluster {e.cluster}")
    if e.node:
        parts.append(f"node {e.node}")
    if e.subject:  # networks and images are named as such; other subjects speak for themselves
        noun = _NOUNS.get(e.kind.split(".")[0]) or _NOUNS.get(e.kind, "")
        parts.append(f"{noun} {e.subject}" if noun else e.subject)
    if e.state:
        parts.append(f"{e.previous or '-'} -> {e.state}" if e.previous else e.state)
    parts.append(f"by {e.who}")
    text = "  ".join(parts)
    return termfilter.one_line(f"{text}: {e.reason}" if e.reason else text)


def _print(args: argparse.Namespace, events: Generator[SiteEvent, None, None], prog: str) -> int:
    """Each event as a line (or a JSON object), until they end or Ctrl-C (`common.run`
    says "interrupted", exit 130, as for every wait: a listing cut short is not one that
    ended). A listing without any says so on stderr (stdout stays empty, as for an empty
    list)."""
    shown = 0
    try:
        for e in events:
            shown += 1
            if render.wants_json(args):
                render.print_json_line(as_dict(e))
            else:
                print(line(e), flush=True)
    finally:
        events.close()
        sys.stdout.flush()
    if not shown and not args.follow and not render.wants_json(args):
        since = " since then" if args.since or args.after else ""
        print(f"{prog}: no events{since} (kept for the service's event_retention)", file=sys.stderr)
    return common.EXIT_OK


def _since_and_follow(p: argparse.ArgumentParser) -> None:
    start = p.add_mutually_exclusive_group()
    start.add_argument(
        "--since", type=common.point_in_time, metavar="T", help=f"from T: {common.TIME_FORMAT}"
    )
    start.add_argument(
        "--after",
        type=common.non_negative_int,
        metavar="ID",
        help="only the events after event ID (the id -o json prints): a script that stopped "
        "goes on where it was, none missed and none twice",
    )
    p.add_argument(
        "--follow",
        "-f",
        action="store_true",
        help="keep printing new events (after those kept, or those since --since)",
    )
    p.add_argument(
        "--kind",
        action="append",
        metavar="K",
        help="only events of kind K (workspace.state) or of family K (image: image.added, "
        "image.deleted, ...); repeatable: any of them",
    )


def _kinds(args: argparse.Namespace) -> tuple[str, ...]:
    """``--kind``'s values; an unknown one is a usage error, said before connecting."""
    kinds = tuple(args.kind or ())
    wrong = EventFilter(kinds).unknown_kinds()
    if wrong:
        raise common.UsageError(wrong)
    return kinds


# A client's watch of one workspace's or one cluster's events.
Watch = Callable[..., Generator[SiteEvent, None, None]]


def _subject_runner(
    client_for: common.ClientFor, watch: Callable[[Client], Watch], ref: str
) -> Callable[[argparse.Namespace], int]:
    """The command printing the events of the workspace or cluster the argument ``ref``
    names, through the client's ``watch(client)``."""

    def run(args: argparse.Namespace) -> int:
        kinds = _kinds(args)
        client = client_for(args)
        if args.follow:
            client.health()  # fail now (exit 3) rather than retry silently
        events = watch(client)(
            getattr(args, ref),
            args.since or 0.0,
            args.follow,
            reconnect=True,
            on_outage=common.outage_notice("ws: events"),
            kinds=kinds,
            after_id=args.after or 0,
        )
        try:
            return _print(args, events, "ws")
        except errors.NotFound as missing:
            if ref != "workspace":
                raise
            # `ws events mpi` of a cluster: say so, and what gives its events.
            raise guest_cmds.cluster_named(
                client, args.workspace, missing, "`ws cluster events {name}`"
            ) from None

    return run


def register_ws(sub: Any, parent: argparse.ArgumentParser, client_for: common.ClientFor) -> None:
    """Add `events WORKSPACE` to ws."""
    p = sub.add_parser(
        "events",
        parents=[parent],
        help="what happened to a workspace: by whom and why",
        description="The site events of one workspace you may see, oldest first: its "
        "creation and placement, state changes and why, trust decisions, leases, updates, "
        "saves, preemption; each with its time and who (you, an admin, a node, or "
        "system). --follow keeps printing new ones; -o json prints one JSON object per "
        "line; --kind keeps only the kinds it names.",
    )
    p.add_argument("workspace", help="the workspace (name or id)")
    _since_and_follow(p)
    run = _subject_runner(client_for, lambda c: c.watch_workspace_events, "workspace")
    p.set_defaults(func=run)


def register_cluster(
    csub: Any, parent: argparse.ArgumentParser, client_for: common.ClientFor
) -> None:
    """Add `cluster events CLUSTER` to ws."""
    p = csub.add_parser(
        "events",
        parents=[parent],
        help="what happened to a cluster and its members: by whom and why",
        description="The site events of one cluster you may see, oldest first: its "
        "members' (creation, placement, state changes, trust decisions, ...) and its "
        "scaling (cluster.scaled: the role, its count before and after, and why); as "
        "`ws events` gives one workspace's.",
    )
    p.add_argument("cluster", help="the cluster (name or id)")
    _since_and_follow(p)
    run = _subject_runner(client_for, lambda c: c.watch_cluster_events, "cluster")
    p.set_defaults(func=run)


def register(sub: Any, parent: argparse.ArgumentParser, client_for: common.ClientFor) -> None:
    """Add `events` to ws-admin."""

    def run(args: argparse.Namespace) -> int:
        which = EventFilter(_kinds(args), args.workspace or "", args.node or "", args.cluster or "")
        client = client_for(args)
        if args.follow:
            client.health()  # fail now (exit 3) rather than retry silently
        events = client.watch_events(
            args.since or 0.0,
            args.follow,
            reconnect=True,
            on_outage=common.outage_notice("ws-admin: events"),
            which=which,
            after_id=args.after or 0,
        )
        return _print(args, events, "ws-admin")

    p = sub.add_parser(
        "events",
        parents=[parent],
        help="site events: state changes, placements, refusals, nodes, networks, images, "
        "trust, quotas, leases, projects and their members, backfill",
        description="Site events, oldest first, each with its time, who (the caller, a node, "
        "or system), what (kind, workspace, node, cluster) and why. --follow keeps "
        "printing new ones; -o json prints one JSON object per line. --kind, --workspace, "
        "--node and --cluster keep only the events they match (each given must match). "
        "Events are kept for the service's event_retention.",
    )
    _since_and_follow(p)
    p.add_argument("--workspace", metavar="W", help="only the events of workspace W (name or id)")
    p.add_argument("--node", metavar="N", help="only the events of node N")
    p.add_argument(
        "--cluster",
        metavar="C",
        help="only the events of cluster C (name or id): its members' and its own",
    )
    p.set_defaults(func=run)
