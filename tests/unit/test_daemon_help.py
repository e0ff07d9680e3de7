"""What `workspace-agent --help` says of --service is what `service` in agent.toml takes."""

from __future__ import annotations

import pytest

from agent import main as agent_main


def test_agent_help_says_service_is_the_node_listen_and_takes_several_replicas(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """A site with replicas (README, "Running several service replicas") gives the agent
    every replica's node_listen, comma-separated; --service overrides that key."""
    with pytest.raises(SystemExit):
        agent_main.main(["--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "node_listen" in text
    assert "several replicas: comma" in text
