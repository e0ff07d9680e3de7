"""Networks and images a write transaction reads, held for it, and kept by the service
process between its transactions.

A create reads its networks and its image several times (the checks, placement, the
seed, order sizing), and every transaction of creates reads them anew: two ORM loads
per batch, a fifth of a lone create's CPU. ``held`` answers from the transaction's own
dict after the first time, and the first time from the process's cache while the
"catalog" generation is the one the cache was filled at. That generation takes a new
random value at the commit of any transaction that added, changed or removed a network
or an image (store/orders_gen.py; any replica's commit, any module's write through the
store's sessions), and it is read once per transaction: writers are serialised (the
store's write lock, PostgreSQL's advisory lock), so nothing changes it while the
transaction runs.

A kept row is an ORM object that left its session when the transaction ended
(``expire_on_commit`` is off: its columns stay loaded). It joins the next transaction's
session with ``Session.add``, without a statement, only if no session holds it then; a
transaction rolled back leaves it expired, and it then reads its columns again when
used. Only for rows a transaction does not delete while it holds them (the create path's
networks and images).
"""

from __future__ import annotations

import threading
import weakref
from typing import Any, TypeVar, cast

from sqlalchemy import inspect
from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session
from sqlalchemy.orm.util import identity_key

from workspace.store import orders_gen

M = TypeVar("M")
_ROWS = "held.rows"  # s.info: (model, key) -> the row, for the transaction
_GEN = "held.gen"  # s.info: the catalog generation the transaction read (None: none)
KEPT = orders_gen.KEPT  # what the process keeps between transactions


class _Kept:
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.gen: int | None = None
        self.rows: dict[tuple[type, str], Any] = {}


_kept: weakref.WeakKeyDictionary[Engine, _Kept] = weakref.WeakKeyDictionary()
_kept_lock = threading.Lock()


def _kept_of(s: Session) -> _Kept:
    engine = cast(Engine, s.get_bind())
    found = _kept.get(engine)
    if found is None:
        with _kept_lock:
            found = _kept.setdefault(engine, _Kept())
    return found


def _generation(s: Session) -> int | None:
    """The catalog generation as the transaction sees it, read once; None when the
    transaction changed the catalog itself (or the row is missing): nothing is kept."""
    if orders_gen.catalog_pending(s):
        return None
    if _GEN not in s.info:
        s.info[_GEN] = orders_gen.catalog_generation(s)
    return cast(int | None, s.info[_GEN])


def held(s: Session, model: type[M], key: str) -> M | None:
    """``s.get(model, key)``, held for the rest of the transaction (a lookup here costs a
    hundredth of ``s.get``'s, even of a row in the identity map); a network or an image
    from the process's cache while the catalog has not changed."""
    rows: dict[tuple[type, str], Any] = s.info.setdefault(_ROWS, {})
    found = rows.get((model, key))
    if found is not None:
        return cast(M, found)
    found = _from_kept(s, model, key) if model in KEPT else s.get(model, key)
    if found is not None:
        rows[(model, key)] = found
    return cast(M | None, found)


def _from_kept(s: Session, model: type[Any], key: str) -> Any:
    present = s.identity_map.get(identity_key(model, key))
    if present is not None:
        return present
    gen = _generation(s)
    kept = _kept_of(s)
    with kept.lock:
        if gen is None or gen != kept.gen:
            kept.rows.clear()
            kept.gen = gen
        row = kept.rows.get((model, key))
        if row is not None and inspect(row).detached:
            s.add(row)  # joins this session as loaded: no statement
            return row
    row = s.get(model, key)
    if row is not None and gen is not None:
        with kept.lock:
            if kept.gen == gen:
                kept.rows[(model, key)] = row
    return row
