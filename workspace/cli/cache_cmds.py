"""`ws-admin cache …`: what a node's blob cache holds, and preloading images onto nodes.

    ws-admin cache list NODE                       the node's cache, as its agent last reported
    ws-admin cache preload IMAGE [--nodes N1,N2]...   fetch an image's blobs ahead of use
                                                      (default: every READY node)

Output follows workspace/cli/render.py (--output json), exit codes workspace/cli/common.py.
"""

from __future__ import annotations

import argparse
from typing import Any

from workspace.cli import admin_text, common, render

PROG = "ws-admin"


def node_list(text: str) -> list[str]:
    """--nodes N1,N2: names separated by commas, none empty."""
    names = [n.strip() for n in text.split(",")]
    if not all(names):
        raise argparse.ArgumentTypeError(f"node names separated by commas, got {text!r}")
    return names


class CacheCommands:
    def __init__(self, client_for: common.ClientFor) -> None:
        self.client_for = client_for

    def list(self, args: argparse.Namespace) -> int:
        resp = self.client_for(args).list_cache(args.node)
        render.emit(args, resp, admin_text.cache_text(resp))
        return common.EXIT_OK

    def preload(self, args: argparse.Namespace) -> int:
        # --nodes N1,N2 given more than once: every list (argparse kept only the last).
        nodes = list(dict.fromkeys(n for given in args.nodes or [] for n in given))
        resp = self.client_for(args).preload_image(args.image, nodes)
        cached = list(resp.cached)
        fetching = [n for n in resp.nodes if n not in cached]
        said = [f"already cached on {', '.join(cached)}"] if cached else []
        if fetching:
            said.append(
                f"{len(resp.digests)} blob(s) to be fetched in the background by "
                f"{', '.join(fetching)}; `{PROG} cache list NODE` shows what a node holds"
            )
        render.emit(args, resp, f"image {args.image}: " + "; ".join(said))
        return common.EXIT_OK


def register(
    subparsers: Any, parent_parser: argparse.ArgumentParser, client_for: common.ClientFor
) -> None:
    """Add `cache list` and `cache preload` to ws-admin's subcommands; ``client_for``
    gives the connected client for parsed args (ws-admin's Commands.client)."""
    cmds = CacheCommands(client_for)
    p = subparsers.add_parser(
        "cache", parents=[parent_parser], help="node blob caches: list, preload images"
    )
    sub = p.add_subparsers(dest="cache_command", metavar="COMMAND", required=True)
    p = sub.add_parser(
        "list",
        parents=[parent_parser],
        help="the blobs in a node's cache (as its agent last reported)",
    )
    p.add_argument("node", metavar="NODE", help="node name")
    p.set_defaults(func=cmds.list)
    p = sub.add_parser(
        "preload",
        parents=[parent_parser],
        help="have nodes fetch an image's blobs ahead of use (in the background)",
    )
    p.add_argument("image", metavar="IMAGE", help="image name (name:version)")
    p.add_argument(
        "--nodes",
        type=node_list,
        action="append",
        metavar="N1,N2",
        help="nodes to preload onto (repeatable; default: every READY node)",
    )
    p.set_defaults(func=cmds.preload)
