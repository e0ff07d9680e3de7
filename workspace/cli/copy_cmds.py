"""`ws scp`: files between here and a workspace, with scp checking the host keys the
service vouches for, as `ws ssh` logs in (cli/guest_cmds.py).

Operands are scp's: ``NAME:PATH`` is PATH in workspace NAME (its name or id; an empty
PATH is the login user's home), anything else a local path (``./a:b`` for a local file
whose name holds a colon: a ``/`` before the first ``:`` makes it local, as for scp).
One side is here, the other one workspace: ``SRC... NAME:DST`` or ``NAME:SRC... DST``.
"""

from __future__ import annotations

import argparse
import re
from dataclasses import dataclass
from typing import Any

from workspace.cli import common, guest_cmds
from workspace.client import Client
from workspace.v1 import common_pb2

# NAME:PATH; a "/" before the first ":" makes the operand a local path.
_REMOTE = re.compile(r"([^/:]+):(.*)", re.DOTALL)
USAGE = "SRC... NAME:DST or NAME:SRC... DST"


@dataclass(frozen=True)
class Operand:
    workspace: str  # its name or id; "" for a local path
    path: str


def operand(text: str) -> Operand:
    """``text`` as ``ws scp`` reads an operand."""
    m = _REMOTE.fullmatch(text)
    if m is None:
        return Operand("", text)
    return Operand(m.group(1), m.group(2))


def plan(operands: list[str]) -> tuple[str, list[Operand]]:
    """(the workspace, the operands): UsageError unless one side is here and the other
    one workspace."""
    if len(operands) < 2:
        raise common.UsageError(f"give {USAGE}")
    parsed = [operand(o) for o in operands]
    *sources, target = parsed
    named = {s.workspace for s in sources if s.workspace}
    if target.workspace and not named:
        return target.workspace, parsed  # here -> there
    if not target.workspace and len(named) == 1 and all(s.workspace for s in sources):
        return named.pop(), parsed  # there -> here
    if not target.workspace and not named:
        raise common.UsageError(f"no workspace named: give {USAGE}")
    raise common.UsageError(
        f"ws scp copies between here and one workspace: {USAGE} (between two workspaces, "
        "copy through here)"
    )


def scp_command(
    ws: common_pb2.Workspace,
    operands: list[Operand],
    known_hosts: str,
    user: str = "",
    key: str = "",
    recursive: bool = False,
    netns: str = "",
    attempts: int = 0,
) -> list[str]:
    """The scp command line that copies ``operands`` (those naming a workspace: ``ws``),
    checking its host keys against ``known_hosts`` only, as ``ws ssh`` does."""
    address = guest_cmds.ws_address(ws)
    host = f"[{address}]" if ":" in address else address
    login = guest_cmds.login_user(ws, user)
    options = guest_cmds.openssh_options(known_hosts, key=key, attempts=attempts)
    if recursive:
        options.append("-r")
    paths = [f"{login}@{host}:{o.path}" if o.workspace else o.path for o in operands]
    return guest_cmds.in_netns(netns, ["scp", *options, "--", *paths])


def scp_cmd(args: argparse.Namespace, client: Client) -> int:
    ref, operands = plan(args.operands)
    ws = client.get_workspace(ref)
    guest_cmds.check_ssh(ws)
    netns = guest_cmds.site_netns(client.address, ws.node)
    known = guest_cmds.write_known_hosts(ws)
    cmd = scp_command(
        ws,
        operands,
        str(known),
        args.user or "",
        args.key or "",
        args.recursive,
        netns,
        args.retry or 0,
    )
    return guest_cmds.print_or_run(args, cmd, known)


def register(sub: Any, parent: argparse.ArgumentParser, client_for: common.ClientFor) -> None:
    """Add `scp` to ws."""
    p = sub.add_parser(
        "scp",
        parents=[parent],
        help="copy files to or from a workspace with scp, checking the host keys the "
        "service vouches for",
        description="Copy files between here and a workspace with scp: SRC... NAME:DST "
        "uploads, NAME:SRC... DST downloads (NAME: the workspace's name or id; NAME: alone "
        "is its login user's home; ./a:b is a local file whose name holds a colon). The "
        "guest's host keys are checked against those the service holds, as `ws ssh` "
        "checks them; ws exits with scp's exit code.",
    )
    p.add_argument("operands", nargs="+", metavar="SRC... DST")
    p.add_argument("-r", dest="recursive", action="store_true", help="copy directories")
    p.add_argument("--user", "-l", metavar="U", help="copy as U (default: the image's login user)")
    p.add_argument("-i", dest="key", metavar="KEY", help="the private key file to use")
    p.add_argument("--print", action="store_true", help="print the scp command, do not run it")
    p.add_argument(
        "--retry",
        type=common.positive_int,
        metavar="N",
        help="try to connect up to N times, a second apart, while the guest boots",
    )
    p.set_defaults(func=lambda a: scp_cmd(a, client_for(a)))
