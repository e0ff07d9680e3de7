"""`ws-admin backfill`: keep idle capacity busy with preemptible workspaces
(docs/design/backfill.md).

    ws-admin backfill set IMAGE --max N [--cpus C] [--memory-mib M] [--network NET ...]
                                        [--grace S] [--project P]
    ws-admin backfill list          each entry, and how many of its workspaces live and run
    ws-admin backfill clear IMAGE   remove the entry; its workspaces are destroyed

Output follows workspace/cli/render.py (--output json), exit codes workspace/cli/common.py.
"""

from __future__ import annotations

import argparse
from typing import Any

from workspace.cli import common, render


def entry_rows(entries: list[Any]) -> str:
    return render.table(
        ["IMAGE", "MAX", "LIVE", "RUNNING", "CPUS", "MEMORY_MIB", "NETWORKS", "GRACE", "PROJECT"],
        [
            [
                e.image,
                e.max,
                e.live,
                e.running,
                e.cpus,
                e.memory_mib,
                ",".join(e.networks) or "-",
                f"{e.grace_s}s",
                e.project or "-",
            ]
            for e in entries
        ],
    )


def register(sub: Any, parent: argparse.ArgumentParser, client_for: common.ClientFor) -> None:
    """Add `backfill set|list|clear` to ws-admin."""

    def set_(args: argparse.Namespace) -> int:
        client = client_for(args)
        # Options not given keep what the image's entry has (as `project set` does);
        # the service replaces an entry whole, so its values are read first.
        had = next((e for e in client.list_backfill() if e.image == args.image), None)

        def given(value: Any, field: str, default: Any) -> Any:
            if value is not None:
                return value
            return getattr(had, field) if had is not None else default

        e = client.set_backfill(
            args.image,
            args.max,
            given(args.cpus, "cpus", 0),
            given(args.memory_mib, "memory_mib", 0),
            given(args.network, "networks", ()),
            given(args.grace, "grace_s", 0),
            given(args.project, "project", ""),
        )
        render.emit(
            args,
            e,
            f"backfill {e.image}: at most {e.max} preemptible workspace(s) on idle capacity "
            f"({e.live} now)",
        )
        return common.EXIT_OK

    def list_(args: argparse.Namespace) -> int:
        entries = client_for(args).list_backfill()
        render.emit_list(
            args,
            entries,
            entry_rows,
            "no backfill entries; `ws-admin backfill set IMAGE --max N` adds one",
        )
        return common.EXIT_OK

    def clear(args: argparse.Namespace) -> int:
        e = client_for(args).clear_backfill(args.image)
        render.emit(args, e, f"backfill {e.image} cleared: {e.live} workspace(s) destroyed")
        return common.EXIT_OK

    p = sub.add_parser(
        "backfill",
        parents=[parent],
        help="keep idle capacity busy with preemptible workspaces",
        description="Backfill workspaces are preemptible, owned by the site (only admins see "
        "them), made only on capacity nothing else uses and never while a request waits for "
        "capacity; a normal request preempts them.",
    )
    bsub = p.add_subparsers(dest="backfill_command", metavar="COMMAND", required=True)
    q = bsub.add_parser(
        "set",
        parents=[parent],
        help="add an image's entry, or change it (options not given keep its values)",
    )
    q.add_argument("image", metavar="IMAGE")
    q.add_argument(
        "--max",
        type=common.non_negative_int,
        required=True,
        metavar="N",
        help="at most N workspaces (lowering it destroys the newest extras)",
    )
    q.add_argument("--cpus", type=common.positive_int, metavar="C", help="each (default 1)")
    q.add_argument("--memory-mib", type=common.positive_int, metavar="M", help="each (default 512)")
    q.add_argument(
        "--network", action="append", metavar="NET", help="a network to join (repeatable)"
    )
    q.add_argument(
        "--grace",
        type=common.non_negative_int,
        metavar="S",
        help="seconds a preempted one gets after ACPI before it is forced off (default 0)",
    )
    q.add_argument("--project", metavar="P", help="the project whose preemptible quota they use")
    q.set_defaults(func=set_)
    q = bsub.add_parser("list", parents=[parent], help="every entry and its workspaces now")
    q.set_defaults(func=list_)
    q = bsub.add_parser(
        "clear", parents=[parent], help="remove an entry; its workspaces are destroyed"
    )
    q.add_argument("image", metavar="IMAGE")
    q.set_defaults(func=clear)
