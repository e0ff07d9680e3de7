"""Imperative work on a node's guests (``Nodes.Tasks``), as domain values: what the
service asks of an agent, and what the agent answers.

A save is one task and one answer too: the named cow partitions of a stopped workspace
flattened and sent to the repository (``SaveOutcome``: each one's digest and size).

An exec is one task and one answer (an ``ExecOutcome`` or a ``TaskError``). A console is
a session under one task id: ``ConsoleOpen``, then ``ConsoleInput``s in and
``ConsoleOutput``s out until ``ConsoleClose`` (the client left) or ``ConsoleClosed``
(the console ended, or could not be opened). Codes of ``TaskError`` are google.rpc code
numbers, so both ends map them to the same error classes (``error_of``/``exception_of``).
"""

from __future__ import annotations

from dataclasses import dataclass

from workspace import errors
from workspace.domain.model import ExecOutcome


@dataclass(frozen=True)
class ExecTask:
    argv: tuple[str, ...]
    stdin: bytes = b""
    timeout_s: int = 0


@dataclass(frozen=True)
class ConsoleOpen:
    pass


@dataclass(frozen=True)
class ConsoleInput:
    data: bytes


@dataclass(frozen=True)
class ConsoleClose:
    pass


@dataclass(frozen=True)
class SaveTask:
    partitions: tuple[str, ...]
    timeout_s: int = 0


TaskKind = ExecTask | ConsoleOpen | ConsoleInput | ConsoleClose | SaveTask


@dataclass(frozen=True)
class Task:
    task_id: str
    workspace_id: str
    kind: TaskKind


@dataclass(frozen=True)
class ConsoleOutput:
    data: bytes


@dataclass(frozen=True)
class ConsoleClosed:
    reason: str


@dataclass(frozen=True)
class TaskError:
    code: int  # a google.rpc code number
    message: str


@dataclass(frozen=True)
class SavedPartition:
    name: str
    digest: str
    size_bytes: int


@dataclass(frozen=True)
class SaveOutcome:
    partitions: tuple[SavedPartition, ...]


@dataclass(frozen=True)
class SaveStarted:
    """The agent took a save: its outcome follows (an agent that does not know saves
    never says so)."""


@dataclass(frozen=True)
class SaveCopying:
    """How far the agent's copy of one disk of a save is (percent, 0..100)."""

    partition: str
    percent: float


ReplyKind = (
    ExecOutcome
    | ConsoleOutput
    | ConsoleClosed
    | TaskError
    | SaveOutcome
    | SaveStarted
    | SaveCopying
)


@dataclass(frozen=True)
class TaskReply:
    task_id: str
    kind: ReplyKind | None
    node: str = ""  # the hello (first message of a stream) only


# google.rpc.Code numbers of the errors a task can end with.
INVALID_ARGUMENT = 3
NOT_FOUND = 5
PERMISSION_DENIED = 7
RESOURCE_EXHAUSTED = 8
FAILED_PRECONDITION = 9
INTERNAL = 13
UNAVAILABLE = 14
_CODES: dict[type[errors.WorkspaceError], int] = {
    errors.InvalidArgument: INVALID_ARGUMENT,
    errors.NotFound: NOT_FOUND,
    errors.PermissionDenied: PERMISSION_DENIED,
    errors.ResourceExhausted: RESOURCE_EXHAUSTED,
    errors.FailedPrecondition: FAILED_PRECONDITION,
    errors.Unavailable: UNAVAILABLE,
}
_CLASSES = {code: cls for cls, code in _CODES.items()}


def error_of(exc: errors.WorkspaceError) -> TaskError:
    """The TaskError an agent answers for ``exc`` (INTERNAL for anything unexpected)."""
    for cls in type(exc).__mro__:
        code = _CODES.get(cls)
        if code is not None:
            return TaskError(code, exc.message)
    return TaskError(INTERNAL, exc.message)


def exception_of(err: TaskError) -> errors.WorkspaceError:
    """The error a TaskError means on the service (a plain WorkspaceError if unknown)."""
    return _CLASSES.get(err.code, errors.WorkspaceError)(err.message)
