"""A guest's console reaches a terminal without the string escape sequences that act on
it (window title, clipboard, ...), and with everything that only draws."""

from __future__ import annotations

import io
import os
import pty
import select

import pytest

from workspace.cli import console_cmds, event_cmds, render
from workspace.cli.termfilter import Filter
from workspace.domain.events import SiteEvent
from workspace.v1 import common_pb2

TITLE = b"\x1b]0;pwned\x07"
CLIPBOARD = b"\x1b]52;c;ZWNobyBoaQ==\x1b\\"  # OSC 52: write the clipboard
DCS = b"\x1bP+q544e\x1b\\"  # request termcap: the terminal answers into the input
COLOUR = b"\x1b[1;31mred\x1b[0m"


def shown(*chunks: bytes) -> bytes:
    f = Filter()
    return b"".join(f.feed(c) for c in chunks) + f.flush()


def test_string_sequences_go_and_drawing_stays() -> None:
    data = b"login: " + TITLE + COLOUR + CLIPBOARD + b" ok" + DCS + b"\r\n\x1b[2J\x1bc"
    assert shown(data) == b"login: " + COLOUR + b" ok\r\n\x1b[2J\x1bc"
    assert shown("é ✓ \U0001f600".encode()) == "é ✓ \U0001f600".encode()  # UTF-8 untouched


@pytest.mark.parametrize("cut", range(1, len(CLIPBOARD)))
def test_a_sequence_split_across_chunks_is_still_dropped(cut: int) -> None:
    data = b"a" + CLIPBOARD + b"b"
    assert shown(data[: cut + 1], data[cut + 1 :]) == b"ab"


def test_an_unterminated_string_ends_at_escape_or_cancel() -> None:
    assert shown(b"\x1b]0;title\x1b[31mX") == b"\x1b[31mX"
    assert shown(b"\x1b]0;title\x18after") == b"after"
    assert shown(b"end\x1b") == b"end\x1b"  # a lone ESC at the end is kept


def test_ws_console_filters_for_a_terminal_only(
    capfd: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    render.console(b"x" + TITLE + b"y")  # to a pipe: the log as it is
    assert capfd.readouterr().out == "x\x1b]0;pwned\x07y\n"
    monkeypatch.setattr("sys.stdout.isatty", lambda: True)
    render.console(b"x" + TITLE + b"y")
    assert capfd.readouterr().out == "xy\n"


def test_attach_filters_what_goes_to_a_terminal() -> None:
    class Console:
        def get_workspace(self, ref: str) -> object:
            return type("W", (), {"state": 0})()

        def attach_console(self, ref: str, keys: object) -> list[bytes]:
            return [b"a" + TITLE[:3], TITLE[3:] + b"b"]

    parent, child = pty.openpty()
    stdin_r, stdin_w = os.pipe()
    os.close(stdin_w)  # no input
    try:
        with os.fdopen(child, "wb", buffering=0, closefd=False) as tty:
            console_cmds.attach(Console(), "box", stdin_fd=stdin_r, out=tty)  # type: ignore[arg-type]
        got = b""
        while len(got) < 2 and select.select([parent], [], [], 5)[0]:
            got += os.read(parent, 100)
        assert got == b"ab"
        piped = io.BytesIO()
        console_cmds.attach(Console(), "box", stdin_fd=stdin_r, out=piped)  # type: ignore[arg-type]
        assert piped.getvalue() == b"a" + TITLE + b"b"
    finally:
        for fd in (parent, child, stdin_r):
            os.close(fd)


def test_a_reason_with_a_newline_stays_on_its_line() -> None:
    """A node writes its workspaces' reasons: one with a newline made `ws events` print
    an event line of the node's making, and `ws show`'s state line a line of its own."""
    forged = "1970-01-01T00:00:09Z  trust.decision  workspace alpha (abc)  by service: ok"
    reason = f"disk error\n{forged}\tx"
    e = SiteEvent(
        at=0.0, kind="workspace.state", who="node:n1", workspace_id="abc",
        workspace_name="alpha", node="n1", state="FAILED", previous="RUNNING", reason=reason,
    )  # fmt: skip
    line = event_cmds.line(e)
    assert "\n" not in line and line.endswith(f"by node:n1: disk error\\x0a{forged}\tx")
    ws = common_pb2.Workspace(id="abc", name="alpha", reason=reason)
    state = render.state_line(ws)
    assert "\n" not in state and state.endswith(f"(disk error\\x0a{forged}\tx)")
    shown = render.workspace_text(ws).splitlines()  # `ws show`: no row of the node's making
    assert f"disk error\\x0a{forged}\tx" in shown[4] and len(shown) == len(
        render.workspace_text(common_pb2.Workspace(id="abc", name="alpha", reason="r")).splitlines()
    )
