"""The image catalog: blobs in the repository, images made of them, the repository quota."""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence

from sqlalchemy import Text, cast, func, or_, select
from sqlalchemy.orm import Session

from images import formats, manifest
from images.model import ImageSpec, Mode, Partition
from workspace.domain.layout import blank_partition
from workspace.domain.model import AuditRecord, ImageView, RepositoryUsage
from workspace.domain.states import State
from workspace.domain.tenancy import ProjectUse, Quota
from workspace.errors import (
    AlreadyExists,
    FailedPrecondition,
    ImageError,
    InvalidArgument,
    NotFound,
    PermissionDenied,
    ResourceExhausted,
)
from workspace.identity import Identity
from workspace.ops import blob_access, image_deletes, pages, projects, refusals, seeds, trust
from workspace.ops.image_refs import (
    NAME_TAKEN,
    may_use,
    name_taken,
    named,
    refuse_taken,
    unknown_image,
    visible_image,
)
from workspace.ops.lifecycle import SAVE_GRACE_S, image_users
from workspace.ops.projects import (
    as_identity,
    limits_of,
    refuse_over,
    resolve_project,
    scope,
)
from workspace.ops.unit import Env
from workspace.store import Backfill, Blob, Image, Node, Project, Workspace
from workspace.store.blobs import BlobRepository, check_digest
from workspace.store.mapping import bound_spec, image_spec, partitions_column

log = logging.getLogger("workspace.ops.images")

# Digests one HasBlobs may ask about.
MAX_HAS_BLOBS = 1024
# The leader's housekeeping collects blobs at least this often (``collect_blobs_due``).
COLLECT_EVERY_S = 3600.0


class Catalog:
    """Operations on the catalog: the blob repository is theirs alone."""

    def __init__(self, env: Env, blobs: BlobRepository) -> None:
        self.env = env
        self.blobs = blobs
        blobs.on_bad.append(self.audit_bad_blob)
        # When this process last ran ``collect_blobs`` (by ``env.clock``).
        self._collected_at = float("-inf")

    def audit_bad_blob(self, digest: str, reason: str) -> None:
        """A repository blob no longer matches its digest: an audit entry (deny) for each
        image made of it, so `ws-admin audit` shows why its creates fail."""
        if not self.env.check_trust:
            return
        with self.env.store.write() as s:
            names = [
                img.name
                for img in s.execute(select(Image).order_by(Image.name)).scalars()
                if digest in image_spec(img).digests()
            ]
            version = trust.settings(s).version
            trust.record_audit(
                self.env,
                s,
                [
                    AuditRecord(
                        at=self.env.clock(),
                        where="service",
                        action="repository",
                        image=name,
                        digest=digest,
                        policy_version=version,
                        verdict="deny",
                        reason=reason,
                    )
                    for name in names or [""]
                ],
            )

    # -- blobs -------------------------------------------------------------------------------

    def upload_blob(
        self,
        chunks: Iterable[bytes],
        who: Identity | str | None,
        holder: str = "",
        expected: str = "",
        said_bytes: int = 0,
    ) -> tuple[str, int]:
        """Store a stream of bytes: (its digest, its size). ``who`` sent them: they may
        make images of the blob from now on (ops/blob_access.py); None: a node sending a
        saved disk, which its save vouches for once it is sure the node sent it
        (``holder``, the node's principal, is recorded as having sent it). ``expected``:
        the digest the sender said, ``said_bytes`` the byte count (0: unsaid): other bytes, or
        another count, and nothing is stored (store/blobs.py ``receive``)."""
        env = self.env
        sender = as_identity(who) if who is not None else None
        holder = sender.principal if sender is not None else holder
        chunks = blob_access.renewing(env, chunks, holder) if holder else chunks
        tmp, digest, size = self.blobs.receive(
            chunks, env.cfg.limits.max_blob_bytes, expected, said_bytes
        )
        try:
            # Under the store's write lock: a concurrent DeleteImage cannot remove the
            # file between the rename and the row.
            over_quota = refusals.recorded(env.store, env.notifier, env.clock, digest)
            with over_quota, env.store.write() as s:
                if sender is not None:
                    self._check_upload_quota(s, sender, digest, size)
                self.blobs.commit(tmp, digest)
                row = s.get(Blob, digest)
                if row is None:
                    s.add(Blob(digest=digest, size_bytes=size, created_at=env.clock()))
                else:  # uploaded again: its grace period starts again
                    row.created_at = env.clock()
                if holder:
                    blob_access.renew(s, holder, blob_access.fresh_since(env), env.clock())
                    blob_access.record_holder(s, digest, holder, env.clock())
        finally:
            tmp.unlink(missing_ok=True)
        log.info("blob %s stored (%d bytes)", digest, size)
        self.collect_blobs()
        return digest, size

    def _counted(self, s: Session, who: Identity) -> set[str]:
        """The blobs counted against ``who``'s repository quota: those of their images,
        and those they sent within the grace (also if another's image has them)."""
        pending = blob_access.held(s, who.principal, since=blob_access.fresh_since(self.env))
        return self._owned_digests(s, who.name) | pending

    def _check_upload_quota(self, s: Session, who: Identity, digest: str, size: int) -> None:
        """ResourceExhausted if ``digest`` (``size`` bytes), sent by ``who``, takes them
        over their repository quota: sent blobs count before an image is made of them,
        or a user could fill the service's disk with uploads never imported."""
        quota = self.env.cfg.limits.repo_quota_bytes_per_user
        if quota <= 0:
            return
        counted = self._counted(s, who)
        if digest in counted:  # counted already: sending it again costs nothing
            return
        used = sum(self._sizes(s, counted).values())
        if used + size > quota:
            raise ResourceExhausted(
                f"repository quota of {who.name} exceeded: {used} of {quota} bytes used "
                f"(images, and blobs sent but not made into an image yet), this blob adds "
                f"{size}; delete images (`ws image delete NAME`) or ask the site for a larger "
                "quota"
            )

    def collect_blobs(self) -> list[str]:
        """Delete the blobs that no image and no live workspace references and that were
        uploaded more than ``blob_grace_s`` ago (files without a row: by their mtime);
        returns their digests. Runs after each upload, and from the leader's housekeeping
        when no upload ran it for a while (``collect_blobs_due``).

        The scan (every blob's row and file, every image's and live workspace's digests)
        reads without the store's write lock, so writes go on meanwhile; under the lock
        only the blobs it found are looked at again (still old: not uploaded again; still
        unused: no import or create took them since) and deleted with their files."""
        env = self.env
        self._collected_at = env.clock()
        cutoff = min(self._collected_at - env.cfg.blob_grace_s, self._saves_since())
        self._sweep_trash()
        self.blobs.remove_stale_temp(cutoff)
        found = self._collectable(cutoff)
        if not found:
            return []
        with env.store.write_lock, self.blobs.discarding() as bin, env.store.write() as s:
            gone = sorted(self._still_collectable(s, found, cutoff))
            nodes = _delete_rows(s, gone) if gone else []
            bin.take(gone)
        env.notifier.node_changed(*nodes)
        freed = bin.freed
        if gone:
            log.info(
                "%d blob(s) never imported removed after %d s (%d bytes): %s",
                len(gone),
                env.cfg.blob_grace_s,
                freed,
                ", ".join(gone[:5]) + (" …" if len(gone) > 5 else ""),
            )
        return gone

    def collect_blobs_due(self) -> list[str]:
        """``collect_blobs`` if it has not run for ``blob_grace_s`` / 2 (at most
        ``COLLECT_EVERY_S``), from the leader's housekeeping (service/main.py): the disks a
        save killed with its service had sent, and the blobs of a push given up, are no
        image's, and on a site with no upload after them they stayed for good."""
        now = self.env.clock()
        every = min(COLLECT_EVERY_S, self.env.cfg.blob_grace_s / 2)
        if self._collected_at <= now < self._collected_at + every:
            return []
        return self.collect_blobs()

    def _sweep_trash(self) -> None:
        """Files a process that died left aside (rare): back in place if their row is
        there (its delete never committed), else deleted."""
        if self.blobs.has_trash():
            with self.env.store.write_lock, self.env.store.write() as s:
                self.blobs.sweep_trash(lambda d: s.get(Blob, d) is not None)

    def recover_files(self, sole: bool) -> int:
        """At the service's start, what a process killed in the middle of a blob's
        delete or upload left: files moved aside go back if their row is there (an image
        still has them) or go; upload temp files go, every one when this process is its
        store's only one (``sole``: their uploads died with its previous run), else those
        older than ``blob_grace_s`` (another replica's may be under way). Until now both
        waited for the next upload: an image whose delete was cut short could not be
        fetched, and a push cut short kept its bytes on disk, on a quiet site for good.
        Returns how many temp files went."""
        self._sweep_trash()
        now = self.env.clock()
        return self.blobs.remove_stale_temp(now if sole else now - self.env.cfg.blob_grace_s)

    def _saves_since(self) -> float:
        """When the oldest save under way began (ops/save.py; a lapsed mark does not
        count), else infinity: the disks its node sent are no image's until every disk
        is sent, which may take longer than ``blob_grace_s`` (they went with the upload
        of its last disk, and the import failed "not uploaded" after the whole save)."""
        env = self.env
        lapsed = env.clock() - env.cfg.limits.save_timeout_s - SAVE_GRACE_S
        with env.store.read() as s:
            q = select(func.min(Workspace.saving_since)).where(
                Workspace.saving_as != "", Workspace.saving_since > lapsed
            )
            since = s.execute(q).scalar()
        return float("inf") if since is None else float(since)

    def _collectable(self, cutoff: float) -> set[str]:
        """The blobs uploaded (a file without a row: written) before ``cutoff`` that no
        image and no live workspace uses, as a read without the write lock sees them."""
        with self.env.store.read() as s:
            uploaded = {d: at for d, at in s.execute(select(Blob.digest, Blob.created_at)).all()}
        old = {d for d, at in uploaded.items() if at < cutoff}
        # Listed after the rows were read: a file uploaded since has no row here, and is
        # young by its own time.
        old |= {d for d in self.blobs.digests() if d not in uploaded and self._old(d, cutoff)}
        if not old:
            return set()
        with self.env.store.read() as s:
            return old - _referenced(s) - blob_access.recent(s, old, cutoff)

    def _still_collectable(self, s: Session, found: set[str], cutoff: float) -> set[str]:
        """Of the blobs ``_collectable`` found, those still old and unused (call under the
        store's write lock: what it says holds until the commit)."""
        wanted = sorted(found)
        rows: dict[str, float] = {}
        for i in range(0, len(wanted), _REFERENCING_BATCH * 5):
            batch = wanted[i : i + _REFERENCING_BATCH * 5]
            q = select(Blob.digest, Blob.created_at).where(Blob.digest.in_(batch))
            rows.update({d: at for d, at in s.execute(q).all()})
        old = {d for d in found if (rows[d] < cutoff if d in rows else self._old(d, cutoff))}
        return old - _referencing(s, old) - blob_access.recent(s, old, cutoff)

    def _old(self, digest: str, cutoff: float) -> bool:
        """Whether the file of ``digest`` was written before ``cutoff`` (False: gone)."""
        try:
            return self.blobs.mtime(digest) < cutoff
        except FileNotFoundError:
            return False

    def _drop_refused(self, who: Identity, digest: str) -> None:
        """A blob refused at import (unsafe, not the declared format) stops counting
        against ``who`` (the caller forgets having sent it) and, if no image, no live
        workspace and no other sender has it, leaves the repository at once rather than
        after ``blob_grace_s``: a refused push must not block its own retry by quota."""
        store = self.env.store
        with store.write_lock, self.blobs.discarding() as bin, store.write() as s:
            blob_access.forget_holder(s, digest, who.principal)
            s.flush()
            if blob_access.holders(s, digest) or digest in _referenced(s):
                return
            nodes = _delete_rows(s, [digest])
            bin.take([digest])
        self.env.notifier.node_changed(*nodes)
        log.info("refused blob %s removed (%d bytes)", digest, bin.freed)

    def has_blobs(self, who: Identity | str, digests: Iterable[str]) -> list[str]:
        """The digests (in the order given, once each) the repository does not hold, or
        holds but ``who`` may not build on (blob_access.py): theirs to send."""
        wanted = list(dict.fromkeys(digests))
        if len(wanted) > MAX_HAS_BLOBS:
            raise InvalidArgument(f"ask about at most {MAX_HAS_BLOBS} digests at a time")
        for d in wanted:
            check_digest(d)
        with self.env.store.read() as s:
            since = blob_access.fresh_since(self.env)
            ok = blob_access.usable(s, as_identity(who), wanted, since)
        return [d for d in wanted if d not in ok or not self.blobs.has(d)]

    def _need_blob(self, digest: str, what: str, usable: set[str]) -> int:
        """The size of an uploaded blob the caller may build on (``usable``: a blob they
        may not is "not uploaded", as one the repository lacks), checked first (re-hashed
        if its file changed)."""
        check_digest(digest)
        if digest not in usable or not self.blobs.has(digest):
            raise NotFound(f"{what}: blob {digest} has not been uploaded")
        try:
            self.blobs.check(digest)
        except FailedPrecondition as exc:
            raise FailedPrecondition(f"{what}: {exc.message}") from None
        return self.blobs.size(digest)

    def _sizes(self, s: Session, digests: Iterable[str]) -> dict[str, int]:
        wanted = set(digests)
        sizes = {
            b.digest: int(b.size_bytes)
            for b in s.execute(select(Blob).where(Blob.digest.in_(wanted))).scalars()
        }
        for d in wanted - set(sizes):
            sizes[d] = self.blobs.size(d) if self.blobs.has(d) else 0
        return sizes

    @staticmethod
    def _owned_digests(s: Session, owner: str) -> set[str]:
        rows = s.execute(select(Image).where(Image.owner == owner)).scalars()
        return {d for img in rows for d in image_spec(img).digests()}

    @staticmethod
    def _project_digests(s: Session, project: str) -> set[str]:
        rows = s.execute(select(Image).where(Image.project == project)).scalars()
        return {d for img in rows for d in image_spec(img).digests()}

    def project_bytes(self, s: Session, project: str) -> int:
        """Bytes of the distinct blobs the project's images reference."""
        return sum(self._sizes(s, self._project_digests(s, project)).values())

    # -- images ------------------------------------------------------------------------------

    def _views(self, s: Session, rows: Sequence[Image]) -> list[ImageView]:
        specs = [image_spec(img) for img in rows]
        sizes = self._sizes(s, {d for spec in specs for d in spec.digests()})
        return [
            ImageView(
                spec,
                img.owner,
                img.created_at,
                sum(sizes.get(d, 0) for d in spec.digests()),
                img.project or "",
                bool(img.public),
                img.context or "none",
                img.login_user or "",
            )
            for img, spec in zip(rows, specs, strict=True)
        ]

    def _partition(self, image: str, p: Partition, usable: set[str]) -> Partition:
        """A partition of an import request (format "" = the default) as stored."""
        what = f"image {image}, partition {p.name!r}"
        limit = self.env.cfg.limits.max_virtual_bytes
        if p.mode is Mode.BLANK:
            if p.digest:
                raise InvalidArgument(f"{what}: a blank partition has no content (no digest)")
            size = p.virtual_size_bytes or p.size_bytes
            if not 0 < size <= limit:
                raise InvalidArgument(
                    f"{what}: a blank partition needs a size of 1 to {limit} bytes"
                )
            return blank_partition(p, what, size)
        if p.ext4:
            raise InvalidArgument(f"{what}: ext4 is for blank partitions only")
        fmt = p.format or "raw"
        size = self._need_blob(p.digest, what, usable)
        try:
            info = formats.inspect(self.blobs.path(p.digest), fmt, limit, what)
        except formats.UnsafeImage as exc:
            raise RefusedBlob(str(exc), p.digest) from exc
        if not info.virtual_size_bytes:  # its workspaces would get a disk of nothing
            why = "the file is empty" if not size else "the qcow2's virtual size is 0"
            raise RefusedBlob(
                f"{what}: a disk of 0 bytes ({why}: a failed download?), which boots and "
                "holds nothing",
                p.digest,
            )
        return Partition(
            name=p.name,
            mode=p.mode,
            digest=p.digest,
            size_bytes=size,
            format=fmt,
            virtual_size_bytes=info.virtual_size_bytes,
            ext4=False,
        )

    def _check_import(self, req: ImageSpec, usable: set[str]) -> tuple[Partition, ...]:
        try:
            manifest.parse_ref(req.image)
        except manifest.ManifestError as exc:
            raise InvalidArgument(str(exc)) from None
        if not req.partitions and not req.kernel_digest:
            raise InvalidArgument(f"image {req.image}: nothing to boot (no partition, no kernel)")
        if bool(req.initrd_digest) and not req.kernel_digest:
            raise InvalidArgument(f"image {req.image}: an initrd needs a kernel")
        limit = self.env.cfg.limits.max_cmdline_bytes
        if len(req.cmdline.encode()) > limit:
            raise InvalidArgument(
                f"image {req.image}: the kernel cmdline is {len(req.cmdline.encode())} bytes, "
                f"more than the {limit} allowed (limits.max_cmdline_bytes)"
            )
        try:
            manifest.check_cmdline(req.cmdline)
        except manifest.ManifestError as exc:
            raise InvalidArgument(f"image {req.image}: {exc}") from None
        if len(req.partitions) > manifest.MAX_PARTITIONS:
            raise InvalidArgument(
                f"image {req.image}: at most {manifest.MAX_PARTITIONS} partitions, "
                f"got {len(req.partitions)}"
            )
        parts: list[Partition] = []
        names: set[str] = set()
        for p in req.partitions:
            what = f"image {req.image}, partition {p.name!r}"
            if not manifest.PARTITION_NAME_RE.fullmatch(p.name):
                raise InvalidArgument(
                    f"{what}: invalid partition name (1-32 of a-z, 0-9, '_', '-'; first a-z or 0-9)"
                )
            if p.name in names:
                raise InvalidArgument(f"{what}: partition named twice")
            names.add(p.name)
            parts.append(self._partition(req.image, p, usable))
        for what, digest in (("kernel", req.kernel_digest), ("initrd", req.initrd_digest)):
            what = f"image {req.image}, {what}"
            if digest and not self._need_blob(digest, what, usable):
                raise InvalidArgument(f"{what}: the file is empty; a failed download?")
        return tuple(parts)

    def import_image(
        self,
        who: Identity | str,
        req: ImageSpec,
        project: str = "",
        context: str = "",
        login_user: str = "",
        site_image: bool = True,
        vouched: Iterable[str] = (),
    ) -> ImageView:
        """Add an image of the caller made of uploaded blobs (partitions: format "" is the
        default), in ``project`` (default: the caller's only one); private to its owner
        and project until an admin makes it public (an admin's image outside any
        project is public from the start: a site image). ``context``: how it takes
        deploy-time information ("" or "none": not at all; "nocloud": a cloud-init seed),
        ``login_user`` the account `ws ssh` logs in as. ``site_image`` False: an admin's
        image outside any project stays private too (an admin saving a user's
        workspace). The caller may build only on blobs they sent or may use through an
        image (blob_access.py), or that the service ``vouched`` for (a save's)."""
        env = self.env
        owner = as_identity(who).name
        context, login_user = seeds.check_context(context, login_user, req.image)
        with env.store.read() as s:  # before a byte of a blob is read
            since = blob_access.fresh_since(env)
            usable = blob_access.usable(s, as_identity(who), req.digests(), since) | set(vouched)
        try:
            parts = self._check_import(req, usable)
        except RefusedBlob as exc:
            self._drop_refused(as_identity(who), exc.digest)
            raise
        spec = ImageSpec(req.image, parts, req.kernel_digest, req.initrd_digest, req.cmdline)
        img = Image(
            name=req.image,
            owner=owner,
            partitions=partitions_column(parts),
            kernel_digest=req.kernel_digest,
            initrd_digest=req.initrd_digest,
            cmdline=req.cmdline,
            context=context,
            login_user=login_user,
            created_at=env.clock(),
        )
        quota = env.cfg.limits.repo_quota_bytes_per_user
        over_quota = refusals.recorded(env.store, env.notifier, env.clock, req.image)
        with over_quota, env.store.write() as s:
            ident = as_identity(who)
            img.project = resolve_project(s, ident, project, require=env.cfg.require_project)
            # An admin's image outside any project is a site image: every user sees it.
            img.public = ident.admin and not img.project and site_image
            if s.get(Image, req.image) is not None:
                raise AlreadyExists(f"image {req.image!r} already exists; pick a new version")
            if name_taken(s, req.image, img.project or "", owner):
                raise AlreadyExists(NAME_TAKEN.format(req.image))
            digests = set(spec.digests())
            for d in digests:  # a DeleteImage may have removed it since the checks above
                if not self.blobs.has(d):
                    raise NotFound(f"image {req.image}: blob {d} is no longer in the repository")
            if quota > 0:
                owned = self._owned_digests(s, owner)
                sizes = self._sizes(s, owned | digests)
                used = sum(sizes[d] for d in owned)
                after = sum(sizes[d] for d in owned | digests)
                if after > quota:
                    raise ResourceExhausted(
                        f"repository quota of {owner} exceeded: {used} of {quota} bytes used, "
                        f"image {req.image} adds {after - used}; delete images "
                        "(`ws image delete NAME`) or ask the site for a larger quota"
                    )
            self._check_project_bytes(s, img.project, digests, req.image)
            s.add(img)
            s.flush()
            shown = self._views(s, [img])[0]
        log.info("image %s imported by %s (%d bytes)", req.image, owner, shown.total_bytes)
        return shown

    def check_import(self, who: Identity | str, name: str, project: str = "") -> None:
        """What an import of ``name`` into ``project`` would be refused for whatever its
        blobs: the name's form, the project, a name taken (``refuse_taken``). A push asks
        before it hashes or sends a byte (ImportImageRequest.check_only); the import
        checks it all again."""
        try:
            manifest.parse_ref(name)
        except manifest.ManifestError as exc:
            raise InvalidArgument(str(exc)) from None
        ident = as_identity(who)
        with self.env.store.read() as s:
            into = resolve_project(s, ident, project, require=self.env.cfg.require_project)
            refuse_taken(s, ident, name, into or "")

    def _check_project_bytes(self, s: Session, project: str, digests: set[str], name: str) -> None:
        p = s.get(Project, project) if project else None
        if p is None or not p.quota_image_bytes:
            return
        have = self._project_digests(s, project)
        sizes = self._sizes(s, have | digests)
        before = Quota(image_bytes=sum(sizes[d] for d in have))
        after = Quota(image_bytes=sum(sizes.values()))
        refuse_over(project, limits_of(p), before, after, f"cannot import {name}")

    def refuse_full(
        self, s: Session, owner: str, project: str, digests: Iterable[str], adds: bool, name: str
    ) -> None:
        """Before a save's node copies a byte (ops/save.py): RESOURCE_EXHAUSTED, as the
        import would say it at the end, when the owner's repository quota or the project's
        image-bytes quota has no room left for image ``name``: its images with ``digests``
        (what the new image reuses) go over it already, or reach it while the save
        ``adds`` blobs of its own (its copied disks, a byte or more)."""
        wanted = set(digests)
        room = [(f"repository quota of {owner}", self.env.cfg.limits.repo_quota_bytes_per_user, "")]
        p = s.get(Project, project) if project else None
        if p is not None:
            room.append((f"image-bytes quota of project {project}", p.quota_image_bytes, project))
        for what, limit, of_project in room:
            if limit <= 0:
                continue
            have = self._project_digests(s, of_project) if of_project else None
            held = have if have is not None else self._owned_digests(s, owner)
            used = sum(self._sizes(s, held | wanted).values())
            if used > limit or (adds and used >= limit):
                raise ResourceExhausted(
                    f"cannot save {name}: the {what} would be exceeded ({used} bytes in "
                    f"use before its disks are copied, the limit is {limit}); delete images "
                    "(`ws image delete NAME`) or ask the site for a larger quota; "
                    "`ws quota` shows use and limits"
                )

    def list_images(
        self, who: Identity | str, page_size: int = 0, page_token: str = ""
    ) -> tuple[list[ImageView], str]:
        """The images the caller sees (public ones, their own, their projects'; admins:
        all), by name: at most ``page_size`` of them (0: all) after ``page_token``, and
        the token of the next page ("" after the last). Paged as ListWorkspaces is: one
        message of every image of a large site went past the gRPC message limit."""
        pages.check_size(page_size)
        after = _page_name(page_token) if page_token else None
        with self.env.store.read() as s:
            sc = scope(s, who)
            q = select(Image).order_by(Image.name)
            if after is not None:
                q = q.where(Image.name > after)
            rows: list[Image] = []
            for img in s.execute(q).scalars():
                if may_use(sc, img):
                    rows.append(img)
                    if page_size and len(rows) > page_size:
                        break
            more = bool(page_size) and len(rows) > page_size
            rows = rows[:page_size] if more else rows
            token = _page_token(rows[-1].name) if more else ""
            return self._views(s, rows), token

    def get_image(self, who: Identity | str, name: str) -> ImageView:
        with self.env.store.read() as s:
            return self._views(s, [visible_image(s, who, name)])[0]

    def set_public(self, name: str, public: bool) -> ImageView:
        """(admins) Make an image visible to every user, or private to its project again."""
        with self.env.store.write() as s:
            img = s.get(Image, named(name))
            if img is None:
                raise unknown_image(s, name)
            img.public = public
            s.flush()
            shown = self._views(s, [img])[0]
        log.info("image %s made %s", name, "public" if public else "private")
        return shown

    def delete_image(self, who: Identity | str, name: str) -> ImageView:
        """Remove an image; refused while a live workspace uses it. Blobs that no other
        image (and no live workspace) references are removed from the repository."""
        env = self.env
        ident = as_identity(who)
        owner = ident.name
        # The files are moved aside inside the transaction, under the store's lock (the
        # process's, and PostgreSQL's advisory lock every replica's writes take), so an
        # upload of the same content, here or on another replica, cannot land between
        # the rows' delete and the files'.
        with env.store.write_lock, self.blobs.discarding() as bin, env.store.write() as s:
            img = visible_image(s, ident, name)
            if img.owner != owner and not ident.admin:
                raise PermissionDenied(
                    f"image {name} belongs to {img.owner}; only its owner can delete it"
                )
            users = image_users(s, name)
            if users:
                raise FailedPrecondition(image_deletes.in_use_message(name, users, scope(s, ident)))
            grows = image_deletes.grown_from(s, name)
            if grows:
                raise FailedPrecondition(image_deletes.grows_message(name, grows, scope(s, ident)))
            if s.get(Backfill, name) is not None:
                # Its creates would fail unseen, and an image pushed under the name
                # later be run in its place.
                raise FailedPrecondition(
                    f"image {name} is run by the site's backfill (an admin's `ws-admin "
                    f"backfill clear {name}` ends it); delete it after"
                )
            view = self._views(s, [img])[0]
            mine = set(view.spec.digests())
            s.delete(img)
            trust.delete_signatures(s, name)
            s.flush()
            gone = sorted(mine - _referenced(s))
            nodes = _delete_rows(s, gone)
            bin.take(gone)
        env.notifier.node_changed(*nodes)
        log.info(
            "image %s deleted by %s; %d blob(s) removed (%d bytes)",
            name,
            owner,
            len(gone),
            bin.freed,
        )
        return view

    def quotas(self, who: Identity | str, project: str = "") -> list[ProjectUse]:
        """The caller's projects (or only ``project``): their limits and use (image bytes
        counted here)."""
        ident = as_identity(who)
        with self.env.store.read() as s:
            shown = projects.shown_projects(s, ident, project)
            counted = [(p, self.project_bytes(s, p)) for p in shown]
        return projects.quotas(self.env, ident, counted, project)

    def repository_usage(self, who: Identity | str) -> RepositoryUsage:
        ident = as_identity(who)
        with self.env.store.read() as s:
            used = sum(self._sizes(s, self._counted(s, ident)).values())
        limits = self.env.cfg.limits
        return RepositoryUsage(
            ident.name,
            used,
            limits.repo_quota_bytes_per_user,
            limits.max_blob_bytes,
            limits.max_virtual_bytes,
        )


class RefusedBlob(ImageError):
    """An import refused for the content of blob ``digest``."""

    def __init__(self, message: str, digest: str) -> None:
        super().__init__(message)
        self.digest = digest


def _page_token(name: str) -> str:
    """The token of the page after the image ``name``."""
    return pages.encode("images", name)


def _page_name(token: str) -> str:
    return pages.decode("images", token, 1)[0]


def _delete_rows(s: Session, digests: Sequence[str]) -> list[str]:
    """Forget these blobs in the store (their files go after the commit), on the nodes'
    prefetch lists too; returns the nodes whose list changed (to send their orders
    again). A preload not done when its image was deleted left the node fetching a blob
    the repository no longer had, and failing, every few minutes for ever."""
    for d in digests:
        row = s.get(Blob, d)
        if row is not None:
            s.delete(row)
    blob_access.forget(s, digests)
    gone = set(digests)
    changed: list[str] = []
    if not gone:
        return changed
    for node in s.execute(select(Node)).scalars():
        left = [d for d in node.prefetch or () if d not in gone]
        if left != list(node.prefetch or ()):
            node.prefetch = left
            changed.append(node.name)
    return changed


# Digests looked for in one statement by ``_referencing``.
_REFERENCING_BATCH = 100


def _referencing(s: Session, digests: set[str]) -> set[str]:
    """Which of ``digests`` an image or a live workspace uses, reading only the rows that
    name one of them (``_referenced`` reads them all)."""
    wanted = sorted(digests)
    used: set[str] = set()
    for i in range(0, len(wanted), _REFERENCING_BATCH):
        batch = wanted[i : i + _REFERENCING_BATCH]
        hexes = [d.partition(":")[2] for d in batch]
        named = [cast(Image.partitions, Text).contains(h) for h in hexes]
        images = select(Image).where(
            or_(Image.kernel_digest.in_(batch), Image.initrd_digest.in_(batch), *named)
        )
        for img in s.execute(images).scalars():
            used |= set(image_spec(img).digests())
        live = select(Workspace).where(
            Workspace.state != State.TERMINATED.value,
            or_(*[cast(Workspace.image_spec, Text).contains(h) for h in hexes]),
        )
        for w in s.execute(live).scalars():
            used |= set(bound_spec(w).digests())
    return used & digests


def _referenced(s: Session) -> set[str]:
    """The digests an image or a live workspace uses."""
    still: set[str] = set()
    for img in s.execute(select(Image)).scalars():
        still |= set(image_spec(img).digests())
    live = select(Workspace).where(Workspace.state != State.TERMINATED.value)
    for w in s.execute(live).scalars():
        still |= set(bound_spec(w).digests())
    return still
