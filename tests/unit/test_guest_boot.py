"""A guest that has just started: `ws ssh`, `ws scp` and `ws exec` wait for it within
its boot window (said once on stderr), fail at once for one that has run for long, and
`--retry N` keeps its meaning (workspace/domain/booting.py)."""

from __future__ import annotations

import socket
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.unit.test_cli_guests import HOST_KEYS, FakeClient, box, fake_ssh, run
from workspace import errors
from workspace.cli import guest_cmds, sshwait
from workspace.client_guests import boot_wait_for
from workspace.domain import booting
from workspace.v1 import access_pb2, common_pb2

RUNNING = common_pb2.WorkspaceState.WORKSPACE_STATE_RUNNING
STARTING = common_pb2.WorkspaceState.WORKSPACE_STATE_STARTING


@pytest.fixture(autouse=True)
def at_a_terminal(monkeypatch: pytest.MonkeyPatch) -> None:
    """A person at a terminal (stderr is one): the default waits apply."""
    monkeypatch.setattr(guest_cmds, "interactive", lambda: True)


def started(ago_s: float, state: int = RUNNING) -> common_pb2.Workspace:
    """Workspace `box`, in ``state`` since ``ago_s`` seconds (its updated_at)."""
    w = box(host_keys=HOST_KEYS)
    w.state = state  # type: ignore[assignment]
    w.updated_at.FromNanoseconds(int((time.time() - ago_s) * 1e9))
    return w


def test_the_boot_window_counts_from_the_last_change_of_a_running_workspace() -> None:
    assert booting.BOOT_WINDOW_S == 300
    assert booting.boot_left(True, 1000.0, 1020.0) == 280
    assert booting.boot_left(True, 1000.0, 1300.0) == 0
    assert booting.boot_left(True, 1000.0, 5000.0) == 0  # running for long: fail fast
    assert booting.boot_left(False, 1000.0, 1020.0) == 0  # not running: nothing to wait for
    assert booting.boot_left(True, 0.0, 1020.0) == 0  # when it started is not known
    assert booting.boot_left(True, 1030.0, 1020.0) == 300  # a clock behind the service's
    assert booting.up_for(0.0, 5.0) is None and booting.up_for(1.0, 5.0) == 4
    assert 279 < boot_wait_for(started(20)) <= 280
    assert boot_wait_for(started(20, state=STARTING)) == 0
    assert boot_wait_for(box()) == 0  # no updated_at


def test_the_no_guest_agent_messages_are_told_apart_from_other_refusals() -> None:
    yet = booting.no_guest_agent_yet("box")
    assert yet == (
        "no QEMU guest agent answers in workspace box yet: the guest may still be "
        "booting (try again shortly), or its image lacks qemu-guest-agent"
    )
    since = booting.no_guest_agent_since("bare", 412.4)
    assert since == (
        "no QEMU guest agent has answered in workspace bare since it started 412 s ago: "
        "its image most likely lacks qemu-guest-agent (`ws console bare --attach` reaches it)"
    )
    assert booting.is_no_guest_agent(yet) and booting.is_no_guest_agent(since)
    assert not booting.is_no_guest_agent("workspace box is not running")
    assert not booting.is_no_guest_agent("the guest agent in workspace box refuses guest-exec")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_ssh_and_scp_right_after_a_start_wait_for_the_sshd_and_say_so(
    capfd: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """`ws create --wait` then `ws ssh box`: RUNNING, but the guest still boots; ws
    knocks on its ssh port until it answers, says once that it waits, then runs ssh."""
    fake_ssh(monkeypatch, tmp_path, 'echo "$@" > "$ARGS_FILE"\n')
    bin_dir = tmp_path / "bin"
    (bin_dir / "scp").write_text((bin_dir / "ssh").read_text())
    (bin_dir / "scp").chmod(0o755)
    args_file = tmp_path / "args"
    monkeypatch.setenv("ARGS_FILE", str(args_file))
    port = free_port()
    monkeypatch.setattr(sshwait, "SSH_PORT", port)
    monkeypatch.setattr(sshwait, "KNOCK_EVERY_S", 0.2)
    c = FakeClient([started(20)])
    c.workspaces["box"].nics[0].ip = "127.0.0.1"
    sshd = socket.socket()

    def boots() -> None:  # the guest's sshd comes up a second later
        time.sleep(1.0)
        sshd.bind(("127.0.0.1", port))
        sshd.listen()

    threading.Thread(target=boots, daemon=True).start()
    try:
        rc, _, err = run(c, capfd, "ssh", "box", "--", "uname", "-a")  # type: ignore[arg-type]
        assert rc == 0 and err.count("\n") == 1, err
        assert err.startswith(
            "ws: box's sshd does not answer yet (Connection refused; it started 2"
        )
        assert err.endswith(" s for the guest to boot\n") and "waiting up to 2" in err
        assert "ConnectionAttempts" not in args_file.read_text()  # it answers: one attempt
        # Up: nothing said.
        rc, _, err = run(c, capfd, "scp", "f", "box:")  # type: ignore[arg-type]
        assert rc == 0 and err == ""
    finally:
        sshd.close()
    # --retry N: as before, N attempts, no knocks, nothing said.
    rc, _, err = run(c, capfd, "ssh", "--retry", "5", "box")  # type: ignore[arg-type]
    assert rc == 0 and err == "" and "-o ConnectionAttempts=5" in args_file.read_text()
    # --print: a command for later (its known_hosts file stays: here, in tmp_path).
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    rc, out, err = run(c, capfd, "ssh", "box", "--print")  # type: ignore[arg-type]
    assert rc == 0 and err == "" and "ConnectionAttempts" not in out
    # Running for long: at once, as ever (nothing listens: ssh's own error would say).
    c.workspaces["box"].updated_at.FromSeconds(int(time.time() - booting.BOOT_WINDOW_S - 60))
    started_at = time.monotonic()
    rc, _, err = run(c, capfd, "ssh", "box")  # type: ignore[arg-type]
    assert rc == 0 and err == "" and time.monotonic() - started_at < 5


def test_a_guest_reached_through_a_proxy_jump_is_not_knocked_on(
    capfd: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """A guest on a node's network this machine has no route to is reached through a
    ProxyJump in ~/.ssh/config. ws knocked on its port from here, where nothing ever
    answers, and made the user wait out the boot window before running ssh; now ssh
    (which goes through the jump host) runs at once."""
    fake_ssh(
        monkeypatch,
        tmp_path,
        'if [ "$1" = -G ]; then printf "user debian\\nproxyjump login.example\\n"; exit 0; fi\n'
        'echo "$@" > "$ARGS_FILE"\n',
    )
    args_file = tmp_path / "args"
    monkeypatch.setenv("ARGS_FILE", str(args_file))
    monkeypatch.setattr(sshwait, "SSH_PORT", free_port())  # no route from here: no answer
    c = FakeClient([started(booting.BOOT_WINDOW_S - 3)])
    c.workspaces["box"].nics[0].ip = "127.0.0.1"
    rc, _, err = run(c, capfd, "ssh", "box", "--", "hostname")  # type: ignore[arg-type]
    assert rc == 0 and err == ""  # no "sshd does not answer yet ... waiting"
    assert args_file.read_text().rstrip().endswith("-- 127.0.0.1 hostname")
    assert sshwait.proxy_of("127.0.0.1") == "login.example"


def test_the_wait_for_an_sshd_is_bounded_by_time(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sshwait, "SSH_PORT", free_port())  # nothing listens
    monkeypatch.setattr(sshwait, "KNOCK_EVERY_S", 0.1)
    said: list[tuple[str, float]] = []
    begun = time.monotonic()
    assert not sshwait.wait_for_sshd("127.0.0.1", [], 0.5, lambda *a: said.append(a))
    assert 0.5 <= time.monotonic() - begun < 5
    assert said == [("Connection refused", 0.5)]


class BootingClient(FakeClient):
    """A FakeClient whose exec records how long it was told to wait for the guest."""

    def __init__(self, workspaces: list[common_pb2.Workspace]) -> None:
        super().__init__(workspaces)
        self.boot_waits: list[float] = []
        self.refusal: errors.WorkspaceError | None = None

    def exec(
        self,
        ref: str,
        argv: list[str],
        stdin: bytes = b"",
        timeout_s: int = 0,
        boot_wait_s: float = 0.0,
        on_wait: Callable[[errors.WorkspaceError], None] | None = None,
        **_kw: Any,
    ) -> access_pb2.ExecResult:
        self.boot_waits.append(boot_wait_s)
        if self.refusal is not None:
            if on_wait is not None:
                on_wait(self.refusal)
            raise self.refusal
        return super().exec(ref, argv, stdin, timeout_s)


def test_exec_waits_for_the_guest_agent_of_a_workspace_that_just_started(
    capsys: pytest.CaptureFixture[str],
) -> None:
    c = BootingClient([started(20)])
    assert run(c, capsys, "exec", "box", "--", "cat", "/etc/hostname")[0] == 0  # type: ignore[arg-type]
    assert 279 < c.boot_waits[-1] <= 280
    assert run(c, capsys, "exec", "box", "--retry", "30", "--", "true")[0] == 0  # type: ignore[arg-type]
    assert c.boot_waits[-1] == 30
    c.workspaces["box"] = started(booting.BOOT_WINDOW_S + 60)
    assert run(c, capsys, "exec", "box", "--", "true")[0] == 0  # type: ignore[arg-type]
    assert c.boot_waits[-1] == 0  # running for long: at once
    # A workspace on its way to RUNNING: --retry waits for it first, as ws ssh's does.
    c.workspaces["box"] = started(5, state=STARTING)
    rc, _, err = run(c, capsys, "exec", "--retry", "40", "box", "--", "true")  # type: ignore[arg-type]
    assert rc == 0 and c.waited == [
        ("abc123", [common_pb2.WorkspaceState.WORKSPACE_STATE_RUNNING], 40)
    ]
    # What the user sees while it waits, and the refusal once the wait is over.
    c.workspaces["box"] = started(20)
    c.refusal = errors.FailedPrecondition(booting.no_guest_agent_yet("box"))
    rc, _, err = run(c, capsys, "exec", "box", "--", "true")  # type: ignore[arg-type]
    lines = err.splitlines()
    assert rc == 1 and len(lines) == 2
    assert lines[0].startswith("ws: no guest agent answers in box yet (it started 2")
    assert lines[0].endswith("s for the guest to boot") and "waiting up to 2" in lines[0]
    assert "may still be booting" in lines[1]


def test_a_script_is_not_made_to_wait_unasked(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Without a terminal (a script, its own loop and timeouts) exec answers at once, as
    before; --retry N still waits."""
    monkeypatch.setattr(guest_cmds, "interactive", lambda: False)
    c = BootingClient([started(20)])
    assert run(c, capsys, "exec", "box", "--", "true")[0] == 0  # type: ignore[arg-type]
    assert c.boot_waits[-1] == 0
    assert run(c, capsys, "exec", "box", "--retry", "30", "--", "true")[0] == 0  # type: ignore[arg-type]
    assert c.boot_waits[-1] == 30
