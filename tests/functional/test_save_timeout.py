"""`ws image save --timeout S` whose wait runs out while the node still copies: the save
goes on, and the CLI says so (exit 1, a wait that ran out), not that the service did not
answer (exit 3, as if it were unreachable, while the image was made after all)."""

from __future__ import annotations

import pytest

from tests.functional import test_save
from tests.functional.harness import Site, wait_for
from workspace.cli import ws as ws_cli
from workspace.client import Client

pytestmark = test_save.pytestmark


def test_a_save_whose_wait_ran_out_is_said_to_go_on_and_is_made(
    site: Site, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    site = test_save.with_env(site)
    w = test_save.stopped(site, "box")
    _, go_on = test_save.hold_copies(monkeypatch)
    try:
        code, out, err = test_save.save(site, capsys, "box", "env:2", "--timeout", "2")
    finally:
        go_on.set()
    assert code == 1 and out == ""
    said = err.splitlines()[-1]
    assert said == (
        "ws: error: timed out after 2 s waiting for the save of box as env:2, which goes on: "
        "the image is made when it ends (`ws show box` follows it)"
    )
    wait_for(lambda: "env:2" in test_save.images(site), what="the image made")
    wait_for(lambda: site.stubs.get(w.id).saving_as == "", what="the save's end")
    capsys.readouterr()
    argv = ["image", "save", "box", "env:3", "--timeout", "2"]
    assert ws_cli.main(argv, connect=lambda _s: Client(site.address)) == 0
