"""Interactive consoles for an agent connected to another replica (docs/design/replicas.md).

An agent's ``Nodes.Tasks`` stream is connected to one replica; ``ws console --attach`` may
arrive at any. The receiving replica (the *client side*, ``ConsoleRelay.open``) offers the
session on PostgreSQL's ``workspace_tasks`` channel, as an exec is offered
(``service/task_relay.py``): a replica holding the node's stream answers ``cack``, the
others ``cnack``; the client side tells the first to say yes to open it (``cgo``), so
exactly one replica (the *holder side*) opens the console on the agent through its hub.
From then on:

- output (and the session's end, or why it could not go on) flows holder -> client as
  ``cout`` / ``cend`` / ``cerr``, keystrokes client -> holder as ``cin``, the client's
  detach as ``cclose``;
- data travels base64 in chunks of at most ``CHUNK_BYTES`` (a notification stays under
  PostgreSQL's 8000-byte payload limit), each direction numbered by ``s`` so the receiver
  applies them in order;
- each side sends a ping (``cping``/``hping``, carrying how many numbered messages it sent) every
  ``PING_S`` while idle; a side that hears nothing from the other for ``IDLE_S`` ends the
  session (the client gets UNAVAILABLE, the holder closes the console on the agent), and
  a ping announcing a message that never came (a notification lost when the sender's
  connection broke) ends it too: nothing leaks, nothing is silently skipped.

Every live replica saying it does not hold the stream means no replica has the agent:
UNAVAILABLE, as on one replica (``service/offers.py``: the rule, shared with execs).
"""

from __future__ import annotations

import base64
import contextlib
import json
import logging
import queue
import threading
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

from workspace.domain.tasks import UNAVAILABLE as UNAVAILABLE_CODE
from workspace.domain.tasks import ConsoleClosed, ConsoleOutput, TaskError, error_of
from workspace.errors import Unavailable, WorkspaceError
from workspace.ops.taskhub import CONSOLE_BACKLOG, ConsoleEvent, ConsoleLink, TaskHub
from workspace.service import offers
from workspace.service.offers import Answers, Replicas
from workspace.service.replicas import TASKS_CHANNEL, Relay

log = logging.getLogger("workspace.service.consoles")

# The operations of this relay on the tasks channel (the exec relay hands them over).
# Each goes one way: ``console`` to all; ``cack`` ``cnack`` ``cout`` ``cend`` ``cerr``
# ``hping`` to the client side; ``cgo`` ``cin`` ``cclose`` ``cping`` to the holder side.
OPS = frozenset(
    {"console", "cack", "cnack", "cgo", "cout", "cin", "cend", "cerr", "cclose", "cping", "hping"}
)
# Raw bytes per notification (base64 makes 6000 characters: under 8000 bytes with JSON).
CHUNK_BYTES = 4500
# A side with nothing to send says it is there this often ...
PING_S = 2.0
# ... and a session that heard nothing from its other side this long is ended.
IDLE_S = 10.0


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def _chunks(data: bytes) -> list[bytes]:
    return [data[i : i + CHUNK_BYTES] for i in range(0, len(data), CHUNK_BYTES)]


@dataclass
class _Session:
    """One relayed session, on either side: the numbered messages of the other side
    applied in order, and when it last heard from it."""

    sid: str
    peer: str = ""
    sent: int = 0  # numbered messages sent
    expect: int = 0  # the number of the next one to apply
    early: dict[int, dict[str, Any]] = field(default_factory=dict)
    heard: float = field(default_factory=time.monotonic)
    said: float = field(default_factory=time.monotonic)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def take(self, msg: dict[str, Any]) -> list[dict[str, Any]]:
        """``msg`` and whatever it unblocks, in order (an old duplicate: nothing)."""
        with self.lock:
            s = int(msg.get("s", -1))
            if s < self.expect:
                return []
            self.early[s] = msg
            out = []
            while self.expect in self.early:
                out.append(self.early.pop(self.expect))
                self.expect += 1
            return out


class RelayedConsole(ConsoleLink):
    """The client side's link: what the edge reads and writes, as for a local console."""

    def __init__(self, relay: ConsoleRelay, session: _Session, workspace_id: str) -> None:
        # Not a console of this hub: none of ConsoleLink's state is used.
        self.relay = relay
        self.session = session
        self.task_id = session.sid
        self.workspace_id = workspace_id
        self.events: queue.Queue[ConsoleEvent] = queue.Queue(CONSOLE_BACKLOG)
        self.closed = threading.Event()

    def send(self, data: bytes) -> None:
        if self.closed.is_set():
            raise Unavailable("the console session ended; try again")
        for part in _chunks(data):
            self.relay.numbered(self.session, {"op": "cin", "d": _b64(part)})

    def next(self, timeout_s: float) -> ConsoleEvent | None:
        try:
            return self.events.get(timeout=timeout_s)
        except queue.Empty:
            return None

    def close(self) -> None:
        """The client left: tell the holder, forget the session."""
        if self.closed.is_set():
            return
        self.closed.set()
        self.relay.client_left(self)

    def end(self, event: ConsoleEvent) -> None:
        """The session ended from the holder's side (or went silent): tell the reader."""
        self.closed.set()
        self.offer(event, force=True)

    def offer(self, event: ConsoleEvent, force: bool = False) -> bool:
        try:
            self.events.put_nowait(event)
            return True
        except queue.Full:
            if not force:
                return False
        with contextlib.suppress(queue.Empty):
            self.events.get_nowait()
        self.events.put_nowait(event)
        return True


@dataclass
class _Held:
    """The holder side of a session: the console opened on the agent through this hub."""

    session: _Session
    link: ConsoleLink
    done: threading.Event = field(default_factory=threading.Event)


class ConsoleRelay:
    def __init__(self, hub: TaskHub, relay: Relay, replicas: Replicas | None = None) -> None:
        """``replicas``: who answers an offer (service/offers.py)."""
        self.hub = hub
        self.relay = relay
        self.replicas = replicas or Replicas()
        self._lock = threading.Lock()
        # client side: session id -> its link; the answers to its offer until one is taken
        self._clients: dict[str, RelayedConsole] = {}
        self._answers: dict[str, Answers] = {}
        # holder side: sessions offered (waiting for ``cgo``) and held
        self._offered: dict[str, tuple[float, dict[str, Any]]] = {}
        self._held: dict[str, _Held] = {}
        self._keeping = False

    def _keep_alive(self) -> None:
        """Start the keeper (under ``_lock``): it runs while there are sessions."""
        if not self._keeping:
            self._keeping = True
            threading.Thread(target=self._keep, name="console-relay", daemon=True).start()

    def sessions(self) -> tuple[int, int]:
        """How many relayed sessions this replica has: (as the client side, as holder)."""
        with self._lock:
            return len(self._clients), len(self._held)

    # -- sending -----------------------------------------------------------------------

    def _send(self, session: _Session, body: dict[str, Any]) -> None:
        session.said = time.monotonic()
        msg = {**body, "to": session.peer, "id": session.sid, "by": self.relay.replica_id}
        self.relay.send(TASKS_CHANNEL, json.dumps(msg))

    def numbered(self, session: _Session, body: dict[str, Any]) -> None:
        """Send ``body`` with the session's next number (in order, from any thread)."""
        with session.lock:
            s = session.sent
            session.sent += 1
            # under the lock: the relay's queue keeps the order the numbers were taken in
            self._send(session, {**body, "s": s})

    # -- the client side (the replica the attach arrived at) -------------------------------

    def open(self, node: str, workspace_id: str) -> ConsoleLink:
        session = _Session(uuid.uuid4().hex)
        link = RelayedConsole(self, session, workspace_id)
        answers = self.replicas.offer(self.relay.replica_id, node)
        with self._lock:
            self._clients[session.sid] = link
            self._answers[session.sid] = answers
            self._keep_alive()
        self.relay.send(
            TASKS_CHANNEL,
            json.dumps(
                {
                    "op": "console",
                    "id": session.sid,
                    "from": self.relay.replica_id,
                    "node": node,
                    "ws": workspace_id,
                }
            ),
        )
        try:
            holder = answers.wait()
        except Unavailable:
            with self._lock:
                self._clients.pop(session.sid, None)
            raise
        finally:
            with self._lock:
                self._answers.pop(session.sid, None)
        session.peer = holder
        session.heard = time.monotonic()
        self._send(session, {"op": "cgo"})
        return link

    def client_left(self, link: RelayedConsole) -> None:
        with self._lock:
            known = self._clients.pop(link.session.sid, None) is not None
        if known and link.session.peer:
            self._send(link.session, {"op": "cclose"})
        link.offer(ConsoleClosed(""), force=True)  # wakes a reader of ``next``

    def _at_client(self, op: str, msg: dict[str, Any]) -> None:
        sid = str(msg.get("id", ""))
        with self._lock:
            link = self._clients.get(sid)
            answers = self._answers.get(sid)
        if link is None:
            return
        session = link.session
        if op in ("cack", "cnack"):
            by = str(msg.get("by", ""))
            if answers is not None and op == "cnack":
                answers.declined(by)
            elif answers is not None:
                answers.acked(by)  # ``open`` tells the one taken to open it
            return
        if str(msg.get("by", "")) != session.peer:
            return  # another replica's (a late ack's holder never got ``go``)
        session.heard = time.monotonic()
        if op == "hping":
            self._check_gap(session, msg, lambda why: self._client_lost(link, why))
            return
        for m in session.take(msg):
            kind = m["op"]
            if kind == "cout":
                if not link.offer(ConsoleOutput(base64.b64decode(m.get("d", "")))):
                    # The client does not read: end its session on both sides.
                    self._end_client(link, ConsoleClosed("the client fell too far behind"))
                    return
            elif kind == "cend":
                self._end_client(link, ConsoleClosed(str(m.get("reason", ""))), tell=False)
                return
            elif kind == "cerr":
                error = TaskError(int(m.get("code", UNAVAILABLE_CODE)), str(m.get("message", "")))
                self._end_client(link, error, tell=False)
                return

    def _end_client(self, link: RelayedConsole, event: ConsoleEvent, tell: bool = True) -> None:
        with self._lock:
            known = self._clients.pop(link.session.sid, None) is not None
        if known and tell:
            self._send(link.session, {"op": "cclose"})
        link.end(event)

    def _client_lost(self, link: RelayedConsole, why: str) -> None:
        message = f"the console session through the replica holding the agent {why}; try again"
        self._end_client(link, TaskError(UNAVAILABLE_CODE, message))

    def _check_gap(self, session: _Session, msg: dict[str, Any], lost: Any) -> None:
        """A ping announces how many numbered messages were sent before it; one missing
        by then was lost (the channel keeps a sender's order)."""
        with session.lock:
            missing = int(msg.get("n", 0)) > session.expect
        if missing:
            lost("lost part of its stream")

    # -- the holder side (the replica with the agent's stream) ------------------------------

    def _offer(self, msg: dict[str, Any]) -> None:
        sid = str(msg.get("id", ""))
        body = {"op": "cnack", "by": self.relay.replica_id, "to": msg.get("from"), "id": sid}
        if self.hub.connected(str(msg.get("node", ""))):
            now = time.monotonic()
            with self._lock:
                self._offered = offers.recent(self._offered, now)
                self._offered[sid] = (now, msg)
            body["op"] = "cack"
        elif msg.get("from") == self.relay.replica_id:
            return  # its own offer: it knows
        self.relay.send(TASKS_CHANNEL, json.dumps(body))

    def _go(self, msg: dict[str, Any]) -> None:
        sid = str(msg.get("id", ""))
        with self._lock:
            offered = self._offered.pop(sid, None)
        if offered is None:
            return
        opened = offered[1]
        session = _Session(sid, peer=str(opened.get("from", "")))
        try:
            link = self.hub.open_console(str(opened["node"]), str(opened["ws"]), forward=False)
        except WorkspaceError as exc:
            e = error_of(exc)
            self.numbered(session, {"op": "cerr", "code": e.code, "message": e.message})
            return
        held = _Held(session, link)
        with self._lock:
            self._held[sid] = held
            self._keep_alive()
        threading.Thread(target=self._pump, args=(held,), name="console-out", daemon=True).start()

    def _at_holder(self, op: str, msg: dict[str, Any]) -> None:
        with self._lock:
            held = self._held.get(str(msg.get("id", "")))
        if held is None or str(msg.get("by", "")) != held.session.peer:
            return
        session = held.session
        session.heard = time.monotonic()
        if op == "cclose":
            self._end_held(held)
        elif op == "cping":
            self._check_gap(session, msg, lambda why: self._end_held(held, why))
        elif op == "cin":
            for m in session.take(msg):
                try:
                    held.link.send(base64.b64decode(m.get("d", "")))
                except Unavailable:
                    return  # the agent went away: the pump tells the client
        return

    def _end_held(self, held: _Held, why: str = "") -> None:
        """End the session here and on the agent (``why``: tell the client side too)."""
        with self._lock:
            known = self._held.pop(held.session.sid, None) is not None
        held.done.set()
        if known and why:
            message = f"the console session through this replica {why}; try again"
            body = {"op": "cerr", "code": UNAVAILABLE_CODE, "message": message}
            self.numbered(held.session, body)
        held.link.close()

    def _pump(self, held: _Held) -> None:
        """The console's output (and its end) to the client side, in numbered chunks."""
        session, link = held.session, held.link
        try:
            while not held.done.is_set():
                event = link.next(PING_S / 2)
                if event is None or held.done.is_set():
                    continue
                if isinstance(event, ConsoleOutput):
                    data = event.data
                    # what else is already there goes in the same chunks
                    while len(data) < CHUNK_BYTES:
                        more = link.next(0)
                        if not isinstance(more, ConsoleOutput):
                            if more is None:
                                break
                            self._out(session, data)
                            self._forward_end(held, more)
                            return
                        data += more.data
                    self._out(session, data)
                    continue
                self._forward_end(held, event)
                return
        finally:
            with self._lock:
                self._held.pop(session.sid, None)
            held.done.set()

    def _out(self, session: _Session, data: bytes) -> None:
        for part in _chunks(data):
            self.numbered(session, {"op": "cout", "d": _b64(part)})

    def _forward_end(self, held: _Held, event: ConsoleEvent) -> None:
        if held.done.is_set():
            return
        if isinstance(event, ConsoleClosed):
            self.numbered(held.session, {"op": "cend", "reason": event.reason})
        elif isinstance(event, TaskError):
            body = {"op": "cerr", "code": event.code, "message": event.message}
            self.numbered(held.session, body)

    # -- both sides ---------------------------------------------------------------------

    def received(self, msg: dict[str, Any]) -> None:
        """A message of this relay from the channel (the listener's thread: never blocks)."""
        op = str(msg.get("op", ""))
        if op == "console":
            self._offer(msg)
            return
        if msg.get("to") != self.relay.replica_id:
            return
        if op == "cgo":
            threading.Thread(target=self._go, args=(msg,), name="console-open", daemon=True).start()
        elif op in ("cack", "cnack", "cout", "cend", "cerr", "hping"):
            self._at_client(op, msg)
        elif op in ("cin", "cclose", "cping"):
            self._at_holder(op, msg)

    def _keep(self) -> None:
        """Pings for sessions with nothing to say; sessions silent for ``IDLE_S`` end."""
        while True:
            time.sleep(PING_S / 2)
            now = time.monotonic()
            with self._lock:
                clients = list(self._clients.values())
                held = list(self._held.values())
                if not clients and not held:
                    self._keeping = False
                    return
            for link in clients:
                s = link.session
                if not s.peer:
                    continue  # not acknowledged yet: ``open`` decides
                if now - s.heard > IDLE_S:
                    self._client_lost(link, f"stopped answering for {IDLE_S:g} s")
                elif now - s.said >= PING_S:
                    with s.lock:
                        self._send(s, {"op": "cping", "n": s.sent})
            for h in held:
                s = h.session
                if now - s.heard > IDLE_S:
                    log.info("console session %s: the client side went silent", s.sid)
                    self._end_held(h, f"heard nothing from the client for {IDLE_S:g} s")
                elif now - s.said >= PING_S:
                    with s.lock:
                        self._send(s, {"op": "hping", "n": s.sent})
