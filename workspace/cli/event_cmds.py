"""`ws-admin events`: the site's events — who did what, and why; `ws events WORKSPACE`:
one workspace's (docs/design/observability.md)."""

from __future__ import annotations

import argparse
import dataclasses
import sys
from collections.abc import Generator
from datetime import UTC, datetime
from typing import Any

from workspace.cli import common, render
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
    return f"{text}: {e.reason}" if e.reason else text


def _print(args: argparse.Namespace, events: Generator[SiteEvent, None, None]) -> int:
    """Each event as a line (or a JSON object), until they end or Ctrl-C."""
    try:
        for e in events:
            if render.wants_json(args):
                render.print_json_line(as_dict(e))
            else:
                print(line(e), flush=True)
    except KeyboardInterrupt:
        pass
    finally:
        events.close()
        sys.stdout.flush()
    return common.EXIT_OK


def _since_and_follow(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--since", type=common.point_in_time, metavar="T", help=f"from T: {common.TIME_FORMAT}"
    )
    p.add_argument("--follow", "-f", action="store_true", help="keep printing new events")


def register_ws(sub: Any, parent: argparse.ArgumentParser, client_for: common.ClientFor) -> None:
    """Add `events WORKSPACE` to ws."""

    def run(args: argparse.Namespace) -> int:
        client = client_for(args)
        if args.follow:
            client.health()  # fail now (exit 3) rather than retry silently
        events = client.watch_workspace_events(
            args.workspace,
            args.since or 0.0,
            args.follow,
            reconnect=True,
            on_outage=common.outage_notice("ws: events"),
        )
        return _print(args, events)

    p = sub.add_parser(
        "events",
        parents=[parent],
        help="what happened to a workspace: by whom and why",
        description="The site events of one workspace you may see, oldest first: its "
        "creation and placement, state changes and why, trust decisions, leases, updates, "
        "saves, preemption; each with its time and who (you, an admin, a node, or "
        "system). --follow keeps printing new ones; -o json prints one JSON object per "
        "line.",
    )
    p.add_argument("workspace", help="the workspace (name or id)")
    _since_and_follow(p)
    p.set_defaults(func=run)


def register(sub: Any, parent: argparse.ArgumentParser, client_for: common.ClientFor) -> None:
    """Add `events` to ws-admin."""

    def run(args: argparse.Namespace) -> int:
        which = EventFilter(tuple(args.kind or ()), args.workspace or "", args.node or "")
        wrong = which.unknown_kinds()
        if wrong:  # said before connecting
            raise common.UsageError(wrong)
        client = client_for(args)
        if args.follow:
            client.health()  # fail now (exit 3) rather than retry silently
        events = client.watch_events(
            args.since or 0.0,
            args.follow,
            reconnect=True,
            on_outage=common.outage_notice("ws-admin: events"),
            which=which,
        )
        return _print(args, events)

    p = sub.add_parser(
        "events",
        parents=[parent],
        help="site events: state changes, placements, refusals, nodes, networks, images, "
        "trust, quotas, leases",
        description="Site events, oldest first, each with its time, who (the caller, a node, "
        "or system), what (kind, workspace, node, cluster) and why. --follow keeps "
        "printing new ones; -o json prints one JSON object per line. --kind, --workspace "
        "and --node keep only the events they match (each given must match). Events are "
        "kept for the service's event_retention.",
    )
    _since_and_follow(p)
    p.add_argument(
        "--kind",
        action="append",
        metavar="K",
        help="only events of kind K (workspace.state) or of family K (image: image.added, "
        "image.deleted, ...); repeatable: any of them",
    )
    p.add_argument("--workspace", metavar="W", help="only the events of workspace W (name or id)")
    p.add_argument("--node", metavar="N", help="only the events of node N")
    p.set_defaults(func=run)
