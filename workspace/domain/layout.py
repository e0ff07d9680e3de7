"""A workspace's disks: the image's partitions, cow ones grown, extra blank ones added.

The rules for blank partitions are shared by images (``ws image import``) and creates
(``--partition``): ``blank_partition`` is the one place that states them.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from images.manifest import MAX_PARTITIONS, PARTITION_NAME_RE
from images.model import Mode, Partition
from workspace.config import LimitsConfig
from workspace.errors import InvalidArgument

BLANK_FORMATS = ("", "raw", "qcow2")


def blank_partition(p: Partition, what: str, size_bytes: int) -> Partition:
    """The stored form of a blank partition of ``size_bytes`` (the caller checked the
    size's range). ``p.format`` "" means the default: qcow2, or raw for an ext4 one."""
    if size_bytes % 512:
        raise InvalidArgument(f"{what}: {size_bytes} bytes is not a multiple of 512")
    if p.format not in BLANK_FORMATS:
        raise InvalidArgument(f"{what}: format {p.format!r} is not raw or qcow2")
    if p.ext4 and p.format == "qcow2":
        raise InvalidArgument(f"{what}: an ext4 blank partition is a raw file; drop format")
    return Partition(
        name=p.name,
        mode=Mode.BLANK,
        digest="",
        size_bytes=size_bytes,
        format="raw" if p.ext4 else (p.format or "qcow2"),
        virtual_size_bytes=size_bytes,
        ext4=bool(p.ext4),
    )


def _grow(
    image: str,
    p: Partition | None,
    have: Sequence[str],
    new_size: int,
    what: str,
    lim: LimitsConfig,
) -> Partition:
    if p is None:
        names = ", ".join(sorted(have)) or "none"
        raise InvalidArgument(f"{what}: image {image} has no such partition (it has: {names})")
    if p.mode is not Mode.COW:
        raise InvalidArgument(
            f"{what}: the partition is {p.mode.value.lower()}; only cow partitions can grow"
        )
    base = p.disk_bytes()
    if base <= 0:
        raise InvalidArgument(
            f"{what}: image {image} does not record the partition's virtual size; "
            "re-import the image to grow it"
        )
    if new_size < base:
        raise InvalidArgument(
            f"{what}: {_sized(new_size)} is smaller than the image's {_sized(base)}; "
            "partitions can grow, not shrink"
        )
    check_grow_limit(what, new_size, lim)
    if new_size % 512:
        raise InvalidArgument(f"{what}: {new_size} bytes is not a multiple of 512")
    return p.grown(new_size)


def _sized(n: int) -> str:
    """``134217728 bytes (128.0 MiB)``: the bytes, and in MiB or GiB for a person (``ws
    create --grow root:1MiB`` was told only "1048576 bytes ... 134217728 bytes")."""
    unit, factor = ("GiB", 2**30) if n >= 2**30 else ("MiB", 2**20)
    return f"{n} bytes ({n / factor:.1f} {unit})"


def check_grow_limit(what: str, size: int, lim: LimitsConfig) -> None:
    """A grown or blank partition is at most the site's ``limits.max_grow_bytes``: the
    refusal names that setting and both sizes in GiB too."""
    if size > lim.max_grow_bytes:
        raise InvalidArgument(
            f"{what}: {size} bytes ({size / 2**30:.1f} GiB) is more than the limit of "
            f"{lim.max_grow_bytes} ({lim.max_grow_bytes / 2**30:.1f} GiB, the site's "
            "limits.max_grow_bytes)"
        )


def _extra(x: Partition, taken: Mapping[str, Partition], lim: LimitsConfig) -> Partition:
    what = f"extra partition {x.name!r}"
    if not PARTITION_NAME_RE.fullmatch(x.name):
        raise InvalidArgument(
            f"{what}: invalid name (1-32 of a-z, 0-9, '_', '-'; first a-z or 0-9)"
        )
    if x.name in taken:
        raise InvalidArgument(f"{what}: the image (or another extra) already has that name")
    if x.mode is not Mode.BLANK:
        raise InvalidArgument(
            f"{what}: only blank partitions can be added (cow and readonly ones come "
            "from the image)"
        )
    if x.digest:
        raise InvalidArgument(f"{what}: a blank partition has no content (no digest)")
    size = x.virtual_size_bytes or x.size_bytes
    if size <= 0:
        raise InvalidArgument(f"{what}: give its size in bytes (size_bytes)")
    check_grow_limit(what, size, lim)
    return blank_partition(x, what, size)


def disk_layout(
    image: str,
    partitions: Sequence[Partition],
    extra: Sequence[Partition],
    grow: Mapping[str, int],
    lim: LimitsConfig,
) -> tuple[Partition, ...]:
    """The partitions of one workspace made from ``image``: what the agent is told to build.

    ``extra`` are blank partitions the request adds (mode BLANK; format "" for the
    default); ``grow`` maps cow partitions to their new virtual size in bytes.
    """
    out = list(partitions)
    index = {p.name: i for i, p in enumerate(out)}
    for name, new_size in sorted(grow.items()):
        i = index.get(name)
        p = None if i is None else out[i]
        grown = _grow(image, p, list(index), new_size, f"grow {name!r}", lim)
        out[index[name]] = grown
    if len(extra) > lim.max_extra_partitions:
        raise InvalidArgument(
            f"at most {lim.max_extra_partitions} extra partitions per workspace, got {len(extra)}"
        )
    for x in extra:
        taken = {p.name: p for p in out}
        out.append(_extra(x, taken, lim))
    if len(out) > MAX_PARTITIONS:
        raise InvalidArgument(
            f"a workspace has at most {MAX_PARTITIONS} partitions; this one would have {len(out)}"
        )
    return tuple(out)
