"""A push longer than ``blob_grace_s`` keeps its first files, and what a sender may build
on after the grace does not depend on other tenants (injected clock).

A push sends its files one after another and imports the image after the last. Each
upload collected the blobs uploaded more than ``blob_grace_s`` before and no image's:
the push's own first files once sending the rest took longer, so the import failed "not
uploaded" (and the client's one retry sent everything again, as slowly). Now a sender's
uploads renew the blobs they sent within the grace (ops/blob_access.py ``renew``), also
while a long file comes in; a sender who stops has them collected as before.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from images.model import ImageSpec, Mode, Partition
from workspace.config import ServiceConfig, load
from workspace.errors import NotFound
from workspace.ops.events import Notifier
from workspace.ops.images import Catalog
from workspace.ops.unit import Env
from workspace.store import Store
from workspace.store.blobs import BlobRepository

GRACE_S = 3600


class Clock:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def catalog(tmp_path: Path) -> tuple[Catalog, Clock]:
    cfg = load(
        ServiceConfig,
        None,
        data_dir=str(tmp_path),
        blob_grace_s=GRACE_S,
        limits={"repo_quota_bytes_per_user": 1 << 30},
    )
    clock = Clock()
    env = Env.of(cfg, Store(f"sqlite:///{tmp_path}/db.sqlite"), Notifier(), clock=clock)
    return Catalog(env, BlobRepository(tmp_path / "blobs")), clock


def _image(c: Catalog, who: str, name: str, *digests: str) -> None:
    parts = tuple(Partition(f"p{i}", Mode.COW, d, format="raw") for i, d in enumerate(digests))
    c.import_image(who, ImageSpec(name, parts))


def test_a_push_of_several_files_longer_than_the_grace_imports(
    catalog: tuple[Catalog, Clock],
) -> None:
    c, clock = catalog
    sent = []
    for i in range(3):  # each file takes 0.6 of the grace to send
        sent.append(c.upload_blob([bytes([i + 1]) * 4096], "alice")[0])
        clock.now += 0.6 * GRACE_S
    assert all(c.blobs.has(d) for d in sent)
    assert c.has_blobs("alice", sent) == []  # a re-push now sends nothing
    _image(c, "alice", "big:1", *sent)


def test_a_file_that_takes_longer_than_the_grace_keeps_the_ones_before(
    catalog: tuple[Catalog, Clock],
) -> None:
    c, clock = catalog
    first = c.upload_blob([b"\x01" * 4096], "alice")[0]

    def slow() -> Iterator[bytes]:
        for _ in range(6):  # 1.5 grace in all, while others' uploads collect
            clock.now += 0.25 * GRACE_S
            c.upload_blob([bytes([int(clock.now) % 200 + 10]) * 512], "bob")
            yield b"\x02" * 4096

    second = c.upload_blob(slow(), "alice")[0]
    assert c.blobs.has(first)
    _image(c, "alice", "big:1", first, second)


def test_a_push_given_up_is_collected_and_other_senders_do_not_keep_it(
    catalog: tuple[Catalog, Clock],
) -> None:
    c, clock = catalog
    left = c.upload_blob([b"\x01" * 4096], "alice")[0]
    clock.now += GRACE_S + 1
    c.upload_blob([b"\x02" * 4096], "bob")  # another sender's upload: collects it
    assert not c.blobs.has(left)
    clock.now += GRACE_S + 1
    again = c.upload_blob([b"\x03" * 4096], "alice")[0]
    clock.now += GRACE_S + 1
    c.upload_blob([b"\x04" * 4096], "alice")  # after a gap longer than the grace
    assert not c.blobs.has(again)


def test_after_the_grace_a_sent_blob_is_missing_whoever_else_has_it(
    catalog: tuple[Catalog, Clock],
) -> None:
    """Alice sends a file and does not import it. Once the grace is over, whether the
    repository still holds it (bob's image has it) must not show: not in HasBlobs, not in
    her repository usage, not at an import."""
    c, clock = catalog
    mine = c.upload_blob([b"\x07" * 8192], "alice")[0]
    base = c.repository_usage("alice").used_bytes
    assert base == 8192 and c.has_blobs("alice", [mine]) == []
    c.upload_blob([b"\x07" * 8192], "bob")
    _image(c, "bob", "secret:1", mine)
    # Within the grace nothing changed for alice (her usage still counts her file).
    assert c.repository_usage("alice").used_bytes == base
    clock.now += GRACE_S + 1
    c.collect_blobs()
    assert c.blobs.has(mine)  # bob's image keeps it
    # ... and alice is told what she would be told had bob never had it.
    assert c.has_blobs("alice", [mine]) == [mine]
    assert c.repository_usage("alice").used_bytes == 0
    with pytest.raises(NotFound, match="has not been uploaded"):
        _image(c, "alice", "mine:1", mine)
    # Sending it again is the proof, as for anyone.
    c.upload_blob([b"\x07" * 8192], "alice")
    _image(c, "alice", "mine:1", mine)
