"""Images, blobs and networks: the site's catalog."""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable

import netaddr
from sqlalchemy import func, select

from images import formats
from workspace import ipam
from workspace.errors import AlreadyExists, ImageError, InvalidArgument, NotFound
from workspace.service import convert
from workspace.service.blobs import BlobRepository, check_digest
from workspace.service.core import Core
from workspace.store import Blob, Image, IpAllocation, Network
from workspace.v1 import admin_pb2, common_pb2, images_pb2

log = logging.getLogger("workspace.service.catalog")

IMAGE_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,254}$")
NET_NAME_RE = re.compile(r"^[a-z0-9][a-z0-9-]{0,62}$")
BRIDGE_RE = re.compile(r"^[A-Za-z0-9_.-]{1,15}$")


class Catalog:
    def __init__(self, core: Core, blobs: BlobRepository) -> None:
        self.core = core
        self.store = core.store
        self.cfg = core.cfg
        self.blobs = blobs

    # -- blobs -------------------------------------------------------------------------

    def upload_blob(self, chunks: Iterable[bytes]) -> images_pb2.BlobRef:
        digest, size = self.blobs.put(chunks, self.cfg.limits.max_blob_bytes)
        with self.store.write() as s:
            if s.get(Blob, digest) is None:
                s.add(Blob(digest=digest, size_bytes=size, created_at=self.core.clock()))
        log.info("blob %s stored (%d bytes)", digest, size)
        return images_pb2.BlobRef(digest=digest, size_bytes=size)

    def _need_blob(self, digest: str, what: str) -> int:
        check_digest(digest)
        if not self.blobs.has(digest):
            raise NotFound(f"{what}: blob {digest} has not been uploaded")
        return self.blobs.size(digest)

    # -- images ------------------------------------------------------------------------

    def import_image(self, owner: str, req: images_pb2.ImportImageRequest) -> images_pb2.Image:
        if not IMAGE_NAME_RE.match(req.name):
            raise InvalidArgument(
                f"image name {req.name!r} is not valid: letters, digits, '.', '_', ':', '-'"
            )
        if not req.partitions and not req.kernel_digest:
            raise InvalidArgument(f"image {req.name}: nothing to boot (no partition, no kernel)")
        if bool(req.initrd_digest) and not req.kernel_digest:
            raise InvalidArgument(f"image {req.name}: an initrd needs a kernel")
        parts: list[dict[str, object]] = []
        names: set[str] = set()
        for p in req.partitions:
            what = f"image {req.name}, partition {p.name!r}"
            if not p.name or not re.match(r"^[a-z0-9][a-z0-9_-]{0,31}$", p.name):
                raise InvalidArgument(f"{what}: invalid partition name")
            if p.name in names:
                raise InvalidArgument(f"{what}: partition named twice")
            names.add(p.name)
            mode = p.mode or common_pb2.PARTITION_MODE_COW
            fmt = p.format or "raw"
            if mode == common_pb2.PARTITION_MODE_BLANK:
                if p.digest:
                    raise InvalidArgument(f"{what}: a blank partition has no content")
                if not 0 < p.size_bytes <= self.cfg.limits.max_virtual_bytes:
                    raise InvalidArgument(f"{what}: a blank partition needs a size")
                size = p.size_bytes
            else:
                size = self._need_blob(p.digest, what)
                try:
                    formats.inspect(
                        self.blobs.path(p.digest), fmt, self.cfg.limits.max_virtual_bytes, what
                    )
                except formats.UnsafeImage as exc:
                    raise ImageError(str(exc)) from exc
            parts.append(
                {
                    "name": p.name,
                    "digest": p.digest,
                    "size_bytes": size,
                    "format": fmt,
                    "mode": convert.mode_name(mode),
                }
            )
        if req.kernel_digest:
            self._need_blob(req.kernel_digest, f"image {req.name}, kernel")
        if req.initrd_digest:
            self._need_blob(req.initrd_digest, f"image {req.name}, initrd")
        with self.store.write() as s:
            if s.get(Image, req.name) is not None:
                raise AlreadyExists(f"image {req.name!r} already exists; pick a new name")
            img = Image(
                name=req.name,
                owner=owner,
                partitions=parts,
                kernel_digest=req.kernel_digest,
                initrd_digest=req.initrd_digest,
                cmdline=req.cmdline,
                created_at=self.core.clock(),
            )
            s.add(img)
        log.info("image %s imported by %s", req.name, owner)
        return convert.image(img)

    def list_images(self) -> list[images_pb2.Image]:
        with self.store.read() as s:
            return [
                convert.image(i) for i in s.execute(select(Image).order_by(Image.name)).scalars()
            ]

    def get_image(self, name: str) -> images_pb2.Image:
        with self.store.read() as s:
            img = s.get(Image, name)
            if img is None:
                raise NotFound(f"image {name!r} not found; `ws image list` shows them")
            return convert.image(img)

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
