"""Serial console logs, pushed to the service as they grow.

Each workspace's console log (``WorkspaceFiles.console_log``) is polled; new bytes go
to the service from the offset it expects next. On the first push after a (re)connect
the agent asks the service for that offset; a log shorter than it was recreated, and
the service's copy starts again from zero.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import Protocol

from agent.disks import WorkspaceFiles
from workspace.errors import Unavailable

log = logging.getLogger("agent")

POLL_S = 0.25
CHUNK_BYTES = 256 * 1024


class ConsoleSink(Protocol):
    """Where console bytes go (the link to the service)."""

    def connected(self) -> bool: ...

    def push_console(
        self, workspace_id: str, offset: int, data: bytes = b"", reset: bool = False
    ) -> int:
        """Send ``data`` at ``offset`` (-1: send nothing, only ask); returns the offset
        the service expects next. Raises Unavailable when the call failed."""
        ...


class Consoles:
    def __init__(
        self,
        files: WorkspaceFiles,
        sink: ConsoleSink,
        workspace_ids: Callable[[], list[str]],
        stop: threading.Event,
    ) -> None:
        self.files = files
        self.sink = sink
        self.workspace_ids = workspace_ids  # the workspaces this node should have
        self.stop = stop
        self._offsets: dict[str, int] = {}  # what the service expects next, per workspace

    def run(self) -> None:
        """The polling loop (a thread of its own), until ``stop`` is set."""
        while not self.stop.wait(POLL_S):
            if not self.sink.connected():
                continue
            ids = self.workspace_ids()
            for gone in set(self._offsets) - set(ids):
                del self._offsets[gone]
            for wid in ids:
                try:
                    self.push(wid)
                except Unavailable:
                    self._offsets.pop(wid, None)
                except Exception:
                    log.exception("console push for %s failed", wid)

    def push(self, workspace_id: str) -> None:
        """Send what the service does not have yet of one workspace's console log."""
        path = self.files.console_log(workspace_id)
        if not path.exists():
            return
        size = path.stat().st_size
        offset = self._offsets.get(workspace_id)
        if offset is None:
            offset = self.sink.push_console(workspace_id, -1)
            if size < offset:  # the log was recreated: start the service's copy again
                offset = self.sink.push_console(workspace_id, 0, reset=True)
            self._offsets[workspace_id] = offset
        if size <= offset:
            return
        with open(path, "rb") as f:
            f.seek(offset)
            data = f.read(CHUNK_BYTES)
        self._offsets[workspace_id] = self.sink.push_console(workspace_id, offset, data)
