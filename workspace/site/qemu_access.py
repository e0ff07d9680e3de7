"""QEMU of a local site runs as an unprivileged user: its account, and its way to the disks.

A site's private libvirtd runs QEMU as ``libvirt-qemu`` (group ``kvm``, for /dev/kvm)
with libvirt's dynamic ownership: libvirt chowns the files of a running domain (disks,
their backing files, kernel, initrd) to that user and back. It does not touch the
directories above them, and QEMU must traverse every one of them. Below the site
directory the agent keeps them traverse-only (0711, ``agent/disks.py``,
``agent/cache/blobs.py``); above it (e.g. ``/root`` of the default site directory
``~/.local/share/workspace/site``) ``grant_traverse`` adds a POSIX ACL entry giving that
one user search permission (``--x``) on the directories that would block it: nobody else
gains anything, and nothing can be listed or read through it.
"""

from __future__ import annotations

import errno
import grp
import os
import pwd
import stat
import struct
import subprocess
from pathlib import Path

from workspace import errors

QEMU_USER = "libvirt-qemu"
QEMU_GROUP = "kvm"

_ACL_XATTR = "system.posix_acl_access"
_ACL_VERSION = 2
_USER_OBJ, _USER, _GROUP_OBJ, _GROUP, _MASK, _OTHER = 0x01, 0x02, 0x04, 0x08, 0x10, 0x20
_UNDEFINED_ID = 0xFFFFFFFF
_ENTRY = struct.Struct("<HHI")
_X = 1


def ensure_account() -> list[str]:
    """Create the group ``kvm``, the group ``libvirt-qemu`` (Debian's libvirt resolves it
    at start-up) and the system user ``libvirt-qemu`` in group kvm, where missing (as
    scripts/install-deps.sh does); returns what was created."""
    made: list[str] = []
    for group in (QEMU_GROUP, QEMU_USER):
        try:
            grp.getgrnam(group)
        except KeyError:
            _run(["groupadd", "-r", group])
            made.append(f"group {group}")
    try:
        pwd.getpwnam(QEMU_USER)
    except KeyError:
        _run(
            [
                "useradd",
                "-r",
                "-g",
                QEMU_GROUP,
                "-d",
                "/var/lib/libvirt",
                "-s",
                "/usr/sbin/nologin",
                QEMU_USER,
            ]
        )
        made.append(f"user {QEMU_USER}")
    return made


def _run(cmd: list[str]) -> None:
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=30)
    if proc.returncode != 0:
        raise errors.FailedPrecondition(
            f"{' '.join(cmd)} failed (exit {proc.returncode}): {proc.stderr.strip()}"
        )


def _acl(path: Path) -> list[tuple[int, int, int]]:
    """The access ACL entries (tag, perm, id) of ``path``; [] if it has none."""
    try:
        data = os.getxattr(path, _ACL_XATTR)
    except OSError as exc:
        if exc.errno in (errno.ENODATA, errno.ENOTSUP):
            return []
        raise
    return [_ENTRY.unpack_from(data, 4 + i * 8) for i in range((len(data) - 4) // 8)]


def can_traverse(path: Path, uid: int, gids: set[int]) -> bool:
    """Whether user ``uid`` (groups ``gids``) may search directory ``path`` (the POSIX
    ACL check: owner, named user, groups, other)."""
    if uid == 0:
        return True
    st = path.stat()
    if st.st_uid == uid:
        return bool(st.st_mode & stat.S_IXUSR)
    acl = _acl(path)
    mask = next((p for t, p, _ in acl if t == _MASK), 7)
    named = [p for t, p, i in acl if t == _USER and i == uid]
    if named:
        return bool(named[0] & mask & _X)
    group_obj = next((p for t, p, _ in acl if t == _GROUP_OBJ), st.st_mode >> 3 & 7)
    groups = [group_obj & mask] if st.st_gid in gids else []
    groups += [p & mask for t, p, i in acl if t == _GROUP and i in gids]
    if groups:
        return any(p & _X for p in groups)
    return bool(st.st_mode & stat.S_IXOTH)


def blocking_dirs(path: Path, uid: int, gids: set[int]) -> list[Path]:
    """``path`` and its parents that user ``uid`` cannot search, from the root down."""
    chain = [*reversed(path.absolute().parents), path.absolute()]
    return [d for d in chain if not can_traverse(d, uid, gids)]


def grant_traverse(path: Path, uid: int) -> None:
    """Add ``user:<uid>:--x`` to the access ACL of directory ``path`` (other entries and
    their effective permissions unchanged)."""
    st = path.stat()
    acl = _acl(path)
    if not acl:
        mode = st.st_mode
        acl = [
            (_USER_OBJ, mode >> 6 & 7, _UNDEFINED_ID),
            (_GROUP_OBJ, mode >> 3 & 7, _UNDEFINED_ID),
            (_OTHER, mode & 7, _UNDEFINED_ID),
        ]
    entries = {(t, i): p for t, p, i in acl}
    entries[(_USER, uid)] = entries.get((_USER, uid), 0) | _X
    old_mask = entries.get((_MASK, _UNDEFINED_ID))
    if old_mask is None:
        # A new mask must not widen the owning group's effective permissions.
        entries[(_MASK, _UNDEFINED_ID)] = entries[(_GROUP_OBJ, _UNDEFINED_ID)] | _X
    else:
        entries[(_MASK, _UNDEFINED_ID)] = old_mask | _X
    data = struct.pack("<I", _ACL_VERSION) + b"".join(
        _ENTRY.pack(t, p, i) for (t, i), p in sorted(entries.items())
    )
    os.setxattr(path, _ACL_XATTR, data)


def ensure_traversable(path: Path, user: str = QEMU_USER) -> list[Path]:
    """Let ``user`` search ``path`` and every parent (an ACL entry on those that block
    it); returns the directories changed. FailedPrecondition if a filesystem has no ACLs."""
    pw = pwd.getpwnam(user)
    gids = {pw.pw_gid, *os.getgrouplist(user, pw.pw_gid)}
    changed = []
    for d in blocking_dirs(path, pw.pw_uid, gids):
        try:
            grant_traverse(d, pw.pw_uid)
        except OSError as exc:
            raise errors.FailedPrecondition(
                f"QEMU runs as {user} and cannot reach {path}: {d} is not searchable by it "
                f"and its ACL cannot be changed ({exc.strerror}); `chmod o+x {d}` or choose "
                "a site directory below a searchable one (e.g. `--dir /var/tmp/site`)"
            ) from exc
        changed.append(d)
    return changed
