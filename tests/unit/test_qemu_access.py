"""QEMU of a launcher site runs unprivileged: the generated qemu.conf, and the ACL entry
that lets that one user (and nobody else) search the directories above the site."""

from __future__ import annotations

import errno
import os
import pwd
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from workspace.errors import FailedPrecondition
from workspace.site import hostenv, qemu_access
from workspace.site.qemu_access import blocking_dirs, can_traverse, grant_traverse

QEMU_UID = 64123  # an unprivileged uid of no real account
OTHER_UID = 64124


def _conf(text: str) -> dict[str, str]:
    out = {}
    for line in text.splitlines():
        if line.strip() and not line.startswith("#"):
            key, _, value = line.partition("=")
            out[key.strip()] = value.strip().strip('"')
    return out


def test_qemu_conf_runs_qemu_unprivileged_with_dynamic_ownership() -> None:
    conf = _conf(hostenv.QEMU_CONF)
    assert conf["user"] == "libvirt-qemu" and conf["group"] == "kvm"
    assert conf["dynamic_ownership"] == "1" and conf["remember_owner"] == "1"
    assert "root" not in conf.values()
    # Only the MAC drivers are off: the DAC driver is always stacked by a root libvirtd.
    assert conf["security_driver"] == "none"
    assert set(conf) == {
        "user",
        "group",
        "dynamic_ownership",
        "remember_owner",
        "security_driver",
        "stdio_handler",
    }


@pytest.fixture
def base() -> Iterator[Path]:
    """A directory every user can search (pytest's tmp_path is below a 0700 one)."""
    d = Path(tempfile.mkdtemp(prefix="ws-qemu-access-", dir="/var/tmp"))
    d.chmod(0o711)
    try:
        yield d
    finally:
        shutil.rmtree(d, ignore_errors=True)


def test_a_private_directory_blocks_another_user_and_traverse_only_does_not(
    base: Path,
) -> None:
    private = base / "private"
    private.mkdir(mode=0o700)
    private.chmod(0o700)
    assert blocking_dirs(private, QEMU_UID, {QEMU_UID}) == [private]
    private.chmod(0o711)
    assert can_traverse(private, QEMU_UID, {QEMU_UID})


def _can_stat_as(uid: int, path: Path) -> bool:
    pid = os.fork()
    if pid == 0:  # the child: drop to uid, try
        try:
            os.setgroups([])
            os.setgid(uid)
            os.setuid(uid)
            path.stat()
            os._exit(0)
        except OSError:
            os._exit(1)
    _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status) == 0


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to act as another uid")
def test_the_acl_lets_only_qemus_user_through(base: Path) -> None:
    home = base / "home"
    (home / "site").mkdir(parents=True)
    home.chmod(0o750)
    target = home / "site" / "disk.qcow2"
    target.write_bytes(b"x")
    assert not _can_stat_as(QEMU_UID, target)
    try:
        grant_traverse(home, QEMU_UID)
    except OSError as exc:
        if exc.errno == errno.ENOTSUP:
            pytest.skip("no POSIX ACLs on this filesystem")
        raise
    assert _can_stat_as(QEMU_UID, target)
    assert not _can_stat_as(OTHER_UID, target)
    assert can_traverse(home, QEMU_UID, set())
    assert not can_traverse(home, OTHER_UID, set())
    # The owning group keeps what it had (r-x), the listing stays closed to QEMU's user.
    assert can_traverse(home, OTHER_UID, {home.stat().st_gid})
    assert blocking_dirs(target.parent, QEMU_UID, set()) == []
    grant_traverse(home, QEMU_UID)  # idempotent
    assert _can_stat_as(QEMU_UID, target)


def test_a_filesystem_without_acls_gets_a_clear_error(
    base: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    site = base / "site"
    site.mkdir(mode=0o700)
    site.chmod(0o700)
    fake = pwd.struct_passwd(("libvirt-qemu", "x", QEMU_UID, QEMU_UID, "", "/", "/bin/false"))
    monkeypatch.setattr(qemu_access.pwd, "getpwnam", lambda _n: fake)
    monkeypatch.setattr(qemu_access.os, "getgrouplist", lambda _u, g: [g])

    def no_acl(*_a: object) -> None:
        raise OSError(errno.ENOTSUP, "Operation not supported")

    monkeypatch.setattr(qemu_access.os, "setxattr", no_acl)
    with pytest.raises(FailedPrecondition, match=f"chmod o\\+x {site}") as err:
        qemu_access.ensure_traversable(site)
    assert "QEMU runs as libvirt-qemu and cannot reach" in err.value.message
