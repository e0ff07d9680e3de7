"""The image repository over real gRPC: push (only missing blobs are sent), hostile files
refused at import, delete (refused while in use; unshared blobs removed), the per-user
quota, and a create's disk options down to the files the (fake-driver) agent builds."""

from __future__ import annotations

import json
import shutil
import struct
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from sqlalchemy import update

from images import digest as digests
from images import mkfs
from images.manifest import Manifest, PartitionSpec
from tests.functional.harness import WS, Site, wait_for
from tests.unit.test_formats import qcow2_header
from workspace import errors
from workspace.client import Client, blank_partition
from workspace.node.v1 import nodes_pb2
from workspace.store import Blob, BlobHolder, Image, Store
from workspace.v1 import common_pb2, images_pb2, workspaces_pb2

MiB = 1024 * 1024
COW = common_pb2.PARTITION_MODE_COW
RO = common_pb2.PARTITION_MODE_READONLY
BLANK = common_pb2.PARTITION_MODE_BLANK

needs_qemu_img = pytest.mark.skipif(shutil.which("qemu-img") is None, reason="needs qemu-img")


@pytest.fixture
def client(site: Site) -> Iterator[Client]:
    c = Client(site.address)
    try:
        yield c
    finally:
        c.close()


def write(path: Path, data: bytes, size: int = 0) -> Path:
    path.write_bytes(data)
    if size:
        with path.open("r+b") as f:
            f.truncate(size)
    return path


def files(tmp: Path) -> dict[str, Path]:
    """A root disk, a read-only data disk, a kernel and an initrd (contents differ)."""
    return {
        "root": write(tmp / "root.raw", b"ROOT\n", MiB),
        "data": write(tmp / "data.raw", b"RODATA:v1\n", MiB),
        "kernel": write(tmp / "vmlinuz", b"kernel bytes"),
        "initrd": write(tmp / "initrd.img", b"initrd bytes"),
    }


def manifest(f: dict[str, Path]) -> Manifest:
    return Manifest(
        (
            PartitionSpec("root", "cow", f["root"]),
            PartitionSpec("data", "readonly", f["data"], "raw"),
            PartitionSpec("scratch", "blank", None, "", 32 * MiB, True),
        ),
        f["kernel"],
        f["initrd"],
        "console=ttyS0",
    )


def code_of(exc: pytest.ExceptionInfo[grpc.RpcError]) -> grpc.StatusCode:
    return exc.value.code()


def image_names(site: Site) -> list[str]:
    return [i.name for i in site.stubs.images.ListImages(images_pb2.ListImagesRequest()).images]


def test_the_client_lists_every_image_page_by_page(site: Site, client: Client) -> None:
    for i in range(5):
        site.stubs.import_image(f"img{i}:1", bytes([i + 1]) * 4096)
    names = [f"img{i}:1" for i in range(5)]
    assert [i.name for i in client.list_images(page_size=2)] == names
    assert [i.name for i in client.list_images()] == names


# -- push --------------------------------------------------------------------------------


def test_push_sends_only_missing_blobs(site: Site, client: Client, tmp_path: Path) -> None:
    f = files(tmp_path)
    steps: list[tuple[str, str]] = []
    first = client.push_image(
        "sci-base:1.0", manifest(f), lambda step, path, done, total: steps.append((step, path))
    )
    assert len(first.uploaded) == 4 and first.skipped == ()
    assert first.sent_bytes == 2 * MiB + 24
    assert {s for s, _ in steps} == {"hash", "upload"}
    img = first.image
    assert (img.name, img.cmdline, img.owner) == ("sci-base:1.0", "console=ttyS0", "local")
    assert img.total_bytes == 2 * MiB + 24
    root, data, scratch = img.partitions
    assert (root.name, root.mode, root.format, root.size_bytes, root.virtual_size_bytes) == (
        "root",
        COW,
        "raw",
        MiB,
        MiB,
    )
    assert (data.mode, data.format, data.ext4) == (RO, "raw", False)
    assert (scratch.mode, scratch.digest, scratch.ext4, scratch.format) == (BLANK, "", True, "raw")
    assert scratch.size_bytes == scratch.virtual_size_bytes == 32 * MiB

    # the same files as a new version: nothing is sent again
    steps.clear()
    again = client.push_image(
        "sci-base:1.1", manifest(f), lambda step, path, done, total: steps.append((step, path))
    )
    assert again.uploaded == () and again.sent_bytes == 0 and len(again.skipped) == 4
    assert "upload" not in {s for s, _ in steps}
    assert again.image.total_bytes == img.total_bytes

    # one file changed: only that one is sent
    write(f["root"], b"ROOT v2\n", MiB)
    third = client.push_image("sci-base:1.2", manifest(f))
    assert len(third.uploaded) == 1 and len(third.skipped) == 3
    assert image_names(site) == ["sci-base:1.0", "sci-base:1.1", "sci-base:1.2"]
    assert client.get_image("sci-base:1.2").partitions[0].digest == third.uploaded[0]


def test_a_push_to_a_project_that_does_not_exist_sends_nothing(
    site: Site, client: Client, tmp_path: Path
) -> None:
    """Refused before a file is hashed or a byte sent (it used to send every blob, then
    have the import refused)."""
    from workspace.errors import NotFound

    steps: list[tuple[str, str]] = []
    with pytest.raises(NotFound, match="project 'nope' does not exist"):
        client.push_image(
            "x:1", manifest(files(tmp_path)), lambda st, p, d, t: steps.append((st, p)),
            project="nope",
        )  # fmt: skip
    assert steps == []  # nothing hashed, nothing uploaded
    assert image_names(site) == []


def test_push_refuses_names_twice_and_bad_refs(client: Client, tmp_path: Path) -> None:
    f = files(tmp_path)
    client.push_image("x:1", manifest(f))
    # The same files again are taken (a lost blob restored); other files are refused.
    assert client.push_image("x:1", manifest(f)).existed
    write(f["root"], b"ROOT v2\n", MiB)
    with pytest.raises(Exception, match="already exists"):
        client.push_image("x:1", manifest(f))
    with pytest.raises(Exception, match="NAME:VERSION"):
        client.push_image("x:1:2", manifest(f))


def test_two_pushes_of_the_same_image_at_once_both_end_well(
    client: Client, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two pushes of the same NAME:VERSION and files at once (a job array, a script run
    twice): both looked it up before either registered it, and the second's import was
    refused "already exists; pick a new version", exit 1, though the image it asked for
    was there. It now ends as a push again does; one of other files is still refused."""
    f = files(tmp_path)
    first = Client(client.address)
    try:
        first.push_image("x:1", manifest(f))  # the other push, done meanwhile
    finally:
        first.close()
    # This push looked the name up before the other registered it.
    look = Client._visible_image
    monkeypatch.setattr(Client, "_visible_image", _unseen_once(look))
    again = client.push_image("x:1", manifest(f))
    assert again.existed and again.image.name == "x:1"
    write(f["root"], b"ROOT v2\n", MiB)
    monkeypatch.setattr(Client, "_visible_image", _unseen_once(look))
    with pytest.raises(errors.AlreadyExists, match="pick a new version"):
        client.push_image("x:1", manifest(f))


def _unseen_once(look: Any) -> Any:
    """``Client._visible_image`` that finds nothing the first time it is asked."""
    asked: list[str] = []

    def lookup(self: Client, name: str) -> images_pb2.Image | None:
        asked.append(name)
        return None if len(asked) == 1 else look(self, name)

    return lookup


def test_a_push_again_with_other_settings_is_refused_not_taken_as_done(
    client: Client, tmp_path: Path
) -> None:
    """A push of an existing NAME:VERSION is taken as done (exit 0, "already exists with
    these files") only if it asks for that very image: the same files were not enough,
    so a manifest whose blank size, disk order, context or login user changed was
    "pushed" and the image kept the old ones."""
    from dataclasses import replace

    f = files(tmp_path)
    m = manifest(f)
    client.push_image("x:1", m)
    root, data, scratch = m.partitions
    for other in (
        replace(m, partitions=(root, data, replace(scratch, size_bytes=64 * MiB))),
        replace(m, partitions=(root, data, replace(scratch, ext4=False))),
        replace(m, partitions=(data, root, scratch)),
        replace(m, context="nocloud", login_user="debian"),
        replace(m, login_user="debian"),
    ):
        with pytest.raises(Exception, match="already exists"):
            client.push_image("x:1", other)
    assert client.push_image("x:1", m).existed  # the very same: taken


def test_has_blobs(site: Site) -> None:
    s = site.stubs
    digest = s.upload(b"hello")
    other = "sha256:" + "0" * 64
    resp = s.images.HasBlobs(images_pb2.HasBlobsRequest(digests=[digest, other, other]))
    assert list(resp.missing) == [other]
    with pytest.raises(grpc.RpcError) as exc:
        s.images.HasBlobs(images_pb2.HasBlobsRequest(digests=["md5:abc"]))
    assert code_of(exc) == grpc.StatusCode.INVALID_ARGUMENT


# -- format safety -----------------------------------------------------------------------


def _hostile(tmp: Path) -> list[tuple[str, bytes, str, str]]:
    """(label, content, declared format, expected reason)."""
    return [
        ("backing", qcow2_header(backing_offset=512, backing_len=9), "qcow2", "backing file"),
        (
            "v2-backing",
            qcow2_header(version=2, backing_offset=72, backing_len=9),
            "qcow2",
            "backing",
        ),
        ("datafile", qcow2_header(incompatible=1 << 2), "qcow2", "external data file"),
        ("encrypted", qcow2_header(crypt_method=1), "qcow2", "encrypted"),
        ("unknown-feature", qcow2_header(incompatible=1 << 20), "qcow2", "unknown incompatible"),
        ("version1", qcow2_header(version=1), "qcow2", "unsupported qcow2 version 1"),
        (
            "compression-type",
            qcow2_header(incompatible=1 << 3, compression_type=7),
            "qcow2",
            "broken qcow2: unknown compression type 7",
        ),
        ("truncated", b"QFI\xfb\0\0\0\x03", "qcow2", "truncated"),
        ("huge", qcow2_header(size=2 * 1024**4), "qcow2", "exceeds the limit"),
        (
            "qcow2-as-raw",
            qcow2_header(backing_offset=512, backing_len=9),
            "raw",
            "content is qcow2",
        ),
        ("raw-as-qcow2", b"\0" * 4096, "qcow2", "declared qcow2 but the content is raw"),
        ("vmdk", b"KDMV" + b"\0" * 508, "raw", "content is vmdk"),
        ("vhdx", b"vhdxfile" + b"\0" * 504, "raw", "content is vhdx"),
        ("luks", b"LUKS\xba\xbe" + b"\0" * 506, "raw", "content is luks"),
        ("vdi-declared", b"\0" * 4096, "vdi", "not supported"),
    ]


@pytest.mark.parametrize("mode", [COW, RO])
def test_hostile_files_are_refused_at_import(site: Site, tmp_path: Path, mode: int) -> None:
    s = site.stubs
    for label, data, fmt, reason in _hostile(tmp_path):
        digest = s.upload(data)
        req = images_pb2.ImportImageRequest(
            name=f"evil-{label}:1",
            partitions=[
                common_pb2.Partition(name="root", digest=digest, format=fmt, mode=mode)  # type: ignore[arg-type]
            ],
        )
        with pytest.raises(grpc.RpcError) as exc:
            s.images.ImportImage(req)
        assert code_of(exc) == grpc.StatusCode.INVALID_ARGUMENT, label
        assert reason in (exc.value.details() or ""), (label, exc.value.details())
        assert "partition 'root'" in (exc.value.details() or ""), label
    assert image_names(site) == []


def test_a_raw_file_over_the_virtual_size_limit_is_refused(tmp_path: Path) -> None:
    site = Site(tmp_path, limits={"max_virtual_bytes": MiB})
    try:
        s = site.stubs
        digest = s.upload(b"\0" * (MiB + 512))
        req = images_pb2.ImportImageRequest(
            name="big",
            partitions=[common_pb2.Partition(name="root", digest=digest, format="raw", mode=COW)],
        )
        with pytest.raises(grpc.RpcError) as exc:
            s.images.ImportImage(req)
        assert "virtual size 1049088 bytes exceeds the limit of 1048576" in str(exc.value.details())
        assert image_names(site) == []
    finally:
        site.close()


@needs_qemu_img
def test_real_qemu_img_files(site: Site, tmp_path: Path) -> None:
    """Files made by qemu-img itself: a self-contained qcow2 passes, one naming a backing
    file or an external data file does not."""
    s = site.stubs
    base = write(tmp_path / "base.raw", b"", MiB)
    good = tmp_path / "good.qcow2"
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(good), "64M"], check=True)
    backed = tmp_path / "backed.qcow2"
    subprocess.run(
        ["qemu-img", "create", "-q", "-f", "qcow2", "-b", str(base), "-F", "raw", str(backed)],
        check=True,
    )
    datafile = tmp_path / "datafile.qcow2"
    subprocess.run(
        [
            *("qemu-img", "create", "-q", "-f", "qcow2"),
            *("-o", f"data_file={tmp_path / 'd.raw'}", str(datafile), "1M"),
        ],
        check=True,
    )
    for path, reason in ((backed, "backing file"), (datafile, "external data file")):
        req = images_pb2.ImportImageRequest(
            name=path.stem,
            partitions=[
                common_pb2.Partition(
                    name="root", digest=s.upload(path.read_bytes()), format="qcow2", mode=COW
                )
            ],
        )
        with pytest.raises(grpc.RpcError) as exc:
            s.images.ImportImage(req)
        assert reason in str(exc.value.details())
    ok = s.images.ImportImage(
        images_pb2.ImportImageRequest(
            name="good:1",
            partitions=[
                common_pb2.Partition(
                    name="root", digest=s.upload(good.read_bytes()), format="qcow2", mode=COW
                )
            ],
        )
    )
    assert ok.partitions[0].virtual_size_bytes == 64 * MiB
    assert ok.partitions[0].size_bytes == good.stat().st_size
    assert image_names(site) == ["good:1"]


def test_blank_partitions_at_import_are_checked(site: Site) -> None:
    s = site.stubs
    digest = s.upload(b"x" * 512)
    cases = [
        (common_pb2.Partition(name="b", mode=BLANK), "needs a size"),
        (common_pb2.Partition(name="b", mode=BLANK, size_bytes=1000), "not a multiple of 512"),
        (common_pb2.Partition(name="b", mode=BLANK, size_bytes=MiB, digest=digest), "no content"),
        (
            common_pb2.Partition(name="b", mode=BLANK, size_bytes=MiB, ext4=True, format="qcow2"),
            "raw file",
        ),
        (
            common_pb2.Partition(name="r", digest=digest, format="raw", ext4=True),
            "blank partitions",
        ),
    ]
    for part, reason in cases:
        with pytest.raises(grpc.RpcError) as exc:
            s.images.ImportImage(images_pb2.ImportImageRequest(name="b", partitions=[part]))
        assert reason in str(exc.value.details()), reason
    assert image_names(site) == []


# -- delete ------------------------------------------------------------------------------


def _blob_files(site: Site) -> set[str]:
    return {"sha256:" + p.name for p in (site.cfg.blob_dir / "sha256").iterdir()}


def test_delete_refused_in_use_then_removes_unshared_blobs(
    site: Site, client: Client, tmp_path: Path
) -> None:
    site.stubs.network()
    site.add_agent("node1")
    f = files(tmp_path)
    a = client.push_image("a:1", manifest(f)).image
    shared = write(tmp_path / "shared-data.raw", b"RODATA:v1\n", MiB)  # same content as data
    b = client.push_image("b:1", Manifest((PartitionSpec("data", "readonly", shared),))).image
    root, data = a.partitions[0].digest, a.partitions[1].digest
    assert b.partitions[0].digest == data

    ws = client.create_workspace("a:1", name="user-of-a")
    with pytest.raises(Exception, match=r"in use by 1 live workspace\(s\): local/user-of-a") as ei:
        client.delete_image("a:1")
    assert type(ei.value).__name__ == "FailedPrecondition"
    assert "a:1" in image_names(site)

    client.destroy_workspace(ws.id)
    site.stubs.wait_state(ws.id, WS.WORKSPACE_STATE_TERMINATED)
    gone = client.delete_image("a:1")
    assert gone.name == "a:1"
    assert image_names(site) == ["b:1"]
    kernel, initrd = a.kernel_digest, a.initrd_digest
    assert set(client.has_blobs([root, data, kernel, initrd])) == {root, kernel, initrd}
    assert data in _blob_files(site) and root not in _blob_files(site)

    client.delete_image("b:1")
    assert client.has_blobs([data]) == [data]
    assert _blob_files(site) == set()
    with pytest.raises(Exception, match="not found"):
        client.delete_image("b:1")

    # a re-push after the delete sends the blobs again
    again = client.push_image("a:2", manifest(f))
    assert len(again.uploaded) == 4


def test_only_the_owner_deletes(tmp_path: Path) -> None:
    site = Site(tmp_path)
    try:
        catalog = site.service.catalog  # type: ignore[union-attr]
        digest = catalog.upload_blob(iter([b"\0" * 512]), "alice").digest  # alice sends it
        part = common_pb2.Partition(name="root", digest=digest, format="raw", mode=COW)
        catalog.import_image("alice", images_pb2.ImportImageRequest(name="al:1", partitions=[part]))
        from workspace.errors import NotFound, PermissionDenied

        # Private to alice: bob does not see it at all.
        with pytest.raises(NotFound, match="not found"):
            catalog.delete_image("bob", "al:1")
        # Public: bob sees it, but it is still alice's.
        catalog.catalog.set_public("al:1", True)
        with pytest.raises(PermissionDenied, match="belongs to alice"):
            catalog.delete_image("bob", "al:1")
        assert catalog.delete_image("alice", "al:1").name == "al:1"
    finally:
        site.close()


def test_a_name_without_its_version_is_refused_naming_the_versions_one_sees(
    tmp_path: Path,
) -> None:
    """`--image al` when only al:1 and al:2 exist: NOT_FOUND naming them, newest first,
    and never another user's private version; nothing is made."""
    site = Site(tmp_path)
    try:
        service = site.service
        assert service is not None
        part = common_pb2.Partition(name="root", format="raw", mode=COW)
        for owner, name in (("alice", "al:1"), ("alice", "al:2"), ("bob", "bl:9")):
            part.digest = service.catalog.upload_blob(iter([b"\0" * 512]), owner).digest
            service.catalog.import_image(
                owner, images_pb2.ImportImageRequest(name=name, partitions=[part])
            )
        # bob's al:9 as a site may have it from before a NAME was held by one owner or
        # project (a push of it is refused now: alice holds "al").
        with service.catalog.catalog.env.store.write() as s:
            s.execute(update(Image).where(Image.name == "bl:9").values(name="al:9"))
        from workspace.errors import NotFound

        hint = "(an image is NAME:VERSION); versions of al you can use: al:2, al:1"
        with pytest.raises(NotFound) as ei:
            service.workspaces.create(
                "alice", workspaces_pb2.CreateWorkspaceRequest(image="al", name="x")
            )
        assert ei.value.message == f"image 'al' not found {hint}"
        assert "al:9" not in ei.value.message  # bob's, private
        assert service.workspaces.list("alice", True) == []
        # A version that does not exist names the others too; so does `ws image show`.
        with pytest.raises(NotFound) as ei:
            service.workspaces.create(
                "alice", workspaces_pb2.CreateWorkspaceRequest(image="al:3", name="x")
            )
        assert ei.value.message == f"image 'al:3' not found {hint}"
        with pytest.raises(NotFound) as ei:
            service.catalog.catalog.get_image("alice", "al")
        assert ei.value.message == f"image 'al' not found {hint}"
        # The admin (the site's own stubs) sees every version, bob's too.
        with pytest.raises(grpc.RpcError) as ri:
            site.stubs.create(image="al", name="y")
        assert code_of(ri) == grpc.StatusCode.NOT_FOUND
        assert str(ri.value.details()).endswith("versions of al you can use: al:9, al:2, al:1")
        # No version of that name at all: the message as before.
        with pytest.raises(NotFound) as ei:
            service.catalog.catalog.get_image("alice", "zz")
        assert ei.value.message == "image 'zz' not found; `ws image list` shows them"
    finally:
        site.close()


# -- quota -------------------------------------------------------------------------------


def test_repository_quota(tmp_path: Path) -> None:
    site = Site(tmp_path, limits={"repo_quota_bytes_per_user": 3 * MiB})
    client = Client(site.address)
    try:
        one = write(tmp_path / "one.raw", b"one", 2 * MiB)
        two = write(tmp_path / "two.raw", b"two", 2 * MiB)
        client.push_image("one:1", Manifest((PartitionSpec("root", "cow", one),)))
        usage = client.repository_usage()
        assert (usage.owner, usage.used_bytes, usage.quota_bytes) == ("local", 2 * MiB, 3 * MiB)
        # Refused as its blob is sent (blobs count before an image is made of them: no
        # filling the service's disk with uploads never imported); the blob is not kept.
        with pytest.raises(Exception, match="quota") as ei:
            client.push_image("two:1", Manifest((PartitionSpec("root", "cow", two),)))
        assert type(ei.value).__name__ == "ResourceExhausted"
        assert f"{2 * MiB} of {3 * MiB} bytes used" in str(ei.value)
        assert f"this blob adds {2 * MiB}" in str(ei.value)
        assert image_names(site) == ["one:1"]
        assert client.repository_usage().used_bytes == 2 * MiB
        two_digest = digests.of_file(two)
        assert client.has_blobs([two_digest]) == [two_digest]
        # the same blob again costs nothing; blank partitions cost nothing
        m = Manifest(
            (PartitionSpec("root", "cow", one), PartitionSpec("s", "blank", None, "", 64 * MiB))
        )
        client.push_image("one:2", m)
        assert client.repository_usage().used_bytes == 2 * MiB
        client.delete_image("one:1")
        assert client.repository_usage().used_bytes == 2 * MiB  # one:2 still holds it
        client.delete_image("one:2")
        client.push_image("two:1", Manifest((PartitionSpec("root", "cow", two),)))
    finally:
        client.close()
        site.close()


# -- a create's disk options, down to the agent ------------------------------------------


def _first_assignments(site: Site, node: str) -> nodes_pb2.AssignmentSet:
    stream = site.stubs.nodes.WatchAssignments(nodes_pb2.WatchAssignmentsRequest(node=node))
    try:
        return next(iter(stream))
    finally:
        stream.cancel()


def _qemu_img_info(path: Path, fmt: str) -> dict[str, Any]:
    out = subprocess.run(
        ["qemu-img", "info", "--output=json", "-f", fmt, str(path)],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    return json.loads(out)


@needs_qemu_img
def test_create_with_extra_blank_and_grown_cow(site: Site, client: Client, tmp_path: Path) -> None:
    site.stubs.network()
    agent = site.add_agent("node1")
    f = files(tmp_path)
    img = client.push_image("disks:1", manifest(f)).image
    ws = client.create_workspace(
        "disks:1",
        name="disky",
        extra_partitions=[
            blank_partition("work", 16 * MiB, ext4=True),
            blank_partition("tmp", 8 * MiB),
        ],
        grow_bytes={"root": 4 * MiB},
    )
    site.stubs.wait_state(ws.id, WS.WORKSPACE_STATE_RUNNING)

    (a,) = _first_assignments(site, "node1").assignments
    disks = [
        (d.name, d.mode, d.format, d.virtual_size_bytes, d.ext4, d.digest != "") for d in a.disks
    ]
    assert disks == [
        ("root", COW, "raw", 4 * MiB, False, True),
        ("data", RO, "raw", MiB, False, True),
        ("scratch", BLANK, "raw", 32 * MiB, True, False),
        ("work", BLANK, "raw", 16 * MiB, True, False),
        ("tmp", BLANK, "qcow2", 8 * MiB, False, False),
    ]
    assert a.disks[0].digest == img.partitions[0].digest

    d = agent.files.dir(ws.id)
    root = _qemu_img_info(d / "root.qcow2", "qcow2")
    assert root["virtual-size"] == 4 * MiB
    assert root["backing-filename-format"] == "raw"
    for name, size in (("scratch", 32 * MiB), ("work", 16 * MiB)):
        path = d / f"{name}.raw"
        assert path.stat().st_size == size
        with path.open("rb") as fh:
            fh.seek(1080)
            assert struct.unpack("<H", fh.read(2))[0] == 0xEF53, name  # ext4 magic
            fh.seek(1024 + 0x68)  # the superblock's s_uuid: what the guest's fstab names
            assert str(uuid.UUID(bytes=fh.read(16))) == mkfs.fs_uuid(ws.id, name), name
    assert _qemu_img_info(d / "tmp.qcow2", "qcow2")["virtual-size"] == 8 * MiB
    spec = json.loads((Path(agent.cfg.state_dir) / "fake-domains.json").read_text())[ws.id]["spec"]
    flags = [(x["target"], x["format"], x["readonly"], x["shareable"]) for x in spec["disks"]]
    assert flags == [
        ("vda", "qcow2", False, False),
        ("vdb", "raw", True, True),
        ("vdc", "raw", False, False),
        ("vdd", "raw", False, False),
        ("vde", "qcow2", False, False),
    ]
    assert spec["disks"][1]["path"].endswith(img.partitions[1].digest.split(":")[1])


def test_create_disk_options_are_validated(site: Site, client: Client, tmp_path: Path) -> None:
    site.stubs.network()
    site.add_agent("node1")
    client.push_image("v:1", manifest(files(tmp_path)))
    cases: list[tuple[dict[str, Any], str]] = [
        ({"grow_bytes": {"data": 2 * MiB}}, "only cow partitions can grow"),
        ({"grow_bytes": {"root": MiB // 2}}, "partitions can grow, not shrink"),
        ({"grow_bytes": {"nope": 2 * MiB}}, "has no such partition"),
        ({"grow_bytes": {"root": 2 * 1024**4}}, "more than the limit"),
        ({"extra_partitions": [blank_partition("scratch", MiB)]}, "already has that name"),
        (
            {"extra_partitions": [common_pb2.Partition(name="x", size_bytes=MiB, mode=COW)]},
            "only blank partitions",
        ),
        (
            {"extra_partitions": [blank_partition(f"x{i}", MiB) for i in range(9)]},
            "at most 8 extra partitions",
        ),
    ]
    for kw, message in cases:
        with pytest.raises(Exception, match=message) as ei:
            client.create_workspace("v:1", **kw)
        assert type(ei.value).__name__ == "InvalidArgument"
    assert client.list_workspaces() == []

    # the request id covers the disk options too
    req = workspaces_pb2.CreateWorkspaceRequest(image="v:1", name="one", request_id="r1")
    site.stubs.ws.CreateWorkspace(req)
    req.grow_bytes["root"] = 2 * MiB
    with pytest.raises(grpc.RpcError) as exc:
        site.stubs.ws.CreateWorkspace(req)
    assert "already used for a different request" in str(exc.value.details())
    wait_for(lambda: client.get_workspace("one").state == WS.WORKSPACE_STATE_RUNNING)


def test_a_refused_blob_leaves_the_repository_at_once(tmp_path: Path) -> None:
    """A blob an import refuses is not kept for blob_grace_s: it no longer counts in the
    sender's usage, so the push of a fixed file fits in the quota again."""
    site = Site(tmp_path, limits={"repo_quota_bytes_per_user": 3 * MiB})
    client = Client(site.address)
    try:
        s = site.stubs
        bad = qcow2_header(size=8 * MiB)[:100].ljust(2 * MiB, b"\0")  # a broken qcow2
        digest = s.upload(bad)
        assert client.repository_usage().used_bytes == 2 * MiB
        req = images_pb2.ImportImageRequest(
            name="app:1",
            partitions=[common_pb2.Partition(name="root", digest=digest, format="qcow2")],
        )
        with pytest.raises(grpc.RpcError) as exc:
            s.images.ImportImage(req)
        assert code_of(exc) == grpc.StatusCode.INVALID_ARGUMENT
        assert client.repository_usage().used_bytes == 0
        assert client.has_blobs([digest]) == [digest]
        assert list((Path(site.cfg.data_dir) / "blobs" / "sha256").iterdir()) == []
        good = write(tmp_path / "good.raw", b"good", 2 * MiB)
        client.push_image("app:1", Manifest((PartitionSpec("root", "cow", good),)))
        assert client.repository_usage().used_bytes == 2 * MiB
    finally:
        client.close()
        site.close()


def test_push_checks_files_before_hashing_them(tmp_path: Path) -> None:
    """The import's checks and the service's size limits run on the local files before
    a byte is hashed or sent (a 15 TiB sparse file is not hashed for minutes)."""
    site = Site(tmp_path, limits={"repo_quota_bytes_per_user": 64 * MiB})
    client = Client(site.address)
    steps: list[str] = []
    try:
        usage = client.repository_usage()
        assert usage.max_virtual_bytes == site.cfg.limits.max_virtual_bytes
        assert usage.max_blob_bytes == site.cfg.limits.max_blob_bytes
        huge = write(tmp_path / "huge.raw", b"", 15 * 1024**4)
        backing = write(tmp_path / "b.qcow2", qcow2_header(backing_offset=512, backing_len=9))
        broken = write(tmp_path / "x.qcow2", qcow2_header(size=8 * MiB)[:100])
        nothing = write(tmp_path / "n.qcow2", qcow2_header(size=0))
        good = write(tmp_path / "good.raw", b"good", MiB)
        empty = write(tmp_path / "disk.img", b"")  # a failed `wget -O disk.img`
        odd, over = 1000, site.cfg.limits.max_virtual_bytes + 512  # blank sizes refused
        for path, blank, error, pattern in (
            (huge, 0, "ResourceExhausted", "more than the service takes in a file"),
            (empty, 0, "InvalidArgument", "disk.img: is empty; nothing sent"),
            (backing, 0, "InvalidArgument", "partition root: qcow2 names a backing file"),
            (broken, 0, "InvalidArgument", "partition root: truncated qcow2 v3 header"),
            (nothing, 0, "InvalidArgument", "partition root: a disk of 0 bytes .*nothing sent"),
            # Refused at import after the file was sent, which stayed an hour, counted.
            (good, odd, "InvalidArgument", "partition tmp: .* multiple of 512 .* not 1000"),
            (good, over, "InvalidArgument", f"partition tmp: .* not {over}; nothing sent"),
        ):
            m = Manifest((PartitionSpec("root", "cow", path),))
            if blank:
                m = Manifest((*m.partitions, PartitionSpec("tmp", "blank", size_bytes=blank)))
            with pytest.raises(Exception, match=pattern) as ei:
                client.push_image("x:1", m, lambda step, *_: steps.append(step))
            assert type(ei.value).__name__ == error
        assert steps == []
        assert list((Path(site.cfg.data_dir) / "blobs" / "sha256").iterdir()) == []
    finally:
        client.close()
        site.close()


def test_a_push_slower_than_the_blob_grace_is_told_to_ask_for_a_longer_one(
    tmp_path: Path,
) -> None:
    """A push whose files each take longer to send than `blob_grace_s` loses the first
    to the collection the next upload runs, and its retry loses the others: it can never
    finish. The user was told only "blob … has not been uploaded"; the error now says
    why and what to ask the site for (docs/images.md). Here the grace is 0, so every
    blob is collected by its own upload's pass."""
    site = Site(tmp_path, blob_grace_s=0)
    client = Client(site.address)
    try:
        disk = write(tmp_path / "root.raw", b"slow", 2 * MiB)
        with pytest.raises(errors.NotFound) as exc:
            client.push_image("app:1", Manifest((PartitionSpec("root", "cow", disk),)))
        assert "has not been uploaded" in exc.value.message
        assert "raise blob_grace_s" in exc.value.message
        assert client.list_images() == []
    finally:
        client.close()
        site.close()


def test_a_push_given_up_on_a_quiet_site_leaves_the_repository(tmp_path: Path) -> None:
    """Blobs never imported were collected only after another upload: on a site where no
    one uploaded after it, a push given up (or a save killed with its service) kept its
    blobs on the service's disk for good. The leader's housekeeping collects them too,
    here at its first pass after the service started."""
    site = Site(tmp_path)
    try:
        digest = site.stubs.upload(b"given up" * 1024)
        sent = Path(site.cfg.data_dir) / "blobs" / "sha256" / digest.split(":")[1]
        assert sent.exists()
        site.stop_service()
        # Sent longer ago than blob_grace_s (a restart, so that a pass runs at once).
        store = Store(site.cfg.db_url)
        with store.write() as s:
            for table in (Blob, BlobHolder):  # the blob, and its sender's claim on it
                ago = table.created_at - site.cfg.blob_grace_s - 1
                s.execute(update(table).values(created_at=ago))
        store.close()
        site.start_service()
        wait_for(lambda: not sent.exists(), what="the blob of the push given up collected")
        with Client(site.address) as client:
            assert client.has_blobs([digest]) == [digest]
    finally:
        site.close()


@needs_qemu_img
def test_a_disk_of_nothing_is_refused_at_import(site: Site, client: Client, tmp_path: Path) -> None:
    """An empty file (a failed `wget -O disk.img`, sent through the API or the Python
    client's upload_blob and import_image, which `ws image push` refuses locally) or a
    qcow2 of virtual size 0 as a partition: each was registered, and its workspaces got
    a disk of 0 bytes that boots nothing. Now refused like any unusable file: nothing
    registered, nothing left in the repository or counted. An empty kernel too."""
    s = site.stubs
    zero = tmp_path / "zero.qcow2"
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(zero), "0"], check=True)
    for data, fmt, reason in (
        (b"", "raw", "the file is empty"),
        (zero.read_bytes(), "qcow2", "the qcow2's virtual size is 0"),
    ):
        digest = s.upload(data)
        req = images_pb2.ImportImageRequest(
            name="nothing:1",
            partitions=[common_pb2.Partition(name="root", digest=digest, format=fmt, mode=COW)],
        )
        with pytest.raises(grpc.RpcError) as exc:
            s.images.ImportImage(req)
        assert code_of(exc) == grpc.StatusCode.INVALID_ARGUMENT
        said = str(exc.value.details())
        assert said.startswith("image nothing:1, partition 'root': a disk of 0 bytes"), said
        assert reason in said
        assert client.has_blobs([digest]) == [digest]  # gone at once
    kernel = s.upload(b"")
    with pytest.raises(grpc.RpcError) as exc:
        s.images.ImportImage(images_pb2.ImportImageRequest(name="k:1", kernel_digest=kernel))
    assert code_of(exc) == grpc.StatusCode.INVALID_ARGUMENT
    assert "image k:1, kernel: the file is empty" in str(exc.value.details())
    assert image_names(site) == []
    assert client.repository_usage().used_bytes == 0


def test_an_upload_whose_bytes_are_not_the_digest_it_said_stores_nothing(tmp_path: Path) -> None:
    """An upload says its digest in its first chunk: one that ends short of it (a
    client cut off, which gRPC's server may see as the stream's end) or whose bytes are
    other (a file that changed between its hash and its send) is refused, nothing
    stored. Before, the bytes that came were stored as a blob of their own, counted
    against the sender's quota for blob_grace_s: the retry of a push near its quota
    failed RESOURCE_EXHAUSTED for an hour."""
    site = Site(tmp_path, limits={"repo_quota_bytes_per_user": 3 * MiB})
    client = Client(site.address)
    blobs = Path(site.cfg.data_dir) / "blobs"
    try:
        whole = b"disk" * (MiB // 2)  # 2 MiB
        said = digests.of_bytes(whole)
        cut = [
            images_pb2.BlobChunk(digest=said, data=whole[:MiB]),
            images_pb2.BlobChunk(data=whole[MiB : MiB + 4096]),
        ]
        with pytest.raises(grpc.RpcError) as exc:
            site.stubs.images.UploadBlob(iter(cut))
        assert code_of(exc) == grpc.StatusCode.INVALID_ARGUMENT
        assert f"not {said}" in str(exc.value.details())
        assert "nothing stored" in str(exc.value.details())
        assert list((blobs / "sha256").iterdir()) == []
        assert list((blobs / "tmp").iterdir()) == []
        assert client.repository_usage().used_bytes == 0

        # The client's push says the digest it hashed: a file that changed since is
        # refused by the service, and said so; the fixed push fits in the quota.
        disk = write(tmp_path / "disk.raw", whole)
        real = client.upload_blob

        def changed(path: Any, *args: Any, **kw: Any) -> Any:
            write(disk, b"DISK" * (MiB // 2))  # rewritten after the hash
            return real(path, *args, **kw)

        client.upload_blob = changed  # type: ignore[method-assign]
        with pytest.raises(errors.InvalidArgument, match=r"disk\.raw changed while it was pushed"):
            client.push_image("app:1", Manifest((PartitionSpec("root", "cow", disk),)))
        client.upload_blob = real  # type: ignore[method-assign]
        assert list((blobs / "sha256").iterdir()) == []
        assert client.repository_usage().used_bytes == 0
        client.push_image("app:1", Manifest((PartitionSpec("root", "cow", disk),)))
        assert client.repository_usage().used_bytes == 2 * MiB
    finally:
        client.close()
        site.close()


@pytest.mark.parametrize("sent", ["short", "long"])
def test_an_upload_that_ends_at_another_size_than_it_said_stores_nothing(
    tmp_path: Path, sent: str
) -> None:
    """`ws-admin image import disk.img` (no digest said) while disk.img grew: the client
    cancelled the upload, but gRPC's server may see a cancel as the stream's clean end,
    and the service stored the bytes that had come as a blob, counted against the
    sender for blob_grace_s. The first chunk now says the whole upload's size: a stream
    that ends short of it (or goes past it) is refused, nothing stored."""
    site = Site(tmp_path)
    client = Client(site.address)
    blobs = Path(site.cfg.data_dir) / "blobs"
    try:
        data = b"disk" * (MiB // 2)  # 2 MiB
        said = 2 * MiB if sent == "short" else MiB
        stream = [
            images_pb2.BlobChunk(data=data[:MiB], size_bytes=said),
            images_pb2.BlobChunk(data=data[MiB : MiB + 4096 if sent == "short" else None]),
        ]
        with pytest.raises(grpc.RpcError) as exc:
            site.stubs.images.UploadBlob(iter(stream))  # the stream ends normally
        assert code_of(exc) == grpc.StatusCode.INVALID_ARGUMENT
        details = str(exc.value.details())
        if sent == "short":
            assert f"ended after {MiB + 4096} of the {said} bytes it said" in details, details
        else:
            assert f"sent more than the {said} bytes it said" in details, details
        assert "nothing stored" in details
        assert list((blobs / "sha256").iterdir()) == []
        assert list((blobs / "tmp").iterdir()) == []
        assert client.repository_usage().used_bytes == 0
        whole = digests.of_bytes(data)
        assert client.has_blobs([whole]) == [whole]
        with pytest.raises(grpc.RpcError) as exc:
            site.stubs.images.UploadBlob(iter([images_pb2.BlobChunk(data=data, size_bytes=-1)]))
        assert code_of(exc) == grpc.StatusCode.INVALID_ARGUMENT
        assert "said it has -1 bytes: a size is 0 or more" in str(exc.value.details())
        assert list((blobs / "sha256").iterdir()) == list((blobs / "tmp").iterdir()) == []

        # Said and sent alike (and unsaid, as an older client sends): stored.
        for size in (2 * MiB, 0):
            ok = [images_pb2.BlobChunk(data=data[:MiB], size_bytes=size)]
            ok.append(images_pb2.BlobChunk(data=data[MiB:]))
            ref = site.stubs.images.UploadBlob(iter(ok))
            assert (ref.digest, ref.size_bytes) == (whole, 2 * MiB)
    finally:
        client.close()
        site.close()
