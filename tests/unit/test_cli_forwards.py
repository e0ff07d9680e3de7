"""`ws ssh -L/-R` on a local site: the forwards' ends on the host, relayed through unix
sockets to an ssh that runs in the node's namespace (workspace/cli/forwards.py)."""

from __future__ import annotations

import shutil
import socket
import sys
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.unit.test_cli_guests import HOST_KEYS, FakeClient, box, run
from workspace import errors
from workspace.cli import forwards
from workspace.site import record as site_record

# An ssh that does, for each forward it is given, what the real one does with the
# guest at the other end, and then plays the user:
#   -L SOCK:DEST   listens on SOCK and answers each line with what DEST would see;
#                  then connects to the host's port (FORWARD_PORT) as a browser would;
#   -R PORT:SOCK   connects to SOCK as a connection to the guest's PORT would arrive.
FAKE_SSH = """#!{python}
import os, socket, sys, threading
args = sys.argv[1:]
specs = [(a, args[i + 1]) for i, a in enumerate(args) if a in ("-L", "-R")]
print("argv", " ".join(args), flush=True)
for flag, spec in specs:
    if flag == "-L":
        path, dest = spec.split(":", 1)
        srv = socket.socket(socket.AF_UNIX)
        srv.bind(path)
        srv.listen(1)
        def answer(srv=srv, dest=dest):
            conn, _ = srv.accept()
            line = conn.makefile().readline().strip()
            conn.sendall(f"{{dest}} got {{line}}\\n".encode())
            conn.close()
        threading.Thread(target=answer, daemon=True).start()
        c = socket.create_connection(("127.0.0.1", int(os.environ["FORWARD_PORT"])))
        c.sendall(b"hello from the host\\n")
        print("L:", c.makefile().readline().strip(), flush=True)
    else:
        port, path = spec.rsplit(":", 1)
        c = socket.socket(socket.AF_UNIX)
        c.connect(path)
        c.sendall(b"ping from the guest's port " + port.encode() + b"\\n")
        print("R:", c.makefile().readline().strip(), flush=True)
"""


@pytest.fixture
def local_site(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[Path]:
    """A local site whose node n1 has a namespace; `ip netns exec NS CMD` runs CMD here;
    ssh is FAKE_SSH; ws's private directories under a short /tmp path (socket paths
    are at most 107 bytes)."""
    site_dir = tmp_path / "site"
    site_dir.mkdir()
    rec = site_record.SiteRecord(
        dir=str(site_dir),
        address=FakeClient.address,
        driver="libvirt",
        agents=[site_record.AgentRecord("n1", netns="ws-site-n1")],
    )
    site_record.write_record(site_dir, rec)
    monkeypatch.setenv(site_record.SITE_ENV, str(site_dir))
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "ip").write_text(
        '#!/bin/sh\n[ "$1 $2" = "netns exec" ] || exit 99\nshift 3\nexec "$@"\n'
    )
    (bin_dir / "ssh").write_text(FAKE_SSH.format(python=sys.executable))
    for f in bin_dir.iterdir():
        f.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}:/usr/bin:/bin")
    short = Path(tempfile.mkdtemp(prefix="ws-fwd-test-", dir="/tmp"))
    monkeypatch.setattr(tempfile, "tempdir", str(short))
    try:
        yield short
    finally:
        shutil.rmtree(short, ignore_errors=True)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_a_local_port_reaches_the_guest_through_the_namespace(
    local_site: Path, capfd: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    port = free_port()
    monkeypatch.setenv("FORWARD_PORT", str(port))
    c = FakeClient([box(host_keys=HOST_KEYS)])
    rc, out, err = run(c, capfd, "ssh", "-N", "-L", f"{port}:localhost:8888", "box")  # type: ignore[arg-type]
    assert rc == 0, err
    assert "L: localhost:8888 got hello from the host" in out
    argv = next(line for line in out.splitlines() if line.startswith("argv")).split()
    sock = argv[argv.index("-L") + 1]
    assert sock.startswith(str(local_site)) and sock.endswith("/L0.sock:localhost:8888")
    assert f"ws: forwarding 127.0.0.1:{port} to localhost:8888 as the guest sees it" in err
    assert list(local_site.iterdir()) == []  # the sockets went with the known_hosts
    with pytest.raises(ConnectionRefusedError):  # and the host's port with ws
        socket.create_connection(("127.0.0.1", port), timeout=5).close()


def test_a_guest_port_reaches_a_server_on_the_host(
    local_site: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    server = socket.create_server(("127.0.0.1", 0))
    port = server.getsockname()[1]

    def serve() -> None:
        conn, _ = server.accept()
        line = conn.makefile().readline().strip()
        conn.sendall(f"the host got {line}\n".encode())
        conn.close()

    threading.Thread(target=serve, daemon=True).start()
    try:
        c = FakeClient([box(host_keys=HOST_KEYS)])
        rc, out, err = run(c, capfd, "ssh", "-N", "-R", f"9000:127.0.0.1:{port}", "box")  # type: ignore[arg-type]
    finally:
        server.close()
    assert rc == 0, err
    assert "R: the host got ping from the guest's port 9000" in out
    argv = next(line for line in out.splitlines() if line.startswith("argv")).split()
    assert argv[argv.index("-R") + 1].endswith("/R0.sock") and argv[
        argv.index("-R") + 1
    ].startswith("9000:")


def test_a_port_taken_on_the_host_is_an_error_before_ssh_runs(
    local_site: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    with socket.create_server(("127.0.0.1", 0)) as taken:
        port = taken.getsockname()[1]
        c = FakeClient([box(host_keys=HOST_KEYS)])
        rc, out, err = run(c, capfd, "ssh", "-N", "-L", f"127.0.0.1:{port}:localhost:80", "box")  # type: ignore[arg-type]
    assert rc == 1 and "argv" not in out
    assert f"cannot listen on 127.0.0.1:{port}: Address already in use" in err
    assert list(local_site.iterdir()) == []


def test_print_on_a_local_site_keeps_the_forwards_as_given(
    local_site: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    """--print runs nothing, so nothing could relay: the command is ssh's own, and its
    -L listens in the namespace (where the printed command runs)."""
    c = FakeClient([box(host_keys=HOST_KEYS)])
    rc, out, _ = run(c, capfd, "ssh", "-L", "8888:localhost:8888", "box", "--print")  # type: ignore[arg-type]
    assert rc == 0
    assert out.split()[:4] == ["ip", "netns", "exec", "ws-site-n1"]
    assert "8888:localhost:8888" in out.split()


def test_specs_that_name_a_socket_here_or_are_dynamic_pass_unchanged(tmp_path: Path) -> None:
    said: list[str] = []
    relay = forwards.Relay(tmp_path, say=said.append)
    try:
        given = [
            ("-L", "/run/here.sock:localhost:80"),
            ("-L", "/run/here.sock:/run/there.sock"),
            ("-R", "9000"),
            ("-R", "127.0.0.1:9000"),
            ("-R", "9000:/run/here.sock"),
            ("-D", "1080"),
        ]
        assert relay.bring_out(given) == given
        assert list(tmp_path.iterdir()) == []
        assert said == [  # the one a user would expect on the host, and is not
            "-D 1080 listens in the node's network namespace, not on this host "
            "(`ip netns exec NS ...` reaches it; -L can be relayed, -D not)"
        ]
    finally:
        relay.close()


def test_spec_fields_keep_bracketed_ipv6_addresses(tmp_path: Path) -> None:
    assert forwards.split_spec("[::1]:8080:[fd00::5]:80") == ["[::1]", "8080", "[fd00::5]", "80"]
    assert forwards.split_spec("8080:db:5432") == ["8080", "db", "5432"]
    lines: list[str] = []
    relay = forwards.Relay(tmp_path, say=lines.append)
    try:
        ((_flag, spec),) = relay.bring_out([("-L", "127.0.0.1:0:[fd00::5]:80")])
        assert spec == f"{tmp_path}/L0.sock:[fd00::5]:80"
        assert len(lines) == 1 and lines[0].startswith("forwarding 127.0.0.1:")
        assert not lines[0].startswith("forwarding 127.0.0.1:0 ")  # port 0: the one taken
    finally:
        relay.close()


def test_a_socket_path_over_the_limit_is_refused(tmp_path: Path) -> None:
    deep = tmp_path / ("d" * 100)
    relay = forwards.Relay(deep)
    with pytest.raises(errors.FailedPrecondition, match="over 107 bytes"):
        relay.bring_out([("-L", "8080:localhost:80")])
    relay.close()
