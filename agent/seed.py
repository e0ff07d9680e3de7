"""A workspace's NoCloud seed as a small read-only ISO 9660 image labelled ``cidata``.

cloud-init's NoCloud datasource finds its seed by filesystem label: it asks blkid for an
iso9660 (or vfat) filesystem labelled ``cidata`` (either case), mounts it read-only and
reads the files ``meta-data`` and ``user-data`` (both required, either may be empty) and
``network-config`` (optional) by exactly those names. ISO 9660 itself cannot spell them
(its level-1 names are upper case 8.3, no ``-``), so the image carries Rock Ridge names
(what Linux's isofs shows first) and Joliet names (what it shows with ``norock``) as
well; the plain ISO 9660 names are only a fallback no one reads.

How the node attaches it (``agent/disks.py``): as the workspace's last disk, a raw
**virtio** disk, read-only, not a CD-ROM. That is what was verified with cloud-init on
these machines; it needs no IDE/SATA/SCSI controller and no CD-ROM driver in the guest
(virtio-blk is already there for the root disk; the guest needs isofs either way), and
the disk letters simply continue after the image's partitions. cloud-init does not care
about the device type, only the label.

The image is written once, at create; a CREATE after the domain vanished writes it again
from the same seed (its timestamps are the build's; nothing reads them).
"""

from __future__ import annotations

import io
import os
from pathlib import Path

import pycdlib
from pycdlib.pycdlibexception import PyCdlibException

from workspace.domain.model import Seed
from workspace.errors import DriverError

VOLUME_ID = "cidata"
# A seed is a few KiB of YAML; anything near this bound is a mistake upstream.
SEED_MAX_BYTES = 16 * 1024 * 1024
FILE_MODE = 0o600  # like every per-workspace file (agent/disks.py)

# (name cloud-init reads, ISO 9660 level-1 name, Seed field); the Rock Ridge and Joliet
# names are the first one.
_FILES = (
    ("meta-data", "METADATA.;1", "meta_data"),
    ("user-data", "USERDATA.;1", "user_data"),
    ("network-config", "NETCONF.;1", "network_config"),
)
_OPTIONAL = frozenset({"network-config"})


def check_seed_size(seed: Seed) -> None:
    """Refuse a seed over ``SEED_MAX_BYTES`` (DriverError), before anything is written."""
    size = seed.size()
    if size > SEED_MAX_BYTES:
        raise DriverError(
            f"NoCloud seed is {size} bytes, over the node's limit of {SEED_MAX_BYTES} bytes"
        )


def write_seed_iso(path: Path, seed: Seed) -> None:
    """Write ``seed`` to ``path`` as a ``cidata`` ISO, atomically (tmp + rename), mode 0600.

    An empty ``network_config`` is left out (cloud-init then keeps its default
    network configuration); ``meta-data`` and ``user-data`` are always there.
    Raises DriverError for a seed over the limit (nothing written) or an ISO that
    cannot be built; OSError when the file cannot be written (no temporary is left)."""
    check_seed_size(seed)
    image = build_seed_iso(seed)
    tmp = path.with_name(path.name + ".tmp")
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, FILE_MODE)
        with os.fdopen(fd, "wb") as f:
            f.write(image)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, FILE_MODE)  # an old temporary kept its mode through O_TRUNC
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def build_seed_iso(seed: Seed) -> bytes:
    """The ISO image of ``seed`` (the bytes ``write_seed_iso`` writes)."""
    iso = pycdlib.PyCdlib()
    out = io.BytesIO()
    try:
        iso.new(
            interchange_level=1,
            vol_ident=VOLUME_ID,
            sys_ident="LINUX",
            joliet=3,
            rock_ridge="1.09",
        )
        for name, iso_name, field in _FILES:
            data: bytes = getattr(seed, field)
            if name in _OPTIONAL and not data:
                continue
            iso.add_fp(
                io.BytesIO(data),
                len(data),
                f"/{iso_name}",
                rr_name=name,
                joliet_path=f"/{name}",
            )
        iso.write_fp(out)
    except PyCdlibException as exc:
        raise DriverError(f"NoCloud seed: cannot build the ISO image: {exc}") from exc
    finally:
        iso.close()
    return out.getvalue()


def read_seed_iso(path: Path) -> Seed:
    """The seed a ``cidata`` ISO holds, read by its Rock Ridge names (as Linux shows
    them). DriverError if the file is not an ISO image labelled ``cidata``, or lacks
    ``meta-data`` or ``user-data``."""
    iso = pycdlib.PyCdlib()
    try:
        iso.open(str(path))
    except PyCdlibException as exc:
        raise DriverError(f"{path}: not an ISO 9660 image: {exc}") from exc
    try:
        label = volume_id(iso)
        if label.lower() != VOLUME_ID:
            raise DriverError(f"{path}: volume label is {label!r}, not {VOLUME_ID!r}")
        values: dict[str, bytes] = {}
        for name, _, field in _FILES:
            buf = io.BytesIO()
            try:
                iso.get_file_from_iso_fp(buf, rr_path=f"/{name}")
            except PyCdlibException as exc:
                if name not in _OPTIONAL:
                    raise DriverError(f"{path}: no {name}: {exc}") from exc
            values[field] = buf.getvalue()
        return Seed(**values)
    finally:
        iso.close()


def volume_id(iso: pycdlib.PyCdlib) -> str:
    """The primary volume identifier of an open ISO, trailing blanks dropped."""
    raw: bytes = iso.pvd.volume_identifier
    return raw.decode("ascii", "replace").rstrip(" \0")
