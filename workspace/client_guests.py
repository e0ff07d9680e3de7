"""The guests half of the Python client (``Client`` inherits it): commands run through a
workspace's guest agent (``exec``), the interactive serial console (``attach_console``)."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any, TypeVar

import grpc

from workspace import errors
from workspace.v1 import access_pb2, access_pb2_grpc

T = TypeVar("T")

# The service's own default timeout of a command (limits.exec_default_timeout_s) is not
# known here: a call given none waits up to this long, plus EXEC_MARGIN_S.
EXEC_WAIT_S = 3600.0
# The service answers this long after the command's timeout at the latest.
EXEC_MARGIN_S = 60.0


class GuestsClientMixin:
    """Needs ``_call``, ``_error`` and ``_channel`` from the Client."""

    _channel: grpc.Channel
    _guests_stub: access_pb2_grpc.GuestsStub | None = None

    def _call(self, method: Callable[..., T], request: Any, timeout_s: float | None = None) -> T:
        raise NotImplementedError

    def _error(self, exc: grpc.RpcError) -> errors.WorkspaceError:
        raise NotImplementedError

    @property
    def _guests(self) -> access_pb2_grpc.GuestsStub:
        if self._guests_stub is None:
            self._guests_stub = access_pb2_grpc.GuestsStub(self._channel)
        return self._guests_stub

    def exec(
        self, id: str, argv: Sequence[str], stdin: bytes = b"", timeout_s: int = 0
    ) -> access_pb2.ExecResult:
        """Run ``argv`` in workspace ``id`` through its guest agent and wait for it:
        exit code, stdout, stderr, ``timed_out`` (after ``timeout_s``; 0: the service's
        default), ``truncated``. FailedPrecondition when the workspace is not running or
        no guest agent answers; Unavailable when its node's agent is not connected."""
        req = access_pb2.ExecRequest(id=id, argv=list(argv), stdin=stdin, timeout_s=timeout_s)
        return self._call(self._guests.Exec, req, (timeout_s or EXEC_WAIT_S) + EXEC_MARGIN_S)

    def attach_console(self, id: str, keystrokes: Iterable[bytes]) -> Iterator[bytes]:
        """The serial console of workspace ``id``, both ways: ``keystrokes`` go to the
        guest (when they end, the session ends: a detach); the console's bytes come out
        until the service ends the session. Closing the iterator cancels it."""

        def requests() -> Iterator[access_pb2.ConsoleInput]:
            yield access_pb2.ConsoleInput(id=id)
            for data in keystrokes:
                yield access_pb2.ConsoleInput(data=data)

        call = self._guests.AttachConsole(requests())
        try:
            for chunk in call:
                yield bytes(chunk.data)
        except grpc.RpcError as exc:
            if exc.code() != grpc.StatusCode.CANCELLED:
                raise self._error(exc) from None
        finally:
            call.cancel()
