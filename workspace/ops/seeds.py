"""Contextualization on the service side: what a workspace takes at create (its image's
context and login user, a host key pair, the owner's SSH keys, checked user-data, an
upper bound of its seed) and the seeds of a node's orders (workspace/domain/seed.py
renders them; a cluster's roster is read with one query for all clusters of the set).
docs/design/contextualization.md.
"""

from __future__ import annotations

import functools
import logging
import re
from collections.abc import Sequence

from sqlalchemy import select
from sqlalchemy.orm import Session

from images.model import Mode
from workspace.config import ServiceConfig
from workspace.domain import seed, userdata
from workspace.domain.model import Nic, Seed
from workspace.domain.states import Desired, State
from workspace.errors import ConfigError, InvalidArgument, WorkspaceError
from workspace.ops import keys
from workspace.store import Cluster, Image, Network, Workspace
from workspace.store.mapping import bound_spec, member_specs, nics

log = logging.getLogger("workspace.ops.seeds")

NOCLOUD = "nocloud"
NONE = "none"
CONTEXTS = (NONE, NOCLOUD)
USER_RE = re.compile(r"[a-z_][a-z0-9_-]{0,31}")
# Addresses not allocated yet, as long as any allocated one can be (the seed's size bound).
_IP6 = "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff"
_IP4 = "255.255.255.255"
# Added to a rendered bound: YAML may quote an address that a placeholder did not need.
SLACK_BYTES = 256
SLACK_PER_MEMBER = 16


def check_context(context: str, login_user: str, image: str) -> tuple[str, str]:
    """An image's (context, login user) as imported ("" context = none)."""
    context = context or NONE
    if context not in CONTEXTS:
        raise InvalidArgument(
            f"image {image}: context {context!r} is not one of {', '.join(CONTEXTS)}"
        )
    if login_user and not seed_user_ok(login_user):
        raise InvalidArgument(
            f"image {image}: login_user {login_user!r} is not a user name "
            "(1-32 lowercase letters, digits, '_' and '-', starting with a letter or '_')"
        )
    return context, login_user


def seed_user_ok(name: str) -> bool:
    return USER_RE.fullmatch(name) is not None


@functools.lru_cache(maxsize=4)
def _vendor(path: str, schema: str) -> bytes:
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as exc:
        raise ConfigError(f"context.vendor_data_file: {path}: {exc.strerror or exc}") from exc
    try:
        userdata.check(data, schema)
    except WorkspaceError as exc:
        raise ConfigError(f"context.vendor_data_file: {path}: {exc.message}") from exc
    return data


def vendor_data(cfg: ServiceConfig) -> bytes:
    """The site's vendor-data (read and checked once; b"" when none is configured)."""
    path = cfg.context.vendor_data_file
    return _vendor(path, cfg.context.schema_path()) if path else b""


def vendor_bytes(cfg: ServiceConfig) -> int:
    """An upper bound of what the vendor-data adds to a seed."""
    data = vendor_data(cfg)
    return len(seed.multipart(seed.parts_of(data, "vendor-data"))) if data else 0


# -- at create -------------------------------------------------------------------------------


def check_user_data(
    cfg: ServiceConfig, image: Image, user_data: bytes, member: bool = False
) -> None:
    """InvalidArgument if the image takes no user-data and some is given, or if the
    user-data is not an accepted document, or (for a cluster's ``member``) if it, or the
    site's vendor-data it leaves so, would have cloud-init drop the cluster's roster
    from /etc/hosts."""
    if user_data and (image.context or NONE) == NONE:
        raise InvalidArgument(f"image {image.name} takes no user-data (its context is none)")
    if user_data:  # (finding the schema looks at the file system)
        userdata.check(user_data, cfg.context.schema_path())
    if member and (image.context or NONE) == NOCLOUD:
        _refuse_etc_hosts_rewrite(cfg, user_data)


# What a member's /etc/hosts becomes when cloud-init renders it at each boot.
_DROPS_ROSTER = (
    "cloud-init would write /etc/hosts anew at every boot and drop the cluster's roster "
    "(the members' names) from it after the first reboot"
)


def _refuse_etc_hosts_rewrite(cfg: ServiceConfig, user_data: bytes) -> None:
    """InvalidArgument if a cluster member's seed would have cloud-init render
    /etc/hosts from its template at every boot: by its ``user_data``, or by the site's
    vendor-data, which comes first in the seed, when the user-data leaves it so."""
    # The roster's /etc/hosts is written once, at the first boot; with this,
    # cloud-init writes the file anew from its template at every boot, and after a
    # reboot the members' names no longer resolved (MPI launchers failed), unsaid.
    if not seed.rewrites_etc_hosts(user_data, vendor_data(cfg)):
        return
    if seed.rewrites_etc_hosts(user_data):
        raise InvalidArgument(
            f"user-data sets manage_etc_hosts to true: {_DROPS_ROSTER}; leave it out, "
            "or set it to localhost"
        )
    # The site's own file (context.vendor_data_file) set it for every member: the user's
    # user-data alone was looked at, and every cluster let through.
    raise InvalidArgument(
        f"the site's vendor-data sets manage_etc_hosts to true: {_DROPS_ROSTER}; "
        "set manage_etc_hosts: localhost in the members' user-data (it comes after "
        "the vendor-data; in a part that replaces what came before, cloud-init's "
        "default merge), or ask the site's admins to take it out of "
        "context.vendor_data_file"
    )


def contextualize(cfg: ServiceConfig, s: Session, ws: Workspace, image: Image) -> None:
    """Copy the image's context and login user onto a new workspace row; for a
    nocloud image also a fresh host key pair and the owner's SSH keys now."""
    check_user_data(cfg, image, ws.user_data or b"")
    ws.context = image.context or NONE
    ws.login_user = image.login_user or ""
    if ws.context == NOCLOUD:
        # A user-data `user: {name: alice}` renames the image's default user, whom the
        # keys go to: `ws ssh` logged in as the image's name, which no longer existed.
        ws.login_user = seed.default_user(ws.user_data or b"") or ws.login_user
        ws.host_key_private, ws.host_key_public = keys.new_key_pair()
        ws.authorized_keys = keys.owner_keys(s, ws.owner)


def data_disks(ws: Workspace) -> tuple[str, ...]:
    """The names of the workspace's ext4 blank partitions (its seed mounts them)."""
    return tuple(p.name for p in bound_spec(ws).partitions if p.mode is Mode.BLANK and p.ext4)


def _longest_ip(s: Session, network: str) -> str:
    net = s.get(Network, network)
    return _IP4 if net is not None and ":" not in net.subnet else _IP6


def _placeholder_nics(s: Session, networks: Sequence[str]) -> tuple[Nic, ...]:
    out = []
    for name in networks:
        net = s.get(Network, name)
        dns = tuple(net.dns or ()) if net else ()
        ip = _longest_ip(s, name)
        out.append(Nic(name, ip, "ff:ff:ff:ff:ff:ff", 128, ip, "", "", dns))
    return tuple(out)


def set_bound(s: Session, ws: Workspace, roster: seed.Roster | None = None) -> None:
    """``ws.seed_bytes``: an upper bound of the workspace's seed without the vendor-data
    (its addresses the longest there are); 0 without a seed."""
    if ws.context != NOCLOUD:
        ws.seed_bytes = 0
        return
    rendered = seed.render(
        ws.name,
        ws.id,
        _placeholder_nics(s, ws.networks or ()),
        ws.user_data or b"",
        b"",
        ws.authorized_keys or (),
        (ws.host_key_private, ws.host_key_public),
        ws.login_user,
        roster,
        data_disks(ws),
    )
    members = len(roster.members) if roster else 0
    ws.seed_bytes = rendered.size() + SLACK_BYTES + SLACK_PER_MEMBER * members


def set_cluster_bounds(s: Session, c: Cluster, rows: Sequence[Workspace]) -> None:
    """Bounds of a new cluster's members, each with the whole roster (placeholder
    addresses). Members of one role whose names are as long share one bound: what
    differs between them (names, ids, keys) has the same length."""
    roster = placeholder_roster(s, c, rows)
    done: dict[tuple[str, int, int, bytes], int] = {}
    for ws in rows:
        key = (ws.role, len(ws.name), len(ws.id), ws.user_data or b"")
        if key not in done:
            set_bound(s, ws, roster)
            done[key] = ws.seed_bytes
        ws.seed_bytes = done[key] if ws.context == NOCLOUD else 0


def placeholder_roster(s: Session, c: Cluster, rows: Sequence[Workspace]) -> seed.Roster:
    members = tuple(
        seed.Member(
            w.name,
            w.role,
            seed.member_index(w.name),
            tuple(_longest_ip(s, n) for n in w.networks or ()),
            w.host_key_public,
        )
        for w in rows
    )
    return seed.Roster(c.name, members, c.key_private, c.key_public)


def rebound(s: Session, network: str) -> int:
    """After a change to ``network`` that a seed shows (its DNS servers): the bounds of
    the live nocloud workspaces on it again, a cluster's members with their whole
    roster as at create. Returns how many there are."""
    live = [
        w
        for w in s.execute(
            select(Workspace).where(
                Workspace.state != State.TERMINATED.value, Workspace.context == NOCLOUD
            )
        ).scalars()
        if network in (w.networks or ())
    ]
    clusters = sorted({w.cluster for w in live if w.cluster})
    for w in live:
        if not w.cluster:
            set_bound(s, w)
    for cid in clusters:
        c = s.get(Cluster, cid)
        members = s.execute(
            select(Workspace).where(
                Workspace.cluster == cid, Workspace.state != State.TERMINATED.value
            )
        ).scalars()
        if c is not None:
            set_cluster_bounds(s, c, list(members))
    return len(live)


# -- in a node's orders ----------------------------------------------------------------------


def rosters(s: Session, cluster_ids: set[str]) -> dict[str, seed.Roster]:
    """The roster of each cluster: its live members, not those being destroyed (roles in
    the cluster's order, then by index) with the addresses
    allocated at placement (two queries for all of them, however many members)."""
    if not cluster_ids:
        return {}
    ids = sorted(cluster_ids)
    clusters = {c.id: c for c in s.execute(select(Cluster).where(Cluster.id.in_(ids))).scalars()}
    q = select(
        Workspace.id,
        Workspace.cluster,
        Workspace.name,
        Workspace.role,
        Workspace.host_key_public,
    ).where(
        Workspace.cluster.in_(ids),
        Workspace.state != State.TERMINATED.value,
        # Members on their way out (a shrink, a destroy of their own) leave the roster at
        # once, as the running members' pushed roster (ops/rosters.py) and the seeds'
        # size bounds (set_cluster_bounds of the members kept) have it.
        Workspace.desired_state != Desired.TERMINATED.value,
    )
    found = list(s.execute(q))
    addresses = nics(s, [r[0] for r in found])
    members: dict[str, list[seed.Member]] = {}
    for wid, cid, name, role, host_key in found:
        members.setdefault(cid, []).append(
            seed.Member(
                name,
                role,
                seed.member_index(name),
                tuple(n.ip for n in addresses.get(wid, ())),
                host_key or "",
            )
        )
    out = {}
    for cid, c in clusters.items():
        roles = {m.role: i for i, m in enumerate(member_specs(c))}
        ordered = sorted(members.get(cid, []), key=lambda m: (roles.get(m.role, 0), m.index))
        out[cid] = seed.Roster(c.name, tuple(ordered), c.key_private, c.key_public)
    return out


def seeds(
    cfg: ServiceConfig, s: Session, rows: Sequence[Workspace], nics_of: dict[str, tuple[Nic, ...]]
) -> dict[str, Seed]:
    """The seed of each nocloud row (by workspace id)."""
    wanted = [w for w in rows if w.context == NOCLOUD]
    if not wanted:
        return {}
    vendor = vendor_data(cfg)
    by_cluster = rosters(s, {w.cluster for w in wanted if w.cluster})
    out = {}
    for w in wanted:
        out[w.id] = seed.render(
            w.name,
            w.id,
            nics_of.get(w.id, ()),
            w.user_data or b"",
            vendor,
            tuple(w.authorized_keys or ()),
            (w.host_key_private, w.host_key_public),
            w.login_user,
            by_cluster.get(w.cluster) if w.cluster else None,
            data_disks(w),
        )
    return out
