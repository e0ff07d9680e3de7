"""Interactive consoles through a replica that does not hold the agent's task stream
(service/console_relay.py, docs/design/replicas.md): two in-process replicas on the real
PostgreSQL, a fake agent connected to replica B, every attach made through replica A."""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.functional.harness import WS, Site, answering_late, wait_for
from workspace import errors
from workspace.cli import ws
from workspace.client import Client
from workspace.service import console_relay
from workspace.service.main import Service

BANNER = b"box login: "


@pytest.fixture
def two(tmp_path: Path, pg_db: str) -> Iterator[tuple[Site, Site]]:
    """Replicas A and B, node n1's agent on B, a running workspace ``box`` on n1."""
    shared = tmp_path / "data"
    sites: list[Site] = []
    try:
        for name in ("a", "b"):
            d = tmp_path / name
            d.mkdir()
            sites.append(Site(d, database_url=pg_db, data_dir=str(shared)))
        a, b = sites
        a.stubs.network(subnet="192.168.60.0/24")
        a.stubs.import_image("img")
        b.add_agent("n1")
        a.stubs.create(name="box", request_id="r-box")
        a.stubs.wait_state("box", WS.WORKSPACE_STATE_RUNNING)
        svc_a, svc_b = service(a), service(b)
        wait_for(lambda: svc_b.hub.connected("n1"), 10, "n1's task stream on B")
        assert not svc_a.hub.connected("n1")
        yield a, b
    finally:
        for s in sites:
            s.close()


def service(site: Site) -> Service:
    assert site.service is not None
    return site.service


def sessions(site: Site) -> tuple[int, int]:
    fwd = service(site).forwarder
    assert fwd is not None
    return fwd.consoles.sessions()


class Screen:
    """``sys.stdout`` for ``ws console --attach``: what it shows, to wait for."""

    def __init__(self) -> None:
        self.buffer = self
        self.shown = b""
        self.cond = threading.Condition()

    def write(self, data: bytes) -> int:
        with self.cond:
            self.shown += data
            self.cond.notify_all()
        return len(data)

    def flush(self) -> None:
        pass

    def isatty(self) -> bool:
        return False

    def wait_for(self, text: bytes, timeout_s: float = 60.0) -> None:
        with self.cond:
            self.cond.wait_for(lambda: text in self.shown, timeout_s)


class Typist:
    """Keystrokes for ``attach_console``: what ``type`` is given, until ``detach``."""

    def __init__(self) -> None:
        self.pending: list[bytes] = []
        self.cond = threading.Condition()
        self.done = False

    def type(self, data: bytes) -> None:
        with self.cond:
            self.pending.append(data)
            self.cond.notify_all()

    def detach(self) -> None:
        with self.cond:
            self.done = True
            self.cond.notify_all()

    def __iter__(self) -> Iterator[bytes]:
        while True:
            with self.cond:
                self.cond.wait_for(lambda: self.pending or self.done, 30)
                if self.pending:
                    data = self.pending.pop(0)
                elif self.done:
                    return
                else:
                    return  # nothing for 30 s: the test is broken; end the session
            yield data


def test_attach_through_the_replica_without_the_agent(two: tuple[Site, Site]) -> None:
    a, b = two
    keys = Typist()
    seen = b""
    with Client(a.address) as c:
        for data in c.attach_console("box", keys):
            seen += data
            if seen.endswith(BANNER):
                keys.type(b"root\r")
            if seen.endswith(b"root\r\n"):
                keys.detach()
    assert b"Debian GNU/Linux 12 box ttyS0" in seen
    assert seen.endswith(b"box login: root\r\n")
    # the session is gone on both replicas (B closed the console on the agent)
    wait_for(lambda: sessions(a) == (0, 0) and sessions(b) == (0, 0), 10, "sessions closed")
    # and the console can be attached again, through either replica
    for site in (a, b):
        with Client(site.address) as c:
            again = b""
            for data in c.attach_console("box", iter(())):
                again += data
            assert again == b"" or b"Debian GNU/Linux 12 box ttyS0" in again


def test_ws_console_attach_through_the_replica_without_the_agent(
    two: tuple[Site, Site],
    capfdbinary: pytest.CaptureFixture[bytes],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    a, _b = two
    r, w = os.pipe()
    screen = Screen()

    def type_in() -> None:
        # Typed as a person does, on what the screen shows: typed after fixed naps (1 s,
        # then 1 s), a ws slow to attach on a busy machine read the login and the Ctrl-]
        # together, and detached before the guest echoed the login.
        screen.wait_for(BANNER)
        os.write(w, b"root\r")
        screen.wait_for(b"box login: root\r\n")
        os.write(w, b"\x1d")  # Ctrl-]
        os.close(w)

    threading.Thread(target=type_in, daemon=True).start()
    with os.fdopen(r, "rb") as stdin:
        monkeypatch.setattr("sys.stdin", stdin)
        monkeypatch.setattr("sys.stdout", screen)
        assert ws.main(["--service", a.address, "console", "box", "--attach"]) == 0
    _, err = capfdbinary.readouterr()
    assert b"box login: root\r\n" in screen.shown
    assert b"ws: detached" in err


def test_a_burst_of_output_arrives_complete_and_in_order(two: tuple[Site, Site]) -> None:
    a, _b = two
    # 160 KB of numbered lines (no \r: the fake guest echoes them unchanged)
    burst = b"".join(b"%07d ........................................\n" % i for i in range(3000))
    assert len(burst) > 100_000
    keys = Typist()
    seen = b""
    banner_at = -1
    with Client(a.address) as c:
        for data in c.attach_console("box", keys):
            seen += data
            if banner_at < 0 and seen.endswith(BANNER):
                banner_at = len(seen)
                for i in range(0, len(burst), 20_000):  # pasted in a few messages
                    keys.type(burst[i : i + 20_000])
            if banner_at >= 0 and len(seen) >= banner_at + len(burst):
                keys.detach()
    assert seen[banner_at:] == burst


def test_the_agent_stream_dropping_mid_session_is_unavailable(two: tuple[Site, Site]) -> None:
    a, b = two
    keys = Typist()
    seen = b""
    hub_b = service(b).hub
    with Client(a.address) as c, pytest.raises(errors.Unavailable, match="went away"):
        try:
            for data in c.attach_console("box", keys):
                seen += data
                if seen.endswith(BANNER):
                    # another stream of the same agent replaces the one on B: the
                    # sessions on the old one end with UNAVAILABLE
                    line = hub_b.connect("n1")
                    hub_b.disconnect(line)
        finally:
            keys.detach()
    assert seen.endswith(BANNER)
    wait_for(lambda: sessions(a) == (0, 0) and sessions(b) == (0, 0), 10, "sessions closed")


def test_a_session_that_hears_nothing_is_closed_on_both_sides(
    two: tuple[Site, Site], monkeypatch: pytest.MonkeyPatch
) -> None:
    a, b = two
    monkeypatch.setattr(console_relay, "PING_S", 0.3)
    monkeypatch.setattr(console_relay, "IDLE_S", 1.5)
    relay_b = service(b).relay
    assert relay_b is not None
    keys = Typist()
    seen = b""
    silent = "heard nothing from the client"
    with Client(a.address) as c, pytest.raises(errors.Unavailable, match=silent):
        try:
            for data in c.attach_console("box", keys):
                seen += data
                if seen.endswith(BANNER):
                    assert sessions(a) == (1, 0) and sessions(b) == (0, 1)
                    # B stops hearing the channel (its listener as good as cut off)
                    monkeypatch.setattr(relay_b, "on_task", lambda _payload: None)
        finally:
            keys.detach()
    wait_for(lambda: sessions(a) == (0, 0) and sessions(b) == (0, 0), 10, "sessions closed")


def test_an_attach_whose_holder_answers_late_still_opens(two: tuple[Site, Site]) -> None:
    """B (holding the agent's stream) acknowledges the attach after more than the 2 s A
    waited until session 44 ("node n1's agent is not connected" though it was): B's
    notification thread is held 3 s on the offer, as a loaded machine held it."""
    a, b = two
    answering_late(b, "console")
    keys = Typist()
    with Client(a.address) as c:
        out = c.attach_console("box", keys)
        shown = next(out)
        while not shown.endswith(BANNER):
            shown += next(out)
        keys.detach()
        assert b"Debian GNU/Linux 12 box ttyS0" in shown
        out.close()


def test_no_replica_with_the_agent_is_unavailable(two: tuple[Site, Site]) -> None:
    a, b = two
    b.stop_agent("n1")
    wait_for(lambda: not service(b).hub.connected("n1"), 10, "n1's stream gone")
    with Client(a.address) as c, pytest.raises(errors.Unavailable, match="not connected"):
        list(c.attach_console("box", iter(())))
    assert sessions(a) == (0, 0)
