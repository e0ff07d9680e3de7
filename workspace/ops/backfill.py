"""Backfill: `ws-admin backfill set|list|clear`, and the leader's pass that keeps idle
capacity busy with preemptible workspaces (docs/design/backfill.md).

Each pass, per entry: its live workspaces (owner ``BACKFILL_OWNER``, the entry's image,
neither destroyed nor being destroyed) are counted. Over ``max_count``: the newest
extras are destroyed. Under: one ordinary create at a time (ops/create.py ``create_in``,
through the group commit) of a preemptible workspace with ``wait_for_capacity_s`` 0,
while it fits, the entries that want more taking turns (they share idle capacity). Those
creates are admitted like any other (ops/admission.py): never on the node(s) the head of
the capacity queue holds, so backfill does not delay it. A create that does not fit (no
idle capacity, a quota) stops the entry's pass and is not tried again until the nodes'
capacity or the entry changes (or ``RETRY_S`` passed): a pass where nothing changed
reads a few small queries and writes nothing.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field, replace

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from workspace.domain.backfill import BackfillSpec, BackfillView, free_index, workspace_name
from workspace.domain.events import Kind as EventKind
from workspace.domain.model import CreateRequest, CreateSpec, WorkspaceView
from workspace.domain.states import Desired, Op, State
from workspace.domain.tenancy import BACKFILL_OWNER
from workspace.errors import InvalidArgument, NotFound, WorkspaceError
from workspace.identity import Identity, Kind
from workspace.log import about
from workspace.ops import admin_events, admission, group_commit
from workspace.ops.create import check_networks, check_spec, create_in, request_hash
from workspace.ops.image_refs import unknown_image
from workspace.ops.operate import act
from workspace.ops.projects import no_such_project
from workspace.ops.unit import Env, UnitOfWork, write
from workspace.store import Backfill, Image, Node, Project, Workspace

log = logging.getLogger("workspace.ops.backfill")

# A create that did not fit is tried again at least this often (seconds), even if
# neither the entry nor the nodes' capacity changed.
RETRY_S = 300.0
# Who creates backfill workspaces: the site principal, acting with an admin's reach (any
# image the admin named, any project), never a user.
BACKFILL = Identity(Kind.USER, BACKFILL_OWNER, admin=True)


# -- entries (admins) ------------------------------------------------------------------------


def check_entry(env: Env, s: Session, spec: BackfillSpec) -> BackfillSpec:
    """``spec`` with its defaults filled in, or a clear error: InvalidArgument for a bad
    count, size or grace; NotFound for an unknown image, network or project."""
    if not spec.image:
        raise InvalidArgument("an image is required (`ws image list` shows them)")
    if spec.max_count < 0:
        raise InvalidArgument(f"--max must be 0 or more, got {spec.max_count}")
    if spec.grace_s < 0:
        raise InvalidArgument(f"--grace must be 0 or more seconds, got {spec.grace_s}")
    checked = check_spec(
        CreateSpec(
            name="backfill",
            image=spec.image,
            cpus=spec.cpus,
            memory_mib=spec.memory_mib,
            networks=spec.networks,
            preemptible=True,
        ),
        env.cfg.limits,
    )
    if s.get(Image, spec.image) is None:
        raise unknown_image(s, spec.image)
    networks = check_networks(s, checked.networks)
    if spec.project and s.get(Project, spec.project) is None:
        raise no_such_project(spec.project)
    return replace(spec, cpus=checked.cpus, memory_mib=checked.memory_mib, networks=networks)


def _spec(row: Backfill) -> BackfillSpec:
    return BackfillSpec(
        row.image,
        row.max_count,
        row.cpus,
        row.memory_mib,
        tuple(row.networks or ()),
        row.grace_s,
        row.project,
    )


# A backfill workspace that counts: neither destroyed nor being destroyed.
LIVE = (
    Workspace.owner == BACKFILL_OWNER,
    Workspace.state != State.TERMINATED.value,
    Workspace.desired_state != Desired.TERMINATED.value,
)


def live_rows(s: Session, image: str) -> list[Workspace]:
    """The entry's live workspaces, newest first."""
    q = (
        select(Workspace)
        .where(*LIVE, Workspace.image == image)
        .order_by(Workspace.created_at.desc(), Workspace.id.desc())
    )
    return list(s.execute(q).scalars())


def _counts(s: Session) -> dict[str, tuple[int, int]]:
    """Per image: (live, running) backfill workspaces."""
    q = (
        select(Workspace.image, Workspace.state, func.count())
        .where(*LIVE)
        .group_by(Workspace.image, Workspace.state)
    )
    out: dict[str, tuple[int, int]] = {}
    for image, state, n in s.execute(q):
        live, running = out.get(image, (0, 0))
        out[image] = (live + n, running + (n if state == State.RUNNING.value else 0))
    return out


def _view(row: Backfill, counts: dict[str, tuple[int, int]]) -> BackfillView:
    live, running = counts.get(row.image, (0, 0))
    return BackfillView(_spec(row), row.owner, live, running)


def set_entry(env: Env, spec: BackfillSpec) -> BackfillView:
    """Add or replace the entry of ``spec.image``; the leader's next pass acts on it
    (a lower max destroys the newest extras)."""
    with env.store.write() as s:
        spec = check_entry(env, s, spec)
        row = s.get(Backfill, spec.image)
        before = None if row is None else _spec(row)
        if row is None:
            row = Backfill(image=spec.image)
            s.add(row)
        row.max_count = spec.max_count
        row.cpus = spec.cpus
        row.memory_mib = spec.memory_mib
        row.networks = list(spec.networks)
        row.grace_s = spec.grace_s
        row.owner = BACKFILL_OWNER
        row.project = spec.project
        row.updated_at = env.clock()
        s.flush()
        view = _view(row, _counts(s))
        said = (
            admin_events.about_backfill(view.spec)
            if before is None
            else admin_events.backfill_changes(before, view.spec)
        )
        if said:
            admin_events.record(env, s, EventKind.BACKFILL_SET, spec.image, said)
    log.info("backfill %s: at most %d (%s)", spec.image, spec.max_count, spec)
    return view


def list_entries(env: Env) -> list[BackfillView]:
    with env.store.read() as s:
        counts = _counts(s)
        rows = s.execute(select(Backfill).order_by(Backfill.image)).scalars()
        return [_view(r, counts) for r in rows]


def clear_entry(env: Env, image: str) -> BackfillView:
    """Remove the entry and destroy its workspaces (in one transaction); returns the
    entry as it was, ``live`` = how many were destroyed."""
    if not image:
        raise InvalidArgument("an image is required (`ws-admin backfill list` shows them)")
    with write(env) as u:
        row = u.s.get(Backfill, image)
        if row is None:
            raise NotFound(
                f"no backfill entry for image {image!r}; `ws-admin backfill list` shows them"
            )
        spec, owner = _spec(row), row.owner
        gone = destroy(env, u, live_rows(u.s, image), "backfill entry cleared")
        u.s.delete(row)
        admin_events.record(
            env,
            u.s,
            EventKind.BACKFILL_CLEARED,
            image,
            f"{gone} workspace(s) destroyed; was {admin_events.about_backfill(spec)}",
        )
    log.info("backfill %s cleared: %d workspace(s) destroyed", image, gone)
    return BackfillView(spec, owner, gone, 0)


def destroy(env: Env, u: UnitOfWork, rows: list[Workspace], reason: str) -> int:
    for ws in rows:
        act(env, u, ws, Op.DESTROY, force=True, reason=reason)
    return len(rows)


# -- the pass (the leader) -------------------------------------------------------------------


class Stale(Exception):
    """The entry changed or is gone, or is full, since the pass read it."""


@dataclass
class Backfiller:
    """The leader's backfill loop state: where a create last did not fit (per image, the
    nodes' capacity and the entry as they were then), so it is not tried again until
    either changes."""

    env: Env
    blocked: dict[str, tuple[object, ...]] = field(default_factory=dict)
    # The nodes' capacity as this pass last read it (None: read it again).
    seen: tuple[object, ...] | None = None

    def run(self) -> int:
        """One pass; returns how many workspaces it created or destroyed."""
        self.seen = None
        with self.env.store.read() as s:
            entries = [(_spec(r), r.updated_at) for r in s.execute(select(Backfill)).scalars()]
            counts = _counts(s)
        acted = 0
        growing: list[tuple[BackfillSpec, float, int]] = []
        for spec, updated in entries:
            live = counts.get(spec.image, (0, 0))[0]
            if live > spec.max_count:
                acted += self._shrink(spec)
            elif live < spec.max_count:
                growing.append((spec, updated, live))
        # Idle capacity is shared: one create per entry in turn, until each is full or
        # does not fit (not the first entry in the store's order taking all of it).
        while growing:
            still = []
            for spec, updated, live in growing:
                if self._grow_one(spec, updated):
                    acted += 1
                    if live + 1 < spec.max_count:
                        still.append((spec, updated, live + 1))
            growing = still
        return acted

    def _shrink(self, spec: BackfillSpec) -> int:
        with write(self.env) as u:
            row = u.s.get(Backfill, spec.image)
            if row is None:
                return 0
            live = live_rows(u.s, spec.image)  # newest first
            extras = live[: max(0, len(live) - row.max_count)]
            n = destroy(self.env, u, extras, f"backfill: at most {row.max_count} now")
        log.info("backfill %s: %d extra workspace(s) destroyed", spec.image, n)
        return n

    def _grow_one(self, spec: BackfillSpec, updated: float) -> bool:
        """One more workspace of the entry, if it may fit; True if one was made."""
        # Tried again when the entry or the nodes' capacity changed, or RETRY_S passed
        # (what else may let it fit: a quota raised, a trust policy changed).
        key = (updated, int(self.env.clock() // RETRY_S), *self._capacity())
        if self.blocked.get(spec.image) == key:
            return False
        try:
            view = self.create_one(spec)
        except Stale:
            return False
        except WorkspaceError as exc:
            self.blocked[spec.image] = key  # rolled back: the capacity is as read
            log.info("backfill %s: no more for now: %s", spec.image, exc)
            return False
        self.seen = None  # it took some
        self.blocked.pop(spec.image, None)
        log.info(
            "backfill %s: %s (%s) on %s",
            spec.image,
            view.name,
            view.id,
            view.node,
            extra=about(view.id, view.node),
        )
        return True

    def _capacity(self) -> tuple[object, ...]:
        """What decides whether a backfill create can fit: each node's state, size and
        use, and which requests of the capacity queue hold nodes (read once per
        pass, and again after a create)."""
        if self.seen is None:
            with self.env.store.read() as s:
                q = select(
                    Node.name,
                    Node.state,
                    Node.cpus,
                    Node.memory_mib,
                    Node.used_cpus,
                    Node.used_memory_mib,
                )
                head = [e.id for e in admission.holders(admission.entries(s))]
                self.seen = (*head, *(tuple(r) for r in s.execute(q.order_by(Node.name))))
        return self.seen

    def create_one(self, spec: BackfillSpec) -> WorkspaceView:
        """One preemptible workspace of ``spec``, placed now (not on the nodes the head
        of the capacity queue holds), in one transaction that also checks the entry
        still wants one more."""
        env = self.env
        request_id = uuid.uuid4().hex

        def one(u: UnitOfWork) -> Callable[[], WorkspaceView]:
            row = u.s.get(Backfill, spec.image)
            live = live_rows(u.s, spec.image)
            if row is None or _spec(row) != spec or len(live) >= row.max_count:
                raise Stale()
            taken = u.s.execute(
                select(Workspace.name).where(
                    Workspace.owner == BACKFILL_OWNER, Workspace.state != State.TERMINATED.value
                )
            ).scalars()  # also those still being destroyed: their names are not free yet
            n = free_index(set(taken), spec.image, env.cfg.limits.max_name_len)
            req = CreateRequest(
                spec=CreateSpec(
                    name=workspace_name(spec.image, n, env.cfg.limits.max_name_len),
                    image=spec.image,
                    cpus=spec.cpus,
                    memory_mib=spec.memory_mib,
                    networks=spec.networks,
                    preemptible=True,
                ),
                request_id=request_id,
                project=spec.project,
            )
            answer = create_in(env, u, BACKFILL, req, request_hash(req))
            made = u.s.execute(
                select(Workspace).where(
                    Workspace.owner == BACKFILL_OWNER, Workspace.request_id == request_id
                )
            ).scalar_one()
            made.preempt_grace_s = spec.grace_s
            # The site runs it while the entry wants it: no project lease (a lease's STOP
            # would leave it holding its claim, counted, never replaced).
            made.lease_expires_at = 0.0
            return answer

        return group_commit.of(env).run(env, one)
