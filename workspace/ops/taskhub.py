"""The service's end of every agent's ``Nodes.Tasks`` stream: which nodes' agents are
connected, the tasks waiting to go to each, and the answers coming back by task id.

The edge (``edge/nodes.py``) owns the gRPC stream: on a hello it ``connect``s the node
(an earlier stream of the same node is dropped), sends what ``AgentLine.next`` gives,
hands every reply to ``deliver`` and ``disconnect``s when the stream ends. Operations
(``ops/guests.py``) call ``exec`` (one task, one answer, a deadline) and ``open_console``
(a session of many messages under one task id); ``save`` (``ops/save.py``) is one task
and one answer, as an exec. A node whose agent is not connected is
UNAVAILABLE at once; a stream that drops fails every task still waiting on it with
UNAVAILABLE. Only domain values cross this module (``workspace/domain/tasks.py``).

Replicas: an agent's stream is connected to one replica. An exec or a console for a node
whose agent is not connected here goes to ``elsewhere`` when one is set
(``service/task_relay.py``, ``service/console_relay.py``: through PostgreSQL to the
replica that holds the stream, which runs it with ``forward=False`` and sends the answer,
or the console's output, back).
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import queue
import threading
import uuid
from collections.abc import Callable
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass
from typing import Protocol, TypeVar

from workspace.domain.model import ExecOutcome
from workspace.domain.tasks import UNAVAILABLE as UNAVAILABLE_CODE
from workspace.domain.tasks import (
    ConsoleClose,
    ConsoleClosed,
    ConsoleInput,
    ConsoleOpen,
    ConsoleOutput,
    ExecTask,
    ReplyKind,
    SaveCopying,
    SaveOutcome,
    SaveStarted,
    SaveTask,
    Task,
    TaskError,
    TaskReply,
    exception_of,
)
from workspace.errors import Unavailable
from workspace.log import about, about_node

log = logging.getLogger("workspace.ops.tasks")

# Console replies kept for a slow client before its session is ended.
CONSOLE_BACKLOG = 4096

# What a console session gets: output, its end, or why it could not go on (TaskError).
ConsoleEvent = ConsoleOutput | ConsoleClosed | TaskError
# The answer of a task of one answer (an exec, a save).
Answer = ExecOutcome | SaveOutcome
A = TypeVar("A", ExecOutcome, SaveOutcome)


class AgentLine:
    """One connected agent stream: the tasks waiting to be sent on it."""

    _serials = itertools.count(1)

    def __init__(self, node: str) -> None:
        self.node = node
        self.serial = next(self._serials)
        self._out: queue.Queue[Task | None] = queue.Queue()
        self._closed = threading.Event()

    @property
    def closed(self) -> bool:
        return self._closed.is_set()

    def send(self, task: Task) -> None:
        if self.closed:
            raise Unavailable(f"node {self.node}'s agent is not connected; try again")
        self._out.put(task)

    def next(self, timeout_s: float) -> Task | None:
        """The next task to send (None: none within ``timeout_s``, or the line closed)."""
        if self.closed:
            return None
        try:
            return self._out.get(timeout=timeout_s)
        except queue.Empty:
            return None

    def close(self) -> None:
        self._closed.set()
        self._out.put(None)  # wakes the sender

    def wake(self) -> None:
        """Wake the sender without closing the line (it looks at why it should stop)."""
        self._out.put(None)


# How long an agent has to say it took a save (``SaveStarted``): one that does not know
# saves (older than the service) ignores the task, and the caller learns it now rather
# than at the save's time limit.
SAVE_START_S = 15.0


@dataclass
class _Pending:
    line: AgentLine
    future: Future[Answer] | None = None
    events: queue.Queue[ConsoleEvent] | None = None
    started: threading.Event | None = None  # a save: set when the agent took it
    workspace_id: str = ""


class ConsoleLink:
    """The service's side of one console session on a node's agent."""

    def __init__(self, hub: TaskHub, line: AgentLine, task_id: str, workspace_id: str) -> None:
        self.hub = hub
        self.line = line
        self.task_id = task_id
        self.workspace_id = workspace_id
        self.events: queue.Queue[ConsoleEvent] = queue.Queue(CONSOLE_BACKLOG)
        self._closed = False

    def send(self, data: bytes) -> None:
        """Keystrokes to the guest (Unavailable once the agent's stream is gone)."""
        self.line.send(Task(self.task_id, self.workspace_id, ConsoleInput(data)))

    def next(self, timeout_s: float) -> ConsoleEvent | None:
        """Output; ConsoleClosed once the session ended, TaskError if it could not be
        opened or its agent went away; None if nothing came within ``timeout_s``."""
        try:
            return self.events.get(timeout=timeout_s)
        except queue.Empty:
            return None

    def close(self) -> None:
        """The client left: tell the agent (if it is still there), forget the session."""
        if self._closed:
            return
        self._closed = True
        self.hub.forget(self.task_id)
        _offer(self.events, ConsoleClosed(""), force=True)  # wakes a reader of ``next``
        with contextlib.suppress(Unavailable):  # the agent's stream is gone: nothing to close
            self.line.send(Task(self.task_id, self.workspace_id, ConsoleClose()))


class Elsewhere(Protocol):
    """Where a task goes when the node's agent is connected to another replica."""

    def exec(self, node: str, workspace_id: str, task: ExecTask, wait_s: float) -> ExecOutcome:
        """Run ``task`` on ``node``'s agent through the replica that holds its stream."""
        ...

    def open_console(self, node: str, workspace_id: str) -> ConsoleLink:
        """A console session on ``node``'s agent through the replica that holds its stream."""
        ...

    def save(self, node: str, workspace_id: str, task: SaveTask, wait_s: float) -> SaveOutcome:
        """Run a save on ``node``'s agent through the replica that holds its stream."""
        ...


# What a console session the service's stop ends says (UNAVAILABLE, as a watch's end).
CONSOLE_STOPPING = (
    "the service is stopping; attach again (another replica, or this one once it is back)"
)


class TaskHub:
    def __init__(self, on_save_copying: Callable[[str, SaveCopying], None] | None = None) -> None:
        self._lock = threading.Lock()
        self._lines: dict[str, AgentLine] = {}
        self._pending: dict[str, _Pending] = {}
        self.elsewhere: Elsewhere | None = None
        # Told how far an agent's copy of a saved disk is (workspace id, the reply): the
        # replica holding the agent's stream keeps it where every replica reads it.
        self.on_save_copying = on_save_copying

    # -- the agents' streams (the edge) ------------------------------------------------

    def connect(self, node: str) -> AgentLine:
        """A new stream of ``node``'s agent; one it had before is dropped."""
        line = AgentLine(node)
        with self._lock:
            old = self._lines.get(node)
            self._lines[node] = line
        if old is not None:
            self.disconnect(old, "a new stream of the same agent replaced it")
        log.info("node %s's agent opened its task stream", node, extra=about_node(node))
        return line

    def disconnect(self, line: AgentLine, why: str = "the stream ended") -> None:
        """The stream ended: its tasks still waiting fail with UNAVAILABLE."""
        with self._lock:
            if self._lines.get(line.node) is line:
                del self._lines[line.node]
            orphans = [(tid, p) for tid, p in self._pending.items() if p.line is line]
            for tid, _ in orphans:
                del self._pending[tid]
        if line.closed and not orphans:
            return
        line.close()
        message = f"node {line.node}'s agent went away ({why}); try again"
        for _, p in orphans:
            if p.future is not None and not p.future.done():
                p.future.set_exception(Unavailable(message))
            if p.events is not None:
                _offer(p.events, TaskError(UNAVAILABLE_CODE, message), force=True)
        log.info("node %s's task stream closed: %s", line.node, why, extra=about_node(line.node))

    def end_consoles(self, message: str = CONSOLE_STOPPING) -> None:
        """The service is stopping: every console session open here ends UNAVAILABLE with
        ``message`` at once (its reader waits on the session's queue, which no change of
        the notifier wakes)."""
        with self._lock:
            queues = [p.events for p in self._pending.values() if p.events is not None]
        for events in queues:
            _offer(events, TaskError(UNAVAILABLE_CODE, message), force=True)

    def wake_lines(self) -> None:
        """The service is stopping: every agent's task stream wakes now (not at its next
        poll) to see it, and ends, so that the stop need not wait for it."""
        with self._lock:
            lines = list(self._lines.values())
        for line in lines:
            line.wake()

    def deliver(self, line: AgentLine, reply: TaskReply) -> None:
        """An agent's answer (ignored when no task of that line waits for it, or when it
        is of a kind this service does not know: an agent newer than the service)."""
        if reply.kind is None:
            return
        with self._lock:
            p = self._pending.get(reply.task_id)
            if p is None or p.line is not line:
                return
            if isinstance(reply.kind, SaveStarted):
                if p.started is not None:
                    p.started.set()
                return
            ends = not isinstance(reply.kind, SaveCopying) and (
                p.future is not None or isinstance(reply.kind, ConsoleClosed | TaskError)
            )
            if ends:
                del self._pending[reply.task_id]
        kind = reply.kind
        if isinstance(kind, SaveCopying):  # told outside the lock: it writes the store
            if self.on_save_copying is not None:
                try:
                    self.on_save_copying(p.workspace_id, kind)
                except Exception:  # the save goes on; only its progress is not shown
                    log.exception(
                        "workspace %s: the save's progress",
                        p.workspace_id,
                        extra=about(p.workspace_id),
                    )
            return
        if p.future is not None:
            _settle(p.future, kind)
        elif (
            p.events is not None
            and isinstance(kind, ConsoleOutput | ConsoleClosed | TaskError)
            and not _offer(p.events, kind)
        ):
            # The client does not read: end its session, here and on the agent.
            self.forget(reply.task_id)
            _offer(p.events, ConsoleClosed("the client fell too far behind"), force=True)
            with contextlib.suppress(Unavailable):
                line.send(Task(reply.task_id, "", ConsoleClose()))

    def connected(self, node: str) -> bool:
        with self._lock:
            return node in self._lines

    def forget(self, task_id: str) -> None:
        with self._lock:
            self._pending.pop(task_id, None)

    # -- what operations ask -----------------------------------------------------------

    def _line(self, node: str) -> AgentLine:
        with self._lock:
            line = self._lines.get(node)
        if line is None or line.closed:
            raise Unavailable(f"node {node}'s agent is not connected; try again")
        return line

    def exec(
        self, node: str, workspace_id: str, task: ExecTask, wait_s: float, forward: bool = True
    ) -> ExecOutcome:
        """Run ``task`` on ``node``'s agent and wait up to ``wait_s`` for its answer
        (``forward``: through another replica when the agent is not connected here)."""
        elsewhere = self.elsewhere
        if forward and elsewhere is not None and not self.connected(node):
            return elsewhere.exec(node, workspace_id, task, wait_s)
        return self._ask(node, workspace_id, task, wait_s, ExecOutcome)

    def save(
        self, node: str, workspace_id: str, task: SaveTask, wait_s: float, forward: bool = True
    ) -> SaveOutcome:
        """Have ``node``'s agent flatten and send the workspace's partitions ``task``
        names; waits up to ``wait_s`` (``forward``: as ``exec``)."""
        elsewhere = self.elsewhere
        if forward and elsewhere is not None and not self.connected(node):
            return elsewhere.save(node, workspace_id, task, wait_s)
        return self._ask(node, workspace_id, task, wait_s, SaveOutcome)

    def _ask(
        self, node: str, workspace_id: str, task: ExecTask | SaveTask, wait_s: float, want: type[A]
    ) -> A:
        """Send a task of one answer and wait up to ``wait_s`` for it."""
        line = self._line(node)
        task_id = uuid.uuid4().hex
        future: Future[Answer] = Future()
        started = threading.Event() if isinstance(task, SaveTask) else None
        if started is not None:  # an answer (or the stream's end) also says it was taken
            future.add_done_callback(lambda _f: started.set())
        with self._lock:
            self._pending[task_id] = _Pending(
                line, future=future, started=started, workspace_id=workspace_id
            )
        try:
            line.send(Task(task_id, workspace_id, task))
            if started is not None and not started.wait(min(SAVE_START_S, wait_s)):
                raise Unavailable(
                    f"node {node}'s agent did not take the save within {SAVE_START_S:g} s "
                    "(an agent older than the service does not know saves; upgrade it)"
                )
            answer = future.result(timeout=wait_s)
        except FutureTimeout:
            raise Unavailable(
                f"node {node}'s agent did not answer within {wait_s:g} s; try again"
            ) from None
        finally:
            self.forget(task_id)
        if not isinstance(answer, want):
            what = "an exec" if isinstance(task, ExecTask) else "a save"
            raise Unavailable(f"the agent answered {what} with {answer!r}")
        return answer

    def open_console(self, node: str, workspace_id: str, forward: bool = True) -> ConsoleLink:
        """Ask ``node``'s agent to open the workspace's console; its output (or why it
        could not) comes as the link's events (``forward``: through another replica when
        the agent is not connected here)."""
        elsewhere = self.elsewhere
        if forward and elsewhere is not None and not self.connected(node):
            return elsewhere.open_console(node, workspace_id)
        line = self._line(node)
        task_id = uuid.uuid4().hex
        link = ConsoleLink(self, line, task_id, workspace_id)
        with self._lock:
            self._pending[task_id] = _Pending(line, events=link.events)
        try:
            line.send(Task(task_id, workspace_id, ConsoleOpen()))
        except Unavailable:
            self.forget(task_id)
            raise
        return link


def _settle(future: Future[Answer], kind: ReplyKind | None) -> None:
    if future.done():
        return
    if isinstance(kind, ExecOutcome | SaveOutcome):
        future.set_result(kind)
    elif isinstance(kind, TaskError):
        future.set_exception(exception_of(kind))
    else:
        future.set_exception(Unavailable(f"the agent answered a task with {kind!r}"))


def _offer(q: queue.Queue[ConsoleEvent], event: ConsoleEvent, force: bool = False) -> bool:
    """Queue ``event``; False when the queue is full (``force``: make room for it)."""
    try:
        q.put_nowait(event)
        return True
    except queue.Full:
        if not force:
            return False
    with contextlib.suppress(queue.Empty):
        q.get_nowait()
    q.put_nowait(event)
    return True
