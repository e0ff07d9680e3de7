"""Progress shown while a long transfer runs: a bar redrawn in place on a terminal, one
line per step elsewhere (`ws image push`, `ws image save`, `ws-admin image import`)."""

from __future__ import annotations

import os
import sys
import time
from typing import TextIO

from workspace.cli.render import copying, fmt_bytes
from workspace.v1 import common_pb2, images_pb2


class _Bar:
    """A ``LABEL [####    ]  45.0% 1.2 MiB/2.7 MiB`` bar redrawn in place on a terminal
    (at most every 0.1 s, and always at the end); elsewhere it draws nothing."""

    def __init__(self, stream: TextIO, width: int) -> None:
        self.stream = stream
        self.width = width
        self.tty = stream.isatty()
        self._last_s = 0.0
        self._open = False

    def draw(self, label: str, done: int, total: int, sizes: bool = True) -> None:
        """``done`` of ``total`` bytes (``sizes``: said too; else only the share)."""
        now_s = time.monotonic()
        if not self.tty or (done < total and now_s - self._last_s < 0.1):
            return
        self._last_s = now_s
        frac = done / total if total else 1.0
        bar = "#" * int(self.width * frac)
        tail = f" {fmt_bytes(done)}/{fmt_bytes(total)}" if sizes else ""
        self.stream.write(f"\r{label} [{bar:<{self.width}}] {frac * 100:5.1f}%{tail}")
        self.stream.flush()
        self._open = True

    def end(self) -> None:
        """Finish the bar's line (if one is drawn)."""
        if self._open:
            self.stream.write("\n")
            self._open = False


class UploadProgress:
    """``progress(sent, total)`` for Client.upload_blob (`ws-admin image import`): a bar
    on a terminal; ``done(ref)`` then says what was uploaded."""

    def __init__(
        self, prog: str, label: str, stream: TextIO | None = None, width: int = 30
    ) -> None:
        self.prog = prog
        self.label = label
        self.stream = stream or sys.stderr
        self._bar = _Bar(self.stream, width)

    def __call__(self, sent: int, total: int) -> None:
        self._bar.draw(self.label, sent, total)

    def end(self) -> None:
        """Finish the bar's line (an upload that failed or was interrupted): what follows
        is a line of its own."""
        self._bar.end()

    def done(self, ref: images_pb2.BlobRef) -> None:
        self._bar.end()
        print(
            f"{self.prog}: uploaded {self.label}: {ref.digest} ({fmt_bytes(ref.size_bytes)})",
            file=self.stream,
            flush=True,
        )


class SaveProgress:
    """``on_progress(workspace)`` for Client.save_image (`ws image save`): a bar per disk
    on a terminal while its node copies it, then while it is sent; otherwise a line when
    a disk's copy starts and when it starts to be sent."""

    def __init__(self, prog: str, stream: TextIO | None = None, width: int = 30) -> None:
        self.prog = prog
        self.stream = stream or sys.stderr
        self._bar = _Bar(self.stream, width)
        self._disk = ""
        self._step = ""  # "copying" or "sending"
        self._size = 0

    def __call__(self, ws: common_pb2.Workspace) -> None:
        if not ws.saving_disk:
            return
        self._size = ws.saving_size_bytes
        step = "copying" if copying(ws) else "sending"
        if (ws.saving_disk, step) != (self._disk, self._step):
            if step == "sending" and self._step == "copying" and ws.saving_disk == self._disk:
                self._bar.draw(f"copying  {self._disk}", 100, 100, sizes=False)  # made
            self._bar.end()
            self._disk, self._step = ws.saving_disk, step
            if not self._bar.tty:
                size = f" ({fmt_bytes(ws.saving_size_bytes)})" if ws.saving_size_bytes else ""
                where = " on its node" if step == "copying" else size
                line = f"{self.prog}: {ws.name}: {step} disk {ws.saving_disk}{where}"
                print(line, file=self.stream, flush=True)
        label = f"{step}  {ws.saving_disk}"
        if step == "copying":
            self._bar.draw(label, round(ws.saving_copied_percent * 10), 1000, sizes=False)
        elif ws.saving_size_bytes:
            self._bar.draw(label, ws.saving_sent_bytes, ws.saving_size_bytes)

    def end(self, saved: bool = False) -> None:
        """Finish the bar drawn (full if the save succeeded: its last disk was sent)."""
        if saved and self._disk and self._size:
            self._bar.draw(f"sending  {self._disk}", self._size, self._size)
        self._bar.end()


_STEP_WORDS = {"hash": "hashing", "upload": "sending", "skip": "present"}
# Off a terminal, hashing a file this large is said as it starts and every LINE_EVERY_S.
BIG_FILE = 256 * 1024 * 1024
LINE_EVERY_S = 30.0


class PushProgress:
    """``progress(step, path, done, total)`` for Client.push_image (`ws image push`): a
    bar per file on a terminal; otherwise one line per file once it is sent or found
    present."""

    def __init__(self, prog: str, stream: TextIO | None = None, width: int = 30) -> None:
        self.prog = prog
        self.stream = stream or sys.stderr
        self._bar = _Bar(self.stream, width)
        self._said_s = 0.0

    def __call__(self, step: str, path: str, done: int, total: int) -> None:
        name = os.path.basename(path)
        finished = done >= total
        if step == "hash" and not self._bar.tty and total >= BIG_FILE and not finished:
            now_s = time.monotonic()
            if done == 0 or now_s - self._said_s >= LINE_EVERY_S:
                self._said_s = now_s
                where = f" {done * 100 // total}% of" if done else ""
                self._line(f"{name}: hashing{where} {fmt_bytes(total)}")
        if step == "skip":
            self._bar.end()
            self._line(f"{name}: already in the repository, not sent")
            return
        self._bar.draw(f"{_STEP_WORDS.get(step, step):8} {name}", done, total)
        if finished:
            self._bar.end()
        if step == "upload" and finished:
            self._line(f"{name}: sent {fmt_bytes(total)}")

    def end(self) -> None:
        """Finish the bar's line (a push that failed or was interrupted): what follows is
        a line of its own."""
        self._bar.end()

    def _line(self, text: str) -> None:
        print(f"{self.prog}: {text}", file=self.stream, flush=True)
