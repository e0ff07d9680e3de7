"""libvirt's event loop and one connection to libvirtd (agent/virt/libvirt_driver.py uses
both).

* **The event loop** is libvirt's default implementation, process-global: registered
  once before the first connection opens, run by one daemon thread while at least one
  driver uses it (``EVENT_LOOP.acquire``/``release``).
* **The connection** is opened on first use and reopened after it drops; each (re)open
  registers keepalive, a close callback and the domain event handlers the driver gave
  (lifecycle changes, and the resets QEMU reports), so events keep flowing after
  libvirtd restarts. Handlers run on the event loop thread: they must not block.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Callable
from typing import Any

import libvirt

from workspace.errors import DriverError

log = logging.getLogger("agent.virt.libvirt_driver")


def error_code(exc: libvirt.libvirtError) -> int:
    return int(exc.get_error_code() or 0)


def error_message(exc: libvirt.libvirtError) -> str:
    return str(exc.get_error_message() or exc)


def _ignore_libvirt_error(_ctx: object, _err: object) -> None:
    """libvirt prints every error to stderr by default; we raise them instead."""


def _wake_timer(_timer: int, _opaque: object) -> None:
    """A no-op timeout whose only purpose is to make the event loop iterate."""


class EventLoop:
    """libvirt's default event loop, run by one daemon thread per process.

    The implementation is process-global and must be registered before the first
    connection is opened. The thread runs while at least one driver uses it.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._registered = False
        self._users = 0
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()

    def acquire(self) -> None:
        with self._lock:
            if not self._registered:
                libvirt.registerErrorHandler(_ignore_libvirt_error, None)
                libvirt.virEventRegisterDefaultImpl()
                self._registered = True
            self._users += 1
            if self._thread is None:
                self._stop.clear()
                self._thread = threading.Thread(
                    target=self._run, name="libvirt-events", daemon=True
                )
                self._thread.start()

    def release(self) -> None:
        with self._lock:
            self._users -= 1
            thread = self._thread
            if self._users > 0 or thread is None:
                return
            self._thread = None
            self._stop.set()
            # Joined under the lock: a new thread must not start while this one runs.
            timer = libvirt.virEventAddTimeout(0, _wake_timer, None)
            thread.join(timeout=5.0)
            libvirt.virEventRemoveTimeout(timer)
            if thread.is_alive():
                log.warning("libvirt event loop thread did not stop within 5 s")

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                libvirt.virEventRunDefaultImpl()
            except libvirt.libvirtError as exc:
                log.warning("libvirt event loop: %s", error_message(exc))
                time.sleep(0.1)


EVENT_LOOP = EventLoop()

LifecycleHandler = Callable[[str, int], None]  # (domain name, event)
RebootHandler = Callable[[str], None]  # (domain name): the guest was reset or rebooted


class LibvirtConnection:
    """One libvirt connection, opened on first use and reopened after it drops.

    On every (re)open it registers the lifecycle and reboot event handlers and
    keepalive, so events keep flowing after libvirtd restarts.
    """

    def __init__(
        self,
        uri: str,
        on_lifecycle: LifecycleHandler,
        on_reboot: RebootHandler | None = None,
    ) -> None:
        self._uri = uri
        self._on_lifecycle = on_lifecycle
        self._on_reboot = on_reboot
        self._lock = threading.Lock()
        self._conn: Any = None
        self._callback_ids: list[int] = []
        self._closed = False

    @property
    def uri(self) -> str:
        return self._uri

    def get(self) -> Any:
        """The live connection (a libvirt.virConnect); raises libvirtError if it cannot open."""
        with self._lock:
            if self._closed:
                raise DriverError(f"libvirt: connection to {self._uri} is closed")
            conn = self._conn
            if conn is not None:
                if self._alive(conn):
                    return conn
                log.warning("libvirt: connection to %s dropped; reconnecting", self._uri)
                self._drop_locked()
            conn = libvirt.open(self._uri)
            self._setup(conn)
            self._conn = conn
            return conn

    def drop_if_dead(self, conn: Any) -> bool:
        """Forget ``conn`` if it is dead; True if the caller should retry."""
        if self._alive(conn):
            return False
        with self._lock:
            if self._conn is conn:
                self._drop_locked()
        return True

    def close(self) -> None:
        with self._lock:
            self._closed = True
            self._drop_locked()

    @staticmethod
    def _alive(conn: Any) -> bool:
        try:
            return bool(conn.isAlive())
        except libvirt.libvirtError:
            return False

    def _setup(self, conn: Any) -> None:
        with contextlib.suppress(libvirt.libvirtError):
            # Detects a vanished libvirtd (remote connections only; needs the event loop).
            conn.setKeepAlive(5, 3)
        with contextlib.suppress(libvirt.libvirtError):
            conn.registerCloseCallback(self._closed_cb, None)
        self._callback_ids = [
            conn.domainEventRegisterAny(
                None, libvirt.VIR_DOMAIN_EVENT_ID_LIFECYCLE, self._lifecycle_cb, None
            )
        ]
        if self._on_reboot is not None:
            self._callback_ids.append(
                conn.domainEventRegisterAny(
                    None, libvirt.VIR_DOMAIN_EVENT_ID_REBOOT, self._reboot_cb, None
                )
            )

    def _drop_locked(self) -> None:
        conn, self._conn = self._conn, None
        if conn is None:
            return
        for callback_id in self._callback_ids:
            with contextlib.suppress(libvirt.libvirtError):
                conn.domainEventDeregisterAny(callback_id)
        self._callback_ids = []
        with contextlib.suppress(libvirt.libvirtError):
            conn.unregisterCloseCallback()
        with contextlib.suppress(libvirt.libvirtError):
            conn.close()

    def _closed_cb(self, _conn: Any, reason: int, _opaque: object) -> None:
        # Runs on the event loop thread: only log; the next call reconnects.
        log.warning("libvirt: connection to %s closed (reason %d)", self._uri, reason)

    def _lifecycle_cb(
        self, _conn: Any, dom: Any, event: int, _detail: int, _opaque: object
    ) -> None:
        # Runs on the event loop thread: no libvirt calls that could block here.
        self._on_lifecycle(dom.name(), event)

    def _reboot_cb(self, _conn: Any, dom: Any, _opaque: object) -> None:
        # The event loop thread too. QEMU reports a RESET: the guest rebooted itself (or
        # libvirt restarted it after an ACPI reboot), or someone reset it.
        if self._on_reboot is not None:
            self._on_reboot(dom.name())
