"""`ws scp` without a service (a fake client) and with a fake scp: the command it runs,
the operands it takes and refuses, what it leaves behind."""

from __future__ import annotations

import json
import shlex
import stat
from pathlib import Path

import pytest

from tests.unit.test_cli_guests import HOST_KEYS, STOPPED, FakeClient, box, fake_ssh, run
from workspace.cli import copy_cmds
from workspace.site import record as site_record

STRICT = [
    "-o", "StrictHostKeyChecking=yes",
    "-o", "GlobalKnownHostsFile=/dev/null",
    "-o", "UpdateHostKeys=no",
]  # fmt: skip


def _known(argv: list[str]) -> Path:
    """The known_hosts file a printed command names (and argv without that option)."""
    at = argv.index(next(a for a in argv if a.startswith("UserKnownHostsFile=")))
    path = Path(argv[at].split("=", 1)[1])
    del argv[at - 1 : at + 1]
    return path


def test_scp_print_uploads_and_downloads_with_strict_host_keys(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv(site_record.SITE_ENV, str(tmp_path / "no-site"))
    c = FakeClient([box(host_keys=HOST_KEYS)])
    rc, out, _ = run(
        c, capsys, "scp", "-r", "-i", "/u/k", "data", "run.sh", "box:/tmp/in", "--print"
    )
    assert rc == 0
    argv = shlex.split(out)
    known = _known(argv)
    assert argv == ["scp", *STRICT, "-i", "/u/k", "-r", "--", "data", "run.sh",
                    "debian@10.213.0.5:/tmp/in"]  # fmt: skip
    assert known.read_text().splitlines() == [
        "10.213.0.5 ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIFakeKeyForTestsOnly",
        "10.213.0.5 ecdsa-sha2-nistp256 AAAAE2VjZHNhLXNoYTItbmlzdHAyNTYAAAAIbmlzdHAyNTYAAABBBFake",
    ]
    assert stat.S_IMODE(known.stat().st_mode) == 0o600
    assert stat.S_IMODE(known.parent.stat().st_mode) == 0o700

    # Down: every source in the one workspace; "box:" alone is the login user's home; a
    # path holding a colon after a "/" is local, as for scp.
    rc, out, _ = run(c, capsys, "scp", "box:/etc/hostname", "box:", "./out:1", "--print",
                     "--user", "root", "--retry", "30")  # fmt: skip
    argv = shlex.split(out)
    _known(argv)
    assert argv[argv.index("--") - 2 :] == [
        "-o", "ConnectionAttempts=30", "--",
        "root@10.213.0.5:/etc/hostname", "root@10.213.0.5:", "./out:1",
    ]  # fmt: skip
    rc, out, _ = run(c, capsys, "-o", "json", "scp", "./a:b", "box:", "--print")
    doc = json.loads(out)
    assert doc["command"][-2:] == ["./a:b", "debian@10.213.0.5:"]
    assert doc["known_hosts"].count("10.213.0.5 ") == 2


def test_scp_brackets_an_ipv6_address_and_enters_a_local_sites_namespace() -> None:
    ws = box(host_keys=HOST_KEYS)
    ws.nics[0].ip = "fd00::5"
    ops = [copy_cmds.operand("f"), copy_cmds.operand("box:/tmp/")]
    cmd = copy_cmds.scp_command(ws, ops, "/k", netns="ws-site-n1")
    assert cmd[:5] == ["ip", "netns", "exec", "ws-site-n1", "scp"]
    assert cmd[-2:] == ["f", "debian@[fd00::5]:/tmp/"]


@pytest.mark.parametrize(
    ("argv", "said"),
    [
        (["scp", "box:/x"], "give SRC... NAME:DST or NAME:SRC... DST"),
        (["scp", "a", "b"], "no workspace named"),
        (["scp", "./box:a", "b"], "no workspace named"),
        (["scp", "box:/a", "other:/b"], "between here and one workspace"),
        (["scp", "box:/a", "other:/b", "."], "between here and one workspace"),
        (["scp", "box:/a", "local", "."], "between here and one workspace"),
    ],
)
def test_scp_refuses_what_is_not_here_and_one_workspace(
    argv: list[str], said: str, capsys: pytest.CaptureFixture[str]
) -> None:
    c = FakeClient([box(host_keys=HOST_KEYS)])
    rc, out, err = run(c, capsys, *argv)
    assert rc == 2 and out == "" and said in err


def test_scp_runs_scp_returns_its_code_and_leaves_no_known_hosts(
    capfd: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    # A scp that says what it was given and which known_hosts, then fails as scp does.
    log = tmp_path / "scp.args"
    fake_ssh(monkeypatch, tmp_path, f'printf "%s\\n" "$@" > {log}\nexit 1\n', name="scp")
    c = FakeClient([box(host_keys=HOST_KEYS)])
    rc, _, _ = run(c, capfd, "scp", "notes.txt", "box:")  # type: ignore[arg-type]
    assert rc == 1
    given = log.read_text().splitlines()
    assert given[-3:] == ["--", "notes.txt", "debian@10.213.0.5:"]
    known = _known(given)
    assert not known.exists() and not known.parent.exists()

    c.workspaces["box"].state = STOPPED
    rc, _, err = run(c, capfd, "scp", "notes.txt", "box:")  # type: ignore[arg-type]
    assert rc == 1 and "box is STOPPED" in err
    rc, _, err = run(c, capfd, "scp", "notes.txt", "nobox:")  # type: ignore[arg-type]
    assert rc != 0 and "no workspace 'nobox'" in err
