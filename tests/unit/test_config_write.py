"""workspace.config.write/to_toml: a config dataclass written with tomli-w loads back
equal with the project's own loader (workspace.config.load)."""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest

from workspace import config
from workspace.config import (
    AgentConfig,
    FakeDriverConfig,
    LibvirtConfig,
    LimitsConfig,
    NodeNetworkConfig,
    SchedulerConfig,
    ServiceConfig,
    TlsConfig,
)

CONFIGS = [
    ServiceConfig(),
    ServiceConfig(
        listen='unix:/tmp/a "quoted" dir/service.sock',
        data_dir="/srv/ws\\data",
        heartbeat_interval_s=1,
        tls=TlsConfig(ca_file="/ca.pem", cert_file="/c.pem", key_file="/k.pem"),
        scheduler=SchedulerConfig(policy="spread", cpu_overcommit=2.5),
        limits=LimitsConfig(max_nics=2, max_grow_bytes=3 * 1024**4),
    ),
    AgentConfig(node="n1"),
    AgentConfig(
        node="n2",
        service="unix:/s.sock",
        driver="libvirt",
        labels={"gpu": "1", "rack": "a b"},
        networks=[NodeNetworkConfig(), NodeNetworkConfig(name="x", bridge_address="", dhcp=False)],
        resync_interval_s=0.5,
        fake=FakeDriverConfig(persist=False, boot_delay_s=1, fail_create=["bad-*"]),
        libvirt=LibvirtConfig(uri="qemu+unix:///system?socket=/x", virt_type="qemu"),
    ),
    AgentConfig(node="n3", networks=[]),
]


@pytest.mark.parametrize("cfg", CONFIGS)
@pytest.mark.parametrize("skip_defaults", [True, False])
def test_written_config_loads_back_equal(
    tmp_path: Path, cfg: ServiceConfig | AgentConfig, skip_defaults: bool
) -> None:
    path = config.write(
        tmp_path / "c.toml", cfg, "a header\nof two lines", skip_defaults=skip_defaults
    )
    assert config.load(type(cfg), path) == cfg
    text = path.read_text()
    assert text.startswith("# a header\n# of two lines\n")
    assert not list(tmp_path.glob(".*.tmp"))


def test_only_what_differs_from_the_defaults_is_written() -> None:
    assert config.to_toml(ServiceConfig()) == ""
    data = tomllib.loads(
        config.to_toml(ServiceConfig(listen="unix:/x", limits=LimitsConfig(max_nics=1)))
    )
    assert data == {"listen": "unix:/x", "limits": {"max_nics": 1}}
    full = tomllib.loads(config.to_toml(ServiceConfig(), skip_defaults=False))
    assert full["scheduler"]["policy"] == "pack" and full["tls"] == {
        "ca_file": "",
        "cert_file": "",
        "key_file": "",
        "identity_dir": "",
        "crl_file": "",
    }
