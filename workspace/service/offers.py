"""Whether any replica holds a node's agent: the answers to an offer on the tasks
channel, one rule for forwarded tasks (service/task_relay.py) and relayed consoles
(service/console_relay.py); docs/design/replicas.md, "Who holds the agent".

The replica an exec or an attach arrived at offers it to the others. Each replica that
hears the offer answers: yes (it holds the node's task stream: ``ack``/``cack``) or no
(``nack``/``cnack``). The first yes is the one told to run it. No one holds the agent
once every *live* replica (the registry's picture, service/registry.py: those whose lock
is held in the database) has said no, or is gone: the answer is then "not connected", as
soon as the last no comes and a picture read after the offer was made shows no other
replica (one started a moment ago may hold the stream already). A replica that is alive
and has not answered yet -- loaded, its notification thread behind -- is waited for, up
to ``ANSWER_S``: until session 44 the offer waited 2 s for a yes and took silence for
no, and a user was told "node n1's agent is not connected" while it was, whenever the
holder answered late.

Without a picture of the replicas (``peers`` None) silence for ``ACK_S`` is taken for no,
as before.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, TypeVar

from workspace.errors import Unavailable

# The longest an offer waits for the answers of live replicas that have not answered.
ANSWER_S = 10.0
# How long a replica keeps an offer it said yes to, waiting to be told to run it: the
# offering replica may take up to ANSWER_S to hear the yes, and the go as long to come.
KEEP_S = 2 * ANSWER_S
# Without a picture of the replicas: how long silence must last to be taken for no.
ACK_S = 2.0
# How often a waiting offer looks at the picture again (a replica gone, a new one).
LOOK_S = 0.25

# The live replicas: when their picture was read (time.monotonic(), when the read began)
# and their ids.
Peers = Callable[[], tuple[float, Iterable[str]]]


K = TypeVar("K")
V = TypeVar("V", bound=tuple[Any, ...])


def recent(kept: dict[K, V], now: float, keep_s: float = KEEP_S) -> dict[K, V]:
    """``kept`` (each value's first item the monotonic time it was kept) without what is
    ``keep_s`` old or older: what a holder keeps of the offers it said yes to."""
    return {k: v for k, v in kept.items() if now - v[0] < keep_s}


@dataclass(frozen=True)
class Replicas:
    """What a relay knows of the other replicas: ``peers``, the live ones (None: no
    picture, silence for ``ACK_S`` is no); ``gone``, whether one is known to be gone
    (service/registry.py)."""

    peers: Peers | None = None
    gone: Callable[[str], bool] = lambda _r: False

    def offer(self, me: str, node: str) -> Answers:
        """The answers to an offer ``me`` makes for ``node``'s agent."""
        return Answers(me, node, self.peers, self.gone)


def not_connected(node: str) -> Unavailable:
    return Unavailable(f"node {node}'s agent is not connected; try again")


def _silent(ids: list[str]) -> str:
    if len(ids) == 1:
        return f"{ids[0]} did not answer whether it does"
    return f"{', '.join(ids[:-1])} and {ids[-1]} did not answer whether they do"


class Answers:
    """The answers to one offer, from the replicas' listener threads; ``wait`` in the
    thread of the call that made the offer."""

    def __init__(
        self,
        me: str,
        node: str,
        peers: Peers | None,
        gone: Callable[[str], bool] = lambda _r: False,
    ) -> None:
        """``me``: the offering replica; ``peers``: the live replicas' ids (this one's
        among them or not); ``gone``: whether a replica is known to be gone."""
        self.me = me
        self.node = node
        self.peers = peers
        self.gone = gone
        self.holder = ""  # the first to say yes: the one told to run it
        self._declined: set[str] = set()
        self._closed = False  # decided without a holder: a late yes is not taken
        self._made = time.monotonic()  # a picture read before may miss a new replica
        self._cond = threading.Condition()

    def acked(self, by: str) -> bool:
        """``by`` holds the stream. True for the first yes while the offer is open: the
        caller tells that replica to run it; any other yes is not taken (its offer
        expires there)."""
        with self._cond:
            if self.holder or self._closed or not by:
                return False
            self.holder = by
            self._cond.notify_all()
            return True

    def declined(self, by: str) -> None:
        """``by`` does not hold the node's stream."""
        with self._cond:
            self._declined.add(by)
            self._cond.notify_all()

    def _waiting_for(self) -> tuple[bool, set[str]]:
        """Whether the picture was read after the offer was made, and the live replicas
        that have not answered."""
        assert self.peers is not None
        read_at, ids = self.peers()
        live = {p for p in ids if p != self.me and not self.gone(p)}
        return read_at >= self._made, live - self._declined

    def wait(self) -> str:
        """The replica that holds the node's stream and was told to run it; Unavailable
        when none does, or when a live replica did not answer within ``ANSWER_S``."""
        end = time.monotonic() + (ACK_S if self.peers is None else ANSWER_S)
        with self._cond:
            while not self.holder:
                fresh, waiting = (False, None) if self.peers is None else self._waiting_for()
                if fresh and not waiting:
                    self._closed = True
                    raise not_connected(self.node)
                left = end - time.monotonic()
                if left <= 0:
                    self._closed = True
                    if waiting is None:
                        raise not_connected(self.node)
                    why = (
                        _silent(sorted(waiting))
                        if waiting
                        else "the live replicas could not be read from the database"
                    )
                    raise Unavailable(
                        f"no replica said within {ANSWER_S:g} s that it holds node "
                        f"{self.node}'s agent ({why}); try again"
                    )
                self._cond.wait(min(left, LOOK_S))
            return self.holder
