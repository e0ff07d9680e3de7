"""String columns hold what they say on both engines.

PostgreSQL enforces ``VARCHAR(n)`` and refuses NUL characters in text; SQLite takes
anything. So that both engines behave alike, and an over-long value is never an internal
error, every flush checks the string values it writes (``check_flush``, a ``before_flush``
hook of the store's sessions):

- messages (reasons, audit text) are cut to fit, NULs replaced: they describe, nothing
  looks them up;
- any other value (names, ids, addresses) that does not fit is refused with
  ``InvalidArgument`` naming the field, before anything is written.

Only the attributes a flush changes are checked, so rows written before the rule (on
SQLite) can still be updated.
"""

from __future__ import annotations

import functools
from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import Mapper, Session

from workspace.errors import InvalidArgument

# (table, column): free text cut to the column's length.
TRUNCATED = frozenset(
    {
        ("workspaces", "reason"),
        ("workspaces", "wait_reason"),
        ("clusters", "reason"),
        ("trust_audit", "reason"),
        ("trust_audit", "source"),
        ("trust_audit", "digest"),
    }
)
ELLIPSIS = "…"


@functools.cache
def _bounded(mapper: Mapper[Any]) -> tuple[tuple[str, int, bool], ...]:
    """(attribute, length, truncated) of the mapper's bounded string columns."""
    out: list[tuple[str, int, bool]] = []
    for attr in mapper.column_attrs:
        col = attr.columns[0]
        if isinstance(col.type, sa.String) and col.type.length and col.table is not None:
            table = getattr(col.table, "name", "")
            out.append((attr.key, col.type.length, (table, col.name) in TRUNCATED))
    return tuple(out)


def fit(value: str, length: int) -> str:
    """A message made to fit ``length`` characters, without NULs."""
    value = value.replace("\x00", "\ufffd")
    if len(value) > length:
        value = value[: length - len(ELLIPSIS)] + ELLIPSIS
    return value


def check_flush(session: Session, _context: Any, _instances: Any) -> None:
    for obj in list(session.new) + list(session.dirty):
        state = sa.inspect(obj)
        for key, length, truncated in _bounded(state.mapper):
            added = state.attrs[key].history.added
            if not added:
                continue
            value = added[0]
            if not isinstance(value, str) or (len(value) <= length and "\x00" not in value):
                continue
            if truncated:
                setattr(obj, key, fit(value, length))
                continue
            _refuse(key, value, length)


def check_row(mapper: Mapper[Any], values: dict[str, Any]) -> None:
    """``check_flush`` for a row inserted without the ORM (store/mapping.py): ``values``
    by attribute; a message too long is cut in ``values``."""
    for key, length, truncated in _bounded(mapper):
        value = values.get(key)
        if not isinstance(value, str) or (len(value) <= length and "\x00" not in value):
            continue
        if truncated:
            values[key] = fit(value, length)
            continue
        _refuse(key, value, length)


def _refuse(key: str, value: str, length: int) -> None:
    field = key.replace("_", " ")
    if "\x00" in value:
        raise InvalidArgument(f"{field} must not contain a NUL character")
    raise InvalidArgument(f"{field} is too long: {len(value)} characters, at most {length}")
