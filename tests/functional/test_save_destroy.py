"""A workspace destroyed while it is saved as an image (`ws destroy` during `ws image
save`): the save ends and its image is kept, then the workspace goes, as a lease's
expiry waits for the save (fake-driver agent, real qemu-img)."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import pytest

from tests.functional import test_save
from tests.functional.harness import WS, Site
from workspace.cli import ws as ws_cli
from workspace.client import Client

pytestmark = test_save.pytestmark


def test_a_workspace_destroyed_while_it_is_saved_goes_once_its_image_is_made(
    tmp_path: Path,
    site: Site,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    site = test_save.with_env(site)
    w = test_save.stopped(site, "box")
    test_save.guest_writes(test_save.overlay(site, w), 64 * 1024, 0x5A)
    copying, go_on = test_save.hold_copies(monkeypatch)
    result: dict[str, Any] = {}

    def run() -> None:
        with Client(site.address) as c:
            try:
                result["image"] = c.save_image("box", "env:2")
            except Exception as exc:  # what the test reports below
                result["error"] = exc

    t = threading.Thread(target=run)
    t.start()
    try:
        assert copying.wait(20)
        capsys.readouterr()
        assert ws_cli.main(["destroy", "box"], connect=lambda _s: Client(site.address)) == 0
        said = capsys.readouterr().out
        assert "destroyed once its save as image env:2 ends" in said, said
        shown = site.stubs.get(w.id)
        assert shown.state == WS.WORKSPACE_STATE_STOPPING
        assert "once its save as image env:2 ends" in shown.reason
        # Not saved again: it goes (not "`ws stop box --wait` first").
        code, _out, err = test_save.save(site, capsys, "box", "env:3")
        assert code == 1
        assert "workspace box is being destroyed; it cannot be saved" in err
    finally:
        go_on.set()
        t.join(30)
    assert "error" not in result, result.get("error")
    assert result["image"].name == "env:2"
    assert "env:2" in test_save.images(site)
    site.stubs.wait_state(w.id, WS.WORKSPACE_STATE_TERMINATED)
    # Gone now, its disks too: not "being destroyed" (a save after it cannot wait for it).
    code, _out, err = test_save.save(site, capsys, w.id, "env:3")
    assert code == 1
    assert "workspace box was destroyed; nothing to save" in err, err
    kinds = [e.kind for e in test_save.save_events(site, w.id)]
    assert kinds == ["workspace.saving", "image.added", "workspace.saved"]
    # What the guest wrote is in the image: a new workspace boots it.
    again = site.stubs.create(name="again", image="env:2")
    site.stubs.wait_state(again.id, WS.WORKSPACE_STATE_RUNNING)
    content = test_save.raw_content(test_save.overlay(site, again), tmp_path)
    assert content[64 * 1024 : 128 * 1024] == bytes([0x5A]) * 64 * 1024
