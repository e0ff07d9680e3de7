"""Images, blobs and networks: the site's catalog."""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import netaddr
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from images import formats, manifest
from workspace import ipam
from workspace.domain.states import State
from workspace.errors import (
    AlreadyExists,
    FailedPrecondition,
    ImageError,
    InvalidArgument,
    NotFound,
    PermissionDenied,
    ResourceExhausted,
)
from workspace.service import convert
from workspace.service.blobs import BlobRepository, check_digest
from workspace.service.core import Core, blank_spec
from workspace.service.trust import TrustStore
from workspace.store import Blob, Image, IpAllocation, Network, Workspace
from workspace.v1 import admin_pb2, common_pb2, images_pb2

log = logging.getLogger("workspace.service.catalog")

# Digests one HasBlobs may ask about.
MAX_HAS_BLOBS = 1024
NET_NAME_RE = re.compile(r"^[a-z0-9][a-z0-9-]{0,62}$")
BRIDGE_RE = re.compile(r"^[A-Za-z0-9_.-]{1,15}$")


def blob_digests(
    partitions: Iterable[Mapping[str, Any]], kernel_digest: str, initrd_digest: str
) -> list[str]:
    """The blobs a stored image (or a workspace's copy of one) references, in order:
    partition contents, kernel, initrd; each once."""
    out = [str(p.get("digest") or "") for p in partitions]
    out += [kernel_digest or "", initrd_digest or ""]
    return list(dict.fromkeys(d for d in out if d))


def image_digests(img: Image) -> set[str]:
    """Every blob an image references."""
    return set(blob_digests(img.partitions, img.kernel_digest, img.initrd_digest))


class Catalog:
    def __init__(self, core: Core, blobs: BlobRepository) -> None:
        self.core = core
        self.store = core.store
        self.cfg = core.cfg
        self.blobs = blobs

    # -- blobs -------------------------------------------------------------------------

    def upload_blob(self, chunks: Iterable[bytes]) -> images_pb2.BlobRef:
        tmp, digest, size = self.blobs.receive(chunks, self.cfg.limits.max_blob_bytes)
        try:
            # Under the store's write lock: a concurrent DeleteImage cannot remove the
            # file between the rename and the row.
            with self.store.write() as s:
                self.blobs.commit(tmp, digest)
                if s.get(Blob, digest) is None:
                    s.add(Blob(digest=digest, size_bytes=size, created_at=self.core.clock()))
        finally:
            tmp.unlink(missing_ok=True)
        log.info("blob %s stored (%d bytes)", digest, size)
        return images_pb2.BlobRef(digest=digest, size_bytes=size)

    def has_blobs(self, digests: Iterable[str]) -> list[str]:
        """The digests (in the order given, once each) the repository does not hold."""
        wanted = list(dict.fromkeys(digests))
        if len(wanted) > MAX_HAS_BLOBS:
            raise InvalidArgument(f"ask about at most {MAX_HAS_BLOBS} digests at a time")
        return [d for d in wanted if not self.blobs.has(check_digest(d))]

    def _need_blob(self, digest: str, what: str) -> int:
        check_digest(digest)
        if not self.blobs.has(digest):
            raise NotFound(f"{what}: blob {digest} has not been uploaded")
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

    def _owned_digests(self, s: Session, owner: str) -> set[str]:
        rows = s.execute(select(Image).where(Image.owner == owner)).scalars()
        return {d for img in rows for d in image_digests(img)}

    # -- images ------------------------------------------------------------------------

    def _image_proto(self, img: Image, sizes: Mapping[str, int]) -> images_pb2.Image:
        proto = convert.image(img)
        proto.total_bytes = sum(sizes.get(d, 0) for d in image_digests(img))
        return proto

    def _protos(self, s: Session, images: Sequence[Image]) -> list[images_pb2.Image]:
        sizes = self._sizes(s, {d for img in images for d in image_digests(img)})
        return [self._image_proto(img, sizes) for img in images]

    def _partition(self, image: str, p: common_pb2.Partition) -> dict[str, object]:
        what = f"image {image}, partition {p.name!r}"
        mode = p.mode or common_pb2.PARTITION_MODE_COW
        if mode == common_pb2.PARTITION_MODE_BLANK:
            if p.digest:
                raise InvalidArgument(f"{what}: a blank partition has no content (no digest)")
            size = p.virtual_size_bytes or p.size_bytes
            if not 0 < size <= self.cfg.limits.max_virtual_bytes:
                raise InvalidArgument(
                    f"{what}: a blank partition needs a size of 1 to "
                    f"{self.cfg.limits.max_virtual_bytes} bytes"
                )
            return blank_spec(p, what, size)
        if p.ext4:
            raise InvalidArgument(f"{what}: ext4 is for blank partitions only")
        fmt = p.format or "raw"
        size = self._need_blob(p.digest, what)
        try:
            info = formats.inspect(
                self.blobs.path(p.digest), fmt, self.cfg.limits.max_virtual_bytes, what
            )
        except formats.UnsafeImage as exc:
            raise ImageError(str(exc)) from exc
        return {
            "name": p.name,
            "digest": p.digest,
            "size_bytes": size,
            "format": fmt,
            "mode": convert.mode_name(mode),
            "virtual_size_bytes": info.virtual_size_bytes,
            "ext4": False,
        }

    def import_image(self, owner: str, req: images_pb2.ImportImageRequest) -> images_pb2.Image:
        try:
            manifest.parse_ref(req.name)
        except manifest.ManifestError as exc:
            raise InvalidArgument(str(exc)) from None
        if not req.partitions and not req.kernel_digest:
            raise InvalidArgument(f"image {req.name}: nothing to boot (no partition, no kernel)")
        if bool(req.initrd_digest) and not req.kernel_digest:
            raise InvalidArgument(f"image {req.name}: an initrd needs a kernel")
        if len(req.partitions) > manifest.MAX_PARTITIONS:
            raise InvalidArgument(
                f"image {req.name}: at most {manifest.MAX_PARTITIONS} partitions, "
                f"got {len(req.partitions)}"
            )
        parts: list[dict[str, object]] = []
        names: set[str] = set()
        for p in req.partitions:
            what = f"image {req.name}, partition {p.name!r}"
            if not manifest.PARTITION_NAME_RE.match(p.name):
                raise InvalidArgument(
                    f"{what}: invalid partition name (1-32 of a-z, 0-9, '_', '-'; first a-z or 0-9)"
                )
            if p.name in names:
                raise InvalidArgument(f"{what}: partition named twice")
            names.add(p.name)
            parts.append(self._partition(req.name, p))
        if req.kernel_digest:
            self._need_blob(req.kernel_digest, f"image {req.name}, kernel")
        if req.initrd_digest:
            self._need_blob(req.initrd_digest, f"image {req.name}, initrd")
        img = Image(
            name=req.name,
            owner=owner,
            partitions=parts,
            kernel_digest=req.kernel_digest,
            initrd_digest=req.initrd_digest,
            cmdline=req.cmdline,
            created_at=self.core.clock(),
        )
        quota = self.cfg.limits.repo_quota_bytes_per_user
        with self.store.write() as s:
            if s.get(Image, req.name) is not None:
                raise AlreadyExists(f"image {req.name!r} already exists; pick a new version")
            digests = image_digests(img)
            for d in digests:  # a DeleteImage may have removed it since the checks above
                if not self.blobs.has(d):
                    raise NotFound(f"image {req.name}: blob {d} is no longer in the repository")
            if quota > 0:
                owned = self._owned_digests(s, owner)
                sizes = self._sizes(s, owned | digests)
                used = sum(sizes[d] for d in owned)
                after = sum(sizes[d] for d in owned | digests)
                if after > quota:
                    raise ResourceExhausted(
                        f"repository quota of {owner} exceeded: {used} of {quota} bytes used, "
                        f"image {req.name} adds {after - used}; delete images "
                        "(`ws image delete NAME`) or ask the site for a larger quota"
                    )
            s.add(img)
            s.flush()
            proto = self._protos(s, [img])[0]
        log.info("image %s imported by %s (%d bytes)", req.name, owner, proto.total_bytes)
        return proto

    def list_images(self) -> list[images_pb2.Image]:
        with self.store.read() as s:
            rows = s.execute(select(Image).order_by(Image.name)).scalars().all()
            return self._protos(s, rows)

    def get_image(self, name: str) -> images_pb2.Image:
        with self.store.read() as s:
            img = s.get(Image, name)
            if img is None:
                raise NotFound(f"image {name!r} not found; `ws image list` shows them")
            return self._protos(s, [img])[0]

    def delete_image(self, owner: str, name: str) -> images_pb2.Image:
        """Remove an image; refused while a live workspace uses it. Blobs that no other
        image (and no live workspace) references are removed from the repository."""
        # The write lock is held until the files are gone, so an upload of the same
        # content cannot slip in between the commit and the removal.
        with self.store.write_lock:
            with self.store.write() as s:
                img = s.get(Image, name)
                if img is None:
                    raise NotFound(f"image {name!r} not found; `ws image list` shows them")
                if img.owner != owner:
                    raise PermissionDenied(
                        f"image {name} belongs to {img.owner}; only its owner can delete it"
                    )
                users = self.core.image_users(s, name)
                if users:
                    shown = ", ".join(f"{w.owner}/{w.name} ({w.id})" for w in users[:10])
                    more = f" and {len(users) - 10} more" if len(users) > 10 else ""
                    raise FailedPrecondition(
                        f"image {name} is in use by {len(users)} live workspace(s): "
                        f"{shown}{more}; destroy them first"
                    )
                proto = self._protos(s, [img])[0]
                mine = image_digests(img)
                s.delete(img)
                TrustStore.delete_signatures(s, name)
                s.flush()
                still: set[str] = set()
                for other in s.execute(select(Image)).scalars():
                    still |= image_digests(other)
                for w in s.execute(
                    select(Workspace).where(Workspace.state != State.TERMINATED.value)
                ).scalars():
                    spec = w.image_spec or {}
                    still |= {str(p.get("digest") or "") for p in spec.get("partitions", [])}
                    still |= {str(spec.get(k) or "") for k in ("kernel_digest", "initrd_digest")}
                gone = sorted(mine - still)
                for d in gone:
                    row = s.get(Blob, d)
                    if row is not None:
                        s.delete(row)
            freed = sum(self.blobs.size(d) for d in gone if self.blobs.has(d))
            for d in gone:
                self.blobs.remove(d)
        log.info(
            "image %s deleted by %s; %d blob(s) removed (%d bytes)", name, owner, len(gone), freed
        )
        return proto

    def repository_usage(self, owner: str) -> images_pb2.RepositoryUsage:
        with self.store.read() as s:
            owned = self._owned_digests(s, owner)
            used = sum(self._sizes(s, owned).values())
        return images_pb2.RepositoryUsage(
            owner=owner, used_bytes=used, quota_bytes=self.cfg.limits.repo_quota_bytes_per_user
        )

    # -- networks ----------------------------------------------------------------------

    def create_network(self, req: admin_pb2.Network) -> admin_pb2.Network:
        if not NET_NAME_RE.match(req.name):
            raise InvalidArgument(f"network name {req.name!r}: lowercase letters, digits, '-'")
        pool = ipam.validate_network(
            req.name, req.subnet, req.gateway, req.range_start, req.range_end, req.mac_prefix
        )
        bridge = req.bridge or f"wsbr-{req.name}"[:15]
        if not BRIDGE_RE.match(bridge):
            raise InvalidArgument(f"network {req.name}: bridge name {bridge!r} is not valid")
        for d in req.dns:
            try:
                netaddr.IPAddress(d)
            except (netaddr.AddrFormatError, ValueError) as exc:
                raise InvalidArgument(
                    f"network {req.name}: DNS server {d!r} is not an address"
                ) from exc
        with self.store.write() as s:
            if s.get(Network, req.name) is not None:
                raise AlreadyExists(f"network {req.name!r} already exists")
            net = Network(
                name=req.name,
                subnet=pool.subnet,
                gateway=pool.gateway,
                range_start=pool.range_start,
                range_end=pool.range_end,
                bridge=bridge,
                mac_prefix=pool.mac_prefix,
                dns=list(req.dns),
            )
            s.add(net)
        log.info("network %s created (%s, bridge %s)", req.name, pool.subnet, bridge)
        return convert.network(net, 0)

    def list_networks(self) -> list[admin_pb2.Network]:
        with self.store.read() as s:
            counts = dict(
                s.execute(
                    select(IpAllocation.network, func.count()).group_by(IpAllocation.network)
                ).all()
            )
            return [
                convert.network(n, int(counts.get(n.name, 0)))
                for n in s.execute(select(Network).order_by(Network.name)).scalars()
            ]
