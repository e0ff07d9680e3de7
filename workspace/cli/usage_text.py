"""How usage reports read (`ws usage`, `ws-admin usage`): text, JSON or CSV."""

from __future__ import annotations

import argparse
import csv
import io

from workspace.cli.render import emit, enum_name, fmt_time, plain, table
from workspace.v1 import usage_pb2

_NORMAL_FIGURES = ("core_hours", "memory_gib_hours", "disk_gib_hours")
# The preemptible class, counted apart.
_USAGE_FIGURES = _NORMAL_FIGURES + tuple("preemptible_" + f for f in _NORMAL_FIGURES)


def _usage_columns(r: usage_pb2.UsageReport) -> tuple[list[str], list[list[str]]]:
    """The group's columns of a usage report: header and one row per group."""
    by = enum_name(usage_pb2.UsageGrouping.DESCRIPTOR, r.by)
    if by == "USER":
        return ["user"], [[row.key] for row in r.rows]
    if by == "PROJECT":
        return ["project"], [[row.key] for row in r.rows]
    head = ["workspace", "name", "owner", "project"]
    return head, [[row.key, row.name, row.owner, row.project] for row in r.rows]


def _deleted(r: usage_pb2.UsageReport) -> list[str] | None:
    """Grouping by project or workspace: when each row's project was deleted ("": the
    project of that name now); None for the grouping by user."""
    if enum_name(usage_pb2.UsageGrouping.DESCRIPTOR, r.by) == "USER":
        return None
    return [fmt_time(row.project_deleted) for row in r.rows]


def _named(project: str, deleted: str) -> str:
    """A project as the text table names it: one deleted since says when."""
    return f"{project or '-'} (deleted {deleted})" if deleted else project


def _figures(row: usage_pb2.UsageRow) -> list[float]:
    return [getattr(row, f) for f in _USAGE_FIGURES]


def usage_report_text(r: usage_pb2.UsageReport) -> str:
    """The window it covers, then a table (figures to 2 decimals; "-" for no project)."""
    since = fmt_time(r.since) if r.HasField("since") else "the first record"
    window = f"usage from {since} to {fmt_time(r.until)}"
    if not r.rows:
        return f"{window}: none"
    head, groups = _usage_columns(r)
    deleted = _deleted(r)
    if deleted is not None and any(deleted):  # the project is the last group column
        groups = [[*g[:-1], _named(g[-1], d)] for g, d in zip(groups, deleted, strict=True)]
    n = 6 if any(any(_figures(row)[3:]) for row in r.rows) else 3  # preemptible: if any
    rows = [
        [c or "-" for c in group] + [f"{v:.2f}" for v in _figures(row)[:n]]
        for group, row in zip(groups, r.rows, strict=True)
    ]
    return window + "\n" + table([h.upper() for h in [*head, *_USAGE_FIGURES[:n]]], rows)


def usage_csv(r: usage_pb2.UsageReport) -> str:
    """A header line and one line per group; figures at full precision. Grouping by
    project or workspace, a last column ``project_deleted``: when the row's project was
    deleted, if it is one deleted since ("": the project of that name now)."""
    out = io.StringIO()
    w = csv.writer(out, lineterminator="\n")
    head, groups = _usage_columns(r)
    deleted = _deleted(r)
    last = [] if deleted is None else ["project_deleted"]
    w.writerow([*head, *_USAGE_FIGURES, *last])
    for i, (group, row) in enumerate(zip(groups, r.rows, strict=True)):
        tail = [] if deleted is None else [deleted[i]]
        w.writerow([*group, *(repr(v) for v in _figures(row)), *tail])
    return out.getvalue().rstrip("\n")


# The groupings whose rows are workspaces (UNSPECIFIED is WORKSPACE).
_BY_WORKSPACE = (
    usage_pb2.UsageGrouping.USAGE_GROUPING_UNSPECIFIED,
    usage_pb2.UsageGrouping.USAGE_GROUPING_WORKSPACE,
)


def usage_report(args: argparse.Namespace, r: usage_pb2.UsageReport) -> None:
    """`ws usage` / `ws-admin usage` in the chosen format (text, json or csv)."""
    if getattr(args, "output", "text") == "csv":
        print(usage_csv(r))
    elif r.by in _BY_WORKSPACE:
        # Each workspace's row gives its id as `id` too, as every workspace the CLIs
        # print does (``key`` is it, whatever the grouping).
        data = plain(r)
        data["rows"] = [{"id": row["key"], **row} for row in data["rows"]]
        emit(args, data, usage_report_text(r))
    else:
        emit(args, r, usage_report_text(r))
