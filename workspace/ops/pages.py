"""Page tokens of the paged List RPCs (docs/api.md, "Limits"): opaque to clients, each
names the list it was given out for and where in it the next page begins. A token of
another list, or not one this service gave out, is INVALID_ARGUMENT (before, a
ListWorkspaces token given to ListImages was read as an image name: a wrong page)."""

from __future__ import annotations

import base64
import math

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
