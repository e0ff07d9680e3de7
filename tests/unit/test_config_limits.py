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
