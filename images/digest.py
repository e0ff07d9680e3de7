"""Content digests (``sha256:<64 lowercase hex>``): the one place that parses, checks and
computes them, for the service's repository, the node's cache and image signing.

This module imports neither ``workspace`` nor ``agent``.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable
from pathlib import Path

ALGORITHM = "sha256"
CHUNK_BYTES = 1024 * 1024
_RE = re.compile(r"sha256:[0-9a-f]{64}")


class DigestError(ValueError):
    """Text that is not a ``sha256:<64 hex digits>`` digest."""


def is_valid(digest: str) -> bool:
    return _RE.fullmatch(digest) is not None


def check(digest: str) -> str:
    """``digest`` unchanged, or DigestError saying what a digest looks like."""
    if not is_valid(digest):
        raise DigestError(f"{digest!r} is not a digest (expected sha256:<64 hex digits>)")
    return digest


def hex_of(digest: str) -> str:
    """The 64 hex digits of a valid digest (DigestError otherwise)."""
    return check(digest)[len(ALGORITHM) + 1 :]


def from_hex(hexpart: str) -> str:
    return check(f"{ALGORITHM}:{hexpart}")


def of_bytes(data: bytes) -> str:
    return f"{ALGORITHM}:{hashlib.sha256(data).hexdigest()}"


def of_chunks(chunks: Iterable[bytes]) -> str:
    h = hashlib.sha256()
    for chunk in chunks:
        h.update(chunk)
    return f"{ALGORITHM}:{h.hexdigest()}"


def of_file(path: Path) -> str:
    """The digest of a file's content, read in 1 MiB chunks."""
    with open(path, "rb") as f:
        return of_chunks(iter(lambda: f.read(CHUNK_BYTES), b""))


class Hasher:
    """Hash while streaming: ``update`` each chunk, then ``digest``."""

    def __init__(self) -> None:
        self._h = hashlib.sha256()
        self.size_bytes = 0

    def update(self, chunk: bytes) -> None:
        self._h.update(chunk)
        self.size_bytes += len(chunk)

    def digest(self) -> str:
        return f"{ALGORITHM}:{self._h.hexdigest()}"
