"""`ws-admin replica list`: the service replicas alive now (docs/design/replicas.md).

    ws-admin replica list   each replica: id, host, pid, addresses, metrics, start, leader

On PostgreSQL every replica whose registry lock is held, as the replica answering saw
them at its last check (a second ago at most; itself first); on SQLite the one process,
the leader. Output follows workspace/cli/render.py (--output json), exit codes
workspace/cli/common.py.
"""

from __future__ import annotations

import argparse
from typing import Any

from workspace.cli import common, render


def replica_rows(replicas: list[Any]) -> str:
    return render.table(
        ["ID", "LEADER", "HOST", "PID", "LISTEN", "NODE_LISTEN", "METRICS", "STARTED"],
        [
            [
                r.id,
                "yes" if r.leader else "-",
                r.host or "-",
                r.pid,
                r.listen,
                r.node_listen,
                r.metrics_url or "-",
                render.fmt_time(r.started_at) or "-",
            ]
            for r in replicas
        ],
    )


def register(sub: Any, parent: argparse.ArgumentParser, client_for: common.ClientFor) -> None:
    """Add `replica list` to ws-admin."""

    def list_(args: argparse.Namespace) -> int:
        replicas = client_for(args).list_replicas()
        render.emit_list(args, replicas, replica_rows, "no live replicas")
        return common.EXIT_OK

    p = sub.add_parser(
        "replica",
        parents=[parent],
        help="the service replicas alive now",
        description="The workspace-service processes serving this site: several on one "
        "PostgreSQL database (one of them the leader, which runs the background loops), "
        "or the one process of a SQLite site.",
    )
    rsub = p.add_subparsers(dest="replica_command", metavar="COMMAND", required=True)
    q = rsub.add_parser(
        "list",
        parents=[parent],
        help="each live replica: its addresses, metrics URL, start and whether it leads",
    )
    q.set_defaults(func=list_)
