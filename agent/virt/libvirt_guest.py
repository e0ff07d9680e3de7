"""The libvirt driver's way into a guest: what a failed guest agent command means, and
the interactive console on a libvirt stream.

The console stream is non-blocking (``virDomainOpenConsole`` wants one for two-way I/O):
a blocking ``virStreamRecv`` would do the connection's I/O itself and need no event
loop, but it cannot be woken to close the session. Readable events come from the
driver's default event loop thread (``libvirt_conn.EventLoop``), which must be
running; the callback only reads what is there and queues it. The console log file
(virtlogd) keeps being written whatever sessions come and go.
"""

from __future__ import annotations

import contextlib
import queue
import threading
import time
from typing import Any

import libvirt

from agent.virt.base import ConsoleSession
from agent.virt.guest_agent import CommandFailed, no_guest_agent
from workspace.errors import DriverError, FailedPrecondition


def code_of(exc: libvirt.libvirtError) -> int:
    return int(exc.get_error_code() or 0)


def message_of(exc: libvirt.libvirtError) -> str:
    return str(exc.get_error_message() or exc)


def agent_error(exc: libvirt.libvirtError, name: str) -> Exception:
    """What a failed qemuAgentCommand means: the domain is not running, no guest agent
    answers, the agent refused the command (CommandFailed), or anything else."""
    code, text = code_of(exc), message_of(exc)
    low = text.lower()
    if code == libvirt.VIR_ERR_OPERATION_INVALID and "not running" in low:
        return FailedPrecondition(f"workspace {name} is not running")
    if code in (libvirt.VIR_ERR_AGENT_UNRESPONSIVE, libvirt.VIR_ERR_AGENT_UNSYNCED) or (
        code == libvirt.VIR_ERR_ARGUMENT_UNSUPPORTED and "agent" in low
    ):
        return no_guest_agent(name)
    if "has been disabled" in low or "has not been found" in low:
        return FailedPrecondition(f"the guest agent in workspace {name} refuses guest-exec: {text}")
    if "unable to execute qemu agent command" in low:
        # "...command 'guest-exec': Failed to execute child process ... (No such file...)"
        return CommandFailed(text.split("': ", 1)[-1])
    return DriverError(f"libvirt: guest agent command in workspace {name}: {text}")


class LibvirtConsole(ConsoleSession):
    """A domain's console on a non-blocking libvirt stream (``openConsole`` wants one for
    two-way I/O). Reads are callbacks on the driver's event loop thread, queued here;
    writes send at once."""

    def __init__(self, stream: Any, name: str) -> None:
        self._stream = stream
        self._name = name
        self._out: queue.Queue[bytes] = queue.Queue()
        self._lock = threading.Lock()
        self._ended = False
        self._closed = False
        stream.eventAddCallback(
            libvirt.VIR_STREAM_EVENT_READABLE
            | libvirt.VIR_STREAM_EVENT_ERROR
            | libvirt.VIR_STREAM_EVENT_HANGUP,
            self._on_event,
            None,
        )

    def _end(self) -> None:
        """No more output (EOF, error, closed): wake the reader; stop the callbacks."""
        with self._lock:
            if self._ended:
                return
            self._ended = True
        self._out.put(b"")
        with contextlib.suppress(libvirt.libvirtError):
            self._stream.eventUpdateCallback(0)

    def _on_event(self, stream: Any, events: int, _opaque: object) -> None:
        # The event loop thread: non-blocking reads only.
        if events & libvirt.VIR_STREAM_EVENT_READABLE:
            while not self._ended:
                try:
                    data = stream.recv(64 * 1024)
                except libvirt.libvirtError:
                    self._end()
                    return
                if data == -2:  # nothing more for now
                    break
                if not data:  # EOF: the guest stopped, or another session took over
                    self._end()
                    return
                self._out.put(bytes(data))
        if events & (libvirt.VIR_STREAM_EVENT_ERROR | libvirt.VIR_STREAM_EVENT_HANGUP):
            self._end()

    def read(self, timeout_s: float) -> bytes | None:
        try:
            return self._out.get(timeout=timeout_s)
        except queue.Empty:
            return b"" if self._ended else None

    def write(self, data: bytes) -> None:
        view = memoryview(data)
        deadline = time.monotonic() + 5.0
        while view:
            if self._ended:
                raise DriverError(f"libvirt: the console of workspace {self._name} is closed")
            try:
                sent = self._stream.send(bytes(view))
            except libvirt.libvirtError as exc:
                self._end()
                raise DriverError(
                    f"libvirt: console of workspace {self._name}: {message_of(exc)}"
                ) from exc
            if sent == -2:  # would block
                if time.monotonic() > deadline:
                    raise DriverError(f"libvirt: the console of workspace {self._name} is stuck")
                time.sleep(0.01)
                continue
            view = view[sent:]

    def close(self) -> None:
        with self._lock:
            if self._closed:
                return
            self._closed = True
        self._end()
        with contextlib.suppress(libvirt.libvirtError):
            self._stream.eventRemoveCallback()
        with contextlib.suppress(libvirt.libvirtError):
            self._stream.abort()
