"""What a daemon cannot start with is one line saying why (and exit 1), not a traceback."""

from __future__ import annotations

from pathlib import Path

import pytest

from agent import main as agent_main
from workspace import config
from workspace.config import AgentConfig


@pytest.mark.parametrize("key", ["state_dir", "cache_dir"])
def test_an_agent_directory_that_is_a_file_is_one_line(
    tmp_path: Path, key: str, capsys: pytest.CaptureFixture[str]
) -> None:
    a_file = tmp_path / "not-a-dir"
    a_file.write_text("")
    dirs = {"state_dir": str(tmp_path / "agent"), key: str(a_file)}
    cfg = AgentConfig(node="n1", service=f"unix:{tmp_path}/nodes.sock", insecure=True, **dirs)
    path = config.write(tmp_path / "a.toml", cfg)
    assert agent_main.main(["--config", str(path)]) == 1
    err = capsys.readouterr().err
    assert "Traceback" not in err, err
    said = [line for line in err.splitlines() if "cannot start" in line]
    assert said and str(a_file) in said[0], err


def test_a_service_that_cannot_start_leaves_the_callers_signal_handlers(tmp_path: Path) -> None:
    """main() returning 1 (here: its address taken) puts back SIGINT's handler: a test
    run, or any program calling it, still stops on Ctrl-C."""
    import signal
    import socket

    from workspace.config import ServiceConfig
    from workspace.service import main as service_main

    before = signal.getsignal(signal.SIGINT)
    held = socket.socket()
    held.bind(("127.0.0.1", 0))
    held.listen()
    try:
        port = held.getsockname()[1]
        cfg = ServiceConfig(listen=f"127.0.0.1:{port}", data_dir=str(tmp_path / "d"), insecure=True)
        path = config.write(tmp_path / "s.toml", cfg)
        assert service_main.main(["--config", str(path)]) == 1
    finally:
        held.close()
    assert signal.getsignal(signal.SIGINT) is before


def _service_says(tmp_path: Path, capsys: pytest.CaptureFixture[str], **keys: str) -> str:
    """main()'s exit and the one line it says for a service config of ``keys``."""
    from workspace.config import ServiceConfig
    from workspace.service import main as service_main

    cfg = ServiceConfig(insecure=True, **{"data_dir": str(tmp_path / "d"), **keys})
    path = config.write(tmp_path / "s.toml", cfg)
    assert service_main.main(["--config", str(path)]) == 1
    err = capsys.readouterr().err
    assert "Traceback" not in err, err
    said = [line for line in err.splitlines() if "cannot start" in line]
    assert len(said) == 1, err
    return said[0]


def test_a_service_socket_under_a_file_is_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """listen's socket where a path component is a file (or a directory it may not
    search): one line naming the key and the path, not an OSError's traceback."""
    (tmp_path / "a-file").write_text("")
    sock = tmp_path / "a-file" / "service.sock"
    said = _service_says(tmp_path, capsys, listen=f"unix:{sock}")
    assert f"listen: cannot bind unix:{sock}: Not a directory" in said


def test_a_service_data_dir_it_cannot_make_is_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "a-file").write_text("")
    data_dir = tmp_path / "a-file" / "d"
    said = _service_says(tmp_path, capsys, data_dir=str(data_dir), listen="127.0.0.1:0")
    assert f"data_dir {data_dir}: Not a directory" in said


def test_an_agent_peer_socket_under_a_file_is_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "a-file").write_text("")
    sock = tmp_path / "a-file" / "peers.sock"
    cfg = AgentConfig(
        node="n1",
        service=f"unix:{tmp_path}/nodes.sock",
        insecure=True,
        state_dir=str(tmp_path / "agent"),
        peer_listen=f"unix:{sock}",
    )
    path = config.write(tmp_path / "a.toml", cfg)
    assert agent_main.main(["--config", str(path)]) == 1
    err = capsys.readouterr().err
    assert "Traceback" not in err, err
    said = [line for line in err.splitlines() if "cannot start" in line]
    assert said and f"peer_listen: cannot bind unix:{sock}: Not a directory" in said[0], err


def test_a_service_without_tls_makes_no_store_before_refusing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """conf/service.toml as it is (README: "start from conf/service.toml"): no [tls], not
    insecure. The service made its data_dir and migrated a new store there, and only
    then said "cannot start: listen …: no TLS configured"."""
    from workspace.service import main as service_main

    data = tmp_path / "service"
    conf = tmp_path / "service.toml"
    conf.write_text(f'data_dir = "{data}"\nlisten = "unix:{tmp_path}/s.sock"\n')
    assert service_main.main(["--config", str(conf)]) == 1
    err = capsys.readouterr().err
    assert "cannot start: listen unix:" in err and "no TLS configured" in err, err
    assert not data.exists()
