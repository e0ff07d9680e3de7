"""`ws scp` without a service (a fake client) and with a fake scp: the command it runs,
the operands it takes and refuses, what it leaves behind."""

from __future__ import annotations

import json
import shlex
import stat
from pathlib import Path

import pytest

from tests.unit.test_cli_guests import (  # own_tmp: an autouse fixture here too
    HOST_KEYS,
    STOPPED,
    FakeClient,
    box,
    fake_ssh,
    own_tmp,  # noqa: F401
    run,
)
from workspace.cli import copy_cmds
from workspace.site import record as site_record
from workspace.v1 import access_pb2, clusters_pb2

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
    assert known.parent.parent == tmp_path / "tmp"  # own_tmp's, not the machine's /tmp

    # Down: every source in the one workspace; "box:" alone is the login user's home; a
    # path holding a colon after a "/" is local, as for scp.
    rc, out, _ = run(c, capsys, "scp", "box:/etc/hostname", "box:", "./out:1", "--print",
                     "--user", "root", "--retry", "30")  # fmt: skip
    argv = shlex.split(out)
    _known(argv)
    assert argv[argv.index("--") - 4 :] == [
        "-o", "ConnectionAttempts=30", "-o", "ConnectTimeout=5", "--",
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


# -- ws cluster scp ------------------------------------------------------------------------


def _cluster(client: FakeClient) -> None:
    members = []
    for i, (name, role) in enumerate(
        (("mpi-head-0", "head"), ("mpi-worker-0", "worker"), ("mpi-worker-1", "worker"))
    ):
        m = box(host_keys=HOST_KEYS)
        m.id, m.name, m.role = f"id{i}", name, role
        m.nics[0].ip = f"10.213.0.{5 + i}"
        members.append(m)
    client.cluster = clusters_pb2.Cluster(id="c1", name="mpi", members=members)


def test_cluster_scp_copies_to_and_from_every_member(
    capfd: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    # A scp that logs its operands (one file per call) and fails for 10.213.0.7.
    calls = tmp_path / "calls"
    calls.mkdir()
    script = (
        f'f=$(mktemp -p {calls}); printf "%s\\n" "$@" > "$f"\n'
        'case "$*" in *10.213.0.7*) echo "scp: /in: No such file or directory" >&2; exit 1;; esac\n'
    )
    fake_ssh(monkeypatch, tmp_path, script, name="scp")
    c = FakeClient()
    _cluster(c)

    def operands() -> list[list[str]]:
        found = [p.read_text().splitlines() for p in calls.iterdir()]
        for p in calls.iterdir():
            p.unlink()
        return sorted(a[a.index("--") + 1 :] for a in found)

    rc, out, err = run(c, capfd, "cluster", "scp", "mpi", "-r", "data", ":/tmp/")  # type: ignore[arg-type]
    assert rc == 1
    assert operands() == [["data", f"debian@10.213.0.{i}:/tmp/"] for i in (5, 6, 7)]
    assert out.splitlines() == [
        "== mpi-head-0 (head): copied",
        "== mpi-worker-0 (worker): copied",
        "== mpi-worker-1 (worker): scp exit 1",
        "3 members: 2 copied, 1 failed (mpi-worker-1: scp exit 1)",
    ]
    assert err == "mpi-worker-1: scp: /in: No such file or directory\n"  # whose it is

    # Down: each member's files in a directory of its own; --role picks the members.
    into = tmp_path / "logs"
    argv = ["cluster", "scp", "mpi", ":/var/log/job.log", str(into), "--role", "head", "-o", "json"]
    rc, out, _ = run(c, capfd, *argv)  # type: ignore[arg-type]
    assert rc == 0
    assert operands() == [["debian@10.213.0.5:/var/log/job.log", f"{into}/mpi-head-0/"]]
    assert (into / "mpi-head-0").is_dir() and not (into / "mpi-worker-0").exists()
    doc = json.loads(out)
    assert doc["summary"] == {"members": 1, "failed": [], "text": "1 member: 1 copied"}
    assert doc["members"][0]["name"] == "mpi-head-0" and doc["members"][0]["exit_code"] == 0
    # Each member named as `ws cluster exec -o json` names it: id and workspace (the same).
    head = doc["members"][0]
    assert (head["id"], head["workspace"], head["role"]) == ("id0", "id0", "head")
    # The cluster by id and name, as `ws cluster exec -o json` names it.
    assert (doc["id"], doc["name"], doc["cluster"]) == ("c1", "mpi", "mpi")

    # A member whose copy failed leaves no empty directory claiming otherwise.
    rc, _, _ = run(c, capfd, "cluster", "scp", "mpi", ":/in", str(into))  # type: ignore[arg-type]
    assert rc == 1 and len(operands()) == 3
    assert sorted(p.name for p in into.iterdir()) == ["mpi-head-0", "mpi-worker-0"]

    # A stopped member is said and the others still get theirs; nothing is left behind.
    c.cluster.members[1].state = STOPPED  # type: ignore[union-attr]
    rc, out, _ = run(c, capfd, "cluster", "scp", "mpi", "f", ":", "--role", "worker")  # type: ignore[arg-type]
    assert rc == 1 and "== mpi-worker-0 (worker): workspace mpi-worker-0 is STOPPED" in out
    assert operands() == [["f", "debian@10.213.0.7:"]]
    assert not list((tmp_path / "tmp").glob("ws-ssh-*"))

    # A target that cannot hold the members' directories: said for each, nothing copied.
    (tmp_path / "afile").write_text("")
    rc, out, _ = run(c, capfd, "cluster", "scp", "mpi", ":/x", str(tmp_path / "afile"))  # type: ignore[arg-type]
    said = [line for line in out.splitlines() if line.startswith("== ")]
    assert rc == 1 and operands() == []
    assert ["Not a directory" in line for line in said] == [True, False, True]  # 1: STOPPED


@pytest.mark.parametrize(
    ("argv", "said"),
    [
        (["cluster", "scp", "mpi", ":/x"], "give SRC... :DST"),
        (["cluster", "scp", "mpi", "a", "b"], "between here and the members"),
        (["cluster", "scp", "mpi", ":a", ":b"], "between here and the members"),
        (["cluster", "scp", "mpi", ":a", "local", "dir"], "between here and the members"),
    ],
)
def test_cluster_scp_refuses_what_is_not_here_and_the_members(
    argv: list[str], said: str, capsys: pytest.CaptureFixture[str]
) -> None:
    c = FakeClient()
    _cluster(c)
    rc, out, err = run(c, capsys, *argv)
    assert rc == 2 and out == "" and said in err


def test_cluster_scp_with_a_key_file_that_is_not_there_says_so_once(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    c = FakeClient()
    _cluster(c)
    argv = ["cluster", "scp", "mpi", "-i", str(tmp_path / "nokey"), "f", ":"]
    rc, out, err = run(c, capsys, *argv)  # type: ignore[arg-type]
    assert rc == 1 and out == ""
    assert err == f"ws: error: no key file {tmp_path / 'nokey'} (-i): give the private key's path\n"


@pytest.mark.parametrize(
    ("text", "workspace"),
    [
        ("alice/box:/etc/hostname", "alice/box"),
        ("alice/box:", "alice/box"),
        ("al.ice_1/web-1:x", "al.ice_1/web-1"),
        # Not spelled as a user and a workspace name: a local path, as for scp.
        ("./alice/box:x", ""),
        ("/alice/box:x", ""),
        ("../box:x", ""),
        ("~/box:x", ""),
        ("Results/box:x", ""),
        ("a/b/c:x", ""),
        ("alice/:x", ""),
        ("alice/box", ""),
        ("run/a:1", ""),  # it exists (below)
    ],
)
def test_scp_takes_owner_name_path_for_a_colleagues_workspace(
    text: str, workspace: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """``OWNER/NAME:PATH`` names OWNER's workspace, as OWNER/NAME does for every other
    command: `ws scp` could name a colleague's only by its id. A local path that is
    there stays one (`run/a:1`)."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "a:1").write_text("")
    assert copy_cmds.operand(text).workspace == workspace


def test_scp_copies_from_and_to_a_colleagues_workspace_by_owner_name(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv(site_record.SITE_ENV, str(tmp_path / "no-site"))
    monkeypatch.chdir(tmp_path)
    c = FakeClient([box(host_keys=HOST_KEYS)])
    c.workspaces["alice/box"] = box(host_keys=HOST_KEYS, owner="alice")
    for argv, paths in (
        (["alice/box:/etc/hostname", "."], ["debian@10.213.0.5:/etc/hostname", "."]),
        (["data", "alice/box:/tmp/"], ["data", "debian@10.213.0.5:/tmp/"]),
    ):
        rc, out, _ = run(c, capsys, "scp", *argv, "--print")
        assert rc == 0
        assert shlex.split(out)[-2:] == paths
    # A local download target of that shape that is not there yet is taken for a
    # workspace: two workspaces, refused, saying how to write the local path.
    # From a colleague's too: the hint is about the target, never the workspace meant.
    for source in ("box:/a", "alice/box:/a"):
        rc, out, err = run(c, capsys, "scp", source, "results/x:1")
        assert rc == 2 and out == ""
        assert "a local path of that shape is written ./results/x:1)" in err
        assert "./alice/box" not in err
    rc, out, _ = run(c, capsys, "scp", "box:/a", "./results/x:1", "--print")
    assert rc == 0 and shlex.split(out)[-1] == "./results/x:1"


def test_a_failed_scp_login_says_where_to_give_the_key_as_ws_ssh_does(
    capfd: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """`ws scp` and `ws cluster scp` whose scp could not log in said only scp's words
    ("Permission denied", "scp exit 255" per member), where `ws ssh` says which keys the
    guest has and where to give the private one (-i FILE)."""
    fake_ssh(
        monkeypatch,
        tmp_path,
        "echo 'debian@10.213.0.5: Permission denied (publickey).' >&2\n"
        "echo 'scp: Connection closed' >&2\nexit \"$SCP_EXIT\"\n",
        name="scp",
    )
    monkeypatch.setenv("SCP_EXIT", "255")
    c = FakeClient([box(host_keys=HOST_KEYS, ssh_keys=["SHA256:old"])])
    c.keys = [access_pb2.SshKey(fingerprint="SHA256:old")]
    rc, _, err = run(c, capfd, "scp", "-r", "my data", "box:/tmp/")  # type: ignore[arg-type]
    assert rc == 255
    assert 'ws: box has your key SHA256:old: if scp said "Permission denied"' in err
    assert "give it with `ws scp -i FILE -r 'my data' box:/tmp/`" in err
    c.keys = []
    rc, _, err = run(c, capfd, "scp", "box:/tmp/out", ".")  # type: ignore[arg-type]
    assert rc == 255 and "ws: you have no SSH key at the service" in err
    assert "(`ws scp -i FILE box:/tmp/out .`)" in err
    # Given -i, the guest holding one of the caller's keys: scp's words stand.
    c.keys = [access_pb2.SshKey(fingerprint="SHA256:old")]
    (tmp_path / "id").write_text("a key\n")
    rc, _, err = run(c, capfd, "scp", "-i", str(tmp_path / "id"), "f", "box:")  # type: ignore[arg-type]
    assert rc == 255 and "ws:" not in err

    # Every member refused: said once, of the first, with the command to give -i to.
    _cluster(c)
    for m in c.cluster.members:  # type: ignore[union-attr]
        m.ssh_keys.append("SHA256:old")
    argv = ["cluster", "scp", "mpi", "f", ":", "--role", "worker"]
    rc, out, err = run(c, capfd, *argv)  # type: ignore[arg-type]
    assert rc == 1 and "== mpi-worker-0 (worker): scp exit 255" in out
    hints = [line for line in err.splitlines() if line.startswith("ws: ")]
    assert hints == [
        'ws: mpi-worker-0 has your key SHA256:old: if scp said "Permission denied", it did '
        "not find the private half where it looks (~/.ssh/id_ed25519, id_ecdsa, id_rsa): "
        "give it with `ws cluster scp -i FILE --role worker mpi f :`"
    ]
    # A copy that failed otherwise (scp's 1: no such file) is no login refused.
    monkeypatch.setenv("SCP_EXIT", "1")
    rc, _, err = run(c, capfd, *argv)  # type: ignore[arg-type]
    assert rc == 1 and "ws:" not in err


def test_the_copy_a_refused_login_suggests_is_the_copy_asked_with_its_options(
    capfd: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """The `ws scp -i FILE ...` the hint gives, run as it is written (FILE the key), copies
    what was asked: it lost --retry, and the `--` before a file named like an option (then
    taken for one: a usage error)."""
    fake_ssh(
        monkeypatch,
        tmp_path,
        "echo 'debian@10.213.0.5: Permission denied (publickey).' >&2\nexit 255\n",
        name="scp",
    )
    c = FakeClient([box(host_keys=HOST_KEYS, ssh_keys=["SHA256:old"])])
    c.keys = [access_pb2.SshKey(fingerprint="SHA256:old")]
    asked = ["-l", "root", "--retry", "7", "-r", "--", "-odd name", "box:/tmp/"]
    rc, _, err = run(c, capfd, "scp", *asked)  # type: ignore[arg-type]
    assert rc == 255
    suggested = err.split("give it with `", 1)[1].split("`", 1)[0]
    key = tmp_path / "id"
    key.write_text("a key\n")
    again = [str(key) if a == "FILE" else a for a in shlex.split(suggested)]
    assert again[:3] == ["ws", "scp", "-i"]
    rc, out, err = run(c, capfd, "scp", "--print", *again[2:])  # type: ignore[arg-type]
    assert rc == 0, err
    argv = shlex.split(out)
    _known(argv)
    assert argv[argv.index("--") - 7 :] == [
        "-i", str(key), "-o", "ConnectionAttempts=7", "-o", "ConnectTimeout=5", "-r", "--",
        "-odd name", "root@10.213.0.5:/tmp/",
    ]  # fmt: skip


def test_cluster_scp_gives_the_key_hint_of_a_member_that_refused_the_login_only(
    capfd: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """scp's 255 is also ssh's "Connection refused" (a member still booting): the hint
    named the first member that exited 255, saying "if scp said Permission denied" of one
    whose scp had not, and gave it when none had."""
    fake_ssh(
        monkeypatch,
        tmp_path,
        'case "$*" in *10.213.0.6*) echo "ssh: connect to host 10.213.0.6 port 22: '
        'Connection refused" >&2; exit 255;; esac\n'
        'echo "root@10.213.0.7: $REFUSAL" >&2\nexit 255\n',
        name="scp",
    )
    c = FakeClient()
    c.keys = [access_pb2.SshKey(fingerprint="SHA256:old")]
    _cluster(c)
    for m in c.cluster.members:  # type: ignore[union-attr]
        m.ssh_keys.append("SHA256:old")
    argv = ["cluster", "scp", "mpi", "f", ":", "--role", "worker"]
    monkeypatch.setenv("REFUSAL", "Permission denied (publickey).")
    rc, _, err = run(c, capfd, *argv)  # type: ignore[arg-type]
    hints = [line for line in err.splitlines() if line.startswith("ws: ")]
    assert rc == 1 and len(hints) == 1
    assert hints[0].startswith("ws: mpi-worker-1 has your key SHA256:old: ")
    monkeypatch.setenv("REFUSAL", "ssh: connect to host 10.213.0.7 port 22: No route to host")
    rc, _, err = run(c, capfd, *argv)  # type: ignore[arg-type]
    assert rc == 1 and "Connection refused" in err and "ws: " not in err
