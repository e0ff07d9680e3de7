"""Config keys of the limits on one caller: the Nodes API address, stream caps, limits."""

from __future__ import annotations

from pathlib import Path

import pytest

from workspace.config import AgentConfig, ServiceConfig, load, node_address_for
from workspace.errors import ConfigError


@pytest.mark.parametrize(
    ("listen", "nodes"),
    [
        ("unix:/run/ws/service.sock", "unix:/run/ws/nodes.sock"),
        ("unix:service.sock", "unix:nodes.sock"),
        ("127.0.0.1:7070", "127.0.0.1:7071"),
        ("[::1]:7070", "[::1]:7071"),
        ("0.0.0.0:9000", "0.0.0.0:9001"),
        ("localhost:0", "localhost:0"),
    ],
)
def test_the_nodes_api_listens_beside_the_clients_by_default(listen: str, nodes: str) -> None:
    assert node_address_for(listen) == nodes
    assert ServiceConfig(listen=listen).node_address == nodes
    assert ServiceConfig(listen=listen, node_listen="unix:/x.sock").node_address == "unix:/x.sock"


def test_agents_dial_the_nodes_api_by_default() -> None:
    assert AgentConfig(node="n1").service == ServiceConfig().node_address == "127.0.0.1:7071"


@pytest.mark.parametrize(
    ("text", "words"),
    [
        ('listen = "nowhere"', "neither host:port nor unix:/path"),
        ('listen = "unix:/x/a.sock"\nnode_listen = "unix:/x/a.sock"', "an address of its own"),
        ("max_streams_per_caller = 0", "max_streams_per_caller: must be at least 1"),
        ("max_concurrent_rpcs = 0", "max_concurrent_rpcs: must be at least 1"),
        ("node_max_workers = 0", "node_max_workers: must be at least 1"),
        ("blob_grace_s = -1", "blob_grace_s: must be 0 or more"),
        ("[limits]\nmax_cmdline_bytes = -1", "limits.max_cmdline_bytes: must be 0 or more"),
        ("[limits]\nmax_node_orders_bytes = 0", "max_node_orders_bytes: 0 is not between"),
    ],
)
def test_bad_values_are_refused_with_the_key(tmp_path: Path, text: str, words: str) -> None:
    path = tmp_path / "service.toml"
    path.write_text(text + "\n")
    with pytest.raises(ConfigError, match=words):
        load(ServiceConfig, path)


@pytest.mark.parametrize(
    ("text", "words"),
    [
        ("max_cpus = 0", "limits.max_cpus: must be at least 1, got 0"),
        ("min_memory_mib = 0", "limits.min_memory_mib: must be at least 1"),
        ("max_memory_mib = 8", r"limits.max_memory_mib: 8 is below limits.min_memory_mib \(16\)"),
        ("max_nics = 0", "limits.max_nics: must be at least 1"),
        ("max_blob_bytes = 0", "limits.max_blob_bytes: must be at least 1"),
        ("max_virtual_bytes = 0", "limits.max_virtual_bytes: must be at least 1"),
        ("max_user_data_bytes = -1", "limits.max_user_data_bytes: must be 0 or more"),
        ("repo_quota_bytes_per_user = -1", "limits.repo_quota_bytes_per_user: must be 0 or"),
        ("max_extra_partitions = -1", "limits.max_extra_partitions: must be 0 or more"),
        ("max_grow_bytes = -1", "limits.max_grow_bytes: must be 0 or more"),
    ],
)
def test_limits_no_workspace_could_pass_are_refused_with_the_key(
    tmp_path: Path, text: str, words: str
) -> None:
    # They used to start a service that refused every create ("cpus must be between 1
    # and 0") or took a negative quota.
    path = tmp_path / "service.toml"
    path.write_text(f"[limits]\n{text}\n")
    with pytest.raises(ConfigError, match=words):
        load(ServiceConfig, path)


def test_limits_of_none_stay_allowed(tmp_path: Path) -> None:
    path = tmp_path / "service.toml"
    path.write_text("[limits]\nmax_user_data_bytes = 0\nrepo_quota_bytes_per_user = 0\n")
    assert load(ServiceConfig, path).limits.max_user_data_bytes == 0


@pytest.mark.parametrize("service", ["", " ", ","])
def test_an_agent_without_a_service_address_is_refused(tmp_path: Path, service: str) -> None:
    # It used to start and retry "Failed to create channel to ''" forever.
    path = tmp_path / "agent.toml"
    path.write_text(f'node = "n1"\nservice = "{service}"\n')
    with pytest.raises(ConfigError, match="service: must not be empty"):
        load(AgentConfig, path)
