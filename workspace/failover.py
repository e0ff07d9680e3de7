"""One gRPC channel over several service replicas (``a,b,c``; docs/design/replicas.md).

``rpc.channel`` returns a ``FailoverChannel`` for an address list: calls go to one replica
at a time (the first, until it fails). A call that fails with UNAVAILABLE moves the channel
on to the next address; an idempotent unary call (``IDEMPOTENT``: reads, creates by
request id, desired-state operations, the agents' registration, reports and console
pushes) is then retried there at once, every address once. So is any unary call, and a
response stream before its first message, that never left this process: gRPC found no
connection to send it on (``never_sent``: a replica that is down refuses the connection).
Any other failure of a call -- an exec, an upload, a stream under way -- is what it would
be on one address, and its caller's own retry or reconnect goes to the next replica.
A call that failed with UNAVAILABLE raises ``AllFailed``: the last replica's error,
carrying each address tried and what gRPC said of it (``failures``), so the client can
name them all rather than only the last (and not the list for the one tried).
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
    r"EnableNode|SetMode|SetImagePublic|WhoAmI)$"
)


def split(address: str) -> list[str]:
    """``"a, b,c"`` -> ``["a", "b", "c"]`` (one address: a list of one)."""
    return [a.strip() for a in address.split(",") if a.strip()]


def _unavailable(exc: BaseException) -> bool:
    return isinstance(exc, grpc.RpcError) and getattr(exc, "code", lambda: None)() in (
        grpc.StatusCode.UNAVAILABLE,
    )


# What gRPC core says when its load balancer had no connected transport to pick for a
# call (every connection attempt failed): the call was failed before anything of it was
# sent, so no replica can have acted on it.
_PICK_FAILED = "failed to connect to all addresses"


def never_sent(exc: BaseException) -> bool:
    """``exc`` failed a call that no server received (UNAVAILABLE, no connection)."""
    if not _unavailable(exc):
        return False
    details = getattr(exc, "details", lambda: "")()
    return isinstance(details, str) and details.startswith(_PICK_FAILED)


def may_have_reached(exc: BaseException) -> bool:
    """Whether a call that failed with ``exc`` may have been received by a service: it
    was not ``never_sent``, or, failed on several replicas (``AllFailed``), it was not on
    one of them (the last one tried may have been down while an earlier one took the
    call and went away under it)."""
    if isinstance(exc, AllFailed):
        return any(not why.startswith(_PICK_FAILED) for _a, why in exc.failures)
    return not never_sent(exc)


class AllFailed(grpc.RpcError):
    """A call that failed with UNAVAILABLE on each address it was tried on (one, or
    several when it could be sent again): the last one's error (its ``code()`` and
    ``details()``), and ``failures``, each address tried with what gRPC said of it, in
    the order they were tried."""

    def __init__(self, last: grpc.RpcError, failures: Sequence[tuple[str, str]]) -> None:
        super().__init__(str(last))
        self.last = last
        self.failures = list(failures)

    def code(self) -> Any:
        return self.last.code()

    def details(self) -> Any:
        return self.last.details()

    def __getattr__(self, name: str) -> Any:
        if name == "last":  # (before __init__ set it: no recursion)
            raise AttributeError(name)
        return getattr(self.last, name)

    def __str__(self) -> str:
        return "; ".join(f"{a}: {d}" for a, d in self.failures)


def _said(exc: BaseException) -> str:
    details = getattr(exc, "details", lambda: "")()
    return details if isinstance(details, str) and details else "unavailable"


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
        return _Streaming(self, "unary_stream", method, args, kw, again=True)

    def stream_stream(self, method: str, *args: Any, **kw: Any) -> Any:
        # Its requests are an iterator gRPC may have begun to read: never sent again.
        return _Streaming(self, "stream_stream", method, args, kw, again=False)


class _Callable:
    def __init__(
        self,
        ch: FailoverChannel,
        kind: str,
        method: str,
        args: tuple[Any, ...],
        kw: Any,
        again: bool,
    ) -> None:
        self.ch = ch
        self.kind = kind
        self.again = again
        # Made now, as a stub makes them: grpc crashes the process when one is made on a
        # channel already closed (a call on a closed channel only fails).
        self._calls = [getattr(c, kind)(method, *args, **kw) for c in ch.channels]

    def _on(self, index: int) -> Any:
        return self._calls[index]


class _Unary(_Callable):
    """``again``: an idempotent call, sent again on the next replica after UNAVAILABLE."""

    def __call__(self, request: Any, *args: Any, **kw: Any) -> Any:
        return self._attempts(lambda mc: mc(request, *args, **kw))

    def with_call(self, request: Any, *args: Any, **kw: Any) -> Any:
        return self._attempts(lambda mc: mc.with_call(request, *args, **kw))

    def future(self, request: Any, *args: Any, **kw: Any) -> Any:
        """Sent once, to the replica in use; one failing with UNAVAILABLE moves the
        channel on, as a blocking call does."""
        index = self.ch.current()
        fut = self._on(index).future(request, *args, **kw)

        def ended(done: Any) -> None:
            if done.code() == grpc.StatusCode.UNAVAILABLE:
                self.ch.failed(index)

        fut.add_done_callback(ended)
        return fut

    def _attempts(self, call: Callable[[Any], Any]) -> Any:
        failures: list[tuple[str, str]] = []
        for attempt in range(len(self.ch.addresses)):
            index = self.ch.current()
            try:
                return call(self._on(index))
            except grpc.RpcError as exc:
                if not _unavailable(exc):
                    raise
                failures.append((self.ch.addresses[index], _said(exc)))
                self.ch.failed(index)
                # A stream of requests may have been read in part: never sent again.
                again = self.again or (self.kind == "unary_unary" and never_sent(exc))
                if not again or attempt == len(self.ch.addresses) - 1:
                    raise AllFailed(exc, failures) from None
        raise AssertionError("unreachable")


class _Streaming(_Callable):
    """``again``: a stream that may be opened again on the next replica when none
    received it (its request is one message, not an iterator gRPC may have read)."""

    def __call__(self, request: Any, *args: Any, **kw: Any) -> Any:
        return _Stream(self.ch, lambda index: self._on(index)(request, *args, **kw), self.again)


class _Stream:
    """A response stream that moves its channel on when it ends with UNAVAILABLE; one
    that never reached a replica is started again on the next (``again``), every
    address once, before its first message."""

    def __init__(self, ch: FailoverChannel, start: Callable[[int], Any], again: bool) -> None:
        self._ch = ch
        self._start = start
        self._index = ch.current()
        self._inner = start(self._index)
        self._resends = len(ch.addresses) - 1 if again else 0
        self._received = False
        self._failures: list[tuple[str, str]] = []

    def __iter__(self) -> Iterator[Any]:
        return self

    def __next__(self) -> Any:
        while True:
            try:
                message = next(self._inner)
            except grpc.RpcError as exc:
                if not _unavailable(exc):
                    raise
                self._ch.failed(self._index)
                if not self._received:
                    self._failures.append((self._ch.addresses[self._index], _said(exc)))
                if self._received or self._resends <= 0 or not never_sent(exc):
                    if self._received:
                        raise
                    raise AllFailed(exc, self._failures) from None
                self._resends -= 1
                self._index = self._ch.current()
                self._inner = self._start(self._index)
                continue
            self._received = True
            return message

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)


def in_use(channel: grpc.Channel, address: str) -> str:
    """The address ``channel`` (made for ``address``) sends its calls to now: one replica
    of a list, for a log line."""
    return channel.address if isinstance(channel, FailoverChannel) else address


def rotated(address: str, turn: int) -> str:
    """The address list ``address`` starting at its ``turn``-th entry (modulo its length):
    a process that reconnects after a failure tries the next replica first."""
    addresses = split(address)
    if len(addresses) < 2:
        return address
    k = turn % len(addresses)
    return ",".join(addresses[k:] + addresses[:k])
