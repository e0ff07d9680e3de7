"""Into the guest over real gRPC with fake-driver agents: `ws exec` through the agent's
task stream, `ws cluster exec`, the interactive console, and who may do any of it."""

from __future__ import annotations

import json
import os
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from tests.functional.harness import WS, Site, SitePki, TlsSite, wait_for
from workspace import errors
from workspace.cli import ws
from workspace.client import Client
from workspace.v1 import clusters_pb2, clusters_pb2_grpc

RUNNING = WS.WORKSPACE_STATE_RUNNING


@pytest.fixture
def box(ready_site: Site) -> Site:
    """A site with a running workspace `box` on node1."""
    ready_site.stubs.create(name="box")
    ready_site.stubs.wait_state("box", RUNNING)
    return ready_site


@pytest.fixture
def client(box: Site) -> Iterator[Client]:
    with Client(box.address) as c:
        yield c


def cli(site: Site, capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    rc = ws.main(["--service", site.address, *argv])
    out, err = capsys.readouterr()
    return rc, out, err


# -- exec --------------------------------------------------------------------------------


def test_exec_returns_stdout_stderr_and_the_exit_code(client: Client) -> None:
    r = client.exec("box", ["sh", "-c", "echo out; echo err >&2; exit 3"])
    assert (r.name, r.exit_code, r.stdout, r.stderr) == ("box", 3, b"out\n", b"err\n")
    assert not r.timed_out and not r.truncated
    assert client.exec("box", ["cat", "/etc/hostname"]).stdout == b"box\n"
    assert client.exec("box", ["cat"], stdin=b"from stdin").stdout == b"from stdin"
    missing = client.exec("box", ["no-such-command"])
    assert missing.exit_code == 127 and b"not found" in missing.stderr


def test_the_cli_exits_with_the_commands_exit_code(
    box: Site, capsys: pytest.CaptureFixture[str]
) -> None:
    rc, out, err = cli(
        box, capsys, "exec", "box", "--", "sh", "-c", "echo hi; echo oops >&2; exit 7"
    )
    assert (rc, out, err) == (7, "hi\n", "oops\n")
    assert cli(box, capsys, "exec", "box", "--", "true")[0] == 0
    rc, out, _ = cli(box, capsys, "-o", "json", "exec", "box", "--", "echo", "a", "b")
    doc = json.loads(out)
    assert rc == 0
    assert doc == {
        "id": box.stubs.get("box").id,
        "workspace": box.stubs.get("box").id,
        "name": "box",
        "exit_code": 0,
        "stdout": "a b\n",
        "stderr": "",
        "timed_out": False,
        "truncated": False,
    }


def test_a_command_past_its_timeout_is_reported_timed_out(
    box: Site, client: Client, capsys: pytest.CaptureFixture[str]
) -> None:
    started = time.monotonic()
    r = client.exec("box", ["sleep", "30"], timeout_s=1)
    assert r.timed_out and time.monotonic() - started < 10
    rc, _, err = cli(box, capsys, "exec", "box", "--timeout", "1", "--", "sleep", "30")
    assert rc == 124
    assert "ran past its timeout" in err


def test_bad_requests_are_refused_clearly(box: Site, client: Client) -> None:
    with pytest.raises(errors.InvalidArgument, match="give a command"):
        client.exec("box", [])
    with pytest.raises(errors.InvalidArgument, match="max_exec_timeout_s"):
        client.exec("box", ["true"], timeout_s=999999)
    limit = box.cfg.limits.max_exec_stdin_bytes
    with pytest.raises(errors.InvalidArgument, match="max_exec_stdin_bytes"):
        client.exec("box", ["cat"], stdin=b"x" * (limit + 1))


def test_exec_on_a_stopped_workspace_says_so(
    box: Site, client: Client, capsys: pytest.CaptureFixture[str]
) -> None:
    client.stop_workspace("box")
    box.stubs.wait_state("box", WS.WORKSPACE_STATE_STOPPED)
    with pytest.raises(errors.FailedPrecondition, match=r"box is STOPPED; `ws start box` first"):
        client.exec("box", ["true"])
    rc, _, err = cli(box, capsys, "exec", "box", "--", "true")
    assert rc == 1 and "box is STOPPED" in err


def test_no_guest_agent_on_the_node_of_the_workspace(site: Site) -> None:
    site.stubs.network()
    site.stubs.import_image("img")
    site.add_agent("node1", fake={"no_guest_agent": ["bare*"]})
    site.stubs.create(name="bare1")
    site.stubs.wait_state("bare1", RUNNING)
    with Client(site.address) as c:
        with pytest.raises(errors.FailedPrecondition) as exc:
            c.exec("bare1", ["true"])
        assert exc.value.message == (
            "no QEMU guest agent answers in workspace bare1 yet: the guest may still be "
            "booting (try again shortly), or its image lacks qemu-guest-agent"
        )


def test_a_node_whose_agent_is_not_connected_is_unavailable(box: Site, client: Client) -> None:
    box.stop_agent("node1")  # the workspace stays RUNNING until the node's grace ends
    assert box.stubs.get("box").state == RUNNING
    # Unavailable either way: the service noticed the stream's end (not connected) or the
    # exec was sent on it as it broke (went away).
    with pytest.raises(
        errors.Unavailable,
        match=r"node node1's agent (is not connected|went away \(.*\)); try again",
    ):
        client.exec("box", ["true"])


def test_the_task_stream_comes_back_after_a_service_restart(box: Site) -> None:
    box.stop_service()
    box.start_service()
    with Client(box.address) as c:
        r = wait_for(lambda: _try_exec(c), 30, "exec after the restart")
        assert r.stdout == b"box\n"


def _try_exec(c: Client) -> object:
    try:
        return c.exec("box", ["hostname"])
    except errors.Unavailable:
        return None


# -- who may -----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def site_pki(tmp_path_factory: pytest.TempPathFactory) -> SitePki:
    return SitePki(tmp_path_factory.mktemp("pki"))


def test_only_the_owner_and_admins_get_in(tmp_path: Path, site_pki: SitePki) -> None:
    site = TlsSite(tmp_path, site_pki)
    try:
        site.stubs.network()
        site.stubs.import_image("img")
        site.add_agent("node1")
        admin_dir = site_pki.user("root", admin=True)
        with Client(site.address, identity=admin_dir) as admin:
            admin.create_project("p")
        alice_dir = site_pki.user("alice", projects=("p",))
        with Client(site.address, identity=alice_dir) as alice:
            w = alice.create_workspace("img", name="mine", project="p")
            wait_for(lambda: alice.get_workspace(w.id).state == RUNNING, what="mine RUNNING")
            assert alice.exec(w.id, ["hostname"]).stdout == b"mine\n"
            wait_for(lambda: b"WORKSPACE-READY" in alice.get_console(w.id), what="its log")
        with Client(site.address, identity=site_pki.user("bob")) as bob:
            with pytest.raises(errors.NotFound):
                bob.exec(w.id, ["true"])
            with pytest.raises(errors.NotFound):
                list(bob.attach_console(w.id, iter(())))
        with Client(site.address, identity=site_pki.user("carol", projects=("p",))) as carol:
            # carol sees the workspace (same project) but may not get into it
            assert carol.get_workspace(w.id).name == "mine"
            with pytest.raises(errors.PermissionDenied, match="owner"):
                carol.exec(w.id, ["true"])
            # Nor read its console log: it holds what the owner's `ws console --attach`
            # sessions showed, as the serial port carried them.
            with pytest.raises(errors.PermissionDenied, match="owner"):
                carol.get_console(w.id)
        with Client(site.address, identity=admin_dir) as admin:
            assert admin.exec(w.id, ["true"]).exit_code == 0
            assert b"WORKSPACE-READY" in admin.get_console(w.id)
    finally:
        site.close()


# -- cluster exec ------------------------------------------------------------------------


@pytest.fixture
def cluster(site: Site) -> Site:
    """Cluster `mpi` (head-0, worker-0, worker-1); worker-1's guest has no guest agent."""
    site.stubs.network()
    site.stubs.import_image("img")
    site.add_agent("node1", fake={"no_guest_agent": ["mpi-worker-1"]})
    clusters_pb2_grpc.ClustersStub(site.stubs.channel).CreateCluster(
        clusters_pb2.CreateClusterRequest(
            name="mpi",
            members=[
                clusters_pb2.ClusterMember(role="head", image="img", cpus=1, memory_mib=256),
                clusters_pb2.ClusterMember(
                    role="worker", image="img", cpus=1, memory_mib=256, count=2
                ),
            ],
        )
    )
    for name in ("mpi-head-0", "mpi-worker-0", "mpi-worker-1"):
        site.stubs.wait_state(name, RUNNING)
    return site


def test_cluster_exec_reports_every_member_and_the_one_that_failed(
    cluster: Site, capsys: pytest.CaptureFixture[str]
) -> None:
    rc, out, _ = cli(cluster, capsys, "cluster", "exec", "mpi", "--", "hostname")
    assert rc == 1
    assert "== mpi-head-0 (head): exit 0\nmpi-head-0\n" in out
    assert "== mpi-worker-0 (worker): exit 0\nmpi-worker-0\n" in out
    assert "== mpi-worker-1 (worker): no QEMU guest agent answers" in out
    assert (
        out.rstrip()
        .splitlines()[-1]
        .startswith("3 members: 2 exited 0, 1 failed (mpi-worker-1: no QEMU guest agent answers")
    )

    rc, out, _ = cli(cluster, capsys, "-o", "json", "cluster", "exec", "mpi", "--", "hostname")
    doc = json.loads(out)
    assert rc == 1
    by_name = {m["name"]: m for m in doc["members"]}
    for name, member in by_name.items():  # each member's id, as `ws show` gives it
        assert member["id"] == member["workspace"] == cluster.stubs.get(name).id
    assert by_name["mpi-head-0"]["exit_code"] == 0
    assert by_name["mpi-head-0"]["stdout"] == "mpi-head-0\n"
    assert by_name["mpi-worker-1"]["exit_code"] is None
    assert "no QEMU guest agent" in by_name["mpi-worker-1"]["error"]
    assert doc["summary"]["failed"] == ["mpi-worker-1"]
    assert doc["summary"]["exited_0"] == 2


def test_cluster_exec_by_role_sequential_and_a_failing_command(
    cluster: Site, capsys: pytest.CaptureFixture[str]
) -> None:
    rc, out, _ = cli(
        cluster, capsys, "cluster", "exec", "mpi", "--role", "head", "--sequential", "--", "true"
    )
    assert rc == 0
    assert out.splitlines() == ["== mpi-head-0 (head): exit 0", "1 member: 1 exited 0"]
    rc, out, _ = cli(cluster, capsys, "cluster", "exec", "mpi", "--role", "worker", "--", "false")
    assert rc == 1
    assert "mpi-worker-0: exit 1" in out.splitlines()[-1]


def test_cluster_exec_reports_a_stopped_member(
    cluster: Site, capsys: pytest.CaptureFixture[str]
) -> None:
    with Client(cluster.address) as c:
        c.stop_workspace("mpi-worker-0")
    cluster.stubs.wait_state("mpi-worker-0", WS.WORKSPACE_STATE_STOPPED)
    rc, out, _ = cli(cluster, capsys, "cluster", "exec", "mpi", "--role", "worker", "--", "true")
    assert rc == 1
    assert "== mpi-worker-0 (worker): not running (STOPPED)" in out


def test_a_cluster_named_where_a_workspace_is_wanted_is_named_as_one(
    cluster: Site, capsys: pytest.CaptureFixture[str]
) -> None:
    """`ws ssh mpi`, `ws exec mpi`, `ws scp` to mpi and `ws console mpi`: said only "no
    workspace 'mpi'", leaving the user to guess that mpi's members are what they log in to."""
    members = "(mpi-head-0, mpi-worker-0, mpi-worker-1)"
    for argv, instead in (
        (["ssh", "mpi"], "`ws cluster exec mpi -- CMD`"),
        (["exec", "mpi", "--", "hostname"], "`ws cluster exec mpi -- CMD`"),
        (["scp", "f.txt", "mpi:/tmp/"], "`ws cluster scp mpi SRC... :DST`"),
        (["console", "mpi"], "`ws cluster show mpi`"),
        (["console", "mpi", "--attach"], "`ws cluster show mpi`"),
    ):
        rc, out, err = cli(cluster, capsys, *argv)
        assert rc == 1 and out == ""
        assert "mpi is a cluster, not a workspace: name one of its members" in err
        assert members in err and instead in err
    rc, _, err = cli(cluster, capsys, "ssh", "nosuch")  # neither: as the service says
    assert rc == 1 and "no workspace 'nosuch'" in err and "cluster" not in err
    with Client(cluster.address) as c:  # a destroyed cluster is no hint any more
        c.destroy_cluster("mpi")
        c.wait_for_cluster_state("mpi", [clusters_pb2.CLUSTER_STATE_TERMINATED], timeout_s=60)
    rc, _, err = cli(cluster, capsys, "exec", "mpi", "--", "hostname")
    assert rc == 1 and "no workspace 'mpi'" in err and "cluster" not in err


def test_cluster_exec_with_a_role_it_does_not_have_names_its_roles(
    cluster: Site, capsys: pytest.CaptureFixture[str]
) -> None:
    rc, out, err = cli(cluster, capsys, "cluster", "exec", "mpi", "--role", "wrker", "--", "true")
    assert rc == 1 and out == ""
    assert "cluster mpi has no members with role wrker; its roles: head, worker" in err


# -- the interactive console -------------------------------------------------------------


def test_console_attach_round_trip(client: Client) -> None:
    keys: list[bytes | None] = []
    ready = threading.Event()

    def keystrokes() -> Iterator[bytes]:
        ready.wait(10)
        yield b"root\r"
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and not keys:
            time.sleep(0.02)

    seen = b""
    for data in client.attach_console("box", keystrokes()):
        seen += data
        if b"login: " in seen:
            ready.set()
        if b"root\r\n" in seen:
            keys.append(None)  # the echo came back: detach
    assert b"Debian GNU/Linux 12 box ttyS0" in seen
    assert seen.endswith(b"box login: root\r\n")


def test_console_attach_through_the_cli(
    box: Site, capfdbinary: pytest.CaptureFixture[bytes], monkeypatch: pytest.MonkeyPatch
) -> None:
    r, w = os.pipe()

    def type_in() -> None:
        time.sleep(1.0)
        os.write(w, b"root\r")
        time.sleep(1.0)
        os.write(w, b"\x1d")  # Ctrl-]
        os.close(w)

    threading.Thread(target=type_in, daemon=True).start()
    with os.fdopen(r, "rb") as stdin:
        monkeypatch.setattr("sys.stdin", stdin)
        assert ws.main(["--service", box.address, "console", "box", "--attach"]) == 0
    out, err = capfdbinary.readouterr()
    assert b"box login: root\r\n" in out
    assert b"Ctrl-] detaches" in err and b"ws: detached" in err


def test_console_attach_with_piped_input_shows_the_answer_then_detaches(
    box: Site, capfdbinary: pytest.CaptureFixture[bytes], monkeypatch: pytest.MonkeyPatch
) -> None:
    """`printf 'root\\r' | ws console box --attach`: the end of input is not the end of
    the console; the guest's answer to what was piped in is shown, then ws detaches."""
    r, w = os.pipe()
    os.write(w, b"root\r")
    os.close(w)
    with os.fdopen(r, "rb") as stdin:
        monkeypatch.setattr("sys.stdin", stdin)
        assert ws.main(["--service", box.address, "console", "box", "--attach"]) == 0
    out, err = capfdbinary.readouterr()
    assert b"box login: root\r\n" in out
    assert err.endswith(b"ws: end of input: detached\n")


def test_console_attach_with_tail_prints_the_logs_end_first(
    box: Site,
    client: Client,
    capfdbinary: pytest.CaptureFixture[bytes],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """`ws console box --attach --tail N` took --tail and ignored it: the log's last N
    bytes (what the guest printed before) are shown first, then the live console."""
    log = wait_for(lambda: b"WORKSPACE-READY" in (d := client.get_console("box")) and d)
    last = log[log.rindex(b"WORKSPACE-READY") :]
    r, w = os.pipe()
    os.write(w, b"root\r")
    os.close(w)
    with os.fdopen(r, "rb") as stdin:
        monkeypatch.setattr("sys.stdin", stdin)
        argv = ["--service", box.address, "console", "box", "--attach", "--tail", str(len(last))]
        assert ws.main(argv) == 0
    out, err = capfdbinary.readouterr()
    assert out.startswith(last) and b"fake: boot" not in out
    assert out.index(b"box login: root\r\n") > len(last)
    assert err.endswith(b"ws: end of input: detached\n")


def test_console_attach_to_a_stopped_workspace_is_refused(
    box: Site,
    client: Client,
    capfd: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    client.stop_workspace("box")
    box.stubs.wait_state("box", WS.WORKSPACE_STATE_STOPPED)
    with pytest.raises(errors.FailedPrecondition, match="box is STOPPED"):
        list(client.attach_console("box", iter(())))
    capfd.readouterr()
    r, w = os.pipe()
    os.close(w)
    with os.fdopen(r, "rb") as stdin:
        monkeypatch.setattr("sys.stdin", stdin)
        assert ws.main(["--service", box.address, "console", "box", "--attach"]) == 1
    err = capfd.readouterr().err
    assert "box is STOPPED" in err and "attached" not in err  # one line: the refusal
    assert len(err.splitlines()) == 1


def test_the_console_ends_when_the_guest_stops(box: Site, client: Client) -> None:
    finished = threading.Event()

    def keystrokes() -> Iterator[bytes]:
        finished.wait(20)  # never detach: the guest's end must end the session
        yield from ()

    seen = b""
    stopped = False
    try:
        for data in client.attach_console("box", keystrokes()):
            seen += data
            if b"login: " in seen and not stopped:
                stopped = True
                client.stop_workspace("box", force=True)
    finally:
        finished.set()
    assert b"[console closed: the console ended" in seen


def test_the_read_only_console_log_keeps_working(box: Site, client: Client) -> None:
    list(client.attach_console("box", iter(())))
    wait_for(lambda: b"WORKSPACE-READY" in client.get_console("box"), what="the console log")


def test_grpc_status_of_exec_on_an_unknown_workspace(box: Site) -> None:
    from workspace.v1 import access_pb2, access_pb2_grpc

    stub = access_pb2_grpc.GuestsStub(box.stubs.channel)
    with pytest.raises(grpc.RpcError) as exc:
        stub.Exec(access_pb2.ExecRequest(id="nope", argv=["true"]), timeout=10)
    assert exc.value.code() == grpc.StatusCode.NOT_FOUND


def test_a_console_message_that_is_no_message_ends_the_session_invalid_argument(
    box: Site,
) -> None:
    """docs/api.md: bytes that are not a valid message of the method's type are
    INVALID_ARGUMENT, on a request stream message by message. A broken keystroke
    message once ended the console as a detach does: OK, as if nothing was wrong."""
    from workspace.v1 import access_pb2

    def requests() -> Iterator[bytes]:
        yield access_pb2.ConsoleInput(id="box").SerializeToString()
        yield b"\x0a\x05ab"  # a field of 5 bytes holding 2: truncated
        time.sleep(10)  # not a detach: the client is still there

    attach = box.stubs.channel.stream_stream("/workspace.v1.Guests/AttachConsole")
    with pytest.raises(grpc.RpcError) as err:
        for _ in attach(requests(), timeout=30):  # the timeout a bound, not a check
            pass
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT, err.value.details()
    assert (err.value.details() or "").startswith(
        "AttachConsole: the request is not a valid message of its type ("
    )


@pytest.mark.parametrize("first", [[], [b""]], ids=["no message", "an empty hello"])
def test_a_task_stream_without_a_hello_is_invalid_argument(site: Site, first: list[bytes]) -> None:
    """The Nodes.Tasks stream's first message is a hello naming the node (nodes.proto).
    A stream that ended before it, or began with one naming no node, once ended OK (or
    was taken for a node named ""), as if an agent had served and left."""
    tasks = site.stubs.node_channel.stream_stream("/workspace.node.v1.Nodes/Tasks")
    with pytest.raises(grpc.RpcError) as err:
        for _ in tasks(iter(first), timeout=30):  # the timeout a bound, not a check
            pass
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT, err.value.details()
    assert "first message must be a hello naming the node" in (err.value.details() or "")


def test_a_console_cut_by_the_service_stopping_is_unavailable(box: Site) -> None:
    """As a watch (docs/api.md): a console session the service's stop ends is an
    outage (UNAVAILABLE: attach again, here or on another replica), not the end of
    the session the guest or the user chose (it ended OK, and `ws console` said
    nothing)."""
    finished = threading.Event()

    def keystrokes() -> Iterator[bytes]:
        finished.wait(20)  # never detach
        yield from ()

    seen = b""
    try:
        with Client(box.address) as c, pytest.raises(errors.Unavailable) as err:
            for data in c.attach_console("box", keystrokes()):
                seen += data
                if b"login: " in seen and box.service is not None:
                    box.service.stop(2.0)  # as the daemon stops: streams get a moment
                    box.service = None
    finally:
        finished.set()
    assert err.value.code == "UNAVAILABLE"
    assert "the service is stopping" in err.value.message
