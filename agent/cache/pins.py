"""Which cached blobs are in use, by which workspace: <root>/pins/<workspace id>.

One small JSON file per workspace lists the digests it uses. The files make pins
survive an agent restart; the agent then drops the pins of workspaces that are no
longer on the node and adds those of workspaces that lack one (``Staging.sync_pins``).
"""

from __future__ import annotations

import json
import logging
import os
import re
from pathlib import Path

from workspace.files import write_private

log = logging.getLogger("agent.cache")

_OWNER_RE = re.compile(r"^[A-Za-z0-9_.-]{1,128}\Z")


class Pins:
    """owner (a workspace id) → the digests it pins. Not thread-safe: BlobCache locks."""

    def __init__(self, root: Path) -> None:
        self.root = root
        root.mkdir(parents=True, exist_ok=True, mode=0o700)
        os.chmod(root, 0o700)  # the agent's alone (QEMU never reads it)
        self._by_owner: dict[str, frozenset[str]] = {}
        self._load()

    def _load(self) -> None:
        for path in self.root.iterdir():
            if path.name.endswith(".tmp") or not _OWNER_RE.match(path.name):
                path.unlink(missing_ok=True)
                continue
            try:
                digests = json.loads(path.read_text())
                if not isinstance(digests, list):
                    raise ValueError("not a list")
                self._by_owner[path.name] = frozenset(str(d) for d in digests)
            except (OSError, ValueError) as exc:
                log.warning("dropping unreadable pin file %s: %s", path, exc)
                path.unlink(missing_ok=True)

    def owners(self) -> set[str]:
        return set(self._by_owner)

    def digests(self, owner: str) -> frozenset[str]:
        return self._by_owner.get(owner, frozenset())

    def pinned(self) -> set[str]:
        out: set[str] = set()
        for digests in self._by_owner.values():
            out |= digests
        return out

    def set(self, owner: str, digests: frozenset[str]) -> None:
        if not _OWNER_RE.match(owner):
            raise ValueError(f"bad pin owner {owner!r}")
        if self._by_owner.get(owner) == digests:
            return
        path = self.root / owner
        write_private(path, json.dumps(sorted(digests)))
        self._by_owner[owner] = digests

    def drop(self, owner: str) -> frozenset[str]:
        digests = self._by_owner.pop(owner, frozenset())
        if _OWNER_RE.match(owner):
            (self.root / owner).unlink(missing_ok=True)
        return digests
