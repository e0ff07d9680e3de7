"""One service per SQLite store (workspace/sole.py), whichever path names the store."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from workspace import sole
from workspace.errors import ConfigError


def test_a_second_service_on_the_same_store_is_refused(tmp_path: Path) -> None:
    db = tmp_path / "service.db"
    held = sole.hold_store(db)
    try:
        with pytest.raises(ConfigError, match="in use by another workspace-service"):
            sole.hold_store(db)
    finally:
        held.release()
    sole.hold_store(db).release()  # free again once released


def test_the_same_store_through_a_symlink_is_the_same_store(tmp_path: Path) -> None:
    real = tmp_path / "real"
    real.mkdir()
    (tmp_path / "link").symlink_to(real)  # e.g. /var/lib/workspace -> /data/workspace
    (tmp_path / "other.db").symlink_to(real / "service.db")  # the file itself
    held = sole.hold_store(real / "service.db")
    try:
        for alias in (tmp_path / "link" / "service.db", tmp_path / "other.db"):
            with pytest.raises(ConfigError, match="in use by another workspace-service"):
                sole.hold_store(alias)
    finally:
        held.release()


def test_a_holder_on_its_way_out_says_so(tmp_path: Path) -> None:
    """A daemon that got its stop signal marks its lock (`ws-admin site up` then waits
    for it to go); a second one started meanwhile is told whose it still is."""
    state = tmp_path / "agent"
    state.mkdir()
    lock = sole.node_lock(state)
    assert sole.stopping(lock) is None  # no such file yet
    held = sole.hold_node(str(state))
    try:
        assert sole.stopping(lock) is None  # running, not stopping
        held.stopping()
        assert sole.stopping(lock) == os.getpid()
        with pytest.raises(
            ConfigError, match=rf"another workspace-agent \(pid {os.getpid()}, stopping\)"
        ):
            sole.hold_node(str(state))
    finally:
        held.release()
    again = sole.hold_node(str(state))  # the next one writes its own pid over the mark
    try:
        assert sole.stopping(lock) is None
    finally:
        again.release()
