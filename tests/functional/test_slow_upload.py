"""An upload over a slow link makes progress; one that stalls ends with a clear error.

The service waits for each chunk of an upload at most ``CHUNK_S`` (edge/calls.py), and
gRPC hands it a chunk only once all of it arrived. The client sent chunks of a fixed
1 MiB, so every link slower than 1 MiB per ``CHUNK_S`` (60 s: about 17 KB/s) was cut
after its first minute, however steadily its bytes flowed. It now sizes its chunks by
how fast the link takes them (workspace/chunking.py).

Here the link is a proxy on a unix socket that passes the client's bytes on to the
service at a fixed rate, and ``CHUNK_S`` is a second: 512 KiB/s is then what 8.7 KB/s
is to the real 60 s (a 1 MiB chunk took two ``CHUNK_S``; the largest chunk now, 256 KiB,
half of one).
"""

from __future__ import annotations

import contextlib
import hashlib
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.functional.harness import Site
from workspace import chunking, errors
from workspace.client import Client
from workspace.edge import calls

RATE = 512 * 1024  # bytes per second, client to service
FILE_BYTES = 3 * 512 * 1024


class SlowLink:
    """A unix-socket proxy to ``upstream`` (a unix socket) passing at most ``rate``
    bytes/s from the client on (the answers unhindered); after ``stall_after`` bytes
    (None: never) it passes no more, the connection staying open."""

    def __init__(self, path: Path, upstream: str, rate: int, stall_after: int | None) -> None:
        self.path, self.upstream = path, upstream
        self.rate, self.stall_after = rate, stall_after
        self.done = threading.Event()
        self.socks: list[socket.socket] = []
        self.listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.listener.bind(str(path))
        self.listener.listen()
        threading.Thread(target=self._accept, daemon=True).start()

    @property
    def address(self) -> str:
        return f"unix:{self.path}"

    def _accept(self) -> None:
        while not self.done.is_set():
            try:
                down, _ = self.listener.accept()
            except OSError:
                return
            up = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            up.connect(self.upstream)
            self.socks += [down, up]
            threading.Thread(target=self._pump, args=(down, up, True), daemon=True).start()
            threading.Thread(target=self._pump, args=(up, down, False), daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket, slow: bool) -> None:
        start, passed = time.monotonic(), 0
        with contextlib.suppress(OSError):
            while data := src.recv(4096):
                if slow and self.stall_after is not None and passed >= self.stall_after:
                    self.done.wait()  # the link stalls: nothing more goes through
                    return
                dst.sendall(data)
                if slow:
                    passed += len(data)
                    ahead = start + passed / self.rate - time.monotonic()
                    if ahead > 0:
                        time.sleep(ahead)

    def close(self) -> None:
        self.done.set()
        for s in [self.listener, *self.socks]:
            with contextlib.suppress(OSError):
                s.close()


@pytest.fixture
def slow_site(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Site]:
    monkeypatch.setattr(calls, "CHUNK_S", 1.0)
    monkeypatch.setattr(chunking, "TARGET_S", 1 / 30)  # as 2 s is to 60 s
    s = Site(tmp_path)
    try:
        yield s
    finally:
        s.close()


@contextlib.contextmanager
def through(site: Site, stall_after: int | None = None) -> Iterator[Client]:
    link = SlowLink(site.tmp / "slow.sock", site.address.removeprefix("unix:"), RATE, stall_after)
    with Client(link.address) as c:
        try:
            yield c
        finally:
            link.close()  # first: a client's close waits for bytes a stalled link holds


def test_an_upload_over_a_slow_link_gets_through_with_progress(
    slow_site: Site, tmp_path: Path
) -> None:
    data = bytes(range(256)) * (FILE_BYTES // 256)
    f = tmp_path / "disk.raw"
    f.write_bytes(data)
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    seen: list[int] = []
    with through(slow_site) as c:
        ref = c.upload_blob(f, lambda done, total: seen.append(done), digest=digest)
        assert (ref.digest, ref.size_bytes) == (digest, len(data))
        assert c.has_blobs([digest]) == []  # stored, and the sender's to build on
    # Progress all along, not a report per 1 MiB.
    assert seen[0] == 0 and seen[-1] == len(data)
    assert len(seen) > 6


def test_an_upload_whose_link_stalls_ends_with_a_clear_error(
    slow_site: Site, tmp_path: Path
) -> None:
    data = b"\x5a" * FILE_BYTES
    f = tmp_path / "disk.raw"
    f.write_bytes(data)
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    with through(slow_site, stall_after=200 * 1024) as c:
        with pytest.raises(errors.InvalidArgument) as cut:
            c.upload_blob(f, digest=digest, stall_s=30)
        assert "UploadBlob: the next chunk did not come within 1 s" in cut.value.message
    with Client(slow_site.address) as c:
        assert c.has_blobs([digest]) == [digest]  # nothing stored


def test_an_upload_of_a_file_still_being_written_stores_nothing(tmp_path: Path) -> None:
    """`ws-admin image import disk.img` (no digest said) while disk.img is still being
    copied: what the client read up to the file's end at that moment was stored and
    made into an image. Now the upload is cancelled and the repository left as it was."""
    site = Site(tmp_path)
    data = bytes(range(256)) * (FILE_BYTES // 256)
    f = tmp_path / "disk.img"
    f.write_bytes(data)

    def still_written(done: int, total: int) -> None:
        if done and f.stat().st_size == total:
            with f.open("ab") as more:
                more.write(data)

    try:
        with Client(site.address) as c:
            with pytest.raises(errors.InvalidArgument, match=r"disk\.img changed while"):
                c.upload_blob(f, still_written)
            assert c.repository_usage().used_bytes == 0
            whole = "sha256:" + hashlib.sha256(f.read_bytes()).hexdigest()
            assert c.has_blobs([whole]) == [whole]
        assert list((Path(site.cfg.data_dir) / "blobs" / "sha256").iterdir()) == []
    finally:
        site.close()
