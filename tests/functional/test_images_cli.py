"""`ws image push|list|show|delete|usage` and `ws create --blank/--grow` against a real
in-process service (fake-driver agent), through ws.main."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.functional.harness import Site
from workspace.cli import ws
from workspace.client import Client

MiB = 1024 * 1024


@pytest.fixture
def client(site: Site) -> Iterator[Client]:
    c = Client(site.address)
    try:
        yield c
    finally:
        c.close()


def run(client: Client, capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    """ws ARGV with a fresh client to ``client``'s service (ws.main closes its client)."""
    try:
        code = ws.main(list(argv), connect=lambda _s: Client(client.address))
    except SystemExit as exc:  # argparse's usage errors
        code = int(exc.code or 0)
    out, err = capsys.readouterr()
    return code, out, err


def test_push_list_show_usage_delete(
    site: Site, client: Client, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    disk = tmp_path / "disk.raw"
    disk.write_bytes(b"DISK\n" + b"\0" * (MiB - 5))
    kernel = tmp_path / "vmlinuz"
    kernel.write_bytes(b"kernel")

    code, out, err = run(
        client, capsys, "image", "push", "app:1", str(disk), "--kernel", str(kernel),
        "--cmdline", "console=ttyS0",
    )  # fmt: skip
    assert code == 0, err
    assert "pushed app:1: 2 blob(s) sent (1.0 MiB), 0 already there" in err
    assert "disk.raw: sent 1.0 MiB" in err  # not a terminal: one line per file
    assert "root" in out and "COW" in out and "raw" in out

    code, out, err = run(client, capsys, "-o", "json", "image", "push", "app:2", str(disk))
    assert code == 0, err
    assert "pushed app:2: 0 blob(s) sent (0 B), 1 already there" in err
    assert "disk.raw: already in the repository, not sent" in err
    img = json.loads(out)
    assert img["name"] == "app:2" and img["partitions"][0]["mode"] == "COW"
    assert img["partitions"][0]["virtual_size_bytes"] == MiB
    # The same files again (as a repository that lost a blob is told to): not an error.
    code, out, err = run(client, capsys, "-o", "json", "image", "push", "app:2", str(disk))
    assert code == 0, err
    assert "app:2 already exists with these files: 0 blob(s) sent (0 B), 1 already there" in err
    assert json.loads(out)["name"] == "app:2"
    # Other files under a name that exists are refused, as before.
    other = tmp_path / "other.raw"
    other.write_bytes(b"OTHER\n" + b"\0" * (MiB - 6))
    code, _, err = run(client, capsys, "image", "push", "app:2", str(other))
    assert code == 1 and "already exists" in err

    manifest = tmp_path / "m.toml"
    (tmp_path / "ref.raw").write_bytes(b"RODATA:v1\n" + b"\0" * 502)
    manifest.write_text(
        """
[[partitions]]
name = "root"
file = "disk.raw"

[[partitions]]
name = "ref"
file = "ref.raw"
mode = "readonly"

[[partitions]]
name = "scratch"
mode = "blank"
size = "32MiB"
ext4 = true
"""
    )
    code, out, err = run(client, capsys, "image", "push", "sci:1.0", "--manifest", str(manifest))
    assert code == 0, err
    assert "1 blob(s) sent (512 B), 1 already there" in err
    assert "READONLY" in out and "BLANK ext4" in out and "32.0 MiB" in out

    code, out, _ = run(client, capsys, "image", "list")
    assert code == 0
    lines = out.splitlines()
    assert lines[0].split() == ["NAME", "PARTITIONS", "SIZE", "BOOT", "OWNER", "CREATED"]
    assert [ln.split()[0] for ln in lines[1:]] == ["app:1", "app:2", "sci:1.0"]
    code, out, _ = run(client, capsys, "-o", "json", "image", "show", "sci:1.0")
    assert [p["name"] for p in json.loads(out)["partitions"]] == ["root", "ref", "scratch"]
    assert json.loads(out)["total_bytes"] == MiB + 512

    code, out, _ = run(client, capsys, "image", "usage")
    assert code == 0 and "quota  none" in out and "used   1.0 MiB" in out

    site.stubs.network()
    site.add_agent("node1")
    code, out, err = run(
        client, capsys, "-o", "json", "create", "--image", "sci:1.0", "--name", "w1",
        "--blank", "extra:8MiB:ext4", "--grow", "root:4MiB", "--wait",
    )  # fmt: skip
    assert code == 0, err
    assert json.loads(out)["state"] == "RUNNING"

    code, _, err = run(client, capsys, "image", "delete", "sci:1.0")
    assert code == 1
    assert err.strip().splitlines() == [
        f"ws: error: image sci:1.0 is in use by 1 live workspace(s): local/w1 "
        f"({client.get_workspace('w1').id}); destroy them first"
    ]
    assert run(client, capsys, "destroy", "w1", "--wait")[0] == 0
    code, out, err = run(client, capsys, "image", "delete", "sci:1.0")
    assert code == 0, err
    assert out.strip() == "deleted image sci:1.0 (1.0 MiB)"
    assert client.has_blobs([img["partitions"][0]["digest"]]) == []  # app:1/2 still use it


def test_usage_errors(
    site: Site, client: Client, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    disk = tmp_path / "d.raw"
    disk.write_bytes(b"\0" * 512)
    (tmp_path / "m.toml").write_text('[[partitions]]\nname = "root"\nfile = "nope.raw"\n')
    (tmp_path / "bad.toml").write_text('colour = "red"\n')
    vmdk = tmp_path / "x.vmdk"
    vmdk.write_bytes(b"KDMV" + b"\0" * 508)
    cases = [
        (["image", "push", "x:1:2", str(disk)], 2, "NAME:VERSION"),
        (["image", "push", "x:1"], 2, "give the disk image PATH or --manifest FILE"),
        (["image", "push", "x:1", str(disk), "--manifest", "m"], 2, "--manifest FILE replaces"),
        (["image", "push", "x:1", str(disk), "--initrd", str(disk)], 2, "need --kernel"),
        (["image", "push", "x:1", "--manifest", str(tmp_path / "m.toml")], 1, "no such file"),
        (["image", "push", "x:1", "--manifest", str(tmp_path / "bad.toml")], 1, "colour"),
        (["image", "push", "x:1", str(vmdk)], 1, "vmdk, not raw or qcow2; convert"),
        (["image", "push", "x:1", str(tmp_path)], 1, f"{tmp_path}: is a directory, not a disk"),
        # Said once the disk was sent (it stayed, counted, for blob_grace_s): now before.
        (["image", "push", "x:1", str(disk), "--login-user", "Debian"], 1, "'Debian' is not a"),
        (
            ["image", "push", "x:1", str(disk), "--kernel", str(disk), "--cmdline", "ro\x1b"],
            1,
            "the kernel cmdline has a character it cannot have ('\\x1b' at offset 2)",
        ),
        (["image", "delete", "nope"], 1, "not found"),
        (["create", "--image", "x", "--blank", "s"], 2, "NAME:SIZE[:ext4]"),
        (["create", "--image", "x", "--blank", "s:1G:xfs"], 2, "NAME:SIZE[:ext4]"),
        (["create", "--image", "x", "--grow", "root:big"], 2, "not a size"),
        (["create", "--image", "x", "--grow", "r:1G", "--grow", "r:2G"], 2, "given twice"),
    ]
    for argv, want, message in cases:
        code, _, err = run(client, capsys, *argv)
        assert code == want, (argv, err)
        assert message in err, (argv, err)
    assert client.list_images() == []
    assert client.list_workspaces() == []
    digest = "sha256:" + hashlib.sha256(disk.read_bytes()).hexdigest()
    assert client.has_blobs([digest]) == [digest]  # nothing was sent
