"""TOML configuration into typed dataclasses (workspace/config.py)."""

from __future__ import annotations

import argparse
import dataclasses
import math
import re
import typing
from pathlib import Path

import pytest
import tomli_w

from workspace import rpc_status
from workspace.config import (
    SCHEDULER_POLICIES,
    AgentConfig,
    ContextConfig,
    DefaultsConfig,
    FakeDriverConfig,
    LibvirtConfig,
    LimitsConfig,
    NodeNetworkConfig,
    SchedulerConfig,
    ServiceConfig,
    TlsConfig,
    from_dict,
    load,
)
from workspace.errors import ConfigError
from workspace.scheduler import weighers
from workspace.store import engines

REPO = Path(__file__).resolve().parents[2]


def toml(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "conf.toml"
    path.write_text(text)
    return path


# -- defaults ---------------------------------------------------------------------------


def test_service_defaults_without_file() -> None:
    cfg = load(ServiceConfig)
    assert cfg == ServiceConfig()
    assert cfg.listen == "127.0.0.1:7070"
    assert cfg.scheduler == SchedulerConfig()
    assert cfg.limits == LimitsConfig()
    assert cfg.tls.enabled is False
    assert cfg.db_url == "sqlite:////var/lib/workspace/service/service.db"
    assert cfg.blob_dir == Path("/var/lib/workspace/service/blobs")


def test_empty_file_gives_defaults(tmp_path: Path) -> None:
    assert load(ServiceConfig, toml(tmp_path, "")) == ServiceConfig()
    assert load(AgentConfig, toml(tmp_path, ""), node="n1") == AgentConfig(node="n1")


def test_agent_defaults() -> None:
    cfg = load(AgentConfig, None, node="n1")
    assert cfg.driver == "fake"
    assert cfg.networks == [NodeNetworkConfig("default", "gateway", True)]
    assert cfg.cache_path == Path("/var/lib/workspace/agent/cache")
    assert cfg.fake == FakeDriverConfig()
    assert cfg.libvirt == LibvirtConfig()


def test_database_url_overrides_data_dir() -> None:
    cfg = load(ServiceConfig, None, data_dir="/srv/ws", database_url="postgresql://db/ws")
    assert cfg.db_url == "postgresql://db/ws"
    assert load(ServiceConfig, None, data_dir="/srv/ws").db_url == "sqlite:////srv/ws/service.db"


# -- values and nested tables -----------------------------------------------------------


def test_service_nested_tables(tmp_path: Path) -> None:
    path = toml(
        tmp_path,
        """
listen = "unix:/run/ws.sock"
node_grace_s = 90
[scheduler]
policy = "spread"
cpu_overcommit = 2      # an int where a float is expected is fine
reserved_memory_mib = 1024
[limits]
max_cpus = 8
[tls]
ca_file = "/etc/ws/ca.pem"
""",
    )
    cfg = load(ServiceConfig, path)
    assert cfg.listen == "unix:/run/ws.sock"
    assert cfg.node_grace_s == 90
    assert cfg.scheduler == SchedulerConfig(
        policy="spread", cpu_overcommit=2.0, reserved_memory_mib=1024
    )
    assert isinstance(cfg.scheduler.cpu_overcommit, float)
    assert cfg.limits.max_cpus == 8
    assert cfg.limits.max_memory_mib == LimitsConfig().max_memory_mib  # untouched default
    assert cfg.tls == TlsConfig(ca_file="/etc/ws/ca.pem")
    assert cfg.tls.enabled


def test_agent_nested_tables(tmp_path: Path) -> None:
    path = toml(
        tmp_path,
        """
node = "vmm07"
driver = "libvirt"
cpus = 32
cache_dir = "/cache"
[labels]
rack = "r12"
[fake]
fail_create = ["bad-*"]
boot_delay_s = 1
[libvirt]
uri = "test:///tmp/x.xml"
virt_type = "qemu"
[[networks]]
name = "default"
[[networks]]
name = "storage"
bridge_address = ""
dhcp = false
""",
    )
    cfg = load(AgentConfig, path)
    assert (cfg.node, cfg.driver, cfg.cpus) == ("vmm07", "libvirt", 32)
    assert cfg.cache_path == Path("/cache")
    assert cfg.labels == {"rack": "r12"}
    assert cfg.fake == FakeDriverConfig(fail_create=["bad-*"], boot_delay_s=1.0)
    assert cfg.libvirt == LibvirtConfig(uri="test:///tmp/x.xml", virt_type="qemu")
    assert cfg.networks == [
        NodeNetworkConfig("default", "gateway", True),
        NodeNetworkConfig("storage", "", False),
    ]


def test_overrides_win_over_file(tmp_path: Path) -> None:
    path = toml(tmp_path, 'data_dir = "/from/file"\nlisten = "0.0.0.0:1"\n')
    cfg = load(ServiceConfig, path, data_dir="/from/cli", listen=None)
    assert cfg.data_dir == "/from/cli"
    assert cfg.listen == "0.0.0.0:1"  # None means "not given"


def test_overrides_are_type_checked() -> None:
    with pytest.raises(ConfigError, match=r"max_workers: expected int"):
        load(ServiceConfig, None, max_workers="many")


def test_from_dict() -> None:
    cfg = from_dict(ServiceConfig, {"scheduler": {"policy": "first"}})
    assert cfg.scheduler.policy == "first"


# -- errors -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("cls", "text", "pattern"),
    [
        (ServiceConfig, "listne = 'x'\n", r"unknown key\(s\) listne$"),
        (ServiceConfig, "[scheduler]\npolicyy = 'x'\n", r"unknown key\(s\) scheduler\.policyy$"),
        (ServiceConfig, "[limits]\nb = 1\na = 2\n", r"unknown key\(s\) limits\.a, limits\.b$"),
        (ServiceConfig, "[database]\nurl = 'x'\n", r"unknown key\(s\) database"),
        (AgentConfig, "[fake]\nfail = []\n", r"unknown key\(s\) fake\.fail$"),
        (AgentConfig, "[libvirt]\nurl = 'x'\n", r"unknown key\(s\) libvirt\.url$"),
        (
            AgentConfig,
            "[[networks]]\nname = 'a'\n[[networks]]\nname = 'b'\ndhcpd = true\n",
            r"unknown key\(s\) networks\[1\]\.dhcpd$",
        ),
    ],
)
def test_unknown_keys_named_with_their_path(
    tmp_path: Path, cls: type, text: str, pattern: str
) -> None:
    with pytest.raises(ConfigError, match=pattern):
        load(cls, toml(tmp_path, text))


def test_top_level_unknown_key_message_reads_well(tmp_path: Path) -> None:
    path = toml(tmp_path, "listne = 'x'\n")
    with pytest.raises(ConfigError) as exc:
        load(ServiceConfig, path)
    assert exc.value.message == f"config file {path}: unknown key(s) listne"


@pytest.mark.parametrize(
    ("cls", "text", "pattern"),
    [
        (ServiceConfig, "max_workers = '256'\n", r": max_workers: expected int, got '256'$"),
        (ServiceConfig, "max_workers = true\n", r": max_workers: expected int, got True$"),
        (ServiceConfig, "max_workers = 2.5\n", r"max_workers: expected int"),
        (ServiceConfig, "listen = 7070\n", r": listen: expected str, got 7070$"),
        (ServiceConfig, "[scheduler]\ncpu_overcommit = 'x'\n", r": scheduler\.cpu_overcommit: "),
        (ServiceConfig, "[scheduler]\ncpu_overcommit = true\n", r"scheduler\.cpu_overcommit"),
        (ServiceConfig, "scheduler = 'pack'\n", r": scheduler: expected a table, got str$"),
        (AgentConfig, "[fake]\npersist = 'yes'\n", r": fake\.persist: expected bool"),
        (AgentConfig, "[fake]\nfail_create = 'bad-*'\n", r": fake\.fail_create: expected a list"),
        (AgentConfig, "[fake]\nfail_create = [1]\n", r": fake\.fail_create\[0\]: expected str"),
        (AgentConfig, "labels = 'x'\n", r": labels: expected a table$"),
        (AgentConfig, "networks = ['default']\n", r": networks\[0\]: expected a table"),
        (AgentConfig, "[networks]\nname = 'x'\n", r": networks: expected a list$"),
    ],
)
def test_wrong_types_named_with_their_path(
    tmp_path: Path, cls: type, text: str, pattern: str
) -> None:
    with pytest.raises(ConfigError, match=pattern):
        load(cls, toml(tmp_path, text))


def test_missing_file(tmp_path: Path) -> None:
    missing = tmp_path / "nope.toml"
    with pytest.raises(ConfigError, match=rf"config file {missing} not found"):
        load(ServiceConfig, missing)


def test_invalid_toml(tmp_path: Path) -> None:
    path = toml(tmp_path, "listen = \n")
    with pytest.raises(ConfigError, match=rf"config file {path}: "):
        load(ServiceConfig, path)


def test_config_error_is_expected_and_maps_to_invalid_argument() -> None:
    import grpc

    assert ConfigError.expected
    assert rpc_status.status_of(ConfigError("x")) == grpc.StatusCode.INVALID_ARGUMENT


# -- shipped files ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "cls"), [("service.toml", ServiceConfig), ("agent.toml", AgentConfig)]
)
def test_shipped_config_loads_and_documents_the_defaults(name: str, cls: type) -> None:
    path = REPO / "conf" / name
    if not path.exists():
        pytest.skip(f"conf/{name} is not in the repo")
    extra = {"node": "n1"} if cls is AgentConfig else {}
    cfg = load(cls, path, **extra)
    # The file says "the values shown are the defaults": they must be.
    assert cfg == cls(**extra)


def test_the_agents_example_addresses_are_not_the_services_ports() -> None:
    """conf/agent.toml offered "0.0.0.0:7071" for peer_listen, the port of the service's
    Nodes API by default (conf/service.toml): copied onto a node that is also the
    service's host, the agent could not start ("peer_listen: cannot bind")."""
    service = ServiceConfig()
    taken = {int(service.listen.rpartition(":")[2]), int(service.node_address.rpartition(":")[2])}
    lines = (REPO / "conf" / "agent.toml").read_text().splitlines()
    # The examples of the agent's own addresses (peer_listen, metrics_listen): comments;
    # `service = "127.0.0.1:7071"` names the service's port, as it should.
    comments = "\n".join(line for line in lines if line.startswith("#"))
    offered = [int(port) for port in re.findall(r'"[\w.]+:(\d+)"', comments)]
    assert 7072 in offered and not taken & set(offered), (taken, offered)


def _command_of(parser: argparse.ArgumentParser, words: list[str]) -> list[str]:
    """The subcommands ``words`` name in ``parser`` (up to the first option or argument;
    ``create/set``: both); a word where a subcommand is expected that is none raises
    KeyError."""
    found: list[str] = []
    for word in words:
        subs = [a.choices for a in parser._actions if isinstance(a.choices, dict)]
        if not subs or word.startswith("-"):
            break
        parser, *_ = (subs[0][w] for w in word.split("/"))  # each must be there
        found.append(word)
    return found


def test_the_commands_the_shipped_configs_name_exist() -> None:
    """conf/service.toml said `ws-admin trust sign` for the command that signs images
    (`ws image sign`): an admin looking for it found none."""
    from workspace.cli import admin, ws

    parsers = {
        "ws": ws.build_parser(ws.Commands(lambda _s: None)),  # type: ignore[arg-type]
        "ws-admin": admin.build_parser(admin.Commands(lambda _s: None)),  # type: ignore[arg-type]
    }
    named = [
        (prog, rest.split())
        for conf in sorted((REPO / "conf").glob("*.toml"))
        for prog, rest in re.findall(r"`(ws-admin|ws) ([^`]+)`", conf.read_text())
    ]
    assert ("ws-admin", ["pki", "issue"]) in [(p, w[:2]) for p, w in named]
    for prog, words in named:
        assert _command_of(parsers[prog], words), (prog, words)


def test_max_name_len_beyond_a_hostname_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "service.toml"
    path.write_text("[limits]\nmax_name_len = 64\n")
    with pytest.raises(ConfigError, match="max_name_len: 64 is not between 1 and 63"):
        load(ServiceConfig, path)


@pytest.mark.parametrize(
    ("cls", "values", "named"),
    [
        (ServiceConfig, {"log_level": "LOUD"}, "log_level: 'LOUD' is not one of DEBUG"),
        (AgentConfig, {"log_level": "chatty"}, "log_level: 'chatty' is not one of"),
        (ServiceConfig, {"database_url": "mysql://x"}, "database_url: a mysql: URL"),
        # postgres:// is taken as postgresql://, but SQLAlchemy has no dialect "postgres":
        # with a driver it failed at start ("Can't load plugin: sqlalchemy.dialects:...")
        (ServiceConfig, {"database_url": "postgres+psycopg://h/db"}, "a postgres+psycopg: URL"),
        (ServiceConfig, {"scheduler": {"policy": "random"}}, "scheduler.policy: 'random'"),
        (ServiceConfig, {"scheduler": {"cpu_overcommit": 0}}, "scheduler.cpu_overcommit"),
        (ServiceConfig, {"scheduler": {"reserved_cpus": -1}}, "scheduler.reserved_cpus"),
        (ServiceConfig, {"heartbeat_interval_s": 0}, "heartbeat_interval_s: must be at least 1"),
        (ServiceConfig, {"node_grace_s": 0}, "node_grace_s: must be at least 1"),
        (ServiceConfig, {"default_stop_timeout_s": -1}, "default_stop_timeout_s: must be 0 or"),
        (ServiceConfig, {"console_keep_bytes": -5}, "console_keep_bytes: must be 0 or more"),
        (AgentConfig, {"driver": "xen"}, "driver: unknown driver 'xen' (choose fake or libvirt)"),
        (AgentConfig, {"libvirt": {"virt_type": "xen"}}, "libvirt.virt_type: 'xen' is neither"),
        (AgentConfig, {"max_parallel_ops": 0}, "max_parallel_ops: must be at least 1"),
        (AgentConfig, {"exec_parallel": 0}, "exec_parallel: must be at least 1"),
        (AgentConfig, {"resync_interval_s": 0}, "resync_interval_s: must be more than 0"),
        (AgentConfig, {"cache_budget_bytes": -1}, "cache_budget_bytes: must be 0 or more"),
        (AgentConfig, {"cpus": -4}, "cpus: must be 0 or more, got -4"),
        (AgentConfig, {"conntrack_per_nic": -1}, "conntrack_per_nic: must be 0 or more, got -1"),
        (
            AgentConfig,
            {"conntrack_per_nic": 2**32},
            "conntrack_per_nic: must be at most 4294967295 (0 = no bound), got 4294967296",
        ),
        (AgentConfig, {"conntrack_per_nic": "lots"}, "conntrack_per_nic: expected int, got 'lots'"),
        (AgentConfig, {"node": ""}, "node: must not be empty"),
        (
            AgentConfig,
            {"networks": [{"name": "lab", "bridge_address": "10.0.0.300/24"}]},
            "networks.lab.bridge_address: '10.0.0.300/24' is not a CIDR",
        ),
        (
            AgentConfig,
            {"networks": [{"name": "lab"}, {"name": "lab", "uplink": "eth1"}]},
            "networks: 'lab' is named twice",
        ),
        (AgentConfig, {"networks": [{"name": ""}]}, "networks: an entry without a name"),
        (
            ServiceConfig,
            {"heartbeat_interval_s": 60},
            "node_grace_s: 40 is not more than heartbeat_interval_s (60)",
        ),
        (
            ServiceConfig,
            {"heartbeat_interval_s": 30, "node_grace_s": 30},
            "node_grace_s: 30 is not more than heartbeat_interval_s (30)",
        ),
        (AgentConfig, {"node": "  "}, "node: must not be empty"),
    ],
)
def test_values_a_daemon_cannot_run_with_are_refused_at_load(
    tmp_path: Path, cls: type, values: dict[str, object], named: str
) -> None:
    """Each once started: a traceback later (log_level, database_url), or every create
    failing with an internal error (an unknown scheduler policy)."""
    path = tmp_path / "c.toml"
    path.write_text(tomli_w.dumps(values))
    with pytest.raises(ConfigError, match=re.escape(named)):
        load(cls, path)


def test_the_scheduler_policies_a_config_names_are_the_schedulers() -> None:
    assert set(SCHEDULER_POLICIES) == set(weighers.POLICIES)
    assert load(ServiceConfig, None, scheduler={"policy": "spread"}).scheduler.policy == "spread"
    assert load(ServiceConfig, None, log_level="debug").log_level == "debug"
    assert load(ServiceConfig, None, database_url="postgresql+psycopg://h/db").database_url


def test_a_postgres_url_is_taken_as_the_store_takes_it(tmp_path: Path) -> None:
    """libpq's other scheme, postgres://, which the store turns into psycopg's dialect as
    it does postgresql:// (docs/design/store.md), was refused at load: "database_url: a
    postgres: URL; the store runs on sqlite:///PATH or postgresql://..."."""
    path = tmp_path / "c.toml"
    path.write_text('database_url = "postgres://ws@db/ws"\n')
    url = load(ServiceConfig, path).db_url
    assert engines.normalize_url(url) == "postgresql+psycopg://ws@db/ws"


@pytest.mark.parametrize(
    "cls",
    [
        ServiceConfig,
        AgentConfig,
        SchedulerConfig,
        LimitsConfig,
        TlsConfig,
        ContextConfig,
        DefaultsConfig,
        FakeDriverConfig,
        LibvirtConfig,
        NodeNetworkConfig,
    ],
)
def test_the_readme_names_every_config_key(cls: type) -> None:
    """An admin reads the README's "Configuration keys" for what a file may set: every
    key the service and the agent take is named there (a table as ``[name]`` or
    ``[[name]]``)."""
    readme = (REPO / "README.md").read_text()
    section = readme[readme.index("## Configuration keys") : readme.index("## Layout")]
    missing = [
        f.name
        for f in dataclasses.fields(cls)
        if not any(form.format(f.name) in section for form in ("`{}`", "`[{}]`", "`[[{}]]`"))
    ]
    assert not missing, f"README's Configuration keys lacks {missing} of {cls.__name__}"


def float_keys(cls: type, where: str = "") -> list[tuple[str, list[str]]]:
    """Every float key of ``cls`` and its tables: (dotted name, path of keys)."""
    out: list[tuple[str, list[str]]] = []
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        tp = hints[f.name]
        if dataclasses.is_dataclass(tp):
            out += [(f"{f.name}.{n}", [f.name, *p]) for n, p in float_keys(tp)]  # type: ignore[arg-type]
        elif tp is float:
            out.append((f.name, [f.name]))
    return out


@pytest.mark.parametrize("cls", [ServiceConfig, AgentConfig])
@pytest.mark.parametrize("value", [math.inf, -math.inf, math.nan])
def test_a_float_key_that_is_not_a_finite_number_is_refused(
    tmp_path: Path, cls: type, value: float
) -> None:
    """TOML has inf and nan: an interval of inf once killed the service's lease thread
    with a traceback (OverflowError) while the service went on without it."""
    keys = float_keys(cls)
    assert keys
    for name, path in keys:
        data: dict[str, object] = {}
        table = data
        for key in path[:-1]:
            table = table.setdefault(key, {})  # type: ignore[assignment]
        table[path[-1]] = value
        file = tmp_path / "c.toml"
        file.write_text(tomli_w.dumps(data))
        with pytest.raises(ConfigError, match=re.escape(f"{name}: expected a finite number")):
            load(cls, file)


def seconds_keys(cls: type) -> list[tuple[str, list[str], type]]:
    """Every ``*_s`` key of ``cls`` and its nested tables: (dotted name, path, type)."""
    out: list[tuple[str, list[str], type]] = []
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        tp = hints[f.name]
        if dataclasses.is_dataclass(tp):
            out += [(f"{f.name}.{n}", [f.name, *p], t) for n, p, t in seconds_keys(tp)]  # type: ignore[arg-type]
        elif f.name.endswith("_s"):
            out.append((f.name, [f.name], tp))
    return out


@pytest.mark.parametrize("cls", [ServiceConfig, AgentConfig])
def test_an_interval_of_centuries_is_refused_naming_its_key(tmp_path: Path, cls: type) -> None:
    """lease_check_interval_s = 1e300 passed the checks and the lease thread died at
    its first wait (OverflowError, a traceback) while the service went on without it;
    every interval, timeout and grace is at most 10 years (max_lease_s has its own)."""
    keys = [k for k in seconds_keys(cls) if k[0] != "limits.max_lease_s"]
    assert len(keys) > 3
    for name, path, tp in keys:
        data: dict[str, object] = {}
        table = data
        for key in path[:-1]:
            table = table.setdefault(key, {})  # type: ignore[assignment]
        table[path[-1]] = 1e300 if tp is float else 10**18
        file = tmp_path / "c.toml"
        file.write_text(tomli_w.dumps(data))
        with pytest.raises(ConfigError, match=re.escape(f"{name}: must be at most 315360000")):
            load(cls, file)
        table[path[-1]] = 315360000
        file.write_text(tomli_w.dumps(data))
        if name not in ("heartbeat_interval_s", "limits.exec_default_timeout_s"):
            load(cls, file)  # 10 years is still an interval


def test_labels_read_as_they_are_written(tmp_path: Path) -> None:
    """`--require gpu=true` must match `gpu = true` (not Python's "True"); a label that
    is a table or a list is no label."""
    path = tmp_path / "a.toml"
    path.write_text('[labels]\ngpu = true\nssd = false\ncores = 8\nrack = "r1"\n')
    labels = load(AgentConfig, path).labels
    assert labels == {"gpu": "true", "ssd": "false", "cores": "8", "rack": "r1"}
    for bad in ("zone = [1, 2]", "zone = { a = 1 }"):
        path.write_text(f"[labels]\n{bad}\n")
        with pytest.raises(ConfigError, match=re.escape("labels.zone: expected a string")):
            load(AgentConfig, path)


@pytest.mark.parametrize("kind", ["directory", "not utf-8"])
def test_a_config_file_that_cannot_be_read_is_one_clear_error(tmp_path: Path, kind: str) -> None:
    """Not a traceback: `--config /etc/workspace` (the directory), or a file saved in
    another encoding."""
    if kind == "directory":
        path = tmp_path
    else:
        path = tmp_path / "c.toml"
        path.write_bytes(b'# caf\xe9\nlog_level = "INFO"\n')  # Latin-1
    with pytest.raises(ConfigError, match=f"^config file {re.escape(str(path))}: "):
        load(ServiceConfig, path)


@pytest.mark.parametrize(
    ("text", "pattern"),
    [
        (
            "[labels]\n" + "".join(f"k{i} = 'v'\n" for i in range(65)),
            r"labels or networks: at most 64 labels, got 65$",
        ),
        ("[labels]\n" + "k = '" + "v" * 256 + "'\n", r"its value at most 255 \(label 'k'\)$"),
        ("[[networks]]\nname = '" + "n" * 65 + "'\n", r"a network's name is at most 64"),
        # A size the service refuses (cpus), or one the Register message's int32 field
        # cannot carry (disk_mbps in bits): the agent started and tried for good, with a
        # warning or a ValueError's traceback at every try.
        ("cpus = 100000\n", r"cpus: must be at most 65536, got 100000 \(more than a node"),
        ("memory_mib = 2147483648\n", r"memory_mib: must be at most 2147483647, got"),
        ("disk_gib = 2147483648\n", r"disk_gib: must be at most 2147483647, got"),
        ("disk_mbps = 3000000000\n", r"disk_mbps: must be at most 2147483647, got 3000000000"),
        ("net_mbps = 3000000000\n", r"net_mbps: must be at most 2147483647, got 3000000000"),
    ],
)
def test_an_agent_config_the_service_would_refuse_is_refused_at_start(
    tmp_path: Path, text: str, pattern: str
) -> None:
    """Labels, networks or sizes over the bounds a Register is held to (the service
    refuses every Register of such a node, and the agent retried for good): refused when
    the agent reads its config, naming the bound."""
    with pytest.raises(ConfigError, match=pattern):
        load(AgentConfig, toml(tmp_path, text), node="n1")


def test_unknown_keys_of_every_table_are_named_at_once(tmp_path: Path) -> None:
    """A file with typos in several tables named only the top level's ("unknown key(s)
    foo"); the next start named [scheduler]'s, the one after that [[networks]]'s: one
    restart per table. Every table's are named together."""
    path = toml(tmp_path, "listne = 'x'\n[scheduler]\npolcy = 'spread'\n[limits]\nmax_cpu = 4\n")
    with pytest.raises(ConfigError) as exc:
        load(ServiceConfig, path)
    assert exc.value.message == (
        f"config file {path}: unknown key(s) limits.max_cpu, listne, scheduler.polcy"
    )
    path = toml(
        tmp_path,
        "nod = 'n1'\n[fake]\npersits = true\n[[networks]]\nname = 'a'\nuplnk = 'eth1'\n",
    )
    with pytest.raises(ConfigError) as exc:
        load(AgentConfig, path)
    assert exc.value.message == (
        f"config file {path}: unknown key(s) fake.persits, networks[0].uplnk, nod"
    )
