"""`ws image push` of a name the caller cannot take is refused before a file is hashed
or a byte sent (docs/images.md), over mutual TLS with real user certificates."""

from __future__ import annotations

from pathlib import Path

import grpc
import pytest

from images.manifest import Manifest, PartitionSpec
from tests.functional.harness import SitePki, TlsSite
from tests.functional.test_projects import make
from workspace import client_images, errors
from workspace.cli import admin as admin_cli
from workspace.client import Client
from workspace.v1 import images_pb2

MiB = 1024 * 1024


def test_a_name_another_project_holds_is_refused_before_the_upload(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Another project's NAME, or a NAME:VERSION the pusher does not see, was refused
    only by the import, once every file had been hashed and sent (gigabytes, for a
    cloud image)."""
    site = TlsSite(tmp_path / "site", SitePki(tmp_path / "pki"))
    disk = tmp_path / "disk.raw"
    disk.write_bytes(b"DISK\n" + b"\0" * (MiB - 5))
    steps: list[str] = []

    def progress(step: str, path: str, done: int, total: int) -> None:
        steps.append(step)

    def push(who: str, project: str, name: str) -> images_pb2.Image:
        ident = site.pki.user(who, projects=(project,))
        with Client(site.address, identity=ident) as c:
            m = Manifest((PartitionSpec("root", "cow", disk),))
            return c.push_image(name, m, progress).image

    try:
        make(site, name="phys")
        make(site, name="chem")
        assert push("alice", "phys", "phys-base:1").project == "phys"
        for name, says in (
            ("phys-base:2", "image 'phys-base:2' already exists: its NAME is another project's"),
            ("phys-base:1", "image 'phys-base:1' already exists; pick a new version"),
        ):
            steps.clear()
            with pytest.raises(errors.AlreadyExists) as refused:
                push("bob", "chem", name)
            assert str(refused.value).startswith(says) and "alice" not in str(refused.value)
            assert steps == []  # nothing hashed, nothing sent
        # The NAME's own project pushes on; one it sees, of these files, is pushed again.
        assert push("dave", "phys", "phys-base:2").project == "phys"
        site.stubs.images.SetImagePublic(
            images_pb2.SetImagePublicRequest(name="phys-base:1", public=True)
        )
        assert push("bob", "chem", "phys-base:1").name == "phys-base:1"
        # A service older than check_only takes the check for an import of nothing, and
        # its refusal is what the client lets pass (as this one says it).
        with pytest.raises(grpc.RpcError) as older:
            site.stubs.images.ImportImage(images_pb2.ImportImageRequest(name="new:1"))
        assert older.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert str(older.value.details()).endswith(client_images.NOTHING_TO_BOOT)
        # An admin's import outside any project neither takes a project's NAME.
        root = site.pki.user("root", admin=True)
        argv = ["--service", site.address, "--identity", str(root)]
        code = admin_cli.main([*argv, "image", "import", "phys-base:3", str(disk)])
        assert code == 1
        assert "its NAME is another project's" in capsys.readouterr().err
    finally:
        site.close()
