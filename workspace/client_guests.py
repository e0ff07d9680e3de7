"""The guests half of the Python client (``Client`` inherits it): commands run through a
workspace's guest agent (``exec``), the interactive serial console (``attach_console``)."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any, TypeVar

import grpc

from workspace import errors
from workspace.client_args import strings
from workspace.domain import booting
from workspace.v1 import access_pb2, access_pb2_grpc, common_pb2

T = TypeVar("T")

# The service's own default timeout of a command (limits.exec_default_timeout_s) is not
# known here: a call given none waits up to this long, plus EXEC_MARGIN_S.
EXEC_WAIT_S = 3600.0
# The service answers this long after the command's timeout at the latest.
EXEC_MARGIN_S = 60.0
# How often exec asks again while no guest agent answers (``boot_wait_s``).
GUEST_POLL_S = 2.0


def boot_wait_for(ws: common_pb2.Workspace, now: float | None = None) -> float:
    """How long a command for ``ws`` should wait for its guest agent (or sshd): what is
    left of the boot window (``workspace/domain/booting.py``) when it is RUNNING and
    started or changed less than that ago, else 0 (one that has run for long fails
    fast)."""
    return booting.boot_left(
        ws.state == common_pb2.WorkspaceState.WORKSPACE_STATE_RUNNING,
        ws.updated_at.ToNanoseconds() / 1e9,
        time.time() if now is None else now,
    )


class GuestsClientMixin:
    """Needs ``_call``, ``_error`` and ``_guests`` from the Client."""

    # Made with the Client's other stubs, never later: grpc crashes the process
    # (SIGSEGV) when a stub is made on a channel already closed.
    _guests: access_pb2_grpc.GuestsStub

    def _call(self, method: Callable[..., T], request: Any, timeout_s: float | None = None) -> T:
        raise NotImplementedError

    def _error(self, exc: grpc.RpcError) -> errors.WorkspaceError:
        raise NotImplementedError

    def exec(
        self,
        id: str,
        argv: Sequence[str],
        stdin: bytes = b"",
        timeout_s: int = 0,
        boot_wait_s: float = 0.0,
        on_wait: Callable[[errors.WorkspaceError], None] | None = None,
    ) -> access_pb2.ExecResult:
        """Run ``argv`` in workspace ``id`` through its guest agent and wait for it:
        exit code, stdout, stderr, ``timed_out`` (after ``timeout_s``; 0: the service's
        default), ``truncated``. FailedPrecondition when the workspace is not running or
        no guest agent answers; Unavailable when its node's agent is not connected.

        ``boot_wait_s``: while no guest agent answers (a guest still booting), ask again
        every ``GUEST_POLL_S`` until this long has passed (0: once), telling ``on_wait``
        the first refusal; then the last refusal is raised. ``boot_wait_for`` says how long
        a workspace just started may take."""
        req = access_pb2.ExecRequest(
            id=id, argv=strings(argv, "argv"), stdin=stdin, timeout_s=timeout_s
        )
        deadline = time.monotonic() + boot_wait_s
        waiting = False
        while True:
            try:
                return self._call(
                    self._guests.Exec, req, (timeout_s or EXEC_WAIT_S) + EXEC_MARGIN_S
                )
            except errors.FailedPrecondition as exc:
                left = deadline - time.monotonic()
                if not booting.is_no_guest_agent(exc.message) or left <= 0:
                    raise
                if not waiting and on_wait is not None:
                    on_wait(exc)
                waiting = True
            time.sleep(min(GUEST_POLL_S, left))  # the last try at the deadline

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
