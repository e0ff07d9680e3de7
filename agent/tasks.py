"""The agent's task stream (``Nodes.Tasks``): commands run in guests and interactive
consoles, as the service asks.

Opened once the link has registered, on a channel of its own with the link's TLS; the
first message is a hello naming the node. Each exec runs in a small worker pool (the
stream reader never waits for a guest) and is answered by task id with its outcome or
a TaskError (google.rpc codes: FAILED_PRECONDITION when the guest is not running or has
no guest agent, NOT_FOUND when there is no such domain). A console is a session under
its task id: a thread pumps the guest's output as ``console_output`` replies until EOF
or ``console_close``, then says ``console_closed`` with the reason. A save
(``agent/save.py``) runs in a pool of its own (it may take minutes) and sends its disks
on the stream's channel (``PutBlob``) before it answers. A broken stream
closes every console, cancels every save taken on it, and reconnects after the agent's
backoff (crash-only: the service failed whatever was waiting).
"""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor

import grpc

from agent.backoff import Backoff
from agent.save import Saver
from agent.virt.base import ConsoleSession, Driver
from workspace import callctx, failover, rpc, rpc_status
from workspace.codec import guests as codec
from workspace.config import AgentConfig
from workspace.domain.model import ExecOutcome
from workspace.domain.tasks import FAILED_PRECONDITION as FAILED_PRECONDITION_CODE
from workspace.domain.tasks import INTERNAL as INTERNAL_CODE
from workspace.domain.tasks import (
    ConsoleClose,
    ConsoleClosed,
    ConsoleInput,
    ConsoleOpen,
    ConsoleOutput,
    ExecTask,
    ReplyKind,
    SaveCopying,
    SaveStarted,
    SaveTask,
    Task,
    TaskError,
    TaskReply,
    error_of,
)
from workspace.errors import WorkspaceError
from workspace.log import about, named
from workspace.node.v1 import nodes_pb2, nodes_pb2_grpc

log = logging.getLogger("agent.tasks")

RECONNECT = Backoff(0.5, 5.0)
# A console's output is read in slices this long (and stops this soon after a close).
CONSOLE_POLL_S = 0.25
# A command asked to run with no timeout (the service always sends one).
DEFAULT_TIMEOUT_S = 60
# The answer to a task of a kind this agent does not know (a service newer than it).
UNKNOWN_TASK = TaskError(
    FAILED_PRECONDITION_CODE, "this node's agent does not know this kind of task; upgrade it"
)
# Saves one agent runs at once (each reads a disk and sends it; more wait their turn).
SAVE_PARALLEL = 2


class _Console:
    """One console session: keystrokes waiting for the guest (written by a thread of
    its own, so the stream reader never waits on a guest), the session once open."""

    def __init__(self, task_id: str, workspace_id: str) -> None:
        self.task_id = task_id
        self.workspace_id = workspace_id
        self.input: queue.Queue[bytes | None] = queue.Queue()
        self.closed = threading.Event()
        self.session: ConsoleSession | None = None

    def close(self) -> None:
        self.closed.set()
        self.input.put(None)
        session = self.session
        if session is not None:
            session.close()


class Tasks:
    def __init__(
        self,
        cfg: AgentConfig,
        driver: Driver,
        stop: threading.Event,
        ready: Callable[[float], bool],
        name_of: Callable[[str], str] = lambda wid: wid,
        saver: Saver | None = None,
    ) -> None:
        """``ready(timeout_s)``: whether the link has registered (the service refuses a
        task stream of a node it does not know); ``name_of``: a workspace's name for logs;
        ``saver``: who saves disks (None: saves are refused)."""
        self.cfg = cfg
        self.driver = driver
        self.stop = stop
        self.ready = ready
        self.name_of = name_of
        self._pool = ThreadPoolExecutor(max(1, cfg.exec_parallel), thread_name_prefix="exec")
        self._lock = threading.Lock()
        self._consoles: dict[str, _Console] = {}
        self._outbox: queue.Queue[nodes_pb2.TaskReply | None] | None = None
        self.saver = saver
        self._saves = ThreadPoolExecutor(SAVE_PARALLEL, thread_name_prefix="save")
        # The saves taken and not ended: task id -> set to cancel it (the stream broke).
        self._running_saves: dict[str, threading.Event] = {}
        self._channel: grpc.Channel | None = None

    def _label(self, workspace_id: str) -> str:
        return named(workspace_id, self.name_of(workspace_id))

    # -- the stream --------------------------------------------------------------------

    def run(self) -> None:
        """Keep a task stream open until ``stop`` (a thread of its own)."""
        failures = 0
        turn = 0  # which replica of a list to try first (failover.rotated)
        while not self.stop.is_set():
            if not self.ready(1.0):
                continue
            addresses = failover.rotated(self.cfg.service, turn)
            channel = rpc.channel(addresses, self.cfg.tls)
            # The replica the stream is on (named in the log when it breaks: the channel
            # itself has moved on to the next one by then).
            where = failover.split(addresses)[0] if addresses else addresses
            outbox: queue.Queue[nodes_pb2.TaskReply | None] = queue.Queue()
            with self._lock:
                self._outbox = outbox
                self._channel = channel
            outbox.put(nodes_pb2.TaskReply(node=self.cfg.node))
            done = threading.Event()
            try:
                stream = nodes_pb2_grpc.NodesStub(channel).Tasks(_drain(outbox))
                threading.Thread(
                    target=_cancel_on, args=(self.stop, done, stream), daemon=True
                ).start()
                where = failover.in_use(channel, where)
                log.info("task stream to %s open", where)
                for msg in stream:
                    failures = 0
                    task = codec.task_from_proto(msg)
                    if task is not None:
                        self.take(task)
                    elif msg.task_id:  # a kind of task newer than this agent
                        self.reply(msg.task_id, UNKNOWN_TASK)
            except grpc.RpcError as exc:
                if not self.stop.is_set():
                    log.warning(
                        "task stream to %s: %s; reopening%s in %.1f s",
                        where,
                        rpc_status.describe(exc),
                        self._next(turn),
                        RECONNECT.delay_s(failures + 1),
                    )
            except Exception:
                if not self.stop.is_set():
                    log.exception("task stream to %s failed; reopening%s", where, self._next(turn))
            finally:
                done.set()
                with self._lock:
                    self._outbox = None
                    self._channel = None
                outbox.put(None)
                self._close_consoles("the agent's connection to the service broke")
                self._cancel_saves("the agent's connection to the service broke")
                channel.close()
            failures += 1
            turn += 1
            self.stop.wait(RECONNECT.delay_s(failures))

    def _next(self, turn: int) -> str:
        """ " to ADDRESS": the replica the next turn of ``run`` opens the stream to first
        ("" for one address)."""
        addresses = failover.split(failover.rotated(self.cfg.service, turn + 1))
        return f" to {addresses[0]}" if len(addresses) > 1 else ""

    def close(self) -> None:
        self._close_consoles("the agent is stopping")
        self._cancel_saves("the agent is stopping")
        self._pool.shutdown(wait=False, cancel_futures=True)
        self._saves.shutdown(wait=False, cancel_futures=True)

    def reply(self, task_id: str, kind: ReplyKind) -> None:
        """Send an answer (dropped when the stream is gone: the service gave up on it)."""
        with self._lock:
            outbox = self._outbox
        if outbox is not None:
            outbox.put(codec.reply_to_proto(TaskReply(task_id, kind)))

    # -- tasks -------------------------------------------------------------------------

    def take(self, task: Task) -> None:
        """Dispatch one task; never blocks on a guest."""
        kind = task.kind
        if isinstance(kind, ExecTask):
            try:
                wid = task.workspace_id
                self._pool.submit(_about, wid, self._exec, task.task_id, wid, kind)
            except RuntimeError:  # shutting down
                self.reply(task.task_id, TaskError(INTERNAL_CODE, "the agent is stopping"))
        elif isinstance(kind, SaveTask):
            cancel = threading.Event()
            with self._lock:
                self._running_saves[task.task_id] = cancel
            try:
                wid = task.workspace_id
                self._saves.submit(_about, wid, self._save, task.task_id, wid, kind, cancel)
            except RuntimeError:  # shutting down
                with self._lock:
                    self._running_saves.pop(task.task_id, None)
                self.reply(task.task_id, TaskError(INTERNAL_CODE, "the agent is stopping"))
                return
            self.reply(task.task_id, SaveStarted())  # the service waits for this first
        elif isinstance(kind, ConsoleOpen):
            console = _Console(task.task_id, task.workspace_id)
            with self._lock:
                self._consoles[task.task_id] = console
            threading.Thread(
                target=_about,
                args=(task.workspace_id, self._console, console),
                name=f"console-{task.workspace_id}",
                daemon=True,
            ).start()
        elif isinstance(kind, ConsoleInput | ConsoleClose):
            with self._lock:
                found = self._consoles.get(task.task_id)
            if found is None:
                return
            if isinstance(kind, ConsoleInput):
                found.input.put(kind.data)
            else:
                found.close()

    def _exec(self, task_id: str, workspace_id: str, task: ExecTask) -> None:
        label = self._label(workspace_id)
        argv0 = task.argv[0] if task.argv else ""
        try:
            if not task.argv:
                raise WorkspaceError("no command given")
            outcome: ExecOutcome = self.driver.exec(
                workspace_id, task.argv, task.stdin, task.timeout_s or DEFAULT_TIMEOUT_S
            )
        except WorkspaceError as exc:
            log.info("exec %s in %s refused: %s", argv0, label, exc.message)
            self.reply(task_id, error_of(exc))
            return
        except Exception as exc:
            log.exception("exec %s in %s failed", argv0, label)
            self.reply(task_id, TaskError(INTERNAL_CODE, f"the agent failed: {exc}"))
            return
        log.info(
            "exec %s in %s: exit %d%s",
            argv0,
            label,
            outcome.exit_code,
            " (timed out)" if outcome.timed_out else "",
        )
        self.reply(task_id, outcome)

    def _save(
        self, task_id: str, workspace_id: str, task: SaveTask, cancel: threading.Event
    ) -> None:
        try:
            self._save_once(task_id, workspace_id, task, cancel)
        finally:
            with self._lock:
                self._running_saves.pop(task_id, None)

    def _save_once(
        self, task_id: str, workspace_id: str, task: SaveTask, cancel: threading.Event
    ) -> None:
        label = self._label(workspace_id)
        try:
            if self.saver is None:
                raise WorkspaceError("this agent does not save disks")
            log.info("saving %s: disk(s) %s", label, ", ".join(task.partitions))
            outcome = self.saver.save(
                workspace_id,
                task,
                self._send,
                lambda disk, percent: self.reply(task_id, SaveCopying(disk, percent)),
                cancel,
            )
        except WorkspaceError as exc:
            log.warning("saving %s failed: %s", label, exc.message)
            self.reply(task_id, error_of(exc))
            return
        except grpc.RpcError as exc:  # the service refused the disk, or the link broke
            log.warning("saving %s: sending failed: %s", label, rpc_status.describe(exc))
            err = error_of(rpc_status.from_rpc_error(exc))
            self.reply(task_id, TaskError(err.code, f"sending the disk failed: {err.message}"))
            return
        except Exception as exc:
            log.exception("saving %s failed", label)
            self.reply(task_id, TaskError(INTERNAL_CODE, f"the agent failed: {exc}"))
            return
        log.info("saved %s: %d disk(s) sent", label, len(outcome.partitions))
        self.reply(task_id, outcome)

    def _send(
        self, workspace_id: str, disk: str, size: int, chunks: Iterator[bytes], timeout_s: float
    ) -> tuple[str, int]:
        """One saved disk to the service on the task stream's channel (its first message
        names the disk and its size: the save's progress)."""
        with self._lock:
            channel = self._channel
        if channel is None:
            raise WorkspaceError("the agent's connection to the service broke")

        def messages() -> Iterator[nodes_pb2.PutBlobChunk]:
            yield nodes_pb2.PutBlobChunk(
                node=self.cfg.node, workspace_id=workspace_id, partition=disk, size_bytes=size
            )
            for data in chunks:
                yield nodes_pb2.PutBlobChunk(data=data)

        got = nodes_pb2_grpc.NodesStub(channel).PutBlob(messages(), timeout=timeout_s)
        return got.digest, got.size_bytes

    def _console(self, console: _Console) -> None:
        task_id, label = console.task_id, self._label(console.workspace_id)
        try:
            session = self.driver.open_console(console.workspace_id)
        except Exception as exc:
            with self._lock:
                self._consoles.pop(task_id, None)
            if isinstance(exc, WorkspaceError):
                log.info("console of %s not opened: %s", label, exc.message)
                self.reply(task_id, error_of(exc))
            else:
                log.exception("console of %s failed to open", label)
                self.reply(task_id, TaskError(INTERNAL_CODE, f"the agent failed: {exc}"))
            return
        console.session = session
        if console.closed.is_set():  # detached while it opened
            session.close()
        log.info("console of %s attached", label)
        threading.Thread(
            target=self._keystrokes, args=(console, session), name="console-in", daemon=True
        ).start()
        reason = "the console ended (the guest stopped, or another session took it over)"
        try:
            while not self.stop.is_set():
                data = session.read(CONSOLE_POLL_S)
                if data is None:
                    continue
                if not data:
                    if console.closed.is_set():
                        reason = "detached"
                    break
                self.reply(task_id, ConsoleOutput(data))
        except Exception:
            log.exception("console of %s failed", label)
            reason = "the agent's console relay failed"
        finally:
            console.close()
            with self._lock:
                self._consoles.pop(task_id, None)
            self.reply(task_id, ConsoleClosed(reason))
            log.info("console of %s detached: %s", label, reason)

    def _keystrokes(self, console: _Console, session: ConsoleSession) -> None:
        """Write what the client typed, in order, until the session ends."""
        while True:
            data = console.input.get()
            if data is None or console.closed.is_set():
                return
            try:
                session.write(data)
            except WorkspaceError as exc:
                log.info(
                    "console of %s: %s",
                    self._label(console.workspace_id),
                    exc.message,
                    extra=about(console.workspace_id),
                )
                session.close()
                return

    def _cancel_saves(self, why: str) -> None:
        """Every save taken so far stops at its next step: the service that asked for it
        failed it (its stream is gone) and no longer keeps the workspace from starting."""
        with self._lock:
            saves = list(self._running_saves.values())
            self._running_saves.clear()
        if saves:
            log.info("cancelling %d save(s) under way: %s", len(saves), why)
        for cancel in saves:
            cancel.set()

    def _close_consoles(self, why: str) -> None:
        with self._lock:
            consoles = list(self._consoles.values())
        for c in consoles:
            log.info(
                "closing the console of %s: %s",
                self._label(c.workspace_id),
                why,
                extra=about(c.workspace_id),
            )
            c.close()


def _about(workspace_id: str, work: Callable[..., None], *args: object) -> None:
    """``work(*args)`` for workspace ``workspace_id``, in a thread of a pool or its own:
    every line it logs (the driver's too) carries the id in JSON logs (its messages
    name the workspace by its name, which was all a line of an exec, a save or a
    console said of it)."""
    with callctx.bound(workspace=workspace_id):
        work(*args)


def _drain(outbox: queue.Queue[nodes_pb2.TaskReply | None]) -> Iterator[nodes_pb2.TaskReply]:
    while True:
        item = outbox.get()
        if item is None:
            return
        yield item


def _cancel_on(stop: threading.Event, done: threading.Event, stream: grpc.Future) -> None:
    """Cancel ``stream`` when the agent stops (ends when the stream ends first)."""
    while not done.is_set():
        if stop.wait(1.0):
            stream.cancel()
            return
