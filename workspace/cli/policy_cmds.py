"""Network policy and limits on the command line (docs: README, workspace/domain/netpolicy.py).

    ws create ... [--connectivity open|cluster|outbound] [--allow RULE ...]
                  [--cpu-percent N] [--cpu-weight N] [--disk-mbps N] [--disk-iops N]
                  [--net-mbps N]                         (the same on `ws cluster create`)
    ws update NAME [--connectivity C] [--allow RULE ...] [--no-allow] [--cpu-percent N ...]
                   [--reset LIMIT ...]

A RULE opens incoming traffic: PROTO[/PORT[-PORT]][:CIDR], e.g. tcp/22,
tcp/8000-8100:10.0.0.0/8, icmp, any:10.1.0.0/16. The service checks rules and limits and
names what is wrong.
"""

from __future__ import annotations

import argparse
from typing import Any

from workspace.cli import common, guest_cmds, render
from workspace.client_policy import LIMIT_NAMES

CONNECTIVITIES = ("open", "cluster", "outbound")
RULE_HELP = "PROTO[/PORT[-PORT]][:CIDR], e.g. tcp/22 or tcp/8000-8100:10.0.0.0/8"
# What `ws update CLUSTER` suggests besides a member's name (cli/guest_cmds.py).
UPDATE_CLUSTER = "`ws update MEMBER` on each of them (`ws cluster show {name}` lists them)"
_LIMIT_HELP = {
    "cpu_percent": "cap each vCPU at N %% of a host CPU (1-100)",
    "cpu_weight": "relative CPU shares (1-10000; 100 = normal)",
    "disk_mbps": "MB/s per disk, read + write",
    "disk_iops": "I/O operations per second per disk",
    "net_mbps": "Mbit/s per NIC, each direction",
}


def add_limit_options(p: argparse.ArgumentParser, default: str) -> None:
    # At least 1: the API reads 0 as "not given", so a 0 here would quietly take the
    # default (create) or change nothing (update) rather than lift the limit.
    for name in LIMIT_NAMES:
        p.add_argument(
            "--" + name.replace("_", "-"),
            dest=name,
            type=common.positive_int,
            metavar="N",
            help=f"{_LIMIT_HELP[name]} ({default})",
        )


def add_policy_options(p: argparse.ArgumentParser, what: str) -> None:
    """--connectivity, --allow and the limits of a create."""
    p.add_argument(
        "--connectivity",
        choices=CONNECTIVITIES,
        help=f"what {what} may reach: open (default), cluster (only its cluster's members, "
        "the gateway, DHCP and its network's DNS servers), outbound (connections out only)",
    )
    p.add_argument(
        "--allow",
        action="append",
        metavar="RULE",
        help=f"open incoming traffic: {RULE_HELP} (repeatable)",
    )
    add_limit_options(p, "default: the project's, else the site's")
    p.add_argument(
        "--preemptible",
        action="store_true",
        help=f"make {what} preemptible: it runs on capacity nobody else is using and is "
        "stopped and destroyed (reason PREEMPTED) when a normal request needs its place; "
        "counted apart in quotas and usage",
    )


def limits_of(args: argparse.Namespace) -> dict[str, int]:
    """The limits given on the command line (the others left out: the default)."""
    return {n: getattr(args, n) for n in LIMIT_NAMES if getattr(args, n, None)}


def policy_kwargs(args: argparse.Namespace) -> dict[str, Any]:
    """create_workspace/create_cluster keywords from the options."""
    return {
        "connectivity": args.connectivity or "",
        "allow": list(args.allow or ()),
        "limits": limits_of(args),
        "preemptible": bool(getattr(args, "preemptible", False)),
    }


def register(sub: Any, parent: argparse.ArgumentParser, client_for: common.ClientFor) -> None:
    """Add `update` to ws."""

    def update(args: argparse.Namespace) -> int:
        if args.no_allow and args.allow:
            raise common.UsageError("--no-allow and --allow cannot be combined")
        allow = [] if args.no_allow else (list(args.allow) if args.allow else None)
        limits = limits_of(args)
        reset = [n.replace("-", "_") for n in args.reset or ()]
        size = (args.cpus or 0, args.memory_mib or 0)
        if not (args.connectivity or allow is not None or limits or reset or any(size)):
            raise common.UsageError(
                "nothing to change: give --connectivity, --allow, --no-allow, a limit, "
                "--reset, --cpus or --memory-mib"
            )
        client = client_for(args)
        with guest_cmds.naming_clusters(client, args.id, UPDATE_CLUSTER):
            ws = client.update_workspace(
                args.id, args.connectivity or "", allow, limits, reset, *size
            )
        render.emit(args, ws, render.workspace_text(ws))
        return common.EXIT_OK

    p = sub.add_parser(
        "update",
        parents=[parent],
        help="change a workspace's connectivity, allow rules or limits (the node follows), "
        "or the size of a stopped one",
    )
    p.add_argument("id", metavar="NAME", help="workspace id or name")
    p.add_argument(
        "--cpus",
        type=common.positive_int,
        metavar="N",
        help="vCPUs (a STOPPED workspace, on its node; seen at its next start)",
    )
    p.add_argument(
        "--memory-mib",
        type=common.positive_int,
        metavar="MIB",
        help="memory in MiB (a STOPPED workspace, on its node; seen at its next start)",
    )
    p.add_argument("--connectivity", choices=CONNECTIVITIES, help="the new connectivity")
    p.add_argument(
        "--allow",
        action="append",
        metavar="RULE",
        help=f"the allow rules become these: {RULE_HELP} (repeatable)",
    )
    p.add_argument("--no-allow", action="store_true", help="remove every allow rule")
    add_limit_options(p, "default: unchanged; --reset puts it back to the default")
    p.add_argument(
        "--reset",
        action="append",
        metavar="LIMIT",
        choices=[n.replace("_", "-") for n in LIMIT_NAMES],
        help="put LIMIT (e.g. cpu-percent) back to its default: the project's, else the "
        "site's, else none (repeatable)",
    )
    p.set_defaults(func=update)
