"""The NoCloud seed ISO (agent/seed.py): what cloud-init finds in it, and how it is written."""

from __future__ import annotations

import io
import os
import shutil
import stat
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pycdlib
import pytest

from agent import seed as seed_mod
from agent.seed import (
    SEED_MAX_BYTES,
    VOLUME_ID,
    read_seed_iso,
    write_seed_iso,
)
from workspace.domain.model import Seed
from workspace.errors import DriverError

META = b"instance-id: w-0001\nlocal-hostname: box\n"
USER = b"#cloud-config\nruncmd:\n  - [sh, -c, 'echo hello > /run/hello']\n"
NET = b"version: 2\nethernets:\n  eth0:\n    dhcp4: true\n"
SEED = Seed(meta_data=META, user_data=USER, network_config=NET)


@pytest.fixture
def umask_022() -> Iterator[None]:
    old = os.umask(0o022)
    try:
        yield
    finally:
        os.umask(old)


def _open(path: Path) -> pycdlib.PyCdlib:
    iso = pycdlib.PyCdlib()
    iso.open(str(path))
    return iso


def _child_names(iso: pycdlib.PyCdlib, where: dict[str, str]) -> list[str]:
    out = []
    for child in iso.list_children(**where):
        if child.is_dot() or child.is_dotdot():
            continue
        if "rr_path" in where:
            out.append(child.rock_ridge.name().decode())
        else:
            out.append(iso.full_path_from_dirrecord(child, rockridge=False).lstrip("/"))
    return sorted(out)


def _read(iso: pycdlib.PyCdlib, **where: str) -> bytes:
    buf = io.BytesIO()
    iso.get_file_from_iso_fp(buf, **where)
    return buf.getvalue()


def test_the_iso_is_labelled_cidata_and_holds_the_three_files(tmp_path: Path) -> None:
    path = tmp_path / "seed.iso"
    write_seed_iso(path, SEED)
    iso = _open(path)
    try:
        assert iso.pvd.volume_identifier.decode().rstrip() == VOLUME_ID
        assert iso.has_rock_ridge() and iso.has_joliet()
        # Linux shows the Rock Ridge names (or the Joliet ones with -o norock):
        # exactly the names cloud-init opens.
        want = ["meta-data", "network-config", "user-data"]
        assert _child_names(iso, {"rr_path": "/"}) == want
        assert _child_names(iso, {"joliet_path": "/"}) == want
        for name, data in (("meta-data", META), ("user-data", USER), ("network-config", NET)):
            assert _read(iso, rr_path=f"/{name}") == data
            assert _read(iso, joliet_path=f"/{name}") == data
    finally:
        iso.close()
    assert read_seed_iso(path) == SEED


def test_an_empty_network_config_is_left_out_and_empty_documents_are_kept(
    tmp_path: Path,
) -> None:
    path = tmp_path / "seed.iso"
    seed = Seed(meta_data=META, user_data=b"", network_config=b"")
    write_seed_iso(path, seed)
    iso = _open(path)
    try:
        # cloud-init requires meta-data and user-data (either may be empty); without
        # network-config it keeps its default network configuration.
        assert _child_names(iso, {"rr_path": "/"}) == ["meta-data", "user-data"]
        assert _child_names(iso, {"joliet_path": "/"}) == ["meta-data", "user-data"]
        assert _read(iso, rr_path="/user-data") == b""
    finally:
        iso.close()
    assert read_seed_iso(path) == seed


@pytest.mark.skipif(shutil.which("blkid") is None, reason="blkid (util-linux) not installed")
def test_blkid_finds_the_label_cloud_init_looks_for(tmp_path: Path) -> None:
    """cloud-init's NoCloud asks blkid for TYPE=iso9660 and LABEL=cidata (or CIDATA)."""
    path = tmp_path / "seed.iso"
    write_seed_iso(path, SEED)
    out = subprocess.run(
        ["blkid", "-p", "-o", "export", str(path)], capture_output=True, text=True, check=True
    ).stdout
    fields = dict(line.split("=", 1) for line in out.splitlines() if "=" in line)
    assert fields["TYPE"] == "iso9660"
    assert fields["LABEL"] == VOLUME_ID


def test_written_atomically_and_private(tmp_path: Path, umask_022: None) -> None:
    path = tmp_path / "seed.iso"
    path.write_bytes(b"an older seed")
    path.chmod(0o644)
    (tmp_path / "seed.iso.tmp").write_bytes(b"left by a crash")
    write_seed_iso(path, SEED)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    # What it holds, not its bytes: the image carries its build's timestamps.
    assert read_seed_iso(path) == SEED
    assert sorted(p.name for p in tmp_path.iterdir()) == ["seed.iso"]


def test_a_failed_write_keeps_the_old_file_and_leaves_no_temporary(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "seed.iso"
    path.write_bytes(b"the old seed")

    def no_space(fd: int) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(seed_mod.os, "fsync", no_space)
    with pytest.raises(OSError, match="No space"):
        write_seed_iso(path, SEED)
    assert path.read_bytes() == b"the old seed"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["seed.iso"]


def test_a_seed_over_the_limit_is_refused_and_nothing_is_written(tmp_path: Path) -> None:
    path = tmp_path / "seed.iso"
    over = SEED_MAX_BYTES - len(META) + 1
    big = Seed(meta_data=META, user_data=b"#" * over, network_config=b"")
    with pytest.raises(DriverError, match=r"NoCloud seed is \d+ bytes, over the node's limit"):
        write_seed_iso(path, big)
    assert list(tmp_path.iterdir()) == []


def test_reading_something_else_is_an_error(tmp_path: Path) -> None:
    junk = tmp_path / "junk"
    junk.write_bytes(b"\0" * 65536)
    with pytest.raises(DriverError, match="not an ISO 9660 image"):
        read_seed_iso(junk)
    other = tmp_path / "other.iso"
    iso = pycdlib.PyCdlib()
    iso.new(vol_ident="OTHER", rock_ridge="1.09")
    iso.add_fp(io.BytesIO(b"x"), 1, "/META.;1", rr_name="meta-data")
    iso.write(str(other))
    iso.close()
    with pytest.raises(DriverError, match="volume label is 'OTHER'"):
        read_seed_iso(other)
