"""A full or read-only data directory reaches the caller as what it is, not as an
internal error with an incident id: RESOURCE_EXHAUSTED "the service's data directory is
full (No space left on device)", UNAVAILABLE "… is read-only (…)"; logged once with the
path, and nothing is left half-made (workspace/edge/storage.py)."""

from __future__ import annotations

import errno
import logging
import os
from pathlib import Path
from typing import Any

import grpc
import pytest
from sqlalchemy import event

from tests.functional.harness import Site
from workspace.store import blobs
from workspace.v1 import workspaces_pb2

FULL = "the service's data directory is full (No space left on device)"


def _no_space(_fd: int) -> None:
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


def _read_only(*_a: Any, **_kw: Any) -> tuple[int, str]:
    raise OSError(errno.EROFS, os.strerror(errno.EROFS))


def _upload(site: Site) -> None:
    for _ in range(3):  # an outage fails every call alike: one log line says it
        with pytest.raises(grpc.RpcError) as err:
            site.stubs.upload(b"x" * 200_000)
    raise err.value


def test_an_upload_to_a_full_data_directory_is_resource_exhausted(
    site: Site, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(blobs.os, "fsync", _no_space)
    with caplog.at_level(logging.INFO, logger="workspace"), pytest.raises(grpc.RpcError) as err:
        _upload(site)
    assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert err.value.details() == FULL
    said = [r.getMessage() for r in caplog.records if "UploadBlob" in r.getMessage()]
    assert len(said) == 1 and FULL in said[0], said
    assert str(Path(site.cfg.data_dir) / "blobs" / "tmp") in said[0]  # where it was full
    assert not any(r.exc_info for r in caplog.records)  # no traceback, no incident
    assert not list((Path(site.cfg.data_dir) / "blobs" / "tmp").iterdir())  # nothing half-made


def test_an_upload_to_a_read_only_data_directory_is_unavailable(
    site: Site, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(blobs.tempfile, "mkstemp", _read_only)
    with pytest.raises(grpc.RpcError) as err:
        _upload(site)
    assert err.value.code() == grpc.StatusCode.UNAVAILABLE
    assert err.value.details() == (
        "the service's data directory is read-only (Read-only file system)"
    )


def test_a_create_on_a_full_database_is_resource_exhausted_and_makes_nothing(
    site: Site, caplog: pytest.LogCaptureFixture
) -> None:
    """SQLite's own "database or disk is full": the database may not grow (as on a full
    file system) from some create on. (No node: the creates wait for one, as rows.)"""
    site.stubs.network()
    site.stubs.import_image("img")
    assert site.service is not None
    engine = site.service.store.engine

    def cap(dbapi_conn: Any, _record: Any) -> None:
        cur = dbapi_conn.cursor()
        (pages,) = cur.execute("PRAGMA page_count").fetchone()
        cur.execute(f"PRAGMA max_page_count = {pages}")
        cur.close()

    event.listen(engine, "connect", cap)
    engine.dispose()  # every connection from now on is capped
    made, err = [], None
    with caplog.at_level(logging.INFO, logger="workspace"):
        for i in range(200):
            try:
                made.append(site.stubs.create(name=f"w{i}", wait_for_capacity_s=600).id)
            except grpc.RpcError as exc:
                err = exc
                break
    assert err is not None, "the database never filled up"
    assert err.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert err.details() == "the service's data directory is full (database or disk is full)"
    said = [r.getMessage() for r in caplog.records if "CreateWorkspace failed" in r.getMessage()]
    assert len(said) == 1 and "SQLite: database or disk is full" in said[0], said
    listed = site.stubs.ws.ListWorkspaces(workspaces_pb2.ListWorkspacesRequest()).workspaces
    assert sorted(w.id for w in listed) == sorted(made)  # the refused one was not made
