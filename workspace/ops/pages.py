"""Page tokens of the paged List RPCs (docs/api.md, "Limits"): opaque to clients, each
names the list it was given out for and where in it the next page begins. A token of
another list, or not one this service gave out, is INVALID_ARGUMENT (before, a
ListWorkspaces token given to ListImages was read as an image name: a wrong page)."""

from __future__ import annotations

import base64
import math
from collections.abc import Sequence
from typing import Any, Protocol, TypeVar

from sqlalchemy import Select

from workspace.errors import InvalidArgument

NOT_OURS = "page_token is not one this service gave out"


def encode(list_name: str, *parts: str) -> str:
    """The token of ``list_name``'s next page, after the row ``parts`` place."""
    return base64.urlsafe_b64encode("|".join((list_name, *parts)).encode()).decode()


def decode(list_name: str, token: str, count: int) -> list[str]:
    """The ``count`` parts of a token ``encode(list_name, ...)`` gave (the last part may
    hold "|": names are not split)."""
    try:
        text = base64.b64decode(token.encode(), altchars=b"-_", validate=True).decode()
    except (ValueError, UnicodeDecodeError) as exc:
        raise InvalidArgument(NOT_OURS) from exc
    name, _, rest = text.partition("|")
    parts = rest.split("|", count - 1)
    if name != list_name or len(parts) != count:
        raise InvalidArgument(f"{NOT_OURS} for this list ({list_name})")
    return parts


def time_of(text: str) -> float:
    """A time a token holds (finite)."""
    try:
        value = float(text)
    except ValueError as exc:
        raise InvalidArgument(NOT_OURS) from exc
    if not math.isfinite(value):
        raise InvalidArgument(NOT_OURS)
    return value


class Created(Protocol):
    """A row of a list ordered by creation time, then id."""

    @property
    def created_at(self) -> float: ...

    @property
    def id(self) -> str: ...


R = TypeVar("R", bound=Created)
Q = TypeVar("Q", bound=Select[Any])


def check_size(size: int) -> None:
    if size < 0:
        raise InvalidArgument("page_size must not be negative")


def by_creation(q: Q, table: Any, list_name: str, size: int, token: str) -> Q:
    """``q`` (ordered by ``table``'s creation time, then id) limited to the page of
    ``size`` rows (0: all) after the place ``token`` names, and one row more (is there a
    next page?)."""
    if token:
        created, oid = creation_place(list_name, token)
        # The bound on created_at alone first: an index on (created_at, id) then starts
        # at the page (an OR alone is no index condition: every page scanned from the
        # first row).
        q = q.where(table.created_at >= created, (table.created_at > created) | (table.id > oid))
    return q.limit(size + 1) if size else q


def cut(rows: Sequence[R], list_name: str, size: int) -> tuple[Sequence[R], str]:
    """The page of ``rows`` (read by ``by_creation``) and the token of the next page ("" after
    the last)."""
    if not size or len(rows) <= size:
        return rows, ""
    rows = rows[:size]
    return rows, encode(list_name, repr(rows[-1].created_at), rows[-1].id)


def creation_place(list_name: str, token: str) -> tuple[float, str]:
    """(creation time, id) of the row a token of a list by creation names."""
    created, oid = decode(list_name, token, 2)
    return time_of(created), oid
