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
