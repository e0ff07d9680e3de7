"""Consoles: nodes push the tail of each VM's serial console; owners (and admins) read it.

Project members who see a workspace may not: its serial port carried its owner's
interactive console sessions too (``ws console --attach``, which only the owner and
admins may open: docs/design/guests.md)."""

from __future__ import annotations

from workspace.errors import InvalidArgument, NotFound
from workspace.identity import Identity
from workspace.ops.lifecycle import check_owner, resolve_workspace
from workspace.ops.projects import as_identity
from workspace.ops.unit import Env
from workspace.store import ConsoleLog, Workspace


def console(env: Env, who: Identity | str, ref: str, tail_bytes: int) -> bytes:
    """The console output kept for a workspace (its last ``tail_bytes`` if > 0; 0:
    all of it). A negative ``tail_bytes`` is refused rather than taken for 0, as the
    API's other counts are (a stop's timeout, a page size)."""
    if tail_bytes < 0:
        raise InvalidArgument(f"tail_bytes must not be negative (0: everything), got {tail_bytes}")
    with env.store.read() as s:
        ws = resolve_workspace(s, who, ref)
        check_owner(as_identity(who), ws.owner, ws.name, "read the console of")
        row = s.get(ConsoleLog, ws.id)
        data = bytes(row.data) if row is not None else b""
    return data[-tail_bytes:] if tail_bytes > 0 else data


def push_console(
    env: Env, node: str, workspace_id: str, offset: int, data: bytes, reset: bool
) -> int:
    """Append what a node read from offset ``offset``; returns the offset it should
    send next (the data is ignored unless it continues what is kept)."""
    keep = env.cfg.console_keep_bytes
    with env.store.write() as s:
        ws = s.get(Workspace, workspace_id)
        if ws is None or ws.node != node:
            raise NotFound(f"workspace {workspace_id} is not assigned to {node}")
        row = s.get(ConsoleLog, ws.id)
        if row is None:
            row = ConsoleLog(workspace_id=ws.id, total_bytes=0, data=b"")
            s.add(row)
        if reset:
            row.total_bytes, row.data = 0, b""
        if offset == row.total_bytes and data:
            row.data = (bytes(row.data) + data)[-keep:]
            row.total_bytes += len(data)
        return row.total_bytes
