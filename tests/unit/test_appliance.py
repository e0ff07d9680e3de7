"""The appliance directory as `ws-admin image import --appliance DIR` reads it
(appliance.json from the test-appliance builder, images/appliance.py) and the disk
format detection of that import."""

from __future__ import annotations

import json
from pathlib import Path

from workspace.cli import admin


def test_appliance_and_format_detection(tmp_path: Path) -> None:
    (tmp_path / "disk.qcow2").write_bytes(b"QFI\xfb" + bytes(60))
    (tmp_path / "raw.img").write_bytes(bytes(64))
    assert admin.detect_format(tmp_path / "disk.qcow2") == "qcow2"
    assert admin.detect_format(tmp_path / "raw.img") == "raw"
    spec = {
        "kernel": "vmlinuz",
        "initrd": "/abs/initrd",
        "cmdline": "console=ttyS0",
        "disk": "disk.qcow2",
        "disk_format": "qcow2",
    }
    (tmp_path / "appliance.json").write_text(json.dumps(spec))
    app = admin.read_appliance(tmp_path)
    assert app["kernel"] == str(tmp_path / "vmlinuz") and app["initrd"] == "/abs/initrd"
    assert (app["disk"], app["disk_format"]) == (str(tmp_path / "disk.qcow2"), "qcow2")
