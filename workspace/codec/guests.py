"""Exec and consoles: proto (workspace.v1 Guests, workspace.node.v1 Tasks) ⇄ domain
(``workspace/domain/tasks.py``, ``ExecResult``)."""

from __future__ import annotations

from workspace.codec.node import exec_outcome_from_proto, exec_outcome_to_proto
from workspace.domain.model import ExecOutcome, ExecResult
from workspace.domain.tasks import (
    ConsoleClose,
    ConsoleClosed,
    ConsoleInput,
    ConsoleOpen,
    ConsoleOutput,
    ExecTask,
    ReplyKind,
    SaveCopying,
    SavedPartition,
    SaveOutcome,
    SaveStarted,
    SaveTask,
    Task,
    TaskError,
    TaskKind,
    TaskReply,
)
from workspace.node.v1 import nodes_pb2
from workspace.v1 import access_pb2


def exec_result_to_proto(r: ExecResult) -> access_pb2.ExecResult:
    o = r.outcome
    return access_pb2.ExecResult(
        workspace_id=r.workspace_id,
        name=r.name,
        exit_code=o.exit_code,
        stdout=o.stdout,
        stderr=o.stderr,
        timed_out=o.timed_out,
        truncated=o.truncated,
    )


def task_to_proto(t: Task) -> nodes_pb2.Task:
    m = nodes_pb2.Task(task_id=t.task_id, workspace_id=t.workspace_id)
    k = t.kind
    if isinstance(k, ExecTask):
        m.exec.CopyFrom(nodes_pb2.ExecTask(argv=list(k.argv), stdin=k.stdin, timeout_s=k.timeout_s))
    elif isinstance(k, ConsoleOpen):
        m.console_open.SetInParent()
    elif isinstance(k, ConsoleInput):
        m.console_input = k.data
    elif isinstance(k, SaveTask):
        m.save.CopyFrom(nodes_pb2.SaveTask(partitions=list(k.partitions), timeout_s=k.timeout_s))
    else:
        m.console_close = True
    return m


def task_from_proto(m: nodes_pb2.Task) -> Task | None:
    """The task ``m`` carries (None: a kind this agent does not know; it is ignored)."""
    which = m.WhichOneof("kind")
    kind: TaskKind
    if which == "exec":
        kind = ExecTask(tuple(m.exec.argv), m.exec.stdin, m.exec.timeout_s)
    elif which == "console_open":
        kind = ConsoleOpen()
    elif which == "console_input":
        kind = ConsoleInput(m.console_input)
    elif which == "console_close":
        kind = ConsoleClose()
    elif which == "save":
        kind = SaveTask(tuple(m.save.partitions), m.save.timeout_s)
    else:
        return None
    return Task(m.task_id, m.workspace_id, kind)


def reply_to_proto(r: TaskReply) -> nodes_pb2.TaskReply:
    m = nodes_pb2.TaskReply(task_id=r.task_id, node=r.node)
    k = r.kind
    if isinstance(k, ExecOutcome):
        m.exec.CopyFrom(exec_outcome_to_proto(k))
    elif isinstance(k, ConsoleOutput):
        m.console_output = k.data
    elif isinstance(k, ConsoleClosed):
        m.console_closed = k.reason
    elif isinstance(k, TaskError):
        m.error.CopyFrom(nodes_pb2.TaskError(code=k.code, message=k.message))
    elif isinstance(k, SaveStarted):
        m.save_started = True
    elif isinstance(k, SaveCopying):
        m.save_copying.CopyFrom(nodes_pb2.SaveCopying(partition=k.partition, percent=k.percent))
    elif isinstance(k, SaveOutcome):
        m.saved.CopyFrom(
            nodes_pb2.SaveOutcome(
                partitions=[
                    nodes_pb2.SavedPartition(name=p.name, digest=p.digest, size_bytes=p.size_bytes)
                    for p in k.partitions
                ]
            )
        )
    return m


def reply_from_proto(m: nodes_pb2.TaskReply) -> TaskReply:
    which = m.WhichOneof("kind")
    kind: ReplyKind | None = None
    if which == "exec":
        kind = exec_outcome_from_proto(m.exec)
    elif which == "console_output":
        kind = ConsoleOutput(m.console_output)
    elif which == "console_closed":
        kind = ConsoleClosed(m.console_closed)
    elif which == "error":
        kind = TaskError(m.error.code, m.error.message)
    elif which == "save_started":
        kind = SaveStarted()
    elif which == "save_copying":
        kind = SaveCopying(m.save_copying.partition, m.save_copying.percent)
    elif which == "saved":
        kind = SaveOutcome(
            tuple(SavedPartition(p.name, p.digest, p.size_bytes) for p in m.saved.partitions)
        )
    return TaskReply(m.task_id, kind, m.node)
