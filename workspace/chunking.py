"""How big each message of a streamed upload is: by how fast the link takes them.

The service waits for each chunk of an upload (UploadBlob, PutBlob) at most ``CHUNK_S``
(edge/calls.py), and gRPC hands it a message only once all of it arrived. Chunks of a
fixed 1 MiB so cut every link slower than 1 MiB per minute (about 17 KB/s), however
steadily its bytes flowed. A sender now starts with ``START_BYTES`` and doubles the next
chunk while each is taken within ``TARGET_S``, halving it (down to ``MIN_BYTES``) when
one takes longer: on a fast link the chunks grow to ``MAX_BYTES``, on a slow one each
stays a few seconds' worth. How fast a chunk is taken is no sure measure of the link
(the connection's buffers take the first ones at once), so ``MAX_BYTES`` is what bounds
the slowest link served: 256 KiB per ``CHUNK_S``, about 4.4 KB/s, in the worst case; a
link that stays slow keeps the chunks near ``MIN_BYTES``. A link that brings no byte at
all (a stall) is still cut after ``CHUNK_S``.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from typing import BinaryIO

MIN_BYTES = 16 * 1024
START_BYTES = 64 * 1024
MAX_BYTES = 256 * 1024
# A chunk taken within this long makes the next one twice as large; one that took longer
# makes it half as large.
TARGET_S = 2.0


class ChunkSizer:
    """The size of the next chunk, from how long the last one took to be taken."""

    def __init__(
        self, max_bytes: int | None = None, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.clock = clock
        self.max_bytes = max(MIN_BYTES, MAX_BYTES if max_bytes is None else max_bytes)
        self.size = min(START_BYTES, self.max_bytes)

    def took(self, seconds: float) -> None:
        """The last chunk (of ``self.size`` bytes or less) was taken in ``seconds``."""
        if seconds <= TARGET_S:
            self.size = min(self.max_bytes, self.size * 2)
        else:
            self.size = max(MIN_BYTES, self.size // 2)

    def read(self, f: BinaryIO) -> Iterator[bytes]:
        """The chunks of ``f`` to its end, each sized by how fast the one before was
        taken (the time from yielding it to being asked for the next)."""
        while data := f.read(self.size):
            at = self.clock()
            yield data
            self.took(self.clock() - at)
