"""ws-slurm's configuration: the service, the batch identity, the controller, and the
mapping from Slurm nodes to workspaces.

The config file (``/etc/workspace/slurm.toml``, or ``--config``)::

    service = "ws.example.org:7070"      # or "unix:/path"; replicas comma-separated
    identity = "/etc/workspace/slurm-identity"   # ws-admin pki issue user slurm --out ...
    log_file = "/var/log/ws-slurm.log"
    lock_file = "/var/lib/ws-slurm/nodes.lock"   # the runs' node locks
    controller = "10.0.0.1"              # slurmctld's address, as the VMs reach it
    controller_port = 6817
    mapping_file = "/etc/workspace/slurm-nodes.toml"
    # optional: project, networks, affinity, lease_s, munge_key_file, slurm_conf_file,
    #           scontrol, cluster_prefix, timeout_s, replace_wait_s

The mapping file: rules tried in order, the first that matches a node wins::

    [[node]]
    feature = "bigmem"         # a feature of the job (SLURM_RESUME_FILE) or of the node
    image = "slurm-bigmem"
    cpus = 4
    memory_mib = 16384

    [[node]]
    names = "c[1-16]"          # a hostlist expression, or a glob ("c*")
    image = "slurm"
    cpus = 1
    memory_mib = 1024
    user_data = '''#cloud-config
    packages_extra: ...'''      # more cloud-config, merged with ws-slurm's own

A rule without ``names`` and ``feature`` matches every node (a default, put it last).
Unknown keys are errors: a typo never silently changes what is created.

The config file is read like every config file of the project (``workspace/config.py``:
TOML into a frozen dataclass, unknown keys and wrong types refused); the mapping file's
``[[node]]`` rules have their own checks here (each error names the rule's number).
"""

from __future__ import annotations

import dataclasses
import fnmatch
import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from workspace import config, config_paths, errors
from workspace.client_choices import AFFINITIES
from workspace.slurm.hostlist import HostlistError, expand

DEFAULT_CONFIG = Path("/etc/workspace/slurm.toml")
DEFAULT_LOG = "/var/log/ws-slurm.log"
DEFAULT_LOCK = "/var/lib/ws-slurm/nodes.lock"
DEFAULT_MAPPING = "/etc/workspace/slurm-nodes.toml"
CONFIG_ENV = "WS_SLURM_CONFIG"


# The config or mapping file is wrong; the message names the file and the key.
ConfigError = errors.ConfigError
# A job's cluster is <cluster_prefix><job id>[-N]: a cluster name (ops/clusters.py: at most
# 40 characters) for job ids of up to 10 digits (Slurm's are 32-bit) and a one-digit N (N
# counts the nodes' earlier workspaces: program.cluster_name).
CLUSTER_PREFIX_RE = re.compile(r"([a-z0-9][a-z0-9-]{0,27})?")  # "": the job id alone


@dataclass(frozen=True)
class Rule:
    """One mapping rule: which nodes (names and/or feature), and what they become."""

    image: str
    cpus: int = 0
    memory_mib: int = 0
    names: str = ""
    feature: str = ""
    user_data: str = ""
    requirements: Mapping[str, str] = field(default_factory=dict)

    def matches(self, node: str, features: frozenset[str]) -> bool:
        if self.feature and self.feature not in features:
            return False
        return not self.names or _names_match(self.names, node)


@dataclass(frozen=True)
class NodeSpec:
    """What one Slurm node becomes: the rule's values for that node."""

    node: str
    image: str
    cpus: int
    memory_mib: int
    user_data: str
    requirements: Mapping[str, str]
    rule: int  # index of the rule that matched (for the log)


class Unmapped(LookupError):
    """No rule matches a node."""

    def __init__(self, node: str, features: frozenset[str]) -> None:
        shown = ",".join(sorted(features)) or "none"
        super().__init__(
            f"Slurm node {node} (features: {shown}) maps to no image: add a [[node]] rule "
            "for it to the mapping file"
        )
        self.node = node
        # For the node's reason in Slurm (sinfo -R): short.
        self.short = f"node {node} (features: {shown}) maps to no image in the mapping file"


@dataclass(frozen=True)
class SlurmConfig:
    """The config file's keys (``conf/slurm/ws-slurm.toml`` documents each)."""

    # Keys that name files or commands: absolute paths only (config.load refuses a relative
    # one, naming the key: slurmctld runs ws-slurm in its own working directory).
    PATH_KEYS: ClassVar[dict[str, str]] = config_paths.SLURM_KEYS

    # The workspace service ("host:port", "unix:/path"; replicas comma-separated).
    service: str = ""
    # The batch user's identity directory (ws-admin pki issue user slurm --out DIR).
    identity: str = ""
    # slurmctld discards what its programs print: everything goes here.
    log_file: str = DEFAULT_LOG
    # The runs' node locks (nodelock.py): writable by SlurmUser; made 0600, and its
    # directory 0700, when missing.
    lock_file: str = DEFAULT_LOCK
    # slurmctld's address as the guests reach it (configless slurmd --conf-server).
    controller: str = ""
    controller_port: int = 6817
    # The [[node]] rules (relative to the config file's directory).
    mapping_file: str = DEFAULT_MAPPING
    # The project the workspaces count against ("" = the user's default).
    project: str = ""
    # Each node's networks ([] = the site's default).
    networks: list[str] = field(default_factory=list)
    # A job's nodes: none, soft-anti, hard-anti, soft, hard.
    affinity: str = "none"
    # Each workspace's lease (0 = the project's default).
    lease_s: int = 0
    # Delivered to the guests (auth/munge).
    munge_key_file: str = ""
    # Written into the guests instead of configless slurmd.
    slurm_conf_file: str = ""
    scontrol: str = "scontrol"
    # A job's cluster is <cluster_prefix><job id>.
    cluster_prefix: str = "slurm-"
    # Per call to the service.
    timeout_s: float = 30.0
    # How long resume waits for a node's old workspace (being destroyed) to end before
    # it makes the new one; then the node is DOWN with why. Keep it well below
    # ResumeTimeout.
    replace_wait_s: float = 60.0

    def __post_init__(self) -> None:
        # As the service's and agent's config: no interval beyond 10 years (1e300 would
        # overflow a wait), none negative, a call's timeout more than 0; a lease at most
        # the longest a site may allow.
        config.check_seconds(self, "", skip=("lease_s",))
        config.check_min(self, "", ("replace_wait_s", "lease_s"), 0)
        config.check_min(self, "", ("timeout_s",), 0, above=True)
        if self.lease_s > config.MAX_LEASE_S:
            raise ConfigError(f"lease_s: must be at most {config.MAX_LEASE_S}, got {self.lease_s}")
        if not self.lock_file:
            raise ConfigError(
                "lock_file: must name a file: ws-slurm runs lock their nodes on it against "
                f"each other (default {DEFAULT_LOCK})"
            )
        if not 1 <= self.controller_port <= 65535:
            raise ConfigError(f"controller_port: {self.controller_port} is not a port (1 to 65535)")
        if not CLUSTER_PREFIX_RE.fullmatch(self.cluster_prefix):
            raise ConfigError(
                f"cluster_prefix {self.cluster_prefix!r}: a job's cluster is <cluster_prefix>"
                "<job id>, a cluster name: lowercase letters, digits and '-', starting with a "
                "letter or digit, at most 28 characters"
            )
        if self.affinity not in AFFINITIES:
            raise ConfigError(
                f"affinity {self.affinity!r} is not a known affinity ({', '.join(AFFINITIES)})"
            )


@dataclass(frozen=True)
class Settings(SlurmConfig):
    """The config file's values and the mapping file's rules."""

    rules: tuple[Rule, ...] = ()

    def resolve(self, node: str, features: frozenset[str] = frozenset()) -> NodeSpec:
        """The first rule that matches ``node`` with ``features``; Unmapped if none."""
        for i, rule in enumerate(self.rules):
            if rule.matches(node, features):
                return NodeSpec(
                    node=node,
                    image=rule.image,
                    cpus=rule.cpus,
                    memory_mib=rule.memory_mib,
                    user_data=rule.user_data,
                    requirements=dict(rule.requirements),
                    rule=i,
                )
        raise Unmapped(node, features)


def _names_match(pattern: str, node: str) -> bool:
    if any(ch in pattern for ch in "*?") and "[" not in pattern:
        return fnmatch.fnmatchcase(node, pattern)
    try:
        return node in expand(pattern)
    except HostlistError:
        return fnmatch.fnmatchcase(node, pattern)


_RULE_KEYS: dict[str, type | tuple[type, ...]] = {
    "image": str,
    "cpus": int,
    "memory_mib": int,
    "names": str,
    "feature": str,
    "user_data": str,
    "requirements": dict,
}


def _read(path: Path, what: str) -> dict[str, Any]:
    try:
        return tomllib.loads(path.read_text())
    except FileNotFoundError:
        raise ConfigError(f"{what} {path} does not exist") from None
    except OSError as exc:
        raise ConfigError(f"{what} {path}: {exc.strerror or exc}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{what} {path} is not valid TOML: {exc}") from None


def _check(data: Mapping[str, Any], keys: Mapping[str, Any], where: str) -> None:
    for key, value in data.items():
        if key not in keys:
            raise ConfigError(f"{where}: unknown key {key!r} (known: {', '.join(keys)})")
        want = keys[key]
        if isinstance(value, bool) or not isinstance(value, want):
            raise ConfigError(f"{where}: {key} has the wrong type ({type(value).__name__})")


def parse_rules(data: Mapping[str, Any], where: str) -> list[Rule]:
    """The ``[[node]]`` rules of a mapping file's data."""
    extra = set(data) - {"node"}
    if extra:
        raise ConfigError(f"{where}: unknown key(s) {', '.join(sorted(extra))} (only [[node]])")
    raw = data.get("node", [])
    if not isinstance(raw, list):
        raise ConfigError(f"{where}: node must be a list of tables ([[node]])")
    rules: list[Rule] = []
    for i, item in enumerate(raw):
        at = f"{where}: [[node]] #{i + 1}"
        if not isinstance(item, dict):
            raise ConfigError(f"{at} is not a table")
        _check(item, _RULE_KEYS, at)
        if not item.get("image"):
            raise ConfigError(f"{at} has no image")
        for key in ("cpus", "memory_mib"):
            if item.get(key, 0) < 0:
                raise ConfigError(f"{at}: {key} must not be negative")
        names = item.get("names", "")
        if names and "[" in names:
            try:
                expand(names)
            except HostlistError as exc:
                raise ConfigError(f"{at}: names: {exc}") from None
        reqs = {str(k): str(v) for k, v in item.get("requirements", {}).items()}
        rules.append(Rule(**{**item, "requirements": reqs}))
    return rules


def load_config(path: Path | str) -> SlurmConfig:
    """The config file (``workspace/config.py``'s loader); a ConfigError names the file."""
    try:
        return config.load(SlurmConfig, path)
    except ConfigError as exc:
        if "unknown key" in exc.message:
            known = ", ".join(f.name for f in dataclasses.fields(SlurmConfig))
            raise ConfigError(f"{exc.message} (known: {known})") from None
        raise
    except OSError as exc:  # not found is a ConfigError already; this is e.g. EACCES
        raise ConfigError(f"config file {path}: {exc.strerror or exc}") from None


def load(path: Path | str, *, need_mapping: bool = True) -> Settings:
    """The config file at ``path`` and the mapping file it names."""
    path = Path(path)
    base = load_config(path)
    values = {f.name: getattr(base, f.name) for f in dataclasses.fields(SlurmConfig)}
    if not need_mapping:
        return Settings(**values)
    mapping = Path(base.mapping_file)
    if not mapping.is_absolute():
        mapping = path.parent / mapping
    rules = parse_rules(_read(mapping, "mapping file"), str(mapping))
    return Settings(**values, rules=tuple(rules))
