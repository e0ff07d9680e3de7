"""A caller that opens a request stream and then sends nothing: an agent's Tasks stream
with no hello, a console with no first message, an upload (UploadBlob, PutBlob) with no
chunk or that stops sending one. grpcio waits for a request message without end: each
held a server thread, and its place among the caller's ``max_streams_per_caller``, until
the caller cancelled. The service now ends it with INVALID_ARGUMENT once the message is
``HELLO_S`` (first messages) or ``CHUNK_S`` (chunks) late, and the thread is freed: with
a cap of one stream, the same caller's next stream is served."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest

from tests.functional.harness import Site, wait_for
from workspace.edge import calls
from workspace.v1 import access_pb2_grpc, images_pb2

T = 30  # a guard only: without the deadline the call would wait until then


@pytest.fixture
def capped(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Site]:
    monkeypatch.setattr(calls, "HELLO_S", 0.5)
    monkeypatch.setattr(calls, "CHUNK_S", 0.5)
    s = Site(tmp_path, max_streams_per_caller=1)  # no agent: the caller's one stream
    try:
        yield s
    finally:
        s.close()


def silent(release: threading.Event, *first: Any) -> Iterator[Any]:
    """``first``, then nothing until ``release`` (the stream stays open)."""
    yield from first
    release.wait()


def readers_left() -> list[str]:
    return [t.name for t in threading.enumerate() if t.name in ("first-request", "each-request")]


CALLS: list[tuple[str, Callable[[Site, Iterator[Any]], Any], str]] = [
    (
        "Tasks",
        lambda s, req: list(s.stubs.nodes.Tasks(req, timeout=T)),
        "Tasks: the hello (the first message, naming the node) did not come within 0.5 s",
    ),
    (
        "AttachConsole",
        lambda s, req: list(
            access_pb2_grpc.GuestsStub(s.stubs.channel).AttachConsole(req, timeout=T)
        ),
        "AttachConsole: the first message (naming the workspace) did not come within 0.5 s",
    ),
    (
        "UploadBlob",
        lambda s, req: s.stubs.images.UploadBlob(req, timeout=T),
        "UploadBlob: the next chunk did not come within 0.5 s",
    ),
    (
        "PutBlob",
        lambda s, req: s.stubs.nodes.PutBlob(req, timeout=T),
        "PutBlob: the next chunk did not come within 0.5 s",
    ),
]


@pytest.mark.parametrize("name,call,said", CALLS, ids=[c[0] for c in CALLS])
def test_a_stream_that_sends_nothing_is_ended_and_frees_its_place(
    capped: Site, name: str, call: Callable[[Site, Iterator[Any]], Any], said: str
) -> None:
    release = threading.Event()
    try:
        for _ in range(2):  # the second is served: the first's place was given back
            with pytest.raises(grpc.RpcError) as ended:
                call(capped, silent(release))
            assert ended.value.code() is grpc.StatusCode.INVALID_ARGUMENT, ended.value
            assert ended.value.details() == said
        # the service's readers of those streams are gone, though they are still open
        wait_for(lambda: not readers_left(), what="the request readers to end")
    finally:
        release.set()


def test_an_upload_that_stops_sending_is_ended(capped: Site) -> None:
    """One chunk, then nothing: ended, as one with no chunk is; an upload that sends is
    served as before."""
    release = threading.Event()
    try:
        with pytest.raises(grpc.RpcError) as ended:
            capped.stubs.images.UploadBlob(
                silent(release, images_pb2.BlobChunk(data=b"\1" * 4096)), timeout=T
            )
        assert ended.value.code() is grpc.StatusCode.INVALID_ARGUMENT
        assert ended.value.details() == "UploadBlob: the next chunk did not come within 0.5 s"
        wait_for(lambda: not readers_left(), what="the request reader to end")
    finally:
        release.set()
    assert capped.stubs.upload(b"\2" * 200_000).startswith("sha256:")
