"""What a local site records in its directory: ``site.json`` and ``setup.json``.

``site.json`` says what runs and how to reach it (the service's address, pids, network
namespaces); it exists while the site is up and ``site down`` removes it. The client
reads it to find the local site's service (``workspace.client.resolve_address``).

``setup.json`` says what the site *is*: its driver, node count and virt type. It is
written at the first ``site up`` and kept across ``site down``/``site up`` with the
rest of the site's state (database, images, agents' state); only ``site down --purge``
removes it. A later ``site up`` reuses it and refuses another driver or node count.

This module imports neither the client nor the launcher (both import it).
"""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path
from typing import Any

from workspace import errors
from workspace.files import write_private

SITE_ENV = "WS_SITE_DIR"
SITE_FILE = "site.json"
SETUP_FILE = "setup.json"
NODE_NAME = "local"
AGENT_CONFIG = "agent.toml"
AGENT_LOG = "agent.log"


class SiteError(errors.FailedPrecondition):
    """The local site cannot be started, stopped or read."""


class SiteUnreadable(SiteError):
    """A site file this user may not read: the site is another user's (root's, and
    SlurmUser's ws-slurm pointed at its socket), not a broken file to remove."""


def default_site_dir() -> Path:
    env = os.environ.get(SITE_ENV, "").strip()
    if env:
        return Path(env).expanduser()
    return Path.home() / ".local" / "share" / "workspace" / "site"


@dataclasses.dataclass
class AgentRecord:
    """One node of the site: its agent's pid, network namespace and directory.

    ``dir`` holds the node's ``agent.toml``, ``agent.log``, ``agent/`` (state and image
    cache) and, with the libvirt driver, ``libvirt/`` (its private libvirtd).
    """

    node: str
    pid: int = 0
    netns: str = ""
    dir: str = ""
    # Its Prometheus endpoint (http://127.0.0.1:PORT/metrics; in ``netns`` if it has one).
    metrics: str = ""

    @property
    def config(self) -> Path:
        return Path(self.dir) / AGENT_CONFIG

    @property
    def log(self) -> Path:
        return Path(self.dir) / AGENT_LOG


@dataclasses.dataclass
class SiteRecord:
    """Contents of site.json: what is running and how to reach it.

    ``agents`` lists every node (one for a one-node site). ``node``, ``agent_pid`` and
    ``netns`` are node 1's, kept for readers of the one-node format; a record without
    ``agents`` (written before there could be several) reads as that one node.
    ``service_netns`` is the namespace the service runs in ("" = the host's).
    ``identity_dir`` is the admin identity the site issued to the user who started it
    (clients use it for this site's address when given no other identity).
    """

    dir: str
    address: str
    driver: str
    node: str = NODE_NAME
    service_pid: int = 0
    agent_pid: int = 0
    netns: str = ""
    virt_type: str = ""
    started_at: float = 0.0
    agents: list[AgentRecord] = dataclasses.field(default_factory=list)
    service_netns: str = ""
    identity_dir: str = ""
    # The service's Prometheus endpoint (in ``service_netns`` if it has one).
    service_metrics: str = ""
    # The namespace of the switch between the nodes (libvirt, several nodes; else "").
    switch_netns: str = ""

    def sync_first_node(self) -> None:
        """Copy node 1 into the one-node fields."""
        if self.agents:
            first = self.agents[0]
            self.node, self.agent_pid, self.netns = first.node, first.pid, first.netns

    def netns_names(self) -> list[str]:
        names = [a.netns for a in self.agents if a.netns]
        return names or ([self.netns] if self.netns else [])

    def to_json(self) -> str:
        self.sync_first_node()
        return json.dumps(dataclasses.asdict(self), indent=2) + "\n"


@dataclasses.dataclass(frozen=True)
class SiteSetup:
    """Contents of setup.json: what the site was made with (kept across down/up)."""

    driver: str
    nodes: int = 1
    virt_type: str = ""
    created_at: float = 0.0

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), indent=2) + "\n"


def _read_json(path: Path, what: str) -> dict[str, Any] | None:
    try:
        data = json.loads(path.read_text())
    except (FileNotFoundError, NotADirectoryError):
        return None  # (a site directory that is a file holds no site either)
    except PermissionError as exc:
        raise SiteUnreadable(
            f"{path} cannot be read ({exc.strerror}): the local site there is another "
            "user's; run as its owner"
        ) from exc
    except (OSError, ValueError) as exc:
        raise SiteError(f"{path} is not a valid {what} ({exc}); remove it") from exc
    if not isinstance(data, dict):
        raise SiteError(f"{path} is not a valid {what}; remove it")
    return data


def site_directory(path: Path) -> None:
    """Make ``path`` (the site's directory or a node's in it) if missing, and 0711: its
    owner's, searchable by QEMU's user on its way to a disk below, listable by nobody
    else (docs/design/host-environment.md, Permissions)."""
    if path.exists() and not path.is_dir():
        # (mkdir said only "File exists")
        raise SiteError(f"{path} is not a directory: a site needs a directory of its own")
    path.mkdir(parents=True, exist_ok=True)
    os.chmod(path, 0o711)


def read_record(site_dir: str | os.PathLike[str]) -> SiteRecord | None:
    """The site record in ``site_dir``, or None when no site was started there."""
    path = Path(site_dir) / SITE_FILE
    data = _read_json(path, "site record")
    if data is None:
        return None
    known = {f.name for f in dataclasses.fields(SiteRecord)}
    agent_known = {f.name for f in dataclasses.fields(AgentRecord)}
    try:
        rec = SiteRecord(**{k: v for k, v in data.items() if k in known and k != "agents"})
        agents = data.get("agents") or []
        if not isinstance(agents, list) or not all(isinstance(a, dict) for a in agents):
            raise TypeError("'agents' must be a list of objects")
        rec.agents = [
            AgentRecord(**{k: v for k, v in a.items() if k in agent_known}) for a in agents
        ]
        if not rec.agents:  # the one-node format
            rec.agents = [AgentRecord(rec.node, rec.agent_pid, rec.netns, rec.dir)]
    except TypeError as exc:
        raise SiteError(f"{path} is not a valid site record ({exc}); remove it") from exc
    return rec


def write_record(site_dir: Path, record: SiteRecord) -> None:
    write_private(Path(site_dir) / SITE_FILE, record.to_json())


def read_setup(site_dir: str | os.PathLike[str]) -> SiteSetup | None:
    """The site's setup, or None for a directory where no site was made (or purged)."""
    path = Path(site_dir) / SETUP_FILE
    data = _read_json(path, "site setup")
    if data is None:
        return None
    known = {f.name for f in dataclasses.fields(SiteSetup)}
    try:
        setup = SiteSetup(**{k: v for k, v in data.items() if k in known})
    except TypeError as exc:
        raise SiteError(f"{path} is not a valid site setup ({exc}); remove it") from exc
    if not isinstance(setup.driver, str) or not isinstance(setup.nodes, int):
        raise SiteError(f"{path} is not a valid site setup; remove it")
    return setup


def write_setup(site_dir: Path, setup: SiteSetup) -> None:
    write_private(Path(site_dir) / SETUP_FILE, setup.to_json())
