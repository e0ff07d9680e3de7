"""Execs and saves for an agent connected to another replica (docs/design/replicas.md).

An agent's ``Nodes.Tasks`` stream is connected to one replica; ``ws exec`` may arrive at
any. The receiving replica (``TaskForwarder.exec``, the hub's ``elsewhere``) sends the
task on PostgreSQL's ``workspace_tasks`` channel; a replica holding the node's stream
answers at once that it has it (``ack``), every other that it has not (``nack``); the
sender tells the first one to say yes to run it (``go``: two replicas that both still
hold a stream of the node -- an old one not yet seen broken -- never both run it); that
one runs the task through its hub and sends the outcome (or the error) back, in parts
when it is larger than one notification. A task larger than one notification (an exec's
stdin or argv) is offered without its fields, which go to the one that runs it in parts,
with the ``go``. Every live replica saying no means no replica has the agent:
UNAVAILABLE, as on one replica; a live replica that has not answered yet is waited for
(``service/offers.py``: the rule, shared with consoles). Interactive consoles go the
same way, as sessions (``service/console_relay.py``, whose messages this relay hands
over).
"""

from __future__ import annotations

import base64
import json
import logging
import threading
import time
import uuid
from collections.abc import Callable
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass, field
from typing import Any

from workspace.domain.model import ExecOutcome
from workspace.domain.tasks import (
    ExecTask,
    SavedPartition,
    SaveOutcome,
    SaveTask,
    TaskError,
    error_of,
    exception_of,
)
from workspace.errors import Unavailable, WorkspaceError
from workspace.ops.taskhub import Answer, ConsoleLink, TaskHub
from workspace.service import console_relay, offers
from workspace.service.console_relay import ConsoleRelay
from workspace.service.offers import Answers, Peers, Replicas
from workspace.service.replicas import TASKS_CHANNEL, Relay

log = logging.getLogger("workspace.service.tasks")

# Base64 characters of an answer per notification (under PostgreSQL's 8000 bytes).
PART_CHARS = 6000
# A message longer than this goes in parts (PostgreSQL's payload limit is 8000 bytes).
NOTIFY_MAX = 7900
# How often a replica waiting for an answer asks whether the one running the task is gone.
GONE_CHECK_S = 1.0


@dataclass
class _Waiting:
    offer: Answers  # whether a replica holds the stream: the first to say so runs it
    parts: dict[int, str] = field(default_factory=dict)
    answer: Future[Answer] = field(default_factory=Future)
    body: list[str] = field(default_factory=list)  # the task's fields in parts ([]: inline)


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


class TaskForwarder:
    def __init__(
        self,
        hub: TaskHub,
        relay: Relay,
        gone: Callable[[str], bool] = lambda _r: False,
        peers: Peers | None = None,
    ) -> None:
        """``gone``: whether a replica is known to be gone (service/registry.py): a task
        whose holder is gone is not waited for any longer; ``peers``: the live replicas
        (the registry's picture), each of which answers an offer (service/offers.py)."""
        self.hub = hub
        self.relay = relay
        self.replicas = Replicas(peers, gone)
        self._lock = threading.Lock()
        self._waiting: dict[str, _Waiting] = {}
        # Execs this replica offered to run (acked), waiting for their ``go``; those told
        # to run whose fields still come in parts (the offer, the parts so far).
        self._offered: dict[str, tuple[float, dict[str, Any]]] = {}
        self._incoming: dict[str, tuple[float, dict[str, Any], dict[int, str]]] = {}
        # Interactive consoles: sessions through the same channel.
        self.consoles = ConsoleRelay(hub, relay, self.replicas)

    def start(self) -> None:
        self.relay.on_task = self.received
        self.hub.elsewhere = self

    def open_console(self, node: str, workspace_id: str) -> ConsoleLink:
        return self.consoles.open(node, workspace_id)

    # -- the replica the exec arrived at ----------------------------------------------------

    def exec(self, node: str, workspace_id: str, task: ExecTask, wait_s: float) -> ExecOutcome:
        fields = {"argv": list(task.argv), "stdin": _b64(task.stdin), "timeout": task.timeout_s}
        answer = self._forward(node, workspace_id, fields, wait_s)
        if not isinstance(answer, ExecOutcome):
            raise Unavailable(f"the replica holding node {node}'s agent answered {answer!r}")
        return answer

    def save(self, node: str, workspace_id: str, task: SaveTask, wait_s: float) -> SaveOutcome:
        fields = {"task": "save", "partitions": list(task.partitions), "timeout": task.timeout_s}
        answer = self._forward(node, workspace_id, fields, wait_s)
        if not isinstance(answer, SaveOutcome):
            raise Unavailable(f"the replica holding node {node}'s agent answered {answer!r}")
        return answer

    def _forward(
        self, node: str, workspace_id: str, fields: dict[str, Any], wait_s: float
    ) -> Answer:
        """Offer a task of one answer to the replicas (``op`` exec, whatever its kind) and
        wait for the answer of the one that runs it."""
        tid = uuid.uuid4().hex
        w = _Waiting(self.replicas.offer(self.relay.replica_id, node))
        with self._lock:
            self._waiting[tid] = w
        msg = {
            "op": "exec",
            "id": tid,
            "from": self.relay.replica_id,
            "node": node,
            "ws": workspace_id,
            "wait": wait_s,
            **fields,
        }
        try:
            payload = json.dumps(msg)
            if len(payload) >= NOTIFY_MAX:
                # Until session 40 refused ("too large to forward; try again"): an exec
                # with more than about 5 KiB of stdin failed through every replica but the
                # one holding the agent, and trying again went to the same one.
                text = _b64(json.dumps(fields).encode())
                w.body = [text[i : i + PART_CHARS] for i in range(0, len(text), PART_CHARS)]
                offer = {k: v for k, v in msg.items() if k not in fields}
                payload = json.dumps({**offer, "body": len(w.body)})
            self.relay.send(TASKS_CHANNEL, payload)
            holder = w.offer.wait()
            end = time.monotonic() + wait_s + offers.ACK_S
            while True:
                try:
                    return w.answer.result(
                        timeout=max(0.0, min(GONE_CHECK_S, end - time.monotonic()))
                    )
                except FutureTimeout:
                    if time.monotonic() >= end:
                        raise Unavailable(
                            f"node {node}'s agent did not answer within {wait_s:g} s; try again"
                        ) from None
                    if self.replicas.gone(holder):
                        raise Unavailable(
                            f"the service replica holding node {node}'s agent ({holder}) "
                            "is gone; try again"
                        ) from None
        finally:
            with self._lock:
                self._waiting.pop(tid, None)

    # -- every replica: what the channel brings -------------------------------------------

    def received(self, payload: str) -> None:
        try:
            msg = json.loads(payload)
        except ValueError:
            return
        op = msg.get("op")
        if op in console_relay.OPS:
            self.consoles.received(msg)
            return
        if op == "exec":
            if not self.hub.connected(str(msg.get("node", ""))):
                if msg["from"] != self.relay.replica_id:  # its own offer: it knows
                    self._reply(msg["from"], msg["id"], {"op": "nack", "by": self.relay.replica_id})
                return
            now = time.monotonic()
            with self._lock:
                self._offered = offers.recent(self._offered, now)
                self._incoming = offers.recent(self._incoming, now, 3 * offers.KEEP_S)
                self._offered[str(msg["id"])] = (now, msg)
            # "parts": this replica takes a task's fields in parts with the go.
            ack = {"op": "ack", "by": self.relay.replica_id, "parts": 1}
            self._reply(msg["from"], msg["id"], ack)
            return
        if msg.get("to") != self.relay.replica_id:
            return
        if op == "go":
            task = self._told(msg)
            if task is not None:
                threading.Thread(
                    target=self._run, args=(task,), name="forwarded-exec", daemon=True
                ).start()
            return
        with self._lock:
            w = self._waiting.get(str(msg.get("id", "")))
        if w is None:
            return
        if op == "ack":
            holder = str(msg.get("by", ""))
            if not w.offer.acked(holder):
                return
            if w.body and not msg.get("parts"):
                w.answer.set_exception(
                    Unavailable(
                        "the node's agent is connected to a replica of an older "
                        "release, which cannot take a command this large (stdin over "
                        "about 5 KiB); run it through that replica, or once it is upgraded"
                    )
                )
                return
            n = len(w.body)
            for i, part in enumerate(w.body or [""]):
                go = {"op": "go", "i": i, "n": n, "d": part} if n else {"op": "go"}
                self._reply(holder, str(msg["id"]), go)
        elif op == "nack":
            w.offer.declined(str(msg.get("by", "")))
        elif op == "part":
            w.parts[int(msg["i"])] = str(msg["d"])
            if len(w.parts) == int(msg["n"]):
                text = base64.b64decode("".join(w.parts[i] for i in range(len(w.parts))))
                self._settle(w, json.loads(text))

    def _told(self, msg: dict[str, Any]) -> dict[str, Any] | None:
        """The task a ``go`` tells this replica to run, once its fields are all here (an
        offer made without them: they come in parts, one per ``go``); None: not yet, or
        not offered by this replica."""
        tid = str(msg.get("id", ""))
        with self._lock:
            offered = self._offered.pop(tid, None)
            if offered is not None and "body" not in offered[1]:
                return offered[1]
            if offered is not None:
                self._incoming[tid] = (offered[0], offered[1], {})
            incoming = self._incoming.get(tid)
            if incoming is None:
                return None
            _when, task, parts = incoming
            parts[int(msg.get("i", 0))] = str(msg.get("d", ""))
            if len(parts) < int(task["body"]):
                return None
            del self._incoming[tid]
        fields = json.loads(base64.b64decode("".join(parts[i] for i in range(len(parts)))))
        return {**task, **fields}

    def _settle(self, w: _Waiting, answer: dict[str, Any]) -> None:
        if w.answer.done():
            return
        if "error" in answer:
            code, message = answer["error"]
            w.answer.set_exception(exception_of(TaskError(int(code), str(message))))
            return
        if "saved" in answer:
            w.answer.set_result(
                SaveOutcome(
                    tuple(SavedPartition(str(n), str(d), int(z)) for n, d, z in answer["saved"])
                )
            )
            return
        w.answer.set_result(
            ExecOutcome(
                exit_code=int(answer["exit_code"]),
                stdout=base64.b64decode(answer["stdout"]),
                stderr=base64.b64decode(answer["stderr"]),
                timed_out=bool(answer["timed_out"]),
                truncated=bool(answer["truncated"]),
            )
        )

    # -- the replica holding the agent's stream ---------------------------------------------

    def _run(self, msg: dict[str, Any]) -> None:
        answer: dict[str, Any]
        node, wid, wait = str(msg["node"]), str(msg["ws"]), float(msg["wait"])
        try:
            if msg.get("task") == "save":
                save = SaveTask(
                    tuple(str(p) for p in msg.get("partitions", ())), int(msg.get("timeout", 0))
                )
                saved = self.hub.save(node, wid, save, wait, forward=False)
                answer = {"saved": [[p.name, p.digest, p.size_bytes] for p in saved.partitions]}
            else:
                answer = self._run_exec(node, wid, msg, wait)
        except WorkspaceError as exc:
            e = error_of(exc)
            answer = {"error": [e.code, e.message]}
        except Exception as exc:
            log.exception("a forwarded task failed")
            answer = {"error": [13, f"the task failed on the replica holding the agent: {exc}"]}
        text = _b64(json.dumps(answer).encode())
        parts = [text[i : i + PART_CHARS] for i in range(0, len(text), PART_CHARS)] or [""]
        for i, part in enumerate(parts):
            self._reply(msg["from"], msg["id"], {"op": "part", "i": i, "n": len(parts), "d": part})

    def _run_exec(self, node: str, wid: str, msg: dict[str, Any], wait: float) -> dict[str, Any]:
        task = ExecTask(
            argv=tuple(str(a) for a in msg.get("argv", ())),
            stdin=base64.b64decode(msg.get("stdin", "")),
            timeout_s=int(msg.get("timeout", 0)),
        )
        out = self.hub.exec(node, wid, task, wait, forward=False)
        return {
            "exit_code": out.exit_code,
            "stdout": _b64(out.stdout),
            "stderr": _b64(out.stderr),
            "timed_out": out.timed_out,
            "truncated": out.truncated,
        }

    def _reply(self, to: str, tid: str, body: dict[str, Any]) -> None:
        self.relay.send(TASKS_CHANNEL, json.dumps({**body, "to": to, "id": tid}))
