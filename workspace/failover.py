"""One gRPC channel over several service replicas (``a,b,c``; docs/design/replicas.md).

``rpc.channel`` returns a ``FailoverChannel`` for an address list: calls go to one replica
at a time (the first, until it fails). A call that fails with UNAVAILABLE moves the channel
on to the next address; an idempotent unary call (``IDEMPOTENT``: reads, creates by
request id, desired-state operations, the agents' registration, reports and console
pushes) is then retried there at once, every address once. Any other call -- a stream, an
upload, an exec -- fails as it would on one address, and its caller's own retry or
reconnect goes to the next replica.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import grpc

# The last segment of the method path of calls that may run twice with the same effect.
IDEMPOTENT = re.compile(
    r"/(Get\w*|List\w*|Check|HasBlobs|Register|ReportStatus|PushConsole|CreateWorkspace|"
    r"CreateCluster|(Start|Stop|Pause|Resume|Destroy)(Workspace|Cluster)|DrainNode|"
    r"EnableNode|SetMode|SetImagePublic)$"
)


def split(address: str) -> list[str]:
    """``"a, b,c"`` -> ``["a", "b", "c"]`` (one address: a list of one)."""
    return [a.strip() for a in address.split(",") if a.strip()]


def _unavailable(exc: BaseException) -> bool:
    return isinstance(exc, grpc.RpcError) and getattr(exc, "code", lambda: None)() in (
        grpc.StatusCode.UNAVAILABLE,
    )


class FailoverChannel(grpc.Channel):
    """A channel over several channels, one in use at a time."""

    def __init__(self, addresses: Sequence[str], channels: Sequence[grpc.Channel]) -> None:
        self.addresses = list(addresses)
        self._channels = list(channels)
        self._current = 0
        self._lock = threading.Lock()

    @property
    def address(self) -> str:
        """The address calls go to now."""
        return self.addresses[self._current]

    @property
    def channels(self) -> list[grpc.Channel]:
        return list(self._channels)

    def current(self) -> int:
        with self._lock:
            return self._current

    def failed(self, index: int) -> None:
        """The channel at ``index`` failed: move on (unless another call already did)."""
        with self._lock:
            if self._current == index:
                self._current = (index + 1) % len(self._channels)

    # -- grpc.Channel ----------------------------------------------------------------------

    def subscribe(self, callback: Callable[..., Any], try_to_connect: bool = False) -> None:
        self._channels[0].subscribe(callback, try_to_connect)

    def unsubscribe(self, callback: Callable[..., Any]) -> None:
        self._channels[0].unsubscribe(callback)

    def close(self) -> None:
        for c in self._channels:
            c.close()

    def __enter__(self) -> FailoverChannel:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def unary_unary(self, method: str, *args: Any, **kw: Any) -> Any:
        return _Unary(self, "unary_unary", method, args, kw, bool(IDEMPOTENT.search(method)))

    def stream_unary(self, method: str, *args: Any, **kw: Any) -> Any:
        return _Unary(self, "stream_unary", method, args, kw, False)

    def unary_stream(self, method: str, *args: Any, **kw: Any) -> Any:
        return _Streaming(self, "unary_stream", method, args, kw)

    def stream_stream(self, method: str, *args: Any, **kw: Any) -> Any:
        return _Streaming(self, "stream_stream", method, args, kw)


class _Callable:
    def __init__(
        self, ch: FailoverChannel, kind: str, method: str, args: tuple[Any, ...], kw: Any
    ) -> None:
        self.ch = ch
        # Made now, as a stub makes them: grpc crashes the process when one is made on a
        # channel already closed (a call on a closed channel only fails).
        self._calls = [getattr(c, kind)(method, *args, **kw) for c in ch.channels]

    def _on(self, index: int) -> Any:
        return self._calls[index]


class _Unary(_Callable):
    def __init__(
        self,
        ch: FailoverChannel,
        kind: str,
        method: str,
        args: tuple[Any, ...],
        kw: Any,
        retry: bool,
    ) -> None:
        super().__init__(ch, kind, method, args, kw)
        self.retry = retry

    def __call__(self, request: Any, *args: Any, **kw: Any) -> Any:
        return self._attempts(lambda mc: mc(request, *args, **kw))

    def with_call(self, request: Any, *args: Any, **kw: Any) -> Any:
        return self._attempts(lambda mc: mc.with_call(request, *args, **kw))

    def future(self, request: Any, *args: Any, **kw: Any) -> Any:
        return self._on(self.ch.current()).future(request, *args, **kw)

    def _attempts(self, call: Callable[[Any], Any]) -> Any:
        tries = len(self.ch.addresses) if self.retry else 1
        for attempt in range(tries):
            index = self.ch.current()
            try:
                return call(self._on(index))
            except grpc.RpcError as exc:
                if not _unavailable(exc):
                    raise
                self.ch.failed(index)
                if attempt == tries - 1:
                    raise
        raise AssertionError("unreachable")


class _Streaming(_Callable):
    def __call__(self, request: Any, *args: Any, **kw: Any) -> Any:
        index = self.ch.current()
        return _Stream(self._on(index)(request, *args, **kw), lambda: self.ch.failed(index))


class _Stream:
    """A response stream that moves its channel on when it ends with UNAVAILABLE."""

    def __init__(self, inner: Any, failed: Callable[[], None]) -> None:
        self._inner = inner
        self._failed = failed

    def __iter__(self) -> Iterator[Any]:
        return self

    def __next__(self) -> Any:
        try:
            return next(self._inner)
        except grpc.RpcError as exc:
            if _unavailable(exc):
                self._failed()
            raise

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)


def rotated(address: str, turn: int) -> str:
    """The address list ``address`` starting at its ``turn``-th entry (modulo its length):
    a process that reconnects after a failure tries the next replica first."""
    addresses = split(address)
    if len(addresses) < 2:
        return address
    k = turn % len(addresses)
    return ",".join(addresses[k:] + addresses[:k])
