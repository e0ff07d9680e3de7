"""Right after a workspace starts, over real gRPC with fake-driver agents: `ws exec`
waits for a guest agent that answers only once the guest has booted, and a guest that
never answers is said plainly to lack one once the boot window is over."""

from __future__ import annotations

import time

import pytest

from tests.functional.harness import WS, Site
from workspace import client_guests, errors
from workspace.cli import guest_cmds, ws
from workspace.client import Client
from workspace.domain import booting

RUNNING = WS.WORKSPACE_STATE_RUNNING


@pytest.fixture(autouse=True)
def quick_polls(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(client_guests, "GUEST_POLL_S", 0.2)
    # A person at a terminal: ws waits for a booting guest unasked only there.
    monkeypatch.setattr(guest_cmds, "interactive", lambda: True)


def cli(site: Site, capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    rc = ws.main(["--service", site.address, *argv])
    out, err = capsys.readouterr()
    return rc, out, err


def test_exec_right_after_create_waits_for_the_guest_to_boot(
    site: Site, capsys: pytest.CaptureFixture[str]
) -> None:
    """`ws create --wait` then `ws exec box -- cat /etc/hostname`, as typed: the guest
    agent answers 8 s after the domain runs; ws waits, says so once, then runs it. (It
    answered after 2 s before: on a busy machine the exec came later than that.)"""
    site.stubs.network()
    site.stubs.import_image("img")
    site.add_agent("node1", fake={"guest_agent_after_s": 8.0})
    site.stubs.create(name="box")
    site.stubs.wait_state("box", RUNNING)
    with Client(site.address) as c, pytest.raises(errors.FailedPrecondition) as exc:
        c.exec("box", ["true"])  # the Python client's plain exec: at once, as before
    assert exc.value.message == booting.no_guest_agent_yet("box")
    started = time.monotonic()
    rc, out, err = cli(site, capsys, "exec", "box", "--", "cat", "/etc/hostname")
    assert (rc, out) == (0, "box\n")
    assert err.startswith("ws: no guest agent answers in box yet (it started ")
    assert err.endswith(" s for the guest to boot\n") and err.count("\n") == 1
    assert time.monotonic() - started < booting.BOOT_WINDOW_S / 5  # not the whole window
    # Now up: no wait, nothing said.
    assert cli(site, capsys, "exec", "box", "--", "true") == (0, "", "")


def test_a_guest_without_a_guest_agent_is_said_plainly_after_the_boot_window(
    site: Site, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    # Long enough for the first exec to come within it on a busy machine (1.5 s was not).
    monkeypatch.setattr(booting, "BOOT_WINDOW_S", 8.0)
    site.stubs.network()
    site.stubs.import_image("img")
    site.add_agent("node1", fake={"no_guest_agent": ["bare"]})
    site.stubs.create(name="bare")
    site.stubs.wait_state("bare", RUNNING)
    # Within the window: ws waits it out, then gives the service's word.
    rc, out, err = cli(site, capsys, "exec", "bare", "--", "true")
    lines = err.splitlines()
    assert rc == 1 and out == "" and len(lines) == 2, err
    assert lines[0].startswith("ws: no guest agent answers in bare yet")
    assert lines[1].startswith(
        "ws: error: no QEMU guest agent has answered in workspace bare since it started "
    )
    assert lines[1].endswith(
        " s ago: its image most likely lacks qemu-guest-agent "
        "(`ws console bare --attach` reaches it)"
    )
    # Past it: at once, plainly, to the Python client too.
    started = time.monotonic()
    with Client(site.address) as c, pytest.raises(errors.FailedPrecondition) as exc:
        c.exec("bare", ["true"])
    assert "its image most likely lacks qemu-guest-agent" in exc.value.message
    rc, _, err = cli(site, capsys, "exec", "bare", "--", "true")
    assert rc == 1 and err.count("\n") == 1 and "most likely lacks" in err
    assert time.monotonic() - started < booting.BOOT_WINDOW_S  # not another window waited out
