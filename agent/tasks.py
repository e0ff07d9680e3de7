"""The agent's task stream (``Nodes.Tasks``): commands run in guests and interactive
consoles, as the service asks.

Opened once the link has registered, on a channel of its own with the link's TLS; the
first message is a hello naming the node. Each exec runs in a small worker pool (the
stream reader never waits for a guest) and is answered by task id with its outcome or
a TaskError (google.rpc codes: FAILED_PRECONDITION when the guest is not running or has
no guest agent, NOT_FOUND when there is no such domain). A console is a session under
its task id: a thread pumps the guest's output as ``console_output`` replies until EOF
or ``console_close``, then says ``console_closed`` with the reason. A broken stream
closes every console and reconnects after the agent's backoff (crash-only: the service
failed whatever was waiting).
"""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor

import grpc

from agent.backoff import Backoff
from agent.virt.base import ConsoleSession, Driver
from workspace import rpc
from workspace.codec import guests as codec
from workspace.config import AgentConfig
from workspace.domain.model import ExecOutcome
from workspace.domain.tasks import INTERNAL as INTERNAL_CODE
from workspace.domain.tasks import (
    ConsoleClose,
    ConsoleClosed,
    ConsoleInput,
    ConsoleOpen,
    ConsoleOutput,
    ExecTask,
    ReplyKind,
    Task,
    TaskError,
    TaskReply,
    error_of,
)
from workspace.errors import WorkspaceError
from workspace.node.v1 import nodes_pb2, nodes_pb2_grpc

log = logging.getLogger("agent.tasks")

RECONNECT = Backoff(0.5, 5.0)
# A console's output is read in slices this long (and stops this soon after a close).
CONSOLE_POLL_S = 0.25
# A command asked to run with no timeout (the service always sends one).
DEFAULT_TIMEOUT_S = 60


class _Console:
    """One open console session and the thread pumping its output."""

    def __init__(self, task_id: str, workspace_id: str, session: ConsoleSession) -> None:
        self.task_id = task_id
        self.workspace_id = workspace_id
        self.session = session
        self.closed = threading.Event()


class Tasks:
    def __init__(
        self,
        cfg: AgentConfig,
        driver: Driver,
        stop: threading.Event,
        ready: Callable[[float], bool],
        name_of: Callable[[str], str] = lambda wid: wid,
    ) -> None:
        """``ready(timeout_s)``: whether the link has registered (the service refuses a
        task stream of a node it does not know); ``name_of``: a workspace's name for logs."""
        self.cfg = cfg
        self.driver = driver
        self.stop = stop
        self.ready = ready
        self.name_of = name_of
        self._pool = ThreadPoolExecutor(max(1, cfg.exec_parallel), thread_name_prefix="exec")
        self._lock = threading.Lock()
        self._consoles: dict[str, _Console] = {}
        self._outbox: queue.Queue[nodes_pb2.TaskReply | None] | None = None

    def _label(self, workspace_id: str) -> str:
        name = self.name_of(workspace_id)
        return f"{name} ({workspace_id})" if name and name != workspace_id else workspace_id

    # -- the stream --------------------------------------------------------------------

    def run(self) -> None:
        """Keep a task stream open until ``stop`` (a thread of its own)."""
        failures = 0
        while not self.stop.is_set():
            if not self.ready(1.0):
                continue
            channel = rpc.channel(self.cfg.service, self.cfg.tls)
            outbox: queue.Queue[nodes_pb2.TaskReply | None] = queue.Queue()
            with self._lock:
                self._outbox = outbox
            outbox.put(nodes_pb2.TaskReply(node=self.cfg.node))
            done = threading.Event()
            try:
                stream = nodes_pb2_grpc.NodesStub(channel).Tasks(_drain(outbox))
                threading.Thread(
                    target=_cancel_on, args=(self.stop, done, stream), daemon=True
                ).start()
                log.info("task stream to %s open", self.cfg.service)
                for msg in stream:
                    failures = 0
                    task = codec.task_from_proto(msg)
                    if task is not None:
                        self.take(task)
            except grpc.RpcError as exc:
                if not self.stop.is_set():
                    code = exc.code() if hasattr(exc, "code") else exc
                    log.warning(
                        "task stream to %s: %s; reopening in %.1f s",
                        self.cfg.service,
                        code,
                        RECONNECT.delay_s(failures + 1),
                    )
            except Exception:
                if not self.stop.is_set():
                    log.exception("task stream failed; reopening")
            finally:
                done.set()
                with self._lock:
                    self._outbox = None
                outbox.put(None)
                self._close_consoles("the agent's connection to the service broke")
                channel.close()
            failures += 1
            self.stop.wait(RECONNECT.delay_s(failures))

    def close(self) -> None:
        self._close_consoles("the agent is stopping")
        self._pool.shutdown(wait=False, cancel_futures=True)

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
                self._pool.submit(self._exec, task.task_id, task.workspace_id, kind)
            except RuntimeError:  # shutting down
                self.reply(task.task_id, TaskError(INTERNAL_CODE, "the agent is stopping"))
        elif isinstance(kind, ConsoleOpen):
            threading.Thread(
                target=self._console,
                args=(task.task_id, task.workspace_id),
                name=f"console-{task.workspace_id}",
                daemon=True,
            ).start()
        elif isinstance(kind, ConsoleInput):
            with self._lock:
                console = self._consoles.get(task.task_id)
            if console is not None:
                try:
                    console.session.write(kind.data)
                except WorkspaceError as exc:
                    log.info("console of %s: %s", self._label(console.workspace_id), exc.message)
                    console.session.close()
        elif isinstance(kind, ConsoleClose):
            with self._lock:
                console = self._consoles.get(task.task_id)
            if console is not None:
                console.closed.set()
                console.session.close()

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

    def _console(self, task_id: str, workspace_id: str) -> None:
        label = self._label(workspace_id)
        try:
            session = self.driver.open_console(workspace_id)
        except WorkspaceError as exc:
            log.info("console of %s not opened: %s", label, exc.message)
            self.reply(task_id, error_of(exc))
            return
        except Exception as exc:
            log.exception("console of %s failed to open", label)
            self.reply(task_id, TaskError(INTERNAL_CODE, f"the agent failed: {exc}"))
            return
        console = _Console(task_id, workspace_id, session)
        with self._lock:
            self._consoles[task_id] = console
        log.info("console of %s attached", label)
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
            session.close()
            with self._lock:
                self._consoles.pop(task_id, None)
            self.reply(task_id, ConsoleClosed(reason))
            log.info("console of %s detached: %s", label, reason)

    def _close_consoles(self, why: str) -> None:
        with self._lock:
            consoles = list(self._consoles.values())
        for c in consoles:
            log.info("closing the console of %s: %s", self._label(c.workspace_id), why)
            c.closed.set()
            c.session.close()


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
