"""`ws exec`, `ws cluster exec`, `ws ssh` without a service (a fake client), and the
pieces under them that need no service: the guest agent protocol of the libvirt driver,
what its errors mean, the fake guest, the service's task hub."""

from __future__ import annotations

import base64
import io
import json
import os
import queue
import signal
import stat
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import libvirt
import pytest

from agent.tasks import Tasks
from agent.virt import fake_guest, guest_agent
from agent.virt.base import ConsoleSession, DomainSpec
from agent.virt.fake import FakeDriver
from agent.virt.libvirt_guest import agent_error
from workspace import errors
from workspace.cli import guest_cmds, sshwait, ws
from workspace.codec import guests as codec_guests
from workspace.config import AgentConfig, FakeDriverConfig
from workspace.domain.model import ExecOutcome
from workspace.domain.tasks import (
    FAILED_PRECONDITION,
    NOT_FOUND,
    ConsoleClose,
    ConsoleClosed,
    ConsoleInput,
    ConsoleOpen,
    ConsoleOutput,
    ExecTask,
    ReplyKind,
    SaveCopying,
    SavedPartition,
    SaveOutcome,
    SaveStarted,
    SaveTask,
    Task,
    TaskError,
    TaskReply,
)
from workspace.ops import taskhub
from workspace.ops.taskhub import TaskHub
from workspace.site import record as site_record
from workspace.v1 import access_pb2, clusters_pb2, common_pb2, workspaces_pb2

RUNNING = common_pb2.WorkspaceState.WORKSPACE_STATE_RUNNING
STOPPED = common_pb2.WorkspaceState.WORKSPACE_STATE_STOPPED
HOST_KEYS = [
    "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIFakeKeyForTestsOnly root@box",
    "ecdsa-sha2-nistp256 AAAAE2VjZHNhLXNoYTItbmlzdHAyNTYAAAAIbmlzdHAyNTYAAABBBFake",
]


@pytest.fixture(autouse=True)
def own_tmp(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """ws's known_hosts directories (kept by --print) in the test's own directory."""
    (tmp_path / "tmp").mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "tmp"))


class FakeClient:
    address = "unix:/nowhere/service.sock"

    def __init__(self, workspaces: list[common_pb2.Workspace] | None = None) -> None:
        self.workspaces = {w.name: w for w in workspaces or []}
        self.calls: list[tuple[str, list[str], bytes, int]] = []
        self.results: dict[str, Any] = {}
        self.cluster: clusters_pb2.Cluster | None = None
        self.keys: list[access_pb2.SshKey] = []
        self.waited: list[tuple[str, list[int], float]] = []

    def list_ssh_keys(self) -> list[access_pb2.SshKey]:
        return self.keys

    def whoami(self) -> workspaces_pb2.Caller:
        """A user who is no admin: the owner of the workspaces and cluster given."""
        return workspaces_pb2.Caller(user="")

    def get_workspace(self, ref: str) -> common_pb2.Workspace:
        if ref not in self.workspaces:
            raise errors.NotFound(f"no workspace {ref!r}")
        return self.workspaces[ref]

    def wait_for_state(
        self,
        id: str,
        states: list[int],
        timeout_s: float,
        on_change: Any = None,
        on_outage: Any = None,
        waited_s: Any = None,
        named: str = "",
    ) -> common_pb2.Workspace:
        """The workspace once in ``states`` (at once here: its state is set so)."""
        self.waited.append((id, list(states), timeout_s))
        ws = next(w for w in self.workspaces.values() if w.id == id)
        if on_change:
            on_change(ws)
        ws.state = states[0]
        return ws

    def get_cluster(self, ref: str) -> clusters_pb2.Cluster:
        if self.cluster is None:
            raise errors.NotFound(f"no cluster {ref!r}")
        return self.cluster

    def get_console(self, ref: str, tail_bytes: int = 0) -> bytes:
        if ref not in self.workspaces and ref not in {w.id for w in self.workspaces.values()}:
            raise errors.NotFound(f"no workspace {ref!r}")
        return b"login: "

    def exec(
        self, ref: str, argv: list[str], stdin: bytes = b"", timeout_s: int = 0, **_wait: Any
    ) -> access_pb2.ExecResult:
        self.calls.append((ref, list(argv), stdin, timeout_s))
        r = self.results.get(ref, access_pb2.ExecResult(name=ref, stdout=b"ok\n"))
        if isinstance(r, Exception):
            raise r
        return r  # type: ignore[no-any-return]

    def close(self) -> None:
        pass


def run(client: FakeClient, capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    rc = ws.main(list(argv), connect=lambda *_a: client)  # type: ignore[arg-type, return-value]
    out, err = capsys.readouterr()
    return rc, out, err


def box(**kw: Any) -> common_pb2.Workspace:
    w = common_pb2.Workspace(
        id="abc123", name="box", state=RUNNING, node="n1", login_user="debian", **kw
    )
    w.nics.add(network="default", ip="10.213.0.5")
    return w


# -- ws exec -------------------------------------------------------------------------------


def test_exec_parses_options_before_and_after_the_name(capsys: pytest.CaptureFixture[str]) -> None:
    c = FakeClient([box()])
    assert run(c, capsys, "exec", "box", "--timeout", "5", "--", "echo", "--timeout", "x")[0] == 0
    assert run(c, capsys, "exec", "--timeout", "7", "box", "--", "ls", "-l")[0] == 0
    assert run(c, capsys, "exec", "box", "--", "--weird")[0] == 0
    assert c.calls == [
        ("box", ["echo", "--timeout", "x"], b"", 5),
        ("box", ["ls", "-l"], b"", 7),
        ("box", ["--weird"], b"", 0),
    ]
    rc, _, err = run(c, capsys, "exec", "box", "--timeout", "5", "echo")
    assert rc == 2 and "after `--`" in err
    rc, _, err = run(c, capsys, "exec", "box")
    assert rc == 2 and "give a command" in err


def test_exec_says_when_piped_input_is_not_sent(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """`ws exec box -- sh -c 'cat > f' < data` without --stdin ran with no input and
    said nothing: an empty file in the guest."""
    data, empty = tmp_path / "data", tmp_path / "empty"
    data.write_bytes(b"rows\n")
    empty.write_bytes(b"")
    c = FakeClient([box()])
    said = "standard input is not sent to the command; give --stdin to send it"
    for path, stdin_flag, warned in ((data, [], True), (data, ["--stdin"], False),
                                     (empty, [], False)):  # fmt: skip
        with path.open("rb") as f:
            monkeypatch.setattr("sys.stdin", io.TextIOWrapper(f))
            rc, _, err = run(c, capsys, "exec", *stdin_flag, "box", "--", "cat")
        assert rc == 0 and (said in err) == warned
    assert [call[2] for call in c.calls] == [b"", b"rows\n", b""]
    r, w = os.pipe()
    os.close(w)
    with os.fdopen(r, "rb") as f:  # a pipe: input meant for the command, even if empty
        monkeypatch.setattr("sys.stdin", io.TextIOWrapper(f))
        assert said in run(c, capsys, "exec", "box", "--", "cat")[2]


def test_exec_writes_the_output_and_exits_with_the_command(
    capsys: pytest.CaptureFixture[str],
) -> None:
    c = FakeClient([box()])
    c.results["box"] = access_pb2.ExecResult(name="box", exit_code=3, stdout=b"o\n", stderr=b"e\n")
    assert run(c, capsys, "exec", "box", "--", "x") == (3, "o\n", "e\n")
    c.results["box"] = access_pb2.ExecResult(name="box", exit_code=124, timed_out=True)
    rc, _, err = run(c, capsys, "exec", "box", "--", "sleep", "9")
    assert rc == 124 and "ran past its timeout" in err
    c.results["box"] = access_pb2.ExecResult(name="box", stdout=b"\xff\xfeok", truncated=True)
    rc, out, err = run(c, capsys, "-o", "json", "exec", "box", "--", "x")
    assert rc == 0 and "was cut" in err
    assert json.loads(out)["stdout"] == "\ufffd\ufffdok" and json.loads(out)["truncated"]


# -- ws cluster exec -----------------------------------------------------------------------


def test_cluster_exec_reports_failures_and_sums_up(capsys: pytest.CaptureFixture[str]) -> None:
    c = FakeClient()
    c.cluster = clusters_pb2.Cluster(name="mpi")
    for name, role, state in (
        ("mpi-head-0", "head", RUNNING),
        ("mpi-worker-0", "worker", RUNNING),
        ("mpi-worker-1", "worker", RUNNING),
        ("mpi-worker-2", "worker", STOPPED),
    ):
        c.cluster.members.add(id=name, name=name, role=role, state=state)
    c.results["mpi-worker-0"] = access_pb2.ExecResult(name="mpi-worker-0", exit_code=1)
    c.results["mpi-worker-1"] = errors.FailedPrecondition("no QEMU guest agent answers")
    rc, out, _ = run(c, capsys, "cluster", "exec", "mpi", "--", "true")
    assert rc == 1
    assert out.splitlines()[-1] == (
        "4 members: 1 exited 0, 3 failed (mpi-worker-0: exit 1; mpi-worker-1: no QEMU guest "
        "agent answers; mpi-worker-2: not running (STOPPED))"
    )
    assert "== mpi-head-0 (head): exit 0\nok\n" in out
    assert {call[0] for call in c.calls} == {"mpi-head-0", "mpi-worker-0", "mpi-worker-1"}
    rc, out, _ = run(c, capsys, "cluster", "exec", "mpi", "--role", "head", "--", "true")
    assert rc == 0 and out.splitlines()[-1] == "1 member: 1 exited 0"


def test_cluster_exec_json_gives_the_clusters_id_and_name(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Its "cluster" is the cluster's name, where a workspace's "cluster" (`ws show -o
    json`, the members of `ws cluster show`) and a site event's are its id: a script
    matching them found nothing. It gives "id" and "name" too, as `ws exec` and `ws
    console` give the workspace's, whichever was typed."""
    c = FakeClient()
    c.cluster = clusters_pb2.Cluster(id="c1", name="mpi")
    c.cluster.members.add(id="w1", name="mpi-head-0", role="head", state=RUNNING)
    for typed in ("mpi", "c1"):
        rc, out, _ = run(c, capsys, "-o", "json", "cluster", "exec", typed, "--", "true")
        doc = json.loads(out)
        assert rc == 0 and (doc["id"], doc["name"], doc["cluster"]) == ("c1", "mpi", "mpi")


# -- ws console ----------------------------------------------------------------------------


def test_console_of_a_cluster_says_it_is_one_and_names_its_members(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """`ws console mpi` said only "no workspace 'mpi'" (as `ws ssh mpi` did before it
    named the members): the log is a member's."""
    c = FakeClient([box()])
    c.cluster = clusters_pb2.Cluster(name="mpi")
    for name in ("mpi-head-0", "mpi-worker-0"):
        c.cluster.members.add(id=name, name=name, role=name[4:-2], state=RUNNING)
    said = "mpi is a cluster, not a workspace: name one of its members (mpi-head-0, mpi-worker-0)"
    for argv in (
        ["console", "mpi"],
        ["-o", "json", "console", "mpi"],
        ["console", "mpi", "--attach"],
    ):
        rc, out, err = run(c, capsys, *argv)
        assert rc == 1 and out == ""
        assert said in err and "`ws cluster show mpi`" in err
    assert run(c, capsys, "console", "box")[:2] == (0, "login: \n")  # a workspace: its log
    c.cluster = None  # neither: as the service says
    rc, _, err = run(c, capsys, "console", "mpi")
    assert rc == 1 and "no workspace 'mpi'" in err and "cluster" not in err


def test_workspace_commands_given_a_cluster_say_it_is_one(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """`ws show mpi`, `ws destroy mpi`, `ws events|watch mpi` (and later `ws update`,
    `ws image save`; `ws lease extend mpi` extends the cluster now) said only "no
    workspace 'mpi'; `ws list` shows yours"
    (and `ws list` shows mpi-head-0 ...), where `ws console|exec|ssh mpi` said it is a
    cluster: they name it one too, and the cluster command."""
    c = FakeClient([box()])
    c.cluster = clusters_pb2.Cluster(name="mpi")
    c.cluster.members.add(id="m0", name="mpi-head-0", role="head", state=RUNNING)

    def missing(ref: str, *_a: Any, **_kw: Any) -> Any:
        raise errors.NotFound(f"no workspace {ref!r}; `ws list` shows yours")

    for method in (
        "destroy_workspace",
        "reboot_workspace",
        "update_workspace",
        "save_image",
    ):
        monkeypatch.setattr(c, method, missing, raising=False)

    def events(ref: str, *_a: Any, **_kw: Any) -> Any:
        yield from ()
        missing(ref)

    monkeypatch.setattr(c, "watch_workspace_events", events, raising=False)
    said = "mpi is a cluster, not a workspace: name one of its members (mpi-head-0), or use "
    for argv, instead in (
        (["show", "mpi"], "`ws cluster show mpi`"),
        (["destroy", "mpi"], "`ws cluster destroy mpi` for every member"),
        (["reboot", "mpi"], "`ws cluster show mpi` for every member's state"),
        (["events", "mpi"], "`ws cluster events mpi`"),
        (["watch", "mpi"], "`ws cluster events mpi --follow` for its members' changes"),
        (
            ["update", "mpi", "--cpus", "2"],
            "`ws update MEMBER` on each of them (`ws cluster show mpi` lists them)",
        ),
        (
            ["image", "save", "mpi", "mine:1.0"],
            "`ws cluster show mpi` for each member's role: a save is of one member's disks",
        ),
    ):
        rc, out, err = run(c, capsys, *argv)
        assert (rc, out) == (1, ""), argv
        assert err == f"ws: error: {said}{instead}\n", argv
    c.cluster = None  # neither: as the service says
    rc, _, err = run(c, capsys, "destroy", "mpi")
    assert rc == 1 and err == "ws: error: no workspace 'mpi'; `ws list` shows yours\n"


def test_a_colleagues_cluster_given_as_a_workspace_is_named_as_owner_name(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """An admin's `ws show mpi` (`ws destroy mpi`) that found alice's cluster mpi was
    told `ws cluster destroy mpi` and its member mpi-head-0: by those bare names ws acts
    on the admin's own mpi, or refuses a guess. Another user's are named alice/mpi."""
    c = FakeClient()
    c.cluster = clusters_pb2.Cluster(id="c1", name="mpi", owner="alice")
    c.cluster.members.add(id="m0", name="mpi-head-0", role="head", state=RUNNING)
    asked: list[str] = []

    def whoami() -> workspaces_pb2.Caller:
        asked.append("whoami")
        return workspaces_pb2.Caller(user="root", admin=True)

    def missing(ref: str, *_a: Any, **_kw: Any) -> Any:
        raise errors.NotFound(f"no workspace {ref!r}; `ws list` shows yours")

    monkeypatch.setattr(c, "whoami", whoami)
    monkeypatch.setattr(c, "destroy_workspace", missing, raising=False)
    members = "name one of its members (alice/mpi-head-0), or use "
    for ref in ("mpi", "c1", "alice/mpi"):
        for argv, instead in (
            (["show", ref], "`ws cluster show alice/mpi`"),
            (["destroy", ref], "`ws cluster destroy alice/mpi` for every member"),
        ):
            rc, out, err = run(c, capsys, *argv)
            assert (rc, out) == (1, ""), argv
            said = f"ws: error: {ref} is a cluster, not a workspace: {members}{instead}\n"
            assert err == said, argv
    assert len(asked) == 4  # by OWNER/NAME the owner is known: no WhoAmI
    c.cluster.owner = "root"  # the admin's own: by its bare name
    rc, _, err = run(c, capsys, "destroy", "mpi")
    assert rc == 1 and "(mpi-head-0), or use `ws cluster destroy mpi` for every" in err


# -- ws ssh --------------------------------------------------------------------------------


def test_ssh_print_builds_a_strict_command_and_known_hosts(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv(site_record.SITE_ENV, str(tmp_path / "no-site"))
    c = FakeClient([box(host_keys=HOST_KEYS)])
    rc, out, _ = run(c, capsys, "ssh", "box", "--print", "-i", "/u/k", "--", "uname", "-a")
    assert rc == 0
    argv = out.split()
    known = Path(argv[argv.index("-o") + 3].split("=", 1)[1])
    assert argv == [
        "ssh",
        "-o", "StrictHostKeyChecking=yes",
        "-o", f"UserKnownHostsFile={known}",
        "-o", "GlobalKnownHostsFile=/dev/null",
        "-o", "UpdateHostKeys=no",
        "-l", "debian",
        "-i", "/u/k",
        "--", "10.213.0.5", "uname", "-a",
    ]  # fmt: skip
    assert known.read_text() == (
        "10.213.0.5 ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIFakeKeyForTestsOnly\n"
        "10.213.0.5 ecdsa-sha2-nistp256 AAAAE2VjZHNhLXNoYTItbmlzdHAyNTYAAAAIbmlzdHAyNTYAAABBBFake\n"
    )
    assert stat.S_IMODE(known.stat().st_mode) == 0o600
    assert stat.S_IMODE(known.parent.stat().st_mode) == 0o700
    rc, out, _ = run(c, capsys, "-o", "json", "ssh", "box", "--print", "--user", "root")
    doc = json.loads(out)
    assert doc["command"][doc["command"].index("-l") + 1] == "root"
    assert doc["known_hosts"].count("10.213.0.5 ") == 2
    # -o json after NAME, as `ws exec NAME -o json` takes it (was: unrecognized arguments)
    rc, out, _ = run(c, capsys, "ssh", "box", "--print", "-o", "json")
    assert rc == 0 and json.loads(out)["command"][0] == "ssh"
    # --retry: ssh tries to connect up to N times, a second apart, while the guest boots.
    rc, out, _ = run(c, capsys, "ssh", "box", "--retry", "90", "--print")
    argv = out.split()
    assert argv[argv.index("--") - 4 :] == [
        "-o", "ConnectionAttempts=90", "-o", "ConnectTimeout=5", "--", "10.213.0.5",
    ]  # fmt: skip


def test_interactive_commands_refuse_json_they_would_not_print(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """`ws ssh`, `ws scp` and `ws console --attach` ran with the terminal and printed no
    JSON though `-o json` was given: a script waiting for it got none and no word why.
    Without --print that is a usage error (exit 2, nothing run, nothing written); with
    --print, ssh's and scp's command is the JSON."""
    monkeypatch.setenv(site_record.SITE_ENV, str(tmp_path / "no-site"))
    c = FakeClient([box(host_keys=HOST_KEYS)])
    ran: list[list[str]] = []
    monkeypatch.setattr(guest_cmds, "run_in_foreground", lambda cmd: ran.append(cmd) or 0)
    for what, argv in (
        ("ssh", ["-o", "json", "ssh", "box"]),
        ("ssh", ["ssh", "box", "-o", "json", "--", "uname"]),
        ("scp", ["-o", "json", "scp", "f", "box:"]),
        ("scp", ["scp", "box:f", ".", "-o", "json"]),
    ):
        rc, out, err = run(c, capsys, *argv)
        assert (rc, out) == (2, ""), argv
        assert err.startswith(f"ws: error: -o json prints the {what} command as JSON, with --print")
    rc, out, err = run(c, capsys, "-o", "json", "console", "box", "--attach")
    assert (rc, out) == (2, "")
    assert err.startswith("ws: error: --attach relays the console both ways")
    assert ran == [] and list((tmp_path / "tmp").iterdir()) == []
    rc, out, _ = run(c, capsys, "-o", "json", "scp", "--print", "f", "box:d")
    assert rc == 0 and json.loads(out)["command"][-1] == "debian@10.213.0.5:d"


def test_ssh_forwards_ports_as_ssh_does(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """-L, -R, -D (before or after NAME, repeatable) and -N reach ssh, with ssh told to
    end if it cannot open a forward rather than log in without it."""
    monkeypatch.setenv(site_record.SITE_ENV, str(tmp_path / "no-site"))
    c = FakeClient([box(host_keys=HOST_KEYS)])
    forwards = ["-R", "9000:127.0.0.1:80", "-D", "127.0.0.1:1080", "-N", "--print"]
    rc, out, _ = run(c, capsys, "ssh", "-L", "8888:localhost:8888", "box", *forwards)
    assert rc == 0
    argv = out.split()
    assert argv[argv.index("UpdateHostKeys=no") + 1 :] == [
        "-l", "debian",
        "-o", "ExitOnForwardFailure=yes",
        "-L", "8888:localhost:8888",
        "-R", "9000:127.0.0.1:80",
        "-D", "127.0.0.1:1080",
        "-N",
        "--", "10.213.0.5",
    ]  # fmt: skip
    rc, out, _ = run(c, capsys, "ssh", "box", "-L", "5000:db:5432", "--print", "--", "uptime")
    assert out.split()[-5:] == ["-L", "5000:db:5432", "--", "10.213.0.5", "uptime"]
    assert "-N" not in out.split()
    for argv, said in (
        (["ssh", "box", "-N", "--", "uptime"], "-N forwards ports only"),
        (["ssh", "-L", "", "box"], "-L needs a forwarding spec"),
        (["ssh", "box", "-L", "18000"], "-L '18000': give [BIND:]PORT:HOST:HOSTPORT"),
        (["ssh", "box", "-L", "99999:localhost:22"], "port 99999 is over 65535"),
        (["ssh", "box", "-D", "a:b:1080"], "-D 'a:b:1080': give [BIND:]PORT"),
        (["ssh", "box", "-D", "--print"], "argument -D: expected one argument"),
    ):
        try:
            rc, out, err = run(c, capsys, *argv)
        except SystemExit as exc:  # argparse's own, before NAME
            (rc, out, err) = (exc.code, *capsys.readouterr())
        assert rc == 2 and out == "" and said in err, err


def test_ssh_refuses_a_workspace_without_host_keys(capsys: pytest.CaptureFixture[str]) -> None:
    c = FakeClient([box()])
    rc, _, err = run(c, capsys, "ssh", "box")
    assert rc == 1
    assert "box's image takes no contextualization; `ws exec box -- CMD`" in err
    c = FakeClient([box(host_keys=HOST_KEYS)])
    c.workspaces["box"].state = STOPPED
    rc, _, err = run(c, capsys, "ssh", "box", "--print")
    assert rc == 1 and "box is STOPPED" in err


def test_retry_waits_for_a_starting_workspace_and_nothing_else(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """`ws ssh --retry N` right after a create without --wait: the workspace is waited
    for (up to N s) until RUNNING; without --retry, or for one that is not on its way
    (stopped), it is refused at once."""
    starting = box(host_keys=HOST_KEYS)
    starting.state = common_pb2.WorkspaceState.WORKSPACE_STATE_STARTING
    c = FakeClient([starting])
    rc, _, err = run(c, capsys, "ssh", "box", "--print")
    assert rc == 1 and c.waited == []
    # It says how to wait for it (the refusal alone left one to try again by hand); so
    # do scp and exec, which did not reach the guest.
    said = "workspace box is STARTING, not RUNNING yet: give --retry N to wait up to N s"
    assert said in err
    for argv in (["scp", "f", "box:"], ["exec", "box", "--", "uname"]):
        rc, _, err = run(c, capsys, *argv)
        assert rc == 1 and said in err and c.calls == [], argv
    rc, out, _ = run(c, capsys, "ssh", "--retry", "90", "box", "--print")
    assert rc == 0 and c.waited == [("abc123", [RUNNING], 90)]
    assert "ConnectionAttempts=90" in out
    c.workspaces["box"].state = common_pb2.WorkspaceState.WORKSPACE_STATE_PROPAGATING
    rc, out, _ = run(c, capsys, "scp", "--retry", "30", "f", "box:", "--print")
    assert rc == 0 and c.waited[-1] == ("abc123", [RUNNING], 30)
    c.workspaces["box"].state = STOPPED
    rc, _, err = run(c, capsys, "ssh", "--retry", "90", "box")
    assert rc == 1 and "box is STOPPED" in err and len(c.waited) == 2


def test_ssh_and_scp_without_a_login_user_or_address_say_so_and_write_nothing(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    nobody = box(host_keys=HOST_KEYS)
    nobody.login_user = ""
    c = FakeClient([nobody])
    for argv in (["ssh", "box"], ["scp", "f", "box:"], ["ssh", "box", "--print"]):
        rc, _, err = run(c, capsys, *argv)
        assert rc == 1 and "box names no login user; give --user" in err
    rc, out, _ = run(c, capsys, "ssh", "box", "--user", "alice", "--print")
    assert rc == 0 and "-l alice" in out
    unplaced = box(host_keys=HOST_KEYS)
    del unplaced.nics[:]
    c = FakeClient([unplaced])
    rc, _, err = run(c, capsys, "scp", "f", "box:")
    assert rc == 1 and "box has no address yet" in err
    # Only the --print above kept its known_hosts; the refused ones made none.
    assert len(list((tmp_path / "tmp").iterdir())) == 1


def fake_ssh(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, script: str, name: str = "ssh"
) -> None:
    """An ``ssh`` (or ``name``) first on PATH that runs the shell ``script``; no local
    site."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / name).write_text("#!/bin/sh\n" + script)
    (bin_dir / name).chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}:{os.environ['PATH']}")
    monkeypatch.setenv(site_record.SITE_ENV, str(tmp_path / "no-site"))


def test_a_failed_login_says_when_none_of_the_callers_keys_is_in_the_guest(
    capfd: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    # An ssh that cannot log in the way ssh says it (its exit code from SSH_EXIT).
    fake_ssh(
        monkeypatch,
        tmp_path,
        "echo 'debian@10.213.0.5: Permission denied (publickey).' >&2\nexit \"$SSH_EXIT\"\n",
    )
    c = FakeClient([box(host_keys=HOST_KEYS)])
    no_key = "ws: you have no SSH key at the service (`ws key list` is empty)"
    monkeypatch.setenv("SSH_EXIT", "255")
    rc, _, err = run(c, capfd, "ssh", "box")  # type: ignore[arg-type]
    assert rc == 255
    assert err.startswith("debian@10.213.0.5: Permission denied (publickey).\n" + no_key)
    assert "a key added later reaches only new workspaces" in err
    assert "`ws exec box -- CMD` and `ws console box --attach` reach it" in err
    # A key added after the workspace was created: ws says which keys the guest has.
    c.keys = [access_pb2.SshKey(fingerprint="SHA256:new")]
    c.workspaces = {"box": box(host_keys=HOST_KEYS, ssh_keys=["SHA256:old"])}
    rc, _, err = run(c, capfd, "ssh", "box")  # type: ignore[arg-type]
    assert rc == 255 and no_key not in err
    assert (
        "ws: none of your SSH keys at the service is in box: it was given its owner's "
        "keys when it was created (SHA256:old)" in err
    )
    assert "`ws ssh -i FILE box`" in err
    # The guest has one of the caller's keys: ssh may not have found its private half
    # (kept elsewhere than ~/.ssh): ws says -i gives it. With -i, ssh's word stands;
    # a key file that is not there is ws's error, before ssh runs.
    c.keys.append(access_pb2.SshKey(fingerprint="SHA256:old"))
    rc, _, err = run(c, capfd, "ssh", "box")  # type: ignore[arg-type]
    assert rc == 255 and "ws: box has your key SHA256:old: if ssh said" in err
    assert "`ws ssh -i FILE box`" in err
    key = tmp_path / "id_test"
    key.write_text("a key\n")
    rc, _, err = run(c, capfd, "ssh", "-i", str(key), "box")  # type: ignore[arg-type]
    assert rc == 255 and "ws:" not in err
    rc, _, err = run(c, capfd, "ssh", "-i", str(tmp_path / "nokey"), "box")  # type: ignore[arg-type]
    assert rc == 1 and f"no key file {tmp_path / 'nokey'} (-i)" in err
    rc, _, err = run(c, capfd, "scp", "-i", str(tmp_path / "nokey"), "f", "box:")  # type: ignore[arg-type]
    assert rc == 1 and "no key file" in err
    c.keys = []
    monkeypatch.setenv("SSH_EXIT", "3")
    rc, _, err = run(c, capfd, "ssh", "box", "--", "false")  # type: ignore[arg-type]
    assert rc == 3 and "ws:" not in err


def test_a_script_whose_ssh_finds_no_sshd_in_a_booting_guest_is_told_why(
    capfd: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """A script (no terminal) ran `ws ssh box` right after `ws create --wait`: ssh said
    only "No route to host"; ws now says that the guest may still be booting and how to
    wait. Not for a guest that has run for long, nor when --retry was given, nor when
    its sshd answers a knock: ssh's 255 is then a refused login, a changed host key or
    the remote command's own exit 255, which no waiting mends."""
    fake_ssh(
        monkeypatch,
        tmp_path,
        "echo 'ssh: connect to host 10.213.0.5 port 22: No route to host' >&2\nexit 255\n",
    )
    monkeypatch.setattr(sshwait, "knock", lambda _address, _prefix=(): "No route to host")
    key = tmp_path / "id_test"
    key.write_text("a key\n")
    c = FakeClient([box(host_keys=HOST_KEYS, ssh_keys=["SHA256:mine"])])
    c.keys = [access_pb2.SshKey(fingerprint="SHA256:mine")]
    c.workspaces["box"].updated_at.FromSeconds(int(time.time()) - 20)
    rc, _, err = run(c, capfd, "ssh", "-i", str(key), "box", "--", "true")  # type: ignore[arg-type]
    assert rc == 255
    assert "ws: box's guest may still be booting (it started 2" in err
    assert "`ws ssh --retry 60 box` makes 60 attempts" in err
    rc, _, err = run(c, capfd, "ssh", "--retry", "2", "-i", str(key), "box", "--", "true")  # type: ignore[arg-type]
    assert rc == 255 and "ws:" not in err
    monkeypatch.setattr(sshwait, "knock", lambda _address, _prefix=(): "")  # sshd answers
    rc, _, err = run(c, capfd, "ssh", "-i", str(key), "box", "--", "exit 255")  # type: ignore[arg-type]
    assert rc == 255 and "ws:" not in err
    c.workspaces["box"].updated_at.FromSeconds(int(time.time()) - 3600)
    rc, _, err = run(c, capfd, "ssh", "-i", str(key), "box", "--", "true")  # type: ignore[arg-type]
    assert rc == 255 and "ws:" not in err


def test_ctrl_c_ends_ssh_and_ws_with_it(
    capfd: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """Ctrl-C goes to the terminal's whole foreground group: ws and ssh (or scp). ssh
    must get it with its default action (an ignored SIGINT stays ignored in the program
    ws starts, and ssh keeps it so: `ws ssh -N` and `ws scp` then ran on), and ws must
    outlive it and end with ssh. Here ssh says whether it ignores SIGINT, sends one to
    ws as the terminal would, then to itself."""
    fake_ssh(
        monkeypatch,
        tmp_path,
        "grep SigIgn /proc/$$/status >&2\nkill -INT $PPID\nkill -INT $$\nsleep 5\nexit 0\n",
    )
    before = signal.getsignal(signal.SIGINT)  # SIG_IGN if the tests run in the background
    rc, _, err = run(FakeClient([box(host_keys=HOST_KEYS)]), capfd, "ssh", "-N", "box")  # type: ignore[arg-type]
    ignored = int(err.split("SigIgn:")[1].split()[0], 16)
    assert not ignored & (1 << (signal.SIGINT - 1)), err
    assert rc == 128 + signal.SIGINT  # ended by it, as a shell would say
    assert signal.getsignal(signal.SIGINT) is before  # put back


def test_ws_ssh_ended_by_sigterm_ends_ssh_first_and_leaves_no_known_hosts(
    capfd: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """A `ws ssh` that gets SIGTERM (or SIGHUP) hands it to ssh and ends with it, so the
    known_hosts file it wrote goes too. Here ssh itself sends ws the SIGTERM, then waits
    up to 5 s for it to come back; a ws that kept the signal would leave ssh to end on
    its own (exit 0)."""
    fake_ssh(
        monkeypatch,
        tmp_path,
        "trap 'echo ssh got TERM >&2; exit 143' TERM\nkill -TERM $PPID\n"
        "i=0; while [ $i -lt 50 ]; do sleep 0.1; i=$((i+1)); done\nexit 0\n",
    )
    monkeypatch.setenv("TMPDIR", str(tmp_path))
    monkeypatch.setattr(tempfile, "tempdir", None)  # TMPDIR is read again
    # Were the signal not handled at all, it would end this test's process: a handler
    # of the test's own stands in for that default and is back in place afterwards.
    seen: list[int] = []
    previous = signal.signal(signal.SIGTERM, lambda signum, _frame: seen.append(signum))
    try:
        rc, _, err = run(FakeClient([box(host_keys=HOST_KEYS)]), capfd, "ssh", "box")  # type: ignore[arg-type]
        assert (rc, seen) == (143, [])
        assert "ssh got TERM" in err
        assert not list(tmp_path.glob("ws-ssh-*"))
        os.kill(os.getpid(), signal.SIGTERM)  # ws put the test's handler back
        assert seen == [signal.SIGTERM]
    finally:
        signal.signal(signal.SIGTERM, previous)


def test_ssh_enters_the_nodes_namespace_of_a_local_site(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    site_dir = tmp_path / "site"
    site_dir.mkdir()
    address = f"unix:{site_dir / 'service.sock'}"
    rec = site_record.SiteRecord(
        dir=str(site_dir),
        address=address,
        driver="libvirt",
        agents=[site_record.AgentRecord("n1", netns="ws-site-n1")],
    )
    site_record.write_record(site_dir, rec)
    monkeypatch.setenv(site_record.SITE_ENV, str(tmp_path / "elsewhere"))
    assert guest_cmds.site_netns(address, "n1") == "ws-site-n1"
    assert guest_cmds.site_netns(address, "n2") == ""
    assert guest_cmds.site_netns("127.0.0.1:7070", "n1") == ""
    cmd = guest_cmds.ssh_command(box(host_keys=HOST_KEYS), "/k", netns="ws-site-n1")
    assert cmd[:5] == ["ip", "netns", "exec", "ws-site-n1", "ssh"]


# -- the guest agent protocol (libvirt driver) -----------------------------------------------


class Agent:
    """qemu-ga as the driver sees it: JSON commands in, JSON replies out."""

    def __init__(self, statuses: list[dict[str, Any]], fail: str = "") -> None:
        self.statuses = statuses
        self.fail = fail
        self.sent: list[dict[str, Any]] = []

    def __call__(self, command: dict[str, Any], timeout: int) -> dict[str, Any]:
        self.sent.append(command)
        if command["execute"] == "guest-exec":
            if self.fail:
                raise guest_agent.CommandFailed(self.fail)
            return {"return": {"pid": 42}}
        return {"return": self.statuses.pop(0) if self.statuses else {"exited": False}}


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def test_guest_exec_then_status_until_exited() -> None:
    agent = Agent(
        [
            {"exited": False},
            {"exited": True, "exitcode": 3, "out-data": b64(b"out"), "err-data": b64(b"err")},
        ]
    )
    got = guest_agent.exec_command(agent, ["sh", "-c", "x"], b"in", 10, 1024, sleep=lambda _s: None)
    assert got == ExecOutcome(exit_code=3, stdout=b"out", stderr=b"err")
    assert agent.sent[0] == {
        "execute": "guest-exec",
        "arguments": {
            "path": "sh",
            "arg": ["-c", "x"],
            "capture-output": True,
            "input-data": b64(b"in"),
        },
    }
    assert agent.sent[1] == {"execute": "guest-exec-status", "arguments": {"pid": 42}}


def test_guest_exec_signal_truncation_and_missing_commands() -> None:
    killed = guest_agent.exec_command(
        Agent([{"exited": True, "signal": 9}]), ["x"], b"", 10, 1024, sleep=lambda _s: None
    )
    assert killed.exit_code == 137
    long = guest_agent.exec_command(
        Agent([{"exited": True, "exitcode": 0, "out-data": b64(b"x" * 100)}]),
        ["x"],
        b"",
        10,
        10,
        sleep=lambda _s: None,
    )
    assert long.stdout == b"x" * 10 and long.truncated
    cut = guest_agent.exec_command(
        Agent([{"exited": True, "exitcode": 0, "err-truncated": True}]), ["x"], b"", 10, 10
    )
    assert cut.truncated
    missing = guest_agent.exec_command(
        Agent([], fail="Failed to execute child process “nope” (No such file or directory)"),
        ["nope"],
        b"",
        10,
        10,
    )
    assert missing.exit_code == 127 and b"No such file" in missing.stderr
    denied = guest_agent.exec_command(
        Agent([], fail="Failed to execute child process “x” (Permission denied)"), ["x"], b"", 1, 1
    )
    assert denied.exit_code == 126


def test_guest_exec_past_the_timeout_is_killed_and_reported() -> None:
    now = [0.0]
    agent = Agent([])
    got = guest_agent.exec_command(
        agent,
        ["sleep", "99"],
        b"",
        2,
        10,
        clock=lambda: now[0],
        sleep=lambda s: now.__setitem__(0, now[0] + s),
    )
    assert got.timed_out and got.exit_code == 124
    assert agent.sent[-1] == {
        "execute": "guest-exec",
        "arguments": {"path": "kill", "arg": ["-KILL", "42"]},
    }


class LibvirtError(libvirt.libvirtError):
    def __init__(self, code: int, message: str) -> None:
        Exception.__init__(self, message)
        self.code, self.text = code, message

    def get_error_code(self) -> int:
        return self.code

    def get_error_message(self) -> str:
        return self.text


@pytest.mark.parametrize(
    ("code", "message", "cls", "text"),
    [
        (
            libvirt.VIR_ERR_AGENT_UNRESPONSIVE,
            "Guest agent is not responding: QEMU guest agent is not connected",
            errors.FailedPrecondition,
            "no QEMU guest agent answers in workspace box yet: the guest may still be booting",
        ),
        (
            libvirt.VIR_ERR_ARGUMENT_UNSUPPORTED,
            "argument unsupported: QEMU guest agent is not configured",
            errors.FailedPrecondition,
            "no QEMU guest agent answers in workspace box",
        ),
        (
            libvirt.VIR_ERR_OPERATION_INVALID,
            "Requested operation is not valid: domain is not running",
            errors.FailedPrecondition,
            "workspace box is not running",
        ),
        (
            libvirt.VIR_ERR_INTERNAL_ERROR,
            "internal error: unable to execute QEMU agent command 'guest-exec': "
            "Failed to execute child process “nope” (No such file or directory)",
            guest_agent.CommandFailed,
            "Failed to execute child process “nope” (No such file or directory)",
        ),
        (libvirt.VIR_ERR_NO_DOMAIN, "gone", errors.DriverError, "gone"),
    ],
)
def test_what_a_failed_agent_command_means(code: int, message: str, cls: type, text: str) -> None:
    err = agent_error(LibvirtError(code, message), "box")
    assert type(err) is cls
    assert text in str(err)


# -- the fake guest ----------------------------------------------------------------------------


def test_the_fake_guest_runs_a_few_commands_faithfully() -> None:
    def go(*argv: str, stdin: bytes = b"", timeout: float = 10) -> ExecOutcome:
        return fake_guest.run(argv, stdin, timeout, "box", sleep=lambda _s: None)

    assert go("echo", "a", "b") == ExecOutcome(0, b"a b\n")
    assert go("false").exit_code == 1
    assert go("/bin/hostname").stdout == b"box\n"
    assert go("sh", "-c", "echo x >&2; exit 5") == ExecOutcome(5, b"", b"x\n")
    assert go("sleep", "30", timeout=1).timed_out
    assert not go("sleep", "0.5").timed_out
    assert go("frobnicate") == ExecOutcome(127, b"", b"sh: 1: frobnicate: not found\n")


def test_the_fake_console_echoes_and_ends() -> None:
    closed: list[object] = []
    c = fake_guest.FakeConsole("box", closed.append)
    assert b"box login: " in (c.read(1) or b"")
    assert c.read(0.01) is None
    c.write(b"root\r")
    assert c.read(1) == b"root\r\n"
    c.close()
    assert c.read(1) == b"" and closed == [c]
    with pytest.raises(errors.DriverError):
        c.write(b"x")


# -- the task hub ------------------------------------------------------------------------------


def test_the_hub_answers_an_exec_by_task_id() -> None:
    hub = TaskHub()
    line = hub.connect("n1")

    def agent() -> None:
        task = line.next(5)
        assert task is not None and isinstance(task.kind, ExecTask)
        hub.deliver(line, TaskReply(task.task_id, ExecOutcome(0, b"hi")))

    threading.Thread(target=agent).start()
    assert hub.exec("n1", "w1", ExecTask(("echo",)), 5) == ExecOutcome(0, b"hi")


def test_the_hub_answers_a_save_and_refuses_an_answer_of_another_kind() -> None:
    hub = TaskHub()
    line = hub.connect("n1")
    saved = SaveOutcome((SavedPartition("root", "sha256:" + "a" * 64, 42),))

    def agent(answers: list[ReplyKind]) -> None:
        for answer in answers:
            task = line.next(5)
            assert task is not None
            # What crosses the wire: the task and the answer through their protos.
            got = codec_guests.task_from_proto(codec_guests.task_to_proto(task))
            assert got == task
            reply = codec_guests.reply_to_proto(TaskReply(task.task_id, answer))
            hub.deliver(line, codec_guests.reply_from_proto(reply))

    threading.Thread(target=agent, args=([saved, saved],)).start()
    assert hub.save("n1", "w1", SaveTask(("root",), 60), 5) == saved
    with pytest.raises(errors.Unavailable, match="the agent answered an exec with SaveOutcome"):
        hub.exec("n1", "w1", ExecTask(("true",)), 5)


def test_a_save_an_agent_does_not_take_fails_soon(monkeypatch: pytest.MonkeyPatch) -> None:
    """An agent older than saves ignores the task: the caller hears it within
    SAVE_START_S, not at the save's time limit."""
    monkeypatch.setattr(taskhub, "SAVE_START_S", 0.3)
    hub = TaskHub()
    line = hub.connect("n1")
    t0 = time.monotonic()
    with pytest.raises(errors.Unavailable, match=r"did not take the save within 0\.3 s"):
        hub.save("n1", "w1", SaveTask(("root",), 3600), 3600)
    assert time.monotonic() - t0 < 30  # not the save's hour
    assert line.next(1) is not None  # it was sent
    # One that takes it: the outcome is waited for past SAVE_START_S.
    saved = SaveOutcome(())

    def agent() -> None:
        task = line.next(5)
        assert task is not None
        hub.deliver(line, TaskReply(task.task_id, SaveStarted()))
        time.sleep(0.6)
        hub.deliver(line, TaskReply(task.task_id, saved))

    threading.Thread(target=agent).start()
    assert hub.save("n1", "w1", SaveTask(("root",), 60), 5) == saved


def test_a_saves_copy_progress_is_told_and_an_unknown_reply_ends_nothing() -> None:
    """The agent's SaveCopying replies go to the hub's hook with the workspace's id (the
    save goes on); a reply of a kind this service does not know (a newer agent's) is
    not taken for the save's answer."""
    told: list[tuple[str, SaveCopying]] = []
    hub = TaskHub(lambda wid, c: told.append((wid, c)))
    line = hub.connect("n1")
    saved = SaveOutcome(())

    def agent() -> None:
        task = line.next(5)
        assert task is not None
        hub.deliver(line, TaskReply(task.task_id, SaveStarted()))
        hub.deliver(line, TaskReply(task.task_id, SaveCopying("root", 37.0)))
        hub.deliver(line, TaskReply(task.task_id, None))  # unknown to this service
        hub.deliver(line, TaskReply(task.task_id, saved))

    threading.Thread(target=agent).start()
    assert hub.save("n1", "w1", SaveTask(("root",), 60), 5) == saved
    assert told == [("w1", SaveCopying("root", 37.0))]
    # On the wire and back.
    wire = codec_guests.reply_to_proto(TaskReply("t", SaveCopying("data", 99.5)))
    assert codec_guests.reply_from_proto(wire).kind == SaveCopying("data", 99.5)


def test_the_hub_fails_tasks_of_a_dropped_stream_and_unknown_nodes() -> None:
    hub = TaskHub()
    with pytest.raises(errors.Unavailable, match="node n1's agent is not connected; try again"):
        hub.exec("n1", "w1", ExecTask(("true",)), 1)
    line = hub.connect("n1")
    threading.Timer(0.2, lambda: hub.disconnect(line)).start()
    with pytest.raises(errors.Unavailable, match="went away"):
        hub.exec("n1", "w1", ExecTask(("true",)), 5)
    assert not hub.connected("n1")
    # an answer refused by the agent
    line = hub.connect("n1")

    def refuse() -> None:
        task = line.next(5)
        assert task is not None
        hub.deliver(line, TaskReply(task.task_id, TaskError(FAILED_PRECONDITION, "not running")))

    threading.Thread(target=refuse).start()
    with pytest.raises(errors.FailedPrecondition, match="not running"):
        hub.exec("n1", "w1", ExecTask(("true",)), 5)
    # a second stream of the same node replaces the first
    second = hub.connect("n1")
    assert line.closed and not second.closed and hub.connected("n1")


def test_a_console_session_through_the_hub() -> None:
    hub = TaskHub()
    line = hub.connect("n1")
    link = hub.open_console("n1", "w1")
    opened = line.next(1)
    assert opened is not None and opened.task_id == link.task_id
    hub.deliver(line, TaskReply(link.task_id, ConsoleOutput(b"login: ")))
    assert link.next(1) == ConsoleOutput(b"login: ")
    link.send(b"x")
    typed = line.next(1)
    assert typed is not None and typed.kind.data == b"x"  # type: ignore[union-attr]
    hub.deliver(line, TaskReply(link.task_id, ConsoleClosed("guest stopped")))
    assert link.next(1) == ConsoleClosed("guest stopped")
    link.close()
    assert link.next(0.1) == ConsoleClosed("")  # a reader of the link wakes up


# -- the agent's side of the task stream -------------------------------------------------------


class SlowConsoleDriver(FakeDriver):
    """A fake driver whose consoles take a moment to open (keystrokes arrive first)."""

    def open_console(self, workspace_id: str) -> ConsoleSession:
        time.sleep(0.3)
        return super().open_console(workspace_id)


def agent_tasks(tmp_path: Path) -> tuple[Tasks, FakeDriver, queue.Queue[Any]]:
    cfg = AgentConfig(node="n1", state_dir=str(tmp_path))
    driver = SlowConsoleDriver(FakeDriverConfig(persist=False, no_guest_agent=["bare"]))
    tasks = Tasks(cfg, driver, threading.Event(), lambda _t: True)
    outbox: queue.Queue[Any] = queue.Queue()
    tasks._outbox = outbox  # what run() sets up for a live stream
    for wid, name in (("w1", "box"), ("w2", "bare")):
        driver.define(DomainSpec(wid, name, 1, 64, hostname=name))
        driver.start(wid)
    return tasks, driver, outbox


def replies(outbox: queue.Queue[Any], task_id: str, until: type) -> list[Any]:
    got: list[Any] = []
    while True:
        reply = codec_guests.reply_from_proto(outbox.get(timeout=5))
        if reply.task_id == task_id:
            got.append(reply.kind)
            if isinstance(reply.kind, until):
                return got


def test_the_agent_answers_execs_and_keeps_early_keystrokes(tmp_path: Path) -> None:
    tasks, _driver, outbox = agent_tasks(tmp_path)
    try:
        tasks.take(Task("e1", "w1", ExecTask(("hostname",))))
        assert replies(outbox, "e1", ExecOutcome) == [ExecOutcome(0, b"box\n")]
        tasks.take(Task("e2", "w2", ExecTask(("true",))))
        (err,) = replies(outbox, "e2", TaskError)
        assert err.code == FAILED_PRECONDITION and "no QEMU guest agent" in err.message
        tasks.take(Task("e3", "nope", ExecTask(("true",))))
        assert replies(outbox, "e3", TaskError)[0].code == NOT_FOUND
        # keystrokes sent right after the open, before the console is open, are kept
        tasks.take(Task("c1", "w1", ConsoleOpen()))
        tasks.take(Task("c1", "w1", ConsoleInput(b"root\r")))
        seen = b""
        while b"root\r\n" not in seen:
            (out,) = replies(outbox, "c1", ConsoleOutput)
            seen += out.data
        tasks.take(Task("c1", "w1", ConsoleClose()))
        assert replies(outbox, "c1", ConsoleClosed)[-1] == ConsoleClosed("detached")
    finally:
        tasks.close()
