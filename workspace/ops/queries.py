"""Reading workspaces: one by id or name, or a page of the caller's; who the caller is."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace

from sqlalchemy import select

from workspace.domain.model import WorkspaceView
from workspace.domain.states import State
from workspace.identity import Identity
from workspace.ops import admission, liveness, pages
from workspace.ops.lifecycle import choose_owned
from workspace.ops.projects import as_identity, memberships, project_times, scope
from workspace.ops.unit import Env
from workspace.store import Workspace
from workspace.store.mapping import (
    VIEW_COLUMNS,
    view_row_by_id,
    view_rows,
    view_rows_by_name,
    workspace_views,
)


def get(env: Env, who: Identity | str, ref: str) -> WorkspaceView:
    """The view of the workspace ``ref`` names (ops/lifecycle.py ``resolve_owned``): read
    as the view's columns, not as an ORM row (store/mapping.py ``ViewRow``)."""
    with env.store.read() as s:
        row = choose_owned(
            s,
            who,
            ref,
            lambda: view_row_by_id(s, ref),
            lambda name: view_rows_by_name(s, name),
            "workspace",
            "ws list",
        )
        view = workspace_views(s, [row])[0]
        if row.wait_reason:
            view = replace(view, reason=admission.with_position(s, row.id, row.wait_reason))
        return liveness.with_node_silence(env, s, [view])[0]


def list_page(
    env: Env,
    who: Identity | str,
    include_terminated: bool,
    page_size: int = 0,
    page_token: str = "",
    all_users: bool = False,
    mine: bool = False,
) -> tuple[Sequence[WorkspaceView], str]:
    """(one page, oldest first, the token of the next page or "" after the last); with
    page_size 0, every workspace the caller sees: theirs and their projects' (an admin's
    ``all_users``: everyone's; ``mine``: only the caller's own)."""
    pages.check_size(page_size)
    with env.store.read() as s:
        q = select(*VIEW_COLUMNS).order_by(Workspace.created_at, Workspace.id)
        for where in scope(s, who, made=True).clauses(Workspace, all_users, mine):
            q = q.where(where)
        if not include_terminated:
            q = q.where(Workspace.state != State.TERMINATED.value)
        q = pages.by_creation(q, Workspace, "workspaces", page_size, page_token)
        rows, token = pages.cut(view_rows(s, q), "workspaces", page_size)
        return liveness.with_node_silence(env, s, workspace_views(s, rows)), token


def list_all(
    env: Env,
    who: Identity | str,
    include_terminated: bool,
    all_users: bool = False,
    mine: bool = False,
) -> list[WorkspaceView]:
    return [*list_page(env, who, include_terminated, all_users=all_users, mine=mine)[0]]


def caller(env: Env, who: Identity | str) -> Identity:
    """``who`` as the service takes them (``WhoAmI``): their name, admin role, and the
    projects it counts them in (their certificate's and their member rows) that exist:
    a project a certificate names but no admin made takes no workspace (as `ws quota`)."""
    ident = as_identity(who)
    with env.store.read() as s:
        existing = project_times(s, memberships(s, ident))
        return replace(ident, projects=tuple(name for name, _made in existing))
