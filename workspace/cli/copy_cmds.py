"""`ws scp`: files between here and a workspace, with scp checking the host keys the
service vouches for, as `ws ssh` logs in (cli/guest_cmds.py).

Operands are scp's: ``NAME:PATH`` is PATH in workspace NAME (its name or id; an empty
PATH is the login user's home), anything else a local path (``./a:b`` for a local file
whose name holds a colon: a ``/`` before the first ``:`` makes it local, as for scp).
One exception, as ``kubectl cp`` reads ``NAMESPACE/POD:PATH``: ``OWNER/NAME:PATH`` is
OWNER's workspace NAME, as every other command takes OWNER/NAME (docs/design/cli.md),
when OWNER and NAME are spelled as the service's user and workspace names are
(lowercase, beginning with a letter or digit) and no local path of that name exists;
``./alice/web1:x`` is local whatever exists. One side is here, the other one workspace:
``SRC... NAME:DST`` or ``NAME:SRC... DST``; an operand meant as a local path but taken
for a workspace makes two workspaces, which is refused, saying how to write it.

`ws cluster scp NAME`: the same for every member of a cluster at once (``:PATH`` on each
of them), each member's own copy of a download in a directory named after it.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import re
import shlex
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from workspace import errors
from workspace.cli import common, exec_cmds, guest_cmds, render
from workspace.client import Client
from workspace.domain import booting
from workspace.v1 import common_pb2

# NAME:PATH; a "/" before the first ":" makes the operand a local path.
_REMOTE = re.compile(r"([^/:]+):(.*)", re.DOTALL)
# OWNER/NAME:PATH: a user name (identity.NAME_RE) and a workspace name (ops/create.py).
_OWNED = re.compile(r"([a-z0-9][a-z0-9._-]*/[a-z0-9][a-z0-9-]*):(.*)", re.DOTALL)
USAGE = "SRC... NAME:DST or NAME:SRC... DST"
# scp's exit code when its ssh could not connect or log in (OpenSSH 9's SFTP mode, as ssh's).
SSH_FAILED = guest_cmds.SSH_FAILED
# What ssh says of a login the guest refused (not localised).
LOGIN_REFUSED = "Permission denied"


@dataclass(frozen=True)
class Operand:
    workspace: str  # its name or id; "" for a local path
    path: str


def operand(text: str) -> Operand:
    """``text`` as ``ws scp`` reads an operand."""
    m = _REMOTE.fullmatch(text)
    if m is None:
        m = _OWNED.fullmatch(text)
        if m is None or os.path.lexists(text):  # a local path that is there stays one
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
    # A download target spelled OWNER/NAME:PATH that is not there yet is taken for a
    # workspace (a source meant as local is there, so stays one): say how to write it.
    local = (
        f"; a local path of that shape is written ./{operands[-1]}"
        if "/" in target.workspace
        else ""
    )
    raise common.UsageError(
        f"ws scp copies between here and one workspace: {USAGE} (between two workspaces, "
        f"copy through here{local})"
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
    guest_cmds.json_only_with_print(args, "scp")
    ws = guest_cmds.get_guest(
        client, ref, "`ws cluster scp {name} SRC... :DST` (or `:SRC... DIR`) for every member"
    )
    ws = guest_cmds.once_running(client, args, ws, ref)
    guest_cmds.check_on_its_way(ws)
    guest_cmds.check_ssh(ws, args.user or "", "" if args.print else args.key or "")
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
        guest_cmds.connect_attempts(args, ws, netns),
    )
    rc = guest_cmds.print_or_run(args, cmd, known)
    if rc == SSH_FAILED:  # scp's ssh could not log in, or connect
        guest_cmds.hint_about_keys(client, ws, bool(args.key), "scp", _with_key("ws scp", args))
    return rc


def _with_key(command: str, args: argparse.Namespace, *first: str) -> str:
    """The copy asked for again, with ``-i FILE``: what a failed login's hint says (its
    options kept; ``--`` before operands that would read as options, as they were given)."""
    options = [*(["-r"] if args.recursive else []), *(["-l", args.user] if args.user else [])]
    if args.retry:
        options += ["--retry", str(args.retry)]
    if getattr(args, "role", None):
        options += ["--role", args.role]
    given = [*first, *args.operands]
    if any(o.startswith("-") for o in given):
        given.insert(0, "--")
    return f"{command} -i FILE {shlex.join([*options, *given])}"


def register(sub: Any, parent: argparse.ArgumentParser, client_for: common.ClientFor) -> None:
    """Add `scp` to ws."""
    p = sub.add_parser(
        "scp",
        parents=[parent],
        help="copy files to or from a workspace with scp, checking the host keys the "
        "service vouches for",
        description="Copy files between here and a workspace with scp: SRC... NAME:DST "
        "uploads, NAME:SRC... DST downloads (NAME: the workspace's name or id, or "
        "OWNER/NAME for a colleague's; NAME: alone is its login user's home; ./a:b is a "
        "local file whose name holds a colon, and so is an existing a/b:c). The "
        "guest's host keys are checked against those the service holds, as `ws ssh` "
        "checks them; ws exits with scp's exit code.",
    )
    p.add_argument("operands", nargs="+", metavar="SRC... DST")
    _add_scp_options(
        p,
        ". Default: at a terminal, for a workspace that started less than "
        f"{booting.BOOT_WINDOW_S:.0f} s ago, wait until then for its sshd to answer (said on "
        "stderr); in a script, and others: one attempt",
    )
    p.add_argument("--print", action="store_true", help="print the scp command, do not run it")
    p.set_defaults(func=lambda a: scp_cmd(a, client_for(a)))


def _add_scp_options(p: argparse.ArgumentParser, default: str = "") -> None:
    p.add_argument("-r", dest="recursive", action="store_true", help="copy directories")
    p.add_argument("--user", "-l", metavar="U", help="copy as U (default: the image's login user)")
    p.add_argument("-i", dest="key", metavar="KEY", help="the private key file to use")
    p.add_argument(
        "--retry",
        type=common.positive_int,
        metavar="N",
        help="a workspace still starting: wait up to N s for it to be RUNNING, then try "
        "to connect up to N times, a second apart, while the guest boots" + default,
    )


# -- ws cluster scp ------------------------------------------------------------------------

CLUSTER_USAGE = "SRC... :DST (to every member) or :SRC... DIR (into DIR/MEMBER/)"


def cluster_plan(operands: list[str]) -> list[Operand]:
    """The operands of ``ws cluster scp``: ``:PATH`` is PATH on every member; UsageError
    unless one side is here and the other the members."""
    if len(operands) < 2:
        raise common.UsageError(f"give {CLUSTER_USAGE}")
    parsed = [Operand("*", o[1:]) if o.startswith(":") else Operand("", o) for o in operands]
    *sources, target = parsed
    if target.workspace and not any(s.workspace for s in sources):
        return parsed  # here -> every member
    if not target.workspace and all(s.workspace for s in sources):
        return parsed  # every member -> DIR/MEMBER/
    raise common.UsageError(f"ws cluster scp copies between here and the members: {CLUSTER_USAGE}")


@dataclass
class MemberCopy:
    """What scp did for one member, or why it did not run."""

    workspace: str
    name: str
    role: str
    exit_code: int | None = None
    stderr: str = ""
    error: str = ""

    @property
    def ok(self) -> bool:
        return self.exit_code == 0

    @property
    def status(self) -> str:
        if self.exit_code is None:
            return self.error
        return "copied" if self.ok else f"scp exit {self.exit_code}"


def copy_member(
    client: Client, m: common_pb2.Workspace, operands: list[Operand], args: argparse.Namespace
) -> MemberCopy:
    """scp for member ``m`` (a download into its own directory under the target); its
    failure is kept, never raised."""
    done = MemberCopy(m.id, m.name, m.role)
    known: Path | None = None
    made: Path | None = None  # the member's directory, if this copy made it
    try:
        guest_cmds.check_ssh(m, args.user or "", args.key or "")
        *sources, target = operands
        if not target.workspace:  # :SRC... DIR: into DIR/MEMBER/
            into = Path(target.path) / m.name
            if not into.exists():
                into.mkdir(parents=True)
                made = into
            operands = [*sources, Operand("", f"{into}/")]
        netns = guest_cmds.site_netns(client.address, m.node)
        known = guest_cmds.write_known_hosts(m)
        cmd = scp_command(
            m, operands, str(known), args.user or "", args.key or "", args.recursive, netns,
            args.retry or 0,
        )  # fmt: skip
        ran = subprocess.run(cmd, capture_output=True, text=True, stdin=subprocess.DEVNULL)
        done.exit_code, done.stderr = ran.returncode, ran.stderr
    except errors.WorkspaceError as exc:
        done.error = exc.message
    except OSError as exc:  # the directory cannot be made; scp or ip missing
        done.error = str(exc)
    finally:
        if known is not None:
            shutil.rmtree(known.parent, ignore_errors=True)
        if made is not None and not done.ok:
            with contextlib.suppress(OSError):
                made.rmdir()  # nothing copied into it: no directory claims otherwise
    return done


def cluster_scp_cmd(args: argparse.Namespace, client: Client) -> int:
    operands = cluster_plan(args.operands)
    guest_cmds.check_key_file(args.key or "")  # once, not on each member's line
    cluster, members = exec_cmds.chosen_members(client, args.name, args.role)
    copies = exec_cmds.in_parallel(
        lambda m: copy_member(client, m, operands, args), members, exec_cmds.CLUSTER_PARALLEL
    )
    bad = [c for c in copies if not c.ok]
    line = exec_cmds.summary(copies, "copied")
    if render.wants_json(args):
        render.print_json(
            {
                # The cluster's id and name, as `ws cluster show -o json` gives them
                # (and "cluster", its name, which came first: a member's "cluster" is
                # its cluster's id).
                "id": cluster.id,
                "name": cluster.name,
                "cluster": cluster.name,
                "members": [
                    {
                        "id": c.workspace,
                        "workspace": c.workspace,  # as `ws cluster exec -o json` gives it
                        "name": c.name,
                        "role": c.role,
                        "exit_code": c.exit_code,
                        "stderr": c.stderr,
                        "error": c.error,
                    }
                    for c in copies
                ],
                "summary": {"members": len(copies), "failed": [c.name for c in bad], "text": line},
            }
        )
    else:
        for c in copies:
            print(f"== {c.name} ({c.role or '-'}): {c.status}", flush=True)
            for said in c.stderr.splitlines():
                print(f"{c.name}: {said}", file=sys.stderr, flush=True)
        print(line)
    # What `ws ssh` says of a login it could not make, said once, of the first member scp
    # could not log in to: members get their owner's keys alike. Its 255 is also ssh's
    # "Connection refused" or "No route to host" (a member still booting), which no key
    # mends: only a member whose scp said "Permission denied" (its words, kept here).
    refused = [
        m
        for m, c in zip(members, copies, strict=True)
        if c.exit_code == SSH_FAILED and LOGIN_REFUSED in c.stderr
    ]
    if refused:
        again = _with_key("ws cluster scp", args, args.name)
        guest_cmds.hint_about_keys(client, refused[0], bool(args.key), "scp", again)
    return common.EXIT_OK if not bad else common.EXIT_REQUEST


def register_cluster(
    csub: Any, parent: argparse.ArgumentParser, client_for: common.ClientFor
) -> None:
    """Add `scp` to ws cluster."""
    p = csub.add_parser(
        "scp",
        parents=[parent],
        help="copy files to or from every member of a cluster (in parallel)",
        description="Copy files between here and every member of a cluster with scp, as "
        "`ws scp` does for one: SRC... :DST uploads to DST on every member, :SRC... DIR "
        "downloads each member's into DIR/MEMBER/. Every member is tried; ws exits 0 "
        "only when every copy succeeded.",
    )
    p.add_argument("name", metavar="NAME", help="cluster name or id")
    p.add_argument("operands", nargs="+", metavar="SRC... DST")
    p.add_argument("--role", metavar="ROLE", help="only the members with this role")
    _add_scp_options(p)
    p.set_defaults(func=lambda a: cluster_scp_cmd(a, client_for(a)))
