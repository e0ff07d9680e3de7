"""Running a command through the QEMU guest agent (qemu-ga), protocol only.

``guest-exec`` starts the command (``path`` searched in the guest's PATH, ``arg``,
``input-data`` as base64, ``capture-output``) and answers with its pid; ``guest-exec-status``
is polled until ``exited``, with ``exitcode`` (or ``signal``), base64 ``out-data`` and
``err-data`` and ``out-truncated``/``err-truncated`` (qemu-ga keeps at most 16 MiB of each).
The caller (the libvirt driver) passes ``call``: one agent command as JSON, its reply as
JSON, with libvirt's errors already turned into ours (``CommandFailed`` for an error the
guest agent itself returned). No libvirt here: unit tests drive it with a fake ``call``.
"""

from __future__ import annotations

import base64
import contextlib
import logging
import time
from collections.abc import Callable, Sequence
from typing import Any

from workspace.domain import booting
from workspace.domain.model import ExecOutcome
from workspace.errors import DriverError, FailedPrecondition, WorkspaceError

log = logging.getLogger(__name__)

# Seconds one agent command may take (guest-exec returns at once; the wait is ours).
CALL_TIMEOUT_S = 10
# Polling guest-exec-status: first after this long, doubling up to POLL_MAX_S.
POLL_FIRST_S = 0.05
POLL_MAX_S = 0.5
# timeout(1)'s exit code for a command that ran past its timeout.
TIMED_OUT = 124
NOT_FOUND = 127
NOT_EXECUTABLE = 126

Call = Callable[[dict[str, Any], int], dict[str, Any]]


def no_guest_agent(name: str) -> FailedPrecondition:
    """No guest agent answers: while the guest boots (minutes under TCG, after the domain
    is RUNNING) as much as in an image without one: the service tells them apart by the
    time the workspace has been running (``workspace/domain/booting.py``)."""
    return FailedPrecondition(booting.no_guest_agent_yet(name))


class CommandFailed(WorkspaceError):
    """The guest agent answered a command with an error (e.g. guest-exec of a missing
    binary: "Failed to execute child process ... (No such file or directory)")."""


def _decode(status: dict[str, Any], key: str, limit: int) -> tuple[bytes, bool]:
    raw = status.get(key)
    data = base64.b64decode(raw) if raw else b""
    cut = bool(status.get(key.replace("-data", "-truncated")))
    if len(data) > limit:
        return data[:limit], True
    return data, cut


def _exit_code(status: dict[str, Any]) -> int:
    if "exitcode" in status:
        return int(status["exitcode"])
    if "signal" in status:  # killed by a signal: as a shell reports it
        return 128 + int(status["signal"])
    return -1


def exec_command(
    call: Call,
    argv: Sequence[str],
    stdin: bytes,
    timeout_s: float,
    max_output_bytes: int,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
) -> ExecOutcome:
    """Run ``argv`` in the guest; wait up to ``timeout_s`` for it to exit.

    A command the guest agent cannot start becomes exit code 127 (126 when permission
    was denied) with the agent's message on stderr, as a shell would report it. A
    command still running at the timeout is asked to stop (``kill -KILL``, best effort:
    it may live on) and reported ``timed_out``."""
    args: dict[str, Any] = {"path": argv[0], "arg": list(argv[1:]), "capture-output": True}
    if stdin:
        args["input-data"] = base64.b64encode(stdin).decode()
    deadline = clock() + timeout_s
    try:
        started = call({"execute": "guest-exec", "arguments": args}, CALL_TIMEOUT_S)
    except CommandFailed as exc:
        code = NOT_EXECUTABLE if "permission denied" in exc.message.lower() else NOT_FOUND
        return ExecOutcome(exit_code=code, stderr=f"{argv[0]}: {exc.message}\n".encode())
    try:
        pid = int(started["return"]["pid"])
    except (KeyError, TypeError, ValueError) as exc:
        raise DriverError(f"guest-exec answered without a pid: {started!r}") from exc
    wait = POLL_FIRST_S
    while True:
        reply = call({"execute": "guest-exec-status", "arguments": {"pid": pid}}, CALL_TIMEOUT_S)
        status = reply.get("return") or {}
        if status.get("exited"):
            out, out_cut = _decode(status, "out-data", max_output_bytes)
            err, err_cut = _decode(status, "err-data", max_output_bytes)
            return ExecOutcome(
                exit_code=_exit_code(status),
                stdout=out,
                stderr=err,
                truncated=out_cut or err_cut,
            )
        left = deadline - clock()
        if left <= 0:
            _kill(call, pid)
            return ExecOutcome(exit_code=TIMED_OUT, timed_out=True)
        sleep(min(wait, left))
        wait = min(wait * 2, POLL_MAX_S)


def _kill(call: Call, pid: int) -> None:
    """Ask the guest to kill ``pid`` (best effort: qemu-ga has no kill of its own)."""
    with contextlib.suppress(WorkspaceError):
        call(
            {
                "execute": "guest-exec",
                "arguments": {"path": "kill", "arg": ["-KILL", str(pid)]},
            },
            CALL_TIMEOUT_S,
        )
