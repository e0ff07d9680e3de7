"""The daemons' listen addresses: one taken by a live process is refused (a unix socket
is never taken over from a running service or agent), one a killed process left is
reused, and every error names the config key it comes from."""

from __future__ import annotations

import errno
import os
import socket
import stat
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from agent import main as agent_main
from agent.agent import AGENT_ID_FILE
from agent.cache import BlobCache
from agent.peers import PeerServer
from workspace import config, metrics_http, rpc
from workspace.config import AgentConfig, ServiceConfig, TlsConfig
from workspace.errors import ConfigError
from workspace.service import main as service_main


@contextmanager
def running(cfg: ServiceConfig) -> Iterator[service_main.Service]:
    svc = service_main.Service(cfg)
    try:
        svc.start()
        yield svc
    finally:
        svc.stop(0)


def serving(address: str) -> bool:
    with rpc.channel(address) as ch:
        stub = health_pb2_grpc.HealthStub(ch)
        try:
            answer = stub.Check(health_pb2.HealthCheckRequest(), timeout=10)
        except grpc.RpcError:
            return False
        return answer.status == health_pb2.HealthCheckResponse.SERVING


def service_cfg(tmp: Path, data: str, listen: str, **kw: object) -> ServiceConfig:
    return ServiceConfig(listen=listen, data_dir=str(tmp / data), insecure=True, **kw)  # type: ignore[arg-type]


def test_a_second_service_on_the_unix_socket_of_a_running_one_is_refused(
    tmp_path: Path,
) -> None:
    listen = f"unix:{tmp_path}/service.sock"
    with running(service_cfg(tmp_path, "one", listen)):
        # Refused before its store is made (check_addresses).
        with pytest.raises(ConfigError, match=r"^listen: .*service\.sock is in use"):
            service_main.Service(service_cfg(tmp_path, "two", listen))
        assert not (tmp_path / "two" / "service.db").exists()
        # The first one still has its sockets and answers on them.
        assert (tmp_path / "service.sock").is_socket()
        assert (tmp_path / "nodes.sock").is_socket()
        assert serving(listen)


def test_the_socket_a_killed_service_left_is_reused(tmp_path: Path) -> None:
    path = tmp_path / "service.sock"
    left = socket.socket(socket.AF_UNIX)
    left.bind(str(path))  # bound, never listened on, closed: what a kill -9 leaves
    left.close()
    assert path.is_socket()
    listen = f"unix:{path}"
    with running(service_cfg(tmp_path, "d", listen)):
        assert serving(listen)


def test_a_unix_listen_path_that_is_not_a_socket_is_refused_and_kept(tmp_path: Path) -> None:
    precious = tmp_path / "service.toml"
    precious.write_text("listen = 'x'\n")
    with pytest.raises(ConfigError, match=r"^listen: .*service\.toml is not a socket"):
        service_main.Service(service_cfg(tmp_path, "d", f"unix:{precious}"))
    assert precious.read_text() == "listen = 'x'\n"


def test_a_unix_listen_path_too_long_for_a_socket_is_one_line(
    tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    """A data directory deep enough: gRPC's own "add_port.cc ... Path name should not have
    more than 107 characters" on stderr, then "cannot create the socket there", which
    does not say why. Said before the store is made, as any listen error."""
    deep = tmp_path / ("d" * (120 - len(str(tmp_path))))
    deep.mkdir()
    path = deep / "service.sock"
    cfg = service_cfg(tmp_path, "d", f"unix:{path}")
    conf = config.write(tmp_path / "s.toml", cfg)
    assert service_main.main(["--config", str(conf)]) == 1
    err = capfd.readouterr().err
    assert err.rstrip().endswith(
        f"cannot start: listen: the unix socket path {path} is {len(str(path))} bytes, over "
        "the 107 a socket's address holds: give it a shorter path (a shorter symlink to its "
        "directory will do)"
    ), err
    assert "add_port" not in err
    assert not (tmp_path / "d" / "service.db").exists()


def free_port_held() -> socket.socket:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    s.listen()
    return s


@pytest.mark.parametrize("key", ["listen", "node_listen", "metrics_listen"])
def test_a_tcp_address_in_use_is_one_line_naming_its_key(
    tmp_path: Path, key: str, capfd: pytest.CaptureFixture[str]
) -> None:
    """One line, in the words of every listen error, and before the store is made or
    migrated: not gRPC's own "add_port.cc ... Failed to add port" line to stderr first,
    nor metrics' "[Errno 98] Address already in use" after the migration."""
    held = free_port_held()
    try:
        port = held.getsockname()[1]
        addresses = {"listen": "127.0.0.1:0", "node_listen": "127.0.0.1:0"}
        addresses[key] = f"127.0.0.1:{port}"
        cfg = service_cfg(tmp_path, "d", **addresses)  # type: ignore[arg-type]
        path = config.write(tmp_path / "s.toml", cfg)
        assert service_main.main(["--config", str(path)]) == 1
    finally:
        held.close()
    err = capfd.readouterr().err
    said = [line for line in err.splitlines() if "in use" in line]
    assert len(said) == 1, err
    assert said[0].endswith(f"cannot start: {key}: cannot bind 127.0.0.1:{port}: in use")
    assert "Traceback" not in err
    assert not (tmp_path / "d" / "service.db").exists()


def test_a_port_taken_after_the_start_checks_is_still_one_line(
    capfd: pytest.CaptureFixture[str],
) -> None:
    """A port taken between the daemon's checks and its bind (a store migration takes a
    while) is found before gRPC is asked to bind it: no line of gRPC's own."""
    held = free_port_held()
    srv = rpc.server(2)
    try:
        address = f"127.0.0.1:{held.getsockname()[1]}"
        with pytest.raises(ConfigError, match=f"^node_listen: cannot bind {address}: in use$"):
            rpc.listen_on(srv, address, None, "node_listen")
    finally:
        srv.stop(0)
        held.close()
    assert "in use" not in capfd.readouterr().err


def test_an_agent_peer_socket_in_use_is_refused(tmp_path: Path) -> None:
    listen = f"unix:{tmp_path}/peers.sock"
    first = PeerServer(BlobCache(tmp_path / "c1"), "n1", listen, "", TlsConfig())
    first.start()
    try:
        second = PeerServer(BlobCache(tmp_path / "c2"), "n2", listen, "", TlsConfig())
        with pytest.raises(ConfigError, match=r"^peer_listen: .*peers\.sock is in use"):
            second.start()
        second.stop()
        assert (tmp_path / "peers.sock").is_socket()
    finally:
        first.stop()


@pytest.mark.parametrize("key", ["peer_listen", "metrics_listen"])
def test_an_agent_whose_port_is_taken_says_so_in_one_line(
    tmp_path: Path, key: str, capfd: pytest.CaptureFixture[str]
) -> None:
    """As the service: one line, before the node's cache and state are opened."""
    held = free_port_held()
    try:
        port = held.getsockname()[1]
        cfg = AgentConfig(
            node="n1",
            service=f"unix:{tmp_path}/nodes.sock",
            state_dir=str(tmp_path / "agent"),
            insecure=True,
            **{key: f"127.0.0.1:{port}"},  # type: ignore[arg-type]
        )
        path = config.write(tmp_path / "a.toml", cfg)
        assert agent_main.main(["--config", str(path)]) == 1
    finally:
        held.close()
    err = capfd.readouterr().err
    said = [line for line in err.splitlines() if "in use" in line]
    assert len(said) == 1, err
    assert said[0].endswith(f"cannot start: {key}: cannot bind 127.0.0.1:{port}: in use")
    assert "Traceback" not in err
    assert not (tmp_path / "agent" / "cache").exists()
    assert not (tmp_path / "agent" / AGENT_ID_FILE).exists()


@pytest.mark.parametrize("listen", ["x", "127.0.0.1", "host:port"])
def test_an_agent_peer_listen_that_is_no_address_says_so(tmp_path: Path, listen: str) -> None:
    server = PeerServer(BlobCache(tmp_path / "c"), "n1", listen, "", TlsConfig())
    with pytest.raises(ConfigError, match=f"^peer_listen: cannot bind {listen}: not host:port"):
        server.start()
    server.stop()


def test_an_agent_pointed_at_the_clients_address_says_to_use_node_listen(
    tmp_path: Path,
) -> None:
    """`service` must name the service's node_listen (7071), not its listen (7070): the
    README warns of it, and the agent's log says so, not only "Method not found"."""
    import os
    import subprocess
    import sys
    import time

    listen = f"unix:{tmp_path}/service.sock"
    with running(service_cfg(tmp_path, "d", listen)):
        cfg = config.write(
            tmp_path / "a.toml",
            AgentConfig(
                node="n1", service=listen, state_dir=str(tmp_path / "agent"), insecure=True
            ),
        )
        log = tmp_path / "a.log"
        root = Path(__file__).resolve().parents[2]
        with log.open("wb") as out:
            proc = subprocess.Popen(
                [sys.executable, "-m", "agent.main", "--config", str(cfg)],
                stdout=out,
                stderr=subprocess.STDOUT,
                env={**os.environ, "PYTHONPATH": str(root)},
            )
        try:
            end = time.monotonic() + 60
            while "retrying" not in log.read_text() and time.monotonic() < end:
                time.sleep(0.1)
        finally:
            proc.terminate()
            proc.wait(30)
    text = log.read_text()
    said = [line for line in text.splitlines() if "retrying" in line]
    assert said, text
    assert "not the service's Nodes API" in said[0] and "node_listen" in said[0], said[0]


def test_unix_sockets_are_their_owners_alone_whatever_the_umask(tmp_path: Path) -> None:
    """The service's sockets were made as the umask said: under umask 000 (or 002 and a
    shared group) anyone on the machine could connect to a local site, and to a service
    with `insecure = true` on a unix socket as the site admin, though docs/security.md
    says the local site's socket is its owner's alone. Now 0600 whatever the umask, for
    the service's listen and node_listen and an agent's peer_listen."""
    old = os.umask(0)
    try:
        cfg = service_cfg(tmp_path, "data", f"unix:{tmp_path}/service.sock")
        with running(cfg):
            for name in ("service.sock", "nodes.sock"):
                assert stat.S_IMODE((tmp_path / name).stat().st_mode) == 0o600, name
            assert serving(cfg.listen)  # its owner still gets in
        peer = PeerServer(
            BlobCache(tmp_path / "cache"), "n1", f"unix:{tmp_path}/peer.sock", "", TlsConfig()
        )
        peer.start()
        try:
            assert stat.S_IMODE((tmp_path / "peer.sock").stat().st_mode) == 0o600
        finally:
            peer.stop()
    finally:
        os.umask(old)


def test_a_unix_socket_is_never_open_to_others_while_it_is_made(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """gRPC binds and listens as the port is added: the socket was made as the umask
    said (0777 under umask 000) and chmod-ed 0600 only after, and a connection made in
    between was queued and served once the server started. Now it is 0600 as it is
    made; the umask is the process's own again after."""
    seen: list[int] = []
    bind = rpc.bind

    def watched(srv: grpc.Server, address: str, tls: TlsConfig | None = None) -> int:
        port = bind(srv, address, tls)
        seen.append(stat.S_IMODE(rpc.unix_path(address).stat().st_mode))
        return port

    monkeypatch.setattr(rpc, "bind", watched)
    old = os.umask(0)
    try:
        srv = rpc.server(2)
        rpc.listen_on(srv, f"unix:{tmp_path}/s.sock", None, "listen")
        assert os.umask(0) == 0  # put back
        srv.stop(0)
    finally:
        os.umask(old)
    assert seen == [0o600]


def test_a_host_without_ipv6_is_probed_as_grpc_binds_there(monkeypatch: pytest.MonkeyPatch) -> None:
    """On a host without IPv6 (no AF_INET6 sockets at all) `[::]:PORT` is gRPC's
    0.0.0.0:PORT: probed so, free or in use as that is; an IPv6 metrics address, which
    cannot be served there, is one ConfigError naming its key. Both used to escape as
    the OSError of the probe's own socket (a traceback)."""
    real = socket.socket

    def no_ipv6(family: int = socket.AF_INET, *args: object, **kw: object) -> socket.socket:
        if family == socket.AF_INET6:
            raise OSError(errno.EAFNOSUPPORT, os.strerror(errno.EAFNOSUPPORT))
        return real(family, *args, **kw)  # type: ignore[arg-type]

    held = free_port_held()
    free = free_port_held()
    free_port = free.getsockname()[1]
    free.close()
    monkeypatch.setattr(socket, "socket", no_ipv6)
    try:
        port = held.getsockname()[1]
        rpc.check_free(f"[::]:{free_port}", "listen")
        with pytest.raises(ConfigError, match=rf"^listen: cannot bind \[::\]:{port}: in use$"):
            rpc.check_free(f"[::]:{port}", "listen")
        with pytest.raises(ConfigError, match=r"^metrics_listen: cannot bind \[::1\]:9464: "):
            metrics_http.check_free("[::1]:9464")
    finally:
        held.close()
