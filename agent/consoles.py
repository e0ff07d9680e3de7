"""Serial console logs, pushed to the service as they grow.

Each workspace's console log (``WorkspaceFiles.console_log``) is polled; new bytes go
to the service from the offset it expects next. On the first push after a (re)connect
the agent asks the service for that offset; a log shorter than it was recreated, and
the service's copy starts again from zero.

virtlogd rotates a console log past its ``max_size`` (2 MiB by default): the file
becomes ``console.log.0`` and a new, empty ``console.log`` follows. The agent keeps
where it is in the file apart from the service's offset and follows the file it read
(its inode): the rest of the rotated one is sent, then the new one from its start, so
the service's copy goes on as one log. (The file's offset was the service's: after a
rotation nothing more was sent until the new file outgrew the old, and then only what
came after that offset, for every guest that printed 2 MiB on its console.)
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from agent.disks import WorkspaceFiles
from workspace.errors import Unavailable
from workspace.log import about

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


@dataclass
class _Cursor:
    offset: int  # what the service expects next
    inode: int  # the file being read (a rotation replaces it)
    pos: int  # how far into that file has been sent


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
        self._cursors: dict[str, _Cursor] = {}  # where each workspace's log is sent up to

    def run(self) -> None:
        """The polling loop (a thread of its own), until ``stop`` is set."""
        while not self.stop.wait(POLL_S):
            if not self.sink.connected():
                continue
            ids = self.workspace_ids()
            for gone in set(self._cursors) - set(ids):
                del self._cursors[gone]
            for wid in ids:
                try:
                    self.push(wid)
                except Unavailable:
                    self._cursors.pop(wid, None)
                except Exception:
                    log.exception("console push for %s failed", wid, extra=about(wid))

    def push(self, workspace_id: str) -> None:
        """Send what the service does not have yet of one workspace's console log (a
        chunk of it at most)."""
        path = self.files.console_log(workspace_id)
        try:
            st = path.stat()
        except FileNotFoundError:
            return
        cur = self._cursors.get(workspace_id)
        if cur is None:
            offset = self.sink.push_console(workspace_id, -1)
            if st.st_size < offset:  # the log was recreated: start the service's copy again
                offset = self.sink.push_console(workspace_id, 0, reset=True)
            cur = self._cursors[workspace_id] = _Cursor(offset, st.st_ino, offset)
        if st.st_ino != cur.inode:
            # Rotated by virtlogd: the rest of the file it became first, then the new one.
            if self._send(workspace_id, cur, path.with_name(path.name + ".0")):
                return
            cur.inode, cur.pos = st.st_ino, 0
        elif st.st_size < cur.pos:
            cur.pos = 0  # emptied in place (copytruncate): what follows is new
        self._send(workspace_id, cur, path)

    def _send(self, workspace_id: str, cur: _Cursor, path: Path) -> bool:
        """Send the next chunk of ``path`` if it is the file ``cur`` reads; True while
        more of it is left to send."""
        try:
            with open(path, "rb") as f:
                size = os.fstat(f.fileno()).st_size
                if os.fstat(f.fileno()).st_ino != cur.inode or size <= cur.pos:
                    return False
                f.seek(cur.pos)
                data = f.read(CHUNK_BYTES)
        except FileNotFoundError:
            return False
        offset = self.sink.push_console(workspace_id, cur.offset, data)
        if offset != cur.offset + len(data):
            # The service expects something else: ask it again at the next push.
            self._cursors.pop(workspace_id, None)
            return False
        cur.offset, cur.pos = offset, cur.pos + len(data)
        return cur.pos < size
