"""Typed configuration: TOML files (stdlib tomllib) loaded into frozen dataclasses.

Unknown keys are errors; every key has a documented default (see conf/*.toml).
There is no global config object: each daemon loads its own and passes it down.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import os
import shlex
import socket
import tomllib
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import tomli_w

from workspace import config_paths, config_tables
from workspace.domain.declared import declared_problem, size_problem
from workspace.domain.netpolicy import Connectivity, Limits
from workspace.errors import ConfigError, InvalidArgument
from workspace.files import write_private

T = TypeVar("T")
# 3/4 of workspace.rpc.MAX_MESSAGE_BYTES (16 MiB): the most one node's orders may take.
MAX_NODE_ORDERS_BYTES = 12 * 1024 * 1024
# What [scheduler] policy may name (workspace/scheduler/weighers.py POLICIES).
SCHEDULER_POLICIES = ("pack", "spread", "first")
# The longest site maximum lease (limits.max_lease_s): a lease's end stays a date.
MAX_LEASE_S = 1000 * 365 * 86400
# The longest interval, timeout or grace any other ``*_s`` key may give: 10 years. Beyond
# it a thread's wait overflows (1e300 in a TOML file: the loop dies) or an int32 field does.
MAX_SECONDS = 10 * 365 * 86400


@dataclass(frozen=True)
class TlsConfig:
    """Mutual TLS material; all empty means plaintext (only with ``insecure = true``).

    Either an identity directory (``ws-admin pki issue … --out DIR``: ca.pem, cert.pem,
    key.pem) or the three files. ``crl_file`` (the site CA's crl.pem) is re-read whenever
    it changes: a revoked certificate is refused without a restart.
    """

    ca_file: str = ""
    cert_file: str = ""
    key_file: str = ""
    identity_dir: str = ""
    crl_file: str = ""

    @property
    def enabled(self) -> bool:
        return bool(self.ca_file or self.cert_file or self.key_file or self.identity_dir)


@dataclass(frozen=True)
class SchedulerConfig:
    # pack (best fit), spread (worst fit) or first (first fit)
    policy: str = "pack"
    cpu_overcommit: float = 4.0
    memory_overcommit: float = 1.0
    # Per-VM hypervisor memory overhead: fixed + per GiB of guest RAM + per vCPU (oVirt's model).
    overhead_fixed_mib: int = 64
    overhead_per_gib_mib: int = 2
    overhead_per_vcpu_mib: int = 8
    # Memory and CPUs kept back on every node for the host itself, taken off before the
    # overcommit ratios apply: (cpus - reserved_cpus) * cpu_overcommit.
    reserved_memory_mib: int = 0
    reserved_cpus: int = 0
    # How much a node that caches the request's image counts (the multiplier of the
    # fraction of its blobs cached; the policy's weight is within [0, 1]): -1 = the
    # policy's own, 100 under pack and first (a cached node wins) and 0 under spread
    # (the policy spreads; the cache does not pull every launch onto one node).
    image_cache_weight: float = -1.0

    def __post_init__(self) -> None:
        if self.image_cache_weight != -1.0 and self.image_cache_weight < 0:
            raise ConfigError(
                "scheduler.image_cache_weight: -1 (the policy's own) or 0 or more, not "
                f"{self.image_cache_weight}"
            )
        if self.policy not in SCHEDULER_POLICIES:
            raise ConfigError(
                f"scheduler.policy: {self.policy!r} is not one of {', '.join(SCHEDULER_POLICIES)}"
            )
        check_min(self, "scheduler.", ("cpu_overcommit", "memory_overcommit"), 0, above=True)
        check_min(
            self,
            "scheduler.",
            (
                "overhead_fixed_mib",
                "overhead_per_gib_mib",
                "overhead_per_vcpu_mib",
                "reserved_memory_mib",
                "reserved_cpus",
            ),
            0,
        )


@dataclass(frozen=True)
class LimitsConfig:
    max_cpus: int = 64
    max_memory_mib: int = 512 * 1024
    min_memory_mib: int = 16
    max_nics: int = 8
    max_user_data_bytes: int = 64 * 1024
    # Longest workspace name; a name becomes the VM's hostname, so 1..63.
    max_name_len: int = 63
    # Largest blob accepted by UploadBlob, and largest virtual disk size of an image.
    max_blob_bytes: int = 64 * 1024**3
    max_virtual_bytes: int = 1024**4
    # Per-user repository quota: bytes of the distinct blobs the user's images reference
    # and of those they sent not in an image yet, checked at upload and import (0: none).
    repo_quota_bytes_per_user: int = 0
    # Blank partitions one create may add to its image's.
    max_extra_partitions: int = 8
    # Largest virtual size a create may give a partition: an extra blank one, or a cow
    # partition it grows.
    max_grow_bytes: int = 1024**4
    # Longest kernel command line of an image (bytes).
    max_cmdline_bytes: int = 4096
    # Signatures one image may carry.
    max_signatures_per_image: int = 16
    # Longest wait for capacity a create or cluster may ask for (seconds).
    max_wait_for_capacity_s: int = 7 * 24 * 3600
    # Longest lease any workspace may ask for or be extended to, from now (seconds; a
    # project's maximum may be shorter). 10 years; at most MAX_LEASE_S.
    max_lease_s: int = 10 * 365 * 86400
    # Bytes of orders (user-data, cmdlines, signatures, ...) one node may be sent at once:
    # placement refuses a workspace beyond it. At most MAX_NODE_ORDERS_BYTES (3/4 of the
    # 16 MiB message limit; the rest is room for the trust policy).
    max_node_orders_bytes: int = 8 * 1024 * 1024
    # SSH public keys one user may store (`ws key add`).
    max_ssh_keys_per_user: int = 32
    # `ws exec`: bytes of a command line (all arguments), of its stdin; the longest
    # --timeout, and the timeout of a command given none (seconds).
    max_exec_argv_bytes: int = 64 * 1024
    max_exec_stdin_bytes: int = 1024 * 1024
    max_exec_timeout_s: int = 3600
    exec_default_timeout_s: int = 60
    # `ws image save`: how long a node may take to flatten and send a workspace's disks
    # (seconds); the workspace does not start meanwhile.
    save_timeout_s: int = 3600

    def __post_init__(self) -> None:
        check_seconds(self, "limits.", skip=("max_lease_s",))
        if not 0 < self.max_node_orders_bytes <= MAX_NODE_ORDERS_BYTES:
            raise ConfigError(
                f"limits.max_node_orders_bytes: {self.max_node_orders_bytes} is not between 1 "
                f"and {MAX_NODE_ORDERS_BYTES} (3/4 of the gRPC message limit)"
            )
        # Every limit is a count or a size: 0 may mean none (or no quota), never less; and
        # with no CPU, memory, NIC or byte of image allowed no workspace could be made.
        check_min(self, "limits.", (f.name for f in dataclasses.fields(self)), 0)
        sizes = ("max_cpus", "min_memory_mib", "max_nics", "max_blob_bytes", "max_virtual_bytes")
        execs = ("max_exec_argv_bytes", "max_exec_stdin_bytes", "max_exec_timeout_s")
        check_min(self, "limits.", (*sizes, *execs, "save_timeout_s"), 1)
        if self.max_memory_mib < self.min_memory_mib:
            raise ConfigError(
                f"limits.max_memory_mib: {self.max_memory_mib} is below limits.min_memory_mib "
                f"({self.min_memory_mib}): no workspace would fit"
            )
        if not 1 <= self.exec_default_timeout_s <= self.max_exec_timeout_s:
            raise ConfigError(
                f"limits.exec_default_timeout_s: {self.exec_default_timeout_s} is not between "
                f"1 and limits.max_exec_timeout_s ({self.max_exec_timeout_s})"
            )
        if not 1 <= self.max_lease_s <= MAX_LEASE_S:
            raise ConfigError(
                f"limits.max_lease_s: {self.max_lease_s} is not between 1 and {MAX_LEASE_S} "
                "(1000 years)"
            )
        if not 1 <= self.max_name_len <= 63:
            raise ConfigError(
                f"limits.max_name_len: {self.max_name_len} is not between 1 and 63 "
                "(a name becomes the VM's hostname)"
            )


def check_min(
    cfg: object, section: str, keys: Iterable[str], low: float, above: bool = False
) -> None:
    """ConfigError naming the first of ``keys`` of ``cfg`` (a table ``section``, "limits."
    or "" for the top) below ``low``, or with ``above`` not more than it (NaN neither)."""
    for key in keys:
        value = getattr(cfg, key)
        if value > low if above else value >= low:
            continue
        need = f"more than {low:g}" if above else ("0 or more" if low == 0 else f"at least {low:g}")
        raise ConfigError(f"{section}{key}: must be {need}, got {value}")


def check_seconds(cfg: object, section: str, skip: Iterable[str] = ()) -> None:
    """ConfigError naming the first ``*_s`` key of ``cfg`` (but ``skip``) beyond
    MAX_SECONDS."""
    for f in dataclasses.fields(cfg):  # type: ignore[arg-type]
        value = getattr(cfg, f.name)
        if f.name.endswith("_s") and f.name not in skip and value > MAX_SECONDS:
            raise ConfigError(
                f"{section}{f.name}: must be at most {MAX_SECONDS} (10 years), got {value:g}"
            )


def check_log_format(fmt: str) -> None:
    if fmt not in ("text", "json"):
        raise ConfigError(f'log_format: {fmt!r} is neither "text" nor "json"')


LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")


def check_log_level(level: str) -> None:
    if level.upper() not in LOG_LEVELS:
        raise ConfigError(f"log_level: {level!r} is not one of {', '.join(LOG_LEVELS)}")


# The SQLAlchemy dialects the store runs on (docs/design/store.md).
DATABASE_SCHEMES = ("sqlite", "postgresql")
# libpq's other name for postgresql://, which the store takes as well (store/engines.py
# normalize_url); only so, without a driver: SQLAlchemy has no dialect "postgres".
LIBPQ_SCHEME = "postgres"


_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_retention(text: str) -> tuple[int, float]:
    """``event_retention``: (events to keep, 0 = any number; seconds to keep, 0 = any)."""
    t = text.strip().lower()
    if t.isdigit() and int(t) > 0:
        return int(t), 0.0
    if len(t) > 1 and t[-1] in _UNITS and t[:-1].isdigit() and int(t[:-1]) > 0:
        return 0, float(int(t[:-1]) * _UNITS[t[-1]])
    raise ConfigError(
        f"event_retention: {text!r} is neither a count (100000) nor a duration (30d, 12h, 90m)"
    )


def parse_terminated_retention(text: str) -> float:
    """``terminated_retention``: seconds a TERMINATED workspace is kept (0: "forever")."""
    t = text.strip().lower()
    if t == "forever":
        return 0.0
    if len(t) > 1 and t[-1] in _UNITS and t[:-1].isdigit() and int(t[:-1]) > 0:
        return float(int(t[:-1]) * _UNITS[t[-1]])
    raise ConfigError(
        f"terminated_retention: {text!r} is neither a duration (30d, 12h) nor forever"
    )


# Where Debian's cloud-init package keeps the schema of cloud-config documents.
CLOUD_CONFIG_SCHEMA = (
    "/usr/lib/python3/dist-packages/cloudinit/config/schemas/schema-cloud-config-v1.json"
)


@dataclass(frozen=True)
class ContextConfig:
    """What the service puts into every workspace's NoCloud seed (docs/design/
    contextualization.md)."""

    # A file of the site's vendor-data (a #cloud-config document, a #! script or a MIME
    # multi-part), read at start and put first into every seed's user-data ("": none).
    vendor_data_file: str = ""
    # The JSON schema #cloud-config user-data is checked against at create: "auto" (cloud-
    # init's own, if its package is installed), a path, or "none" (YAML syntax only).
    cloud_config_schema: str = "auto"

    def schema_path(self) -> str:
        """The schema file to check with ("": none)."""
        if self.cloud_config_schema == "none":
            return ""
        if self.cloud_config_schema == "auto":
            return CLOUD_CONFIG_SCHEMA if os.path.exists(CLOUD_CONFIG_SCHEMA) else ""
        return self.cloud_config_schema


@dataclass(frozen=True)
class DefaultsConfig:
    """The site's defaults for new workspaces (a project's own defaults come first;
    workspace/domain/netpolicy.py): limits (0 = not limited) and the connectivity."""

    cpu_percent: int = 0
    cpu_weight: int = 0
    disk_mbps: int = 0
    disk_iops: int = 0
    net_mbps: int = 0
    connectivity: str = "open"

    def __post_init__(self) -> None:
        try:
            Connectivity.parse(self.connectivity)
            self.limits().validate("defaults")
        except InvalidArgument as e:
            raise ConfigError(str(e)) from None

    def limits(self) -> Limits:
        return Limits(
            cpu_percent=self.cpu_percent,
            cpu_weight=self.cpu_weight,
            disk_mbps=self.disk_mbps,
            disk_iops=self.disk_iops,
            net_mbps=self.net_mbps,
        )


def node_address_for(listen: str) -> str:
    """The default Nodes API address beside the client API's: ``unix:/x/service.sock`` ->
    ``unix:/x/nodes.sock``; ``host:7070`` -> ``host:7071`` (port 0 stays 0: any port)."""
    if listen.startswith("unix:"):
        path = listen.removeprefix("unix:")
        slash = path.rfind("/")
        return f"unix:{path[: slash + 1]}nodes.sock"
    host, sep, port = listen.rpartition(":")
    if not sep or not port.isdigit():
        raise ConfigError(f"listen: {listen!r} is neither host:port nor unix:/path")
    return f"{host}:{int(port) + 1 if int(port) else 0}"


@dataclass(frozen=True)
class ServiceConfig:
    # "host:port" for TCP, "unix:/path/to/socket" for a unix socket.
    listen: str = "127.0.0.1:7070"
    # The Nodes API (agents) on a server of its own: its own address and worker threads,
    # so clients can never starve agents' streams, reports and heartbeats. Empty: next
    # to ``listen`` (unix:/x/service.sock -> unix:/x/nodes.sock, host:7070 -> host:7071).
    node_listen: str = ""
    # SQLAlchemy URL; empty means sqlite:///<data_dir>/service.db
    database_url: str = ""
    data_dir: str = "/var/lib/workspace/service"
    # Worker threads of the client API (each open watch or upload holds one).
    max_workers: int = 256
    # Client calls running or queued at once; beyond it RESOURCE_EXHAUSTED at once.
    max_concurrent_rpcs: int = 512
    # Open streams (watches, uploads, ...) of one identity; beyond it RESOURCE_EXHAUSTED.
    max_streams_per_caller: int = 64
    # Worker threads of the Nodes API (each agent's assignment stream holds one).
    node_max_workers: int = 256
    # A blob uploaded but referenced by no image is deleted once it is this old.
    blob_grace_s: int = 3600
    # Repository blobs found not to match their digest are kept in <data_dir>/blobs/bad
    # for a week for inspection, and at most this many bytes of them (the oldest go
    # first; the newest is kept whatever its size); 0 = no size bound.
    bad_blobs_max_bytes: int = 4 * 1024**3
    heartbeat_interval_s: int = 5
    # A node silent for longer than this is DOWN and its workspaces LOST.
    node_grace_s: int = 40
    # Replicas on PostgreSQL: a leader whose session has not renewed its lease (its check,
    # every second) for this long is hung; another replica ends that session and leads
    # (docs/design/replicas.md). At least 5 (the leader's own lease is 3 s).
    leader_fence_s: int = 10
    default_stop_timeout_s: int = 60
    # Seconds a preempted workspace gets to shut down after ACPI before it is forced off
    # (a workspace's own ``preempt_grace_s`` >= 0 wins); docs/design/preemption.md.
    preempt_grace_s: int = 30
    console_keep_bytes: int = 256 * 1024
    log_level: str = "INFO"
    # "text" (one line per record) or "json" (one JSON object per line, with workspace,
    # node and request ids when known).
    log_format: str = "text"
    # Prometheus /metrics on this address ("127.0.0.1:9464"); empty = no metrics.
    metrics_listen: str = ""
    # Site events kept (`ws-admin events`): a duration ("30d", "12h", "90m") or a count
    # of the newest events ("100000").
    event_retention: str = "30d"
    # TERMINATED workspaces (and TERMINATED clusters) kept after their end: a duration, or
    # "forever" (docs/design/store.md, "Terminated workspaces are deleted").
    terminated_retention: str = "30d"
    # Without TLS, every caller is the admin user ``default_owner``: allowed only with
    # insecure = true, and only on loopback or a unix socket (development and tests).
    default_owner: str = "local"
    insecure: bool = False
    # How often the lease loop looks for leases ending soon (warning) or ended (expiry).
    lease_check_interval_s: float = 30.0
    # How often the leader's backfill pass runs (docs/design/backfill.md).
    backfill_interval_s: float = 10.0
    # A workspace is warned this long before its lease ends.
    lease_warning_s: int = 3600
    # Elastic clusters (docs/design/elastic-clusters.md): how often the leader evaluates
    # each autoscaled role; the cool-down of an autoscaler set without one; how long a
    # ``command:`` signal may run; Slurm's queue command for ``slurm-queue`` signals (a
    # path or a name on PATH); how often the leader pushes changed rosters to running
    # members (and retries those it could not reach).
    autoscale_interval_s: float = 15.0
    autoscale_cooldown_s: int = 60
    autoscale_command_timeout_s: float = 10.0
    # A ``command:`` signal runs on the service's host as the service's user: an admin
    # may name any program; a user only one under this directory ("": users may not).
    autoscale_commands_dir: str = ""
    squeue_command: str = "squeue"
    roster_push_interval_s: float = 5.0
    # True: a create, cluster create, image import/push or save by a user (not an admin)
    # who belongs to no project is refused; false: it is made outside any project (no
    # quota, no lease).
    require_project: bool = False
    tls: TlsConfig = field(default_factory=TlsConfig)
    scheduler: SchedulerConfig = field(default_factory=SchedulerConfig)
    limits: LimitsConfig = field(default_factory=LimitsConfig)
    context: ContextConfig = field(default_factory=ContextConfig)
    defaults: DefaultsConfig = field(default_factory=DefaultsConfig)

    def __post_init__(self) -> None:
        more_than_0 = (
            "lease_check_interval_s",
            "backfill_interval_s",
            "autoscale_interval_s",
            "autoscale_command_timeout_s",
            "roster_push_interval_s",
        )
        check_min(self, "", more_than_0, 0, above=True)
        check_min(
            self,
            "",
            (
                "preempt_grace_s",
                "lease_warning_s",
                "autoscale_cooldown_s",
                "blob_grace_s",
                "bad_blobs_max_bytes",
                "default_stop_timeout_s",
                "console_keep_bytes",
            ),
            0,
        )
        at_least_1 = (
            "max_workers",
            "max_concurrent_rpcs",
            "max_streams_per_caller",
            "node_max_workers",
            "heartbeat_interval_s",
            "node_grace_s",
        )
        check_min(self, "", at_least_1, 1)
        check_min(self, "", ("leader_fence_s",), 5)
        check_seconds(self, "")
        if self.node_grace_s <= self.heartbeat_interval_s:
            # Every node would go DOWN between two heartbeats, its workspaces LOST.
            raise ConfigError(
                f"node_grace_s: {self.node_grace_s} is not more than heartbeat_interval_s "
                f"({self.heartbeat_interval_s}): every node would be DOWN between its "
                "heartbeats; give it several intervals (default 40 for 5)"
            )
        try:
            squeue = shlex.split(self.squeue_command)
        except ValueError as e:  # an unbalanced quote: every slurm-queue signal would fail
            raise ConfigError(f"squeue_command: {self.squeue_command!r}: {e}") from None
        if not squeue:
            raise ConfigError("squeue_command: must not be empty")
        if self.autoscale_commands_dir and not os.path.isabs(self.autoscale_commands_dir):
            raise ConfigError(
                f"autoscale_commands_dir: give an absolute path, not "
                f"{self.autoscale_commands_dir!r}"
            )
        check_log_format(self.log_format)
        check_log_level(self.log_level)
        parse_retention(self.event_retention)
        parse_terminated_retention(self.terminated_retention)
        head = self.database_url.partition(":")[0]
        scheme = "postgresql" if head == LIBPQ_SCHEME else head.partition("+")[0]
        if self.database_url and scheme not in DATABASE_SCHEMES:
            raise ConfigError(
                f"database_url: a {head or '?'}: URL; the store runs on "
                "sqlite:///PATH or postgresql://..."
            )
        if self.node_address == self.listen and not self.listen.endswith(":0"):
            raise ConfigError(
                f"node_listen: the Nodes API needs an address of its own, not {self.listen}"
            )

    @property
    def node_address(self) -> str:
        """Where the Nodes API listens: ``node_listen``, or next to ``listen``."""
        return self.node_listen or node_address_for(self.listen)

    @property
    def db_url(self) -> str:
        return self.database_url or f"sqlite:///{Path(self.data_dir) / 'service.db'}"

    @property
    def blob_dir(self) -> Path:
        return Path(self.data_dir) / "blobs"


@dataclass(frozen=True)
class FakeDriverConfig:
    # Keep fake domains in <state_dir>/fake-domains.json so they survive an agent restart.
    persist: bool = True
    # Seconds a fake domain spends booting before it reports RUNNING.
    boot_delay_s: float = 0.0
    # Workspace names (fnmatch patterns) whose create fails (failure injection).
    fail_create: list[str] = field(default_factory=list)
    # Workspace names (fnmatch patterns) that ignore an ACPI shutdown request.
    ignore_shutdown: list[str] = field(default_factory=list)
    # How long a stop waits for such a guest before forcing it off: its timeout (or
    # preempt_grace_s), but at most this many seconds (short, for fast tests).
    ignored_wait_s: float = 0.5
    # Workspace names (fnmatch patterns) whose guest has no guest agent (exec fails).
    no_guest_agent: list[str] = field(default_factory=list)
    # Seconds after a domain boots before its guest agent answers (a guest still booting).
    guest_agent_after_s: float = 0.0

    def __post_init__(self) -> None:
        check_min(self, "fake.", ("boot_delay_s", "ignored_wait_s"), 0)
        check_seconds(self, "fake.")


@dataclass(frozen=True)
class LibvirtConfig:
    uri: str = "qemu:///system"
    # "kvm" on real hosts, "qemu" (TCG) where nested KVM does not work.
    virt_type: str = "kvm"
    machine: str = "pc"
    emulator: str = ""


@dataclass(frozen=True)
class NodeNetworkConfig:
    """A site network this node serves (the definition itself lives in the service)."""

    name: str = "default"
    # Address (CIDR) given to the bridge so dnsmasq can answer DHCP; "gateway" uses the
    # network's gateway (all-in-one sites), "" gives the bridge no address (no DHCP here).
    bridge_address: str = "gateway"
    # Run a dnsmasq for this network's bridge on this node.
    dhcp: bool = True
    # A host interface the agent attaches to the bridge (a VLAN sub-interface of it when
    # the network has a VLAN id), so the network reaches other nodes; "" = no uplink.
    # No other host interface is ever touched.
    uplink: str = ""

    def __post_init__(self) -> None:
        if self.bridge_address in ("", "gateway"):
            return
        try:
            ipaddress.ip_interface(self.bridge_address)
        except ValueError:
            raise ConfigError(
                f"networks.{self.name}.bridge_address: {self.bridge_address!r} is not a CIDR "
                "(10.0.0.2/24), 'gateway' or ''"
            ) from None


# The agent's hypervisor drivers (agent/virt/__init__.py ``make_driver``).
AGENT_DRIVERS = ("fake", "libvirt")


# The largest ``conntrack_per_nic`` (nftables' ``ct count`` is a 32-bit number).
MAX_CT_COUNT = 2**32 - 1


@dataclass(frozen=True)
class AgentConfig:
    node: str = field(default_factory=socket.gethostname)
    # The service's Nodes API (its ``node_listen``; by default the port after the client
    # API's, or nodes.sock beside its service.sock).
    service: str = "127.0.0.1:7071"
    driver: str = "fake"
    state_dir: str = "/var/lib/workspace/agent"
    # Empty: <state_dir>/cache
    cache_dir: str = ""
    # Capacity to announce; 0 = detect from the host.
    cpus: int = 0
    memory_mib: int = 0
    disk_gib: int = 0
    # Guaranteed-bandwidth capacity the scheduler may promise on this node (0 = none
    # declared: --disk-mbps/--net-mbps requests are then not bounded by the node).
    disk_mbps: int = 0
    net_mbps: int = 0
    hypervisor: str = ""
    labels: dict[str, str] = field(default_factory=dict)
    networks: list[NodeNetworkConfig] = field(default_factory=lambda: [NodeNetworkConfig()])
    # Seconds between reconcile passes when nothing happens.
    resync_interval_s: float = 10.0
    # The most connections the node's conntrack table tracks at once for what one VM NIC
    # opens (bridged, or to the node itself): a new one beyond it is dropped, so one VM
    # cannot fill the table the node's other VMs share; 0 = no bound.
    conntrack_per_nic: int = 4096
    # Parallel workspace operations.
    max_parallel_ops: int = 8
    # Blob cache size limit in bytes (least recently used unpinned blobs are evicted to
    # stay under it); 0 = unlimited.
    cache_budget_bytes: int = 20 * 1024**3
    # Blobs found corrupted in the cache are kept in <cache_dir>/quarantine for a week
    # for inspection, and at most this many bytes of them (the oldest go first; the
    # newest is kept whatever its size); 0 = no size bound.
    quarantine_max_bytes: int = 4 * 1024**3
    # Commands run in guests at once (`ws exec`; more wait their turn), and the most
    # stdout and stderr (each) kept of one command: the rest is cut (truncated).
    exec_parallel: int = 4
    exec_max_output_bytes: int = 1024 * 1024
    # Blobs fetched at once for `ws-admin cache preload` (in the background).
    prefetch_parallel: int = 2
    # Serve complete cached blobs to other agents on this address ("host:port",
    # "unix:/path"); empty = serve no peers.
    peer_listen: str = ""
    # The address other agents dial; empty = peer_listen (a wildcard host replaced by
    # this host's name, port 0 by the port bound).
    peer_advertise: str = ""
    log_level: str = "INFO"
    # "text" or "json" (one JSON object per line), as the service's.
    log_format: str = "text"
    # Prometheus /metrics on this address ("127.0.0.1:9465"); empty = no metrics.
    metrics_listen: str = ""
    # Plaintext to the service and from peers: only with insecure = true, and only on
    # loopback or unix sockets (development and tests).
    insecure: bool = False
    tls: TlsConfig = field(default_factory=TlsConfig)
    fake: FakeDriverConfig = field(default_factory=FakeDriverConfig)
    libvirt: LibvirtConfig = field(default_factory=LibvirtConfig)

    def __post_init__(self) -> None:
        check_log_format(self.log_format)
        check_log_level(self.log_level)
        if not self.node.strip():
            raise ConfigError("node: must not be empty (the node's name; default: the host name)")
        if not self.service.replace(",", "").strip():
            raise ConfigError("service: must not be empty (the service's node_listen, host:port)")
        names = [n.name for n in self.networks]
        if "" in names:
            raise ConfigError("networks: an entry without a name (name = the site network's)")
        if twice := sorted({n for n in names if names.count(n) > 1}):
            raise ConfigError(f"networks: {twice[0]!r} is named twice (one entry per network)")
        if why := declared_problem(self.labels, names):
            # The service would refuse every Register of the node (ops/reports.py).
            raise ConfigError(f"labels or networks: {why}")
        if self.driver not in AGENT_DRIVERS:
            raise ConfigError(
                f"driver: unknown driver {self.driver!r} (choose {' or '.join(AGENT_DRIVERS)})"
            )
        if self.libvirt.virt_type not in ("kvm", "qemu"):
            raise ConfigError(
                f"libvirt.virt_type: {self.libvirt.virt_type!r} is neither 'kvm' nor 'qemu'"
            )
        check_min(self, "", ("resync_interval_s",), 0, above=True)
        check_seconds(self, "")
        at_least_1 = ("max_parallel_ops", "exec_parallel", "prefetch_parallel")
        check_min(self, "", at_least_1, 1)
        sizes = ("cpus", "memory_mib", "disk_gib", "disk_mbps", "net_mbps")  # registered
        budgets = (
            "cache_budget_bytes",
            "quarantine_max_bytes",
            "exec_max_output_bytes",
            "conntrack_per_nic",
        )
        check_min(self, "", (*sizes, *budgets), 0)
        if why := size_problem({k: getattr(self, k) for k in sizes}):
            raise ConfigError(why)  # the service would refuse every Register of the node
        if self.conntrack_per_nic > MAX_CT_COUNT:
            # nft's ct count takes 32 bits: a larger one would fail the whole ruleset.
            raise ConfigError(
                f"conntrack_per_nic: must be at most {MAX_CT_COUNT} (0 = no bound),"
                f" got {self.conntrack_per_nic}"
            )

    @property
    def cache_path(self) -> Path:
        return Path(self.cache_dir) if self.cache_dir else Path(self.state_dir) / "cache"


# The keys of a file that name files, directories or unix sockets: absolute paths only.
_PATH_KEYS: dict[type, dict[str, str]] = {
    ServiceConfig: config_paths.SERVICE_KEYS,
    AgentConfig: config_paths.AGENT_KEYS,
}


def check_file_paths(cls: type, data: dict[str, Any]) -> None:
    """ConfigError naming a key of ``data``, tables of a config file of ``cls``, that
    holds a relative path (workspace/config_paths.py). A config class of another package
    names its keys in a ``PATH_KEYS`` class variable (ws-slurm's ``SlurmConfig``)."""
    if paths := _PATH_KEYS.get(cls) or getattr(cls, "PATH_KEYS", None):
        config_paths.check(data, paths)


def load(cls: type[T], path: str | os.PathLike[str] | None = None, **overrides: Any) -> T:
    """Load ``cls`` from a TOML file (or defaults), then apply keyword overrides."""
    data: dict[str, Any] = {}
    if path is not None:
        try:
            with open(path, "rb") as f:
                data = tomllib.load(f)
        except FileNotFoundError as exc:
            raise ConfigError(f"config file {path} not found") from exc
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"config file {path}: {exc}") from exc
        except UnicodeDecodeError as exc:
            raise ConfigError(f"config file {path}: not UTF-8 text ({exc.reason})") from exc
        except OSError as exc:  # a directory, no permission
            raise ConfigError(f"config file {path}: cannot read it: {exc.strerror}") from exc
    try:
        if path is not None:
            # The file's own values: an override (--data-dir) is the caller's, relative
            # to where it runs.
            check_file_paths(cls, {k: v for k, v in data.items() if overrides.get(k) is None})
        data.update({k: v for k, v in overrides.items() if v is not None})
        return config_tables.build(cls, data, "")
    except ConfigError as exc:
        if path is None:
            raise
        raise ConfigError(f"config file {path}: {exc.message}") from exc


def from_dict(cls: type[T], data: dict[str, Any]) -> T:
    return config_tables.build(cls, data, "")


def to_dict(cfg: Any, *, skip_defaults: bool = True) -> dict[str, Any]:
    """The TOML tables of a config dataclass, which ``from_dict`` turns back into ``cfg``.

    With ``skip_defaults`` only what differs from the defaults is kept (a nested table
    that is all defaults is left out), so a written file shows what was chosen.
    """
    out: dict[str, Any] = {}
    for f in dataclasses.fields(cfg):
        value = getattr(cfg, f.name)
        if skip_defaults:
            if f.default is not dataclasses.MISSING:
                default = f.default
            elif f.default_factory is not dataclasses.MISSING:
                default = f.default_factory()
            else:
                default = dataclasses.MISSING
            if value == default:
                continue
        if value is None:  # TOML has no null: the loader's default applies
            continue
        out[f.name] = _plain(value, skip_defaults)
    return out


def _plain(value: Any, skip_defaults: bool) -> Any:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return to_dict(value, skip_defaults=skip_defaults)
    if isinstance(value, list):
        return [_plain(v, skip_defaults) for v in value]
    if isinstance(value, dict):
        return dict(value)
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    return value


def to_toml(cfg: Any, header: str = "", *, skip_defaults: bool = True) -> str:
    """``cfg`` as a TOML document (``load`` reads it back equal), after ``header`` comments."""
    comments = "".join(f"# {line}".rstrip() + "\n" for line in header.splitlines())
    body = tomli_w.dumps(to_dict(cfg, skip_defaults=skip_defaults))
    return comments + ("\n" if comments else "") + body


def write(
    path: str | os.PathLike[str], cfg: Any, header: str = "", *, skip_defaults: bool = True
) -> Path:
    """Write ``cfg`` to ``path`` as TOML (atomically, readable by its owner only: a
    ``database_url`` may carry a password); returns the path."""
    path = Path(path)
    write_private(path, to_toml(cfg, header, skip_defaults=skip_defaults))
    return path
