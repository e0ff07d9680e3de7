"""Who and what the current thread works for: set by the RPC wrapper (edge/calls.py),
read by the site-event journal (store/journal.py: who) and by JSON logs (log.py: ids).

A leaf module (no imports of the project): the store, the edges and logging share it.
Outside an RPC (the service's loops) the caller is "system".
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from contextvars import ContextVar
from dataclasses import dataclass, replace

SYSTEM = "system"


@dataclass(frozen=True)
class CallContext:
    who: str = SYSTEM  # the caller's principal (user:alice, node:n1) or "system"
    method: str = ""  # the RPC, while one runs
    request_id: str = ""
    workspace: str = ""  # a workspace id, once known
    node: str = ""


_NONE = CallContext()
_current: ContextVar[CallContext] = ContextVar("workspace_call", default=_NONE)


def current() -> CallContext:
    return _current.get()


@contextlib.contextmanager
def _within(ctx: CallContext) -> Iterator[CallContext]:
    token = _current.set(ctx)
    try:
        yield ctx
    finally:
        # A generator closed from another thread (a cancelled stream collected late)
        # cannot reset a token of this context; that context ends with it anyway.
        with contextlib.suppress(ValueError):
            _current.reset(token)


@contextlib.contextmanager
def bound(**fields: str) -> Iterator[CallContext]:
    """The current context with ``fields`` replaced, for the block."""
    with _within(replace(_current.get(), **fields)) as ctx:
        yield ctx


@contextlib.contextmanager
def system() -> Iterator[CallContext]:
    """The service's own context ("system") for the block, even in a call's thread (work
    a call only happens to set off, such as marking the nodes of a new CRL's revoked
    certificates DOWN, is not that caller's)."""
    with _within(_NONE) as ctx:
        yield ctx


def note(**fields: str) -> None:
    """Add ids learnt during a call (a workspace id made by a create) to its context;
    outside a call nothing changes (a loop's context would keep them)."""
    ctx = _current.get()
    if ctx.method:
        _current.set(CallContext(**{**ctx.__dict__, **fields}))  # replace() costs 3x
