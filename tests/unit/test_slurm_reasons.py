"""The reasons ws-slurm marks nodes DOWN with (``reasons``, ``scontrol.fit_reason``):
ws-slurm keeps one to 200 characters. A service that cannot be reached was told as "the
workspace service cannot be reached: cannot reach the workspace service at ADDRESS: ...",
and behind a suspend's own words, a long socket path or replicas, the cause ("No such file
or directory", "Connection refused") was cut off, mid-word."""

from __future__ import annotations

import socket
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.unit.test_slurm_program import FakeScontrol
from workspace import errors
from workspace.client import Client
from workspace.slurm.reasons import fail_nodes, service_problem
from workspace.slurm.scontrol import MAX_REASON, fit_reason

SOCKET = "/run/s44slm2-not-here/" + "site" * 12 + "/service.sock"  # 83 characters


def _unreachable(address: str) -> errors.WorkspaceError:
    client = Client.from_env(address, timeout_s=5)
    try:
        client.list_workspaces(mine=True)
    except errors.WorkspaceError as exc:
        return exc
    finally:
        client.close()
    raise AssertionError(f"{address} answered")


@pytest.fixture
def down() -> Iterator[FakeScontrol]:
    yield FakeScontrol()


@pytest.mark.parametrize(
    ("command", "head"),
    [
        ("suspend", "ws: suspend could not check for its workspace: service unreachable: "),
        ("resume-fail", "ws: did not register in ResumeTimeout; could not clean up: service "),
        ("resume", "ws: service unreachable: "),
    ],
)
def test_an_unreachable_service_is_told_cause_first_address_once(
    down: FakeScontrol, command: str, head: str
) -> None:
    fail_nodes(down, command, ["c1"], service_problem(_unreachable(f"unix:{SOCKET}")))
    reason = down.down["c1"]
    assert reason.startswith(head), reason
    assert len(reason) <= 200, reason
    assert "No such file or directory" in reason, reason
    assert reason.count("s44slm2-not-here") <= 1, reason


def test_replicas_each_cause_whole(down: FakeScontrol) -> None:
    """Three replicas, two ways of failing: each cause once with its addresses, and what
    does not fit left out at a clause, not cut within a word."""
    exc = _unreachable(f"unix:{SOCKET},127.0.0.1:1,127.0.0.1:2")
    assert service_problem(exc) == (
        f"service unreachable: No such file or directory at unix:{SOCKET}; "
        "Connection refused at 127.0.0.1:1, 127.0.0.1:2"
    )
    fail_nodes(down, "suspend", ["c1"], service_problem(exc))
    assert down.down["c1"] == (
        "ws: suspend could not check for its workspace: service unreachable: No such file or "
        f"directory at unix:{SOCKET} ..."
    )


def test_a_reason_is_cut_between_words() -> None:
    text = "workspace slurm-12-c8-0 FAILED: " + "the image could not be fetched " * 10
    fitted = fit_reason(text, 100)
    assert len(fitted) <= 100 and fitted.endswith(" ...")
    assert text.startswith(fitted.removesuffix(" ...") + " ")
    assert fit_reason("short", 100) == "short"
    # One word longer than half of what fits: cut within it (nothing else to keep).
    assert fit_reason("refused: " + "x" * 300, 100) == "refused: " + "x" * 87 + " ..."


def _closing(path: Path) -> socket.socket:
    """A socket at ``path`` that takes each connection and closes it at once, as a
    service with mutual TLS does to a client without an identity."""
    sock = socket.socket(socket.AF_UNIX)
    sock.bind(str(path))
    sock.listen(8)

    def serve() -> None:
        while True:
            try:
                conn, _ = sock.accept()
            except OSError:  # closed: the test is over
                return
            conn.close()

    threading.Thread(target=serve, daemon=True).start()
    return sock


def test_replicas_keep_what_the_client_said_of_the_failure(down: FakeScontrol) -> None:
    """Two replicas that both close the connection: the client says why (here no identity
    was given; an expired certificate is told the same way), and with one address the
    reason kept it, with replicas it was dropped: "service unreachable: recvmsg:Connection
    reset by peer (104) at unix:..., unix:..." and nothing of what to do."""
    # Short paths (pytest's tmp_path is long), as an admin's: the hint fits in Slurm.
    with tempfile.TemporaryDirectory(dir="/tmp") as where:
        a, b = Path(where, "a.sock"), Path(where, "b.sock")
        servers = [_closing(a), _closing(b)]
        try:
            exc = _unreachable(f"unix:{a},unix:{b}")
        finally:
            for sock in servers:
                sock.shutdown(socket.SHUT_RDWR)  # wakes its accept
                sock.close()
    said = service_problem(exc)
    assert said.startswith("service unreachable: "), said
    # Both addresses, each after its cause (gRPC's words for a closed connection vary
    # with timing: "Connection reset by peer", "Socket closed"; alike, they are one),
    # and what the client said of it once, last.
    assert f"unix:{a}" in said and f"unix:{b}" in said, said
    assert said.count("(no identity given: ") == 1, said
    assert said.rstrip(")").endswith("$WS_IDENTITY"), said
    fail_nodes(down, "resume", ["c1"], said)
    # In Slurm whole when it fits (the causes alike: one "at a, b"), else cut at a clause.
    assert down.down["c1"].startswith("ws: service unreachable: "), down.down["c1"]
    if len("ws: " + said) <= MAX_REASON:
        assert down.down["c1"] == "ws: " + said
