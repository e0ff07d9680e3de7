"""Backfill: keep idle capacity busy with preemptible workspaces (docs/design/backfill.md).

An entry names an image, how many workspaces of it at most, their size, networks, the
grace a preempted one gets, and the project they count against. The workspaces belong
to the site principal ``BACKFILL_OWNER`` (workspace/domain/tenancy.py), which no user
certificate can name; only admins see or touch them.
"""

from __future__ import annotations

import re
from dataclasses import dataclass


@dataclass(frozen=True)
class BackfillSpec:
    """One entry as an admin sets it (cpus/memory 0: the create defaults)."""

    image: str
    max_count: int
    cpus: int = 0
    memory_mib: int = 0
    networks: tuple[str, ...] = ()
    grace_s: int = 0
    project: str = ""


@dataclass(frozen=True)
class BackfillView:
    """An entry as stored, with what it has now."""

    spec: BackfillSpec
    owner: str
    live: int = 0  # its workspaces not destroyed (nor being destroyed)
    running: int = 0  # of those, RUNNING


_NOT_IN_NAME = re.compile(r"[^a-z0-9]+")


def workspace_name(image: str, n: int, max_len: int) -> str:
    """``backfill-<image>-<n>``, a valid workspace name (the image's other characters
    become '-'; shortened to ``max_len``)."""
    stem = _NOT_IN_NAME.sub("-", image.lower()).strip("-") or "image"
    tail = f"-{n}"
    head = f"backfill-{stem}"[: max(1, max_len - len(tail))].rstrip("-")
    return head + tail


def free_index(names: set[str], image: str, max_len: int) -> int:
    """The smallest n >= 1 whose name is not among ``names`` (the live ones)."""
    n = 1
    while workspace_name(image, n, max_len) in names:
        n += 1
    return n
