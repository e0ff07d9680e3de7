"""A new image from a stopped workspace (``ws image save``; docs/design/save.md).

The workspace's node flattens each of its cow partitions (its overlay over the cached
base) into a self-contained qcow2 and sends it to the repository (``Nodes.PutBlob``);
the service then imports the image as a push would (format checks, quotas) with the
source image's readonly and blank partitions, kernel, initrd, cmdline, context and login
user. The blanks a create added (``--blank``) are the workspace's, not its image's, and
are left out.

While the node works the workspace is marked (``saving_as``): it does not start, so its
disks do not change under the copy, and a second save of it is refused. The
mark is cleared when the save ends, whatever the outcome; one older than
``limits.save_timeout_s`` (a service that died mid-save) no longer counts, and the
leader's housekeeping clears it (``clear_lapsed``); a service alone on its store (SQLite)
clears every mark at its start (``clear_orphaned``: its previous run's saves died with
it); on PostgreSQL each mark names the replica running the save (``saving_by``) and the
leader clears those of a replica that is gone within seconds (``clear_gone``). Each
save is in the site events: ``workspace.saving`` when it begins, ``workspace.saved`` or
``workspace.save_failed`` when it ends (the image itself: ``image.added``,
store/journal.py).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, replace

from sqlalchemy import ColumnElement, select, true, update
from sqlalchemy.orm import Session

from images import manifest
from images.model import ImageSpec, Mode, Partition
from workspace import callctx
from workspace.domain.events import Kind
from workspace.domain.model import ImageView
from workspace.domain.states import Desired, State
from workspace.domain.tasks import SaveTask
from workspace.errors import (
    AlreadyExists,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    PermissionDenied,
    WorkspaceError,
)
from workspace.identity import Identity
from workspace.identity import Kind as Caller
from workspace.log import about, named
from workspace.ops import blob_access, leases, refusals
from workspace.ops.image_refs import name_taken
from workspace.ops.images import Catalog
from workspace.ops.lifecycle import (
    SAVE_GRACE_S,
    check_owner,
    named_for,
    refuse_while_saving,
    resolve_workspace,
    saves_from,
    saving,
    stopped,
)
from workspace.ops.projects import as_identity, resolve_project
from workspace.ops.taskhub import TaskHub
from workspace.ops.unit import Env, UnitOfWork, write
from workspace.store import Image, Workspace, journal
from workspace.store.mapping import bound_spec, image_spec

log = logging.getLogger("workspace.ops.save")
# A disk's progress is written to its workspace's row at most this often while it comes.
PROGRESS_S = 1.0


@dataclass(frozen=True)
class _Source:
    """What the save needs of the workspace, read when it was marked."""

    workspace_id: str
    name: str
    owner: str
    project: str
    node: str
    partitions: tuple[Partition, ...]  # the image's, as the workspace has them
    spec: ImageSpec
    context: str
    login_user: str


def save(
    env: Env,
    hub: TaskHub,
    catalog: Catalog,
    who: Identity | str,
    ref: str,
    image: str,
    project: str = "",
) -> ImageView:
    """Make image ``image`` (NAME:VERSION, new) of the caller from stopped workspace
    ``ref`` (the caller's own; an admin's: anyone's), in ``project`` (default: the
    workspace's). Returns the image as imported."""
    ident = as_identity(who)
    try:
        manifest.parse_ref(image)
    except manifest.ManifestError as exc:
        raise InvalidArgument(str(exc)) from None
    with refusals.recorded(env.store, env.notifier, env.clock, image):  # a quota's
        src = _mark(env, catalog, ident, ref, image, project)
    limit = env.cfg.limits.save_timeout_s
    cow = tuple(p.name for p in src.partitions if p.mode is Mode.COW)
    log.info(
        "workspace %s (%s) on node %s: saving as image %s for %s (%d partition(s) to flatten)",
        src.workspace_id,
        src.name,
        src.node,
        image,
        ident.name,
        len(cow),
        extra=about(src.workspace_id, src.node),
    )
    try:
        sent: dict[str, str] = {}
        if cow:
            outcome = hub.save(
                src.node, src.workspace_id, SaveTask(cow, limit), limit + SAVE_GRACE_S
            )
            sent = {p.name: p.digest for p in outcome.partitions}
            missing = [n for n in cow if n not in sent]
            if missing:
                raise FailedPrecondition(
                    f"node {src.node} did not send partition(s) {', '.join(missing)} of "
                    f"workspace {src.name}; try again"
                )
            check_sent(env, src, {n: sent[n] for n in cow})
        parts = tuple(_image_partition(p, sent) for p in src.partitions)
        spec = ImageSpec(
            image, parts, src.spec.kernel_digest, src.spec.initrd_digest, src.spec.cmdline
        )
        view = catalog.import_image(
            ident,
            spec,
            project or src.project,
            src.context,
            src.login_user,
            # Private, whoever saves: a saved workspace holds its user's files (an
            # admin publishes it with `ws-admin image publish` if it is for everyone).
            site_image=False,
            vouched=spec.digests(),  # its node's copies and the disks it was made of
        )
    except BaseException as exc:
        _unmark(env, src.workspace_id, image, Kind.WORKSPACE_SAVE_FAILED, _why(exc))
        raise
    _unmark(env, src.workspace_id, image, Kind.WORKSPACE_SAVED, f"{view.total_bytes} bytes")
    log.info(
        "workspace %s saved as image %s (%d bytes)",
        named(src.workspace_id, src.name, src.node),
        image,
        view.total_bytes,
        extra=about(src.workspace_id, src.node),
    )
    return view


def holder(node: str) -> str:
    """Who a node's saved disk is recorded as sent by (ops/blob_access.py)."""
    return Identity(Caller.NODE, node).principal


def check_sent(env: Env, src: _Source, sent: dict[str, str]) -> None:
    """FailedPrecondition unless the node sent (``Nodes.PutBlob``) each blob its outcome
    names as a disk of the save: the save vouches for them, and a node that named
    another blob of the repository (another user's private disk: a digest is no
    secret) made the saver an image of it, to boot and read."""
    with env.store.read() as s:
        held = blob_access.held(s, holder(src.node), sent.values())
    foreign = {name: digest for name, digest in sent.items() if digest not in held}
    if foreign:
        said = ", ".join(f"{name} as {digest}" for name, digest in sorted(foreign.items()))
        log.warning(
            "workspace %s: node %s said it saved %s, which it never sent; save refused",
            src.workspace_id,
            src.node,
            said,
            extra=about(src.workspace_id, src.node),
        )
        raise FailedPrecondition(
            f"node {src.node} said it saved partition(s) of workspace {src.name} ({said}) "
            "as blobs it never sent; the save is refused (the node's agent misbehaves: "
            "tell the site's admins)"
        )


def may_send(env: Env, node: str, workspace_id: str) -> None:
    """A node may send a saved disk (``Nodes.PutBlob``) only of a workspace on it that is
    being saved; anything else is refused before a byte is stored."""
    with env.store.read() as s:
        ws = s.get(Workspace, workspace_id) if workspace_id else None
        if ws is None:
            raise NotFound(f"no workspace {workspace_id or '(none)'} to send a disk of")
        if ws.node != node:
            raise PermissionDenied(f"workspace {workspace_id} is not on node {node}")
        if not saving(env, ws):
            raise FailedPrecondition(f"no save of workspace {workspace_id} is under way")


def _mark(
    env: Env, catalog: Catalog, ident: Identity, ref: str, image: str, project: str
) -> _Source:
    """Check that the save may go ahead and mark the workspace; what the save needs.
    The image's project (``project``, else the workspace's) is checked here, as the
    import will, before a node copies a byte; so are the quotas of image bytes, as far
    as they can be before the copies exist (one used up refuses the save)."""
    with env.store.write() as s:
        # It holds the workspace (no start until it ends): by a bare name, the caller's own.
        ws = resolve_workspace(s, ident, ref, acting="save", owner_only=True)
        check_owner(ident, ws.owner, ws.name, "save")
        into = resolve_project(
            s, ident, project or ws.project or "", require=env.cfg.require_project
        )
        shown = named_for(ident, ws.owner, ws.name)  # in a hint: as the caller names it
        if ws.state == State.TERMINATED.value:  # its disks are gone
            raise FailedPrecondition(f"workspace {ws.name} was destroyed; nothing to save")
        if ws.desired_state == Desired.TERMINATED.value:  # not `ws stop` first: it goes
            raise FailedPrecondition(f"workspace {ws.name} is being destroyed; it cannot be saved")
        if not stopped(ws) or not ws.node:
            raise FailedPrecondition(
                f"workspace {ws.name} is {ws.state}; only a stopped workspace can be saved "
                f"(`ws stop {shown} --wait` first)"
            )
        refuse_while_saving(env, ws, "save")
        leases.refuse_save_after_end(env, s, ws, shown)
        if s.get(Image, image) is not None:
            raise AlreadyExists(f"image {image!r} already exists; pick a new version")
        if name_taken(s, image, into or "", ident.name):
            raise AlreadyExists(f"image {image!r} already exists: its NAME is another project's")
        bound = bound_spec(ws)
        source = s.get(Image, ws.image)
        # The image's own partitions, as the workspace has them (grown); not the blanks
        # its create added.
        own = {p.name for p in image_spec(source).partitions} if source is not None else None
        partitions = tuple(p for p in bound.partitions if own is None or p.name in own)
        if not partitions and not bound.kernel_digest:
            raise FailedPrecondition(f"workspace {ws.name} has nothing to save")
        # What the image will reuse is known now; its cow partitions are new blobs.
        reused = replace(bound, partitions=tuple(p for p in partitions if p.mode is not Mode.COW))
        copies = any(p.mode is Mode.COW for p in partitions)
        catalog.refuse_full(s, ident.name, into or "", reused.digests(), copies, image)
        _set_mark(ws, image, env.clock(), env.replica_id)
        _event(
            s,
            ws,
            Kind.WORKSPACE_SAVING,
            image,
            f"{sum(p.mode is Mode.COW for p in partitions)} partition(s) to copy",
        )
        return _Source(
            ws.id,
            ws.name,
            ws.owner,
            ws.project or "",
            ws.node,
            partitions,
            bound,
            ws.context or "none",
            ws.login_user or "",
        )


def _unmark(env: Env, workspace_id: str, image: str, kind: Kind, reason: str) -> None:
    with write(env) as u:
        ws = u.s.get(Workspace, workspace_id)
        # Not a later save's mark (this one's cleared meanwhile, its replica taken for gone).
        if ws is not None and ws.saving_as == image and ws.saving_by == env.replica_id:
            _set_mark(ws, "", 0.0)
            _event(u.s, ws, kind, image, reason)
            _ended(u, ws)


def _ended(u: UnitOfWork, ws: Workspace) -> None:
    """Its save ended: watchers see the mark gone, and its node is sent its orders again
    (a workspace destroyed while it was saved was kept until now: reports.live_rows)."""
    u.changed(ws)
    u.nodes(ws.node)


def clear_lapsed(env: Env) -> int:
    """Clear the marks of saves that outlived ``limits.save_timeout_s`` (their service
    died mid-save: nothing else will), each with a ``workspace.save_failed`` event;
    returns how many."""
    return _clear(env, Workspace.saving_since < saves_from(env), "never ended (lapsed)")


# Why ``clear_orphaned`` cleared a save's mark (its ``workspace.save_failed`` event).
LOST_TO_RESTART = "lost: the service restarted during the save; save again"


def clear_orphaned(env: Env) -> int:
    """At the start of a service that is its store's only process (SQLite): every save
    mark was left by this service's previous run, whose save calls died with it, and the
    node cancelled each save when its task stream to that run broke (agent/tasks.py).
    Clear them now, each with a ``workspace.save_failed`` event saying the save was lost
    to a restart, rather than keep the workspace from starting or being saved again
    until ``limits.save_timeout_s`` has passed; returns how many. (On PostgreSQL another
    replica may be running a save: ``clear_gone`` clears the marks of those gone.)"""
    return _clear(env, true(), LOST_TO_RESTART)


def lost_with(replica: str) -> str:
    """Why ``clear_gone`` cleared a save's mark: the replica that ran it is gone."""
    return f"lost: service replica {replica} that ran the save is gone; save again"


def clear_gone(env: Env, gone: dict[str, str]) -> int:
    """On PostgreSQL: clear the marks of the saves run by replicas that are gone (id ->
    how to name it; service/registry.py), each with a ``workspace.save_failed`` event, at
    once rather than after ``limits.save_timeout_s``: their save calls died with them;
    returns how many."""
    return sum(_clear(env, Workspace.saving_by == rid, lost_with(d)) for rid, d in gone.items())


def _clear(env: Env, which: ColumnElement[bool], reason: str) -> int:
    with callctx.system(), write(env) as u:
        s = u.s
        q = select(Workspace).where(Workspace.saving_as != "", which)
        cleared = list(s.execute(q).scalars())
        for ws in cleared:
            log.warning(
                "workspace %s: its save as image %s ended without a word (%s); mark cleared",
                named(ws.id, ws.name, ws.node),
                ws.saving_as,
                reason,
                extra=about(ws.id, ws.node),
            )
            _event(s, ws, Kind.WORKSPACE_SAVE_FAILED, ws.saving_as, reason)
            _set_mark(ws, "", 0.0)
            _ended(u, ws)
        return len(cleared)


def progress(
    env: Env, workspace_id: str, disk: str, size: int, chunks: Iterable[bytes]
) -> Iterator[bytes]:
    """``chunks`` of a saved disk as they come, with the bytes received so far of its
    ``size`` kept on its workspace's row (at the start, at most every ``PROGRESS_S``,
    at the end): what `ws show` and `ws image save` show of the save."""
    _progress(env, workspace_id, disk, 0, size)
    sent, last = 0, time.monotonic()
    for chunk in chunks:
        sent += len(chunk)
        yield chunk
        if time.monotonic() - last >= PROGRESS_S:
            _progress(env, workspace_id, disk, sent, size)
            last = time.monotonic()
    _progress(env, workspace_id, disk, sent, size)


def copying(env: Env, workspace_id: str, disk: str, percent: float) -> None:
    """How far the node's copy of ``disk`` is (the agent says at most once a second),
    kept on the row of a workspace still being saved, for `ws show` and `ws image save`.
    The node tells it beside the disk's upload, not in line with it: a figure that comes
    once the upload of that disk has begun is late, and is dropped (it set the bytes
    received back to none, and `ws image save` went back to "copying")."""
    sending = (Workspace.saving_disk == disk[:32]) & (Workspace.saving_size > 0)
    _progress(env, workspace_id, disk, 0, 0, min(100.0, max(0.0, percent)), ~sending)


def _progress(
    env: Env,
    workspace_id: str,
    disk: str,
    sent: int,
    size: int,
    copied: float = 100.0,
    *only: ColumnElement[bool],
) -> None:
    q = update(Workspace).where(Workspace.id == workspace_id, Workspace.saving_as != "", *only)
    with env.store.write() as s:
        s.execute(
            q.values(
                saving_disk=disk[:32], saving_sent=sent, saving_size=size, saving_copied=copied
            )
        )


def _set_mark(ws: Workspace, image: str, since: float, by: str = "") -> None:
    """Mark ``ws`` as being saved as ``image`` since ``since`` ("": not) by replica ``by``,
    no progress yet."""
    ws.saving_as = image
    ws.saving_since = since
    ws.saving_by = by
    ws.saving_disk = ""
    ws.saving_sent = 0
    ws.saving_size = 0
    ws.saving_copied = 0.0


def _event(s: Session, ws: Workspace, kind: Kind, image: str, reason: str) -> None:
    who = callctx.current().who
    journal.add(s, journal.workspace_event(ws, who, kind, subject=image, reason=reason))


def _why(exc: BaseException) -> str:
    """A failed save's reason: what its caller was told, or what went wrong."""
    if isinstance(exc, WorkspaceError):
        return exc.message
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__


def _image_partition(p: Partition, sent: dict[str, str]) -> Partition:
    """A partition of the new image: a cow one is the flattened copy (qcow2; its sizes
    are the import's to read), the others are the source image's."""
    if p.mode is not Mode.COW:
        return p
    return Partition(name=p.name, mode=Mode.COW, digest=sent[p.name], format="qcow2")
