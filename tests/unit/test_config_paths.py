"""A relative path in a daemon's config file is an error naming the key: the daemon
resolved it against its working directory (/ under the systemd units), not the file's."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from workspace.config import AgentConfig, ServiceConfig, load
from workspace.errors import ConfigError

RELATIVE = [
    (ServiceConfig, 'data_dir = "data"', "data_dir", "data"),
    (ServiceConfig, 'data_dir = "~/ws"', "data_dir", "~/ws"),  # not expanded: a "~" dir
    (ServiceConfig, 'database_url = "sqlite:///ws/service.db"', "database_url", "ws/service.db"),
    (ServiceConfig, 'listen = "unix:run/ws.sock"', "listen", "run/ws.sock"),
    (ServiceConfig, 'node_listen = "unix:nodes.sock"', "node_listen", "nodes.sock"),
    (ServiceConfig, '[tls]\nidentity_dir = "svc"', "tls.identity_dir", "svc"),
    (ServiceConfig, '[tls]\ncrl_file = "crl.pem"', "tls.crl_file", "crl.pem"),
    (ServiceConfig, '[context]\nvendor_data_file = "v.yaml"', "context.vendor_data_file", "v.yaml"),
    (
        ServiceConfig,
        '[context]\ncloud_config_schema = "s.json"',
        "context.cloud_config_schema",
        "s.json",
    ),
    (ServiceConfig, 'autoscale_commands_dir = "autoscale"', "autoscale_commands_dir", "autoscale"),
    # a command line: its program, the first word, is run from the service's directory
    (
        ServiceConfig,
        "squeue_command = \"'slurm/bin/squeue' -M c\"",
        "squeue_command",
        "slurm/bin/squeue",
    ),
    (AgentConfig, 'state_dir = "agent"', "state_dir", "agent"),
    (AgentConfig, 'cache_dir = "cache"', "cache_dir", "cache"),
    (AgentConfig, 'service = "svc1:7071,unix:n.sock"', "service", "n.sock"),
    (AgentConfig, 'peer_listen = "unix:peers.sock"', "peer_listen", "peers.sock"),
    (AgentConfig, '[tls]\nkey_file = "key.pem"', "tls.key_file", "key.pem"),
]


@pytest.mark.parametrize(("cls", "text", "key", "path"), RELATIVE)
def test_a_relative_path_in_a_config_file_is_refused_naming_its_key(
    tmp_path: Path, cls: type, text: str, key: str, path: str
) -> None:
    file = tmp_path / "c.toml"
    file.write_text(text + "\n")
    said = f"config file {file}: {key}: {path!r} is a relative path; give an absolute one"
    with pytest.raises(ConfigError, match=re.escape(said)):
        load(cls, file)


@pytest.mark.parametrize(
    ("cls", "text"),
    [
        (ServiceConfig, 'data_dir = "/srv/ws"\nlisten = "unix:///run/ws/s.sock"'),
        (ServiceConfig, 'database_url = "sqlite:////srv/ws/service.db"'),
        (ServiceConfig, 'database_url = "postgresql://ws@db/ws"\nlisten = "0.0.0.0:7070"'),
        (
            ServiceConfig,
            '[tls]\nidentity_dir = "~/ws/svc"\n[context]\ncloud_config_schema = "none"',
        ),
        (ServiceConfig, 'squeue_command = "squeue -M c"\nautoscale_commands_dir = "/etc/as"'),
        (ServiceConfig, 'squeue_command = "/usr/bin/squeue --local"'),
        (AgentConfig, 'state_dir = "/var/lib/ws"\nservice = "svc1:7071,svc2:7071"\ncache_dir = ""'),
    ],
)
def test_absolute_paths_addresses_and_urls_load(tmp_path: Path, cls: type, text: str) -> None:
    file = tmp_path / "c.toml"
    file.write_text(text + "\n")
    load(cls, file)


def test_a_path_given_on_the_command_line_is_the_callers(tmp_path: Path) -> None:
    """`workspace-service --config F --data-dir data`: relative to where it runs, as any
    argument; the file's own relative value is not looked at when overridden."""
    file = tmp_path / "c.toml"
    file.write_text('data_dir = "old"\n')
    assert load(ServiceConfig, file, data_dir="data").data_dir == "data"
    assert load(ServiceConfig, None, data_dir="data").data_dir == "data"


@pytest.mark.parametrize(
    ("value", "said"),
    [("'squeue -M c", 'squeue_command: "\'squeue -M c": No closing quotation'), ("  ", "must not")],
)
def test_a_squeue_command_that_is_no_command_line_is_refused(
    tmp_path: Path, value: str, said: str
) -> None:
    """Else every slurm-queue signal fails (an unbalanced quote), or runs "-h" (blank)."""
    file = tmp_path / "c.toml"
    file.write_text(f'squeue_command = "{value}"\n')
    with pytest.raises(ConfigError, match=re.escape(said)):
        load(ServiceConfig, file)
