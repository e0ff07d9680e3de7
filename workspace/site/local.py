"""The local all-in-one site: one service and one or more agents on this machine.

``ws-admin site up`` writes ``service.toml`` and ``agent.toml`` into the site
directory (default ``$WS_SITE_DIR`` or ``~/.local/share/workspace/site``;
``workspace.site.configs``), starts ``python -m workspace.service.main`` and
``python -m agent.main`` in the background (each in its own session, logs in the site
directory; ``workspace.hostproc``) and records their pids and the service address in
``site.json`` (``workspace.site.record``). The service listens on a unix socket in the
site directory, which stays reachable when the site runs in a network namespace.

With the fake driver no network traffic exists at all. With the libvirt driver the
service, the agent, a private libvirtd, the bridges and the VMs all live in the
site's own network namespace (``workspace.site.hostenv``).

``--nodes N`` (N > 1) simulates N hosts: agents ``local-1`` .. ``local-N``, each with
its files in ``<site>/nodes/<node>/`` and, with the libvirt driver, its own network
namespace and private libvirtd (so its own ``wsbr0`` bridge and dnsmasq); the
service then runs in the host's network namespace. A switch namespace connects the
nodes' namespaces (one L2 segment: each node's ``uplink0``, which its agent attaches to
the site network's bridge; ``workspace.site.switch``). See
docs/design/host-environment.md.

``site down`` stops exactly the recorded processes (after checking that each pid
still runs our command line: never by name), removes the namespaces of a libvirt
site and leaves the data in place. Stale records after a crash are harmless: the
next ``site up`` starts whatever is not running. A site keeps its state and its
driver across down/up (``STATE_RULE``); ``site down --purge`` gives a clean slate.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import shutil
import stat
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from workspace import config, errors, hostproc, stopsignals
from workspace.config import AgentConfig, ServiceConfig, TlsConfig
from workspace.files import open_private
from workspace.ports import UNIX_PATH_MAX
from workspace.site import hostenv, identities, metrics_ports, status
from workspace.site.configs import (
    DEFAULT_NETWORK as DEFAULT_NETWORK,  # re-exported
)
from workspace.site.configs import (
    DRIVERS,
    PEER_SOCKET,
    SERVICE_CONFIG,
    NodeSpec,
    write_configs,
)
from workspace.site.record import (
    AGENT_CONFIG,
    NODE_NAME,
    SETUP_FILE,
    SITE_ENV,
    SITE_FILE,
    AgentRecord,
    SiteError,
    SiteRecord,
    SiteSetup,
    default_site_dir,
    read_record,
    read_setup,
    site_directory,
    write_record,
    write_setup,
)
from workspace.site.status import AGENT_MODULE, SERVICE_MODULE, agent_matcher, service_matcher
from workspace.site.switch import Switch, switch_netns

__all__ = [
    "AGENT_MODULE",
    "AGENT_STOP_TIMEOUT_S",
    "DEFAULT_NETWORK",
    "DRIVERS",
    "MAX_NODES",
    "SERVICE_MODULE",
    "SITE_ENV",
    "SITE_FILE",
    "START_TIMEOUT_S",
    "STATE_RULE",
    "STOP_TIMEOUT_S",
    "AgentRecord",
    "LocalSite",
    "SiteError",
    "SiteRecord",
    "UpResult",
    "default_site_dir",
    "read_record",
    "write_record",
]

NODES_DIR = "nodes"  # <site>/nodes/<node>/ on a site of several nodes
MAX_NODES = 16
STOP_TIMEOUT_S = 10.0
# `site down` waits this long for an agent before it kills it: the agent's own stop budget
# (it finishes the operations under way first, a guest's stop up to a minute), as its
# systemd unit gives it. Killed at STOP_TIMEOUT_S, a stop mid-operation left a log
# without its last line ("workspace-agent for node N stopped").
AGENT_STOP_TIMEOUT_S = stopsignals.AGENT_STOP_BUDGET_S
# How long `site up` waits for a daemon that got its stop signal to finish and go: the
# longest stop budget of the site's daemons, an agent's (60 s, less than it, told the user
# to `kill -9` an agent still finishing a guest's stop within its budget).
STOPPING_WAIT_S = AGENT_STOP_TIMEOUT_S
START_TIMEOUT_S = 90.0

STATE_RULE = (
    "A site keeps its state (database, images, the agents' state and VMs' disks) and "
    "its driver and node count across `site down` and `site up`: `site up` without "
    "--driver or --nodes reuses what the site was made with, and refuses another driver "
    "or node count for an existing site. `site down --purge` stops the site and removes "
    "everything it wrote in its directory (a clean slate; the next `site up` may choose "
    "any driver)."
)

# What a site writes in its directory (and in each <site>/nodes/<node>/): all that
# `site down --purge` removes. Nothing else there is touched.
SITE_ENTRIES = (
    SITE_FILE,
    f".{SITE_FILE}.tmp",
    SITE_FILE + ".tmp",  # the name an older release wrote it through
    SETUP_FILE,
    f".{SETUP_FILE}.tmp",
    SETUP_FILE + ".tmp",
    SERVICE_CONFIG,
    f".{SERVICE_CONFIG}.tmp",
    f".{SERVICE_CONFIG}.site",  # what `site up` chose (configs.written_copy)
    f"..{SERVICE_CONFIG}.site.tmp",
    "service.log",
    "service.sock",
    "nodes.sock",  # the service's Nodes API (agents)
    "service",  # the service's data_dir: database and image blobs
    NODES_DIR,
    identities.PKI_DIR,  # the site CA (kept across down/up)
    identities.IDENTITIES_DIR,  # the service's, nodes' and admin's identity directories
)
NODE_ENTRIES = (
    AGENT_CONFIG,
    f".{AGENT_CONFIG}.tmp",
    f".{AGENT_CONFIG}.site",
    f"..{AGENT_CONFIG}.site.tmp",
    "agent.log",
    "agent",  # the agent's state dir: image cache, disks, console logs, DHCP files
    "libvirt",  # the node's private libvirtd (workspace.site.hostenv)
    "hostenv.json",
    ".hostenv.json.tmp",
    "hostenv.lock",
    PEER_SOCKET,  # a node's peer server on a site of several nodes
)
LOCK_FILE = "site.lock"


class HostEnvLike(Protocol):
    """What we use of workspace.site.hostenv.HostEnv."""

    libvirt_uri: str

    def up(self) -> object: ...

    def down(self) -> object: ...

    def run_prefix(self) -> list[str]: ...

    def running(self) -> bool: ...


@dataclass(frozen=True)
class UpResult:
    record: SiteRecord
    already_running: bool


class LocalSite:
    """The all-in-one site in one directory: a service and ``nodes`` agents.

    One node (the default) is named ``local`` and keeps its files in the site
    directory itself. With ``nodes`` = N > 1 the nodes are ``local-1`` .. ``local-N``,
    each in ``<site>/nodes/<name>/`` (own agent config, log, state dir and image
    cache) and, with the libvirt driver, in a network namespace of its own with its
    own private libvirtd, bridge and dnsmasq, like separate hosts. The service then
    runs in the host's network namespace (it needs no network: it listens on the unix
    socket in the site directory); a one-node site keeps it in the node's namespace.
    """

    def __init__(
        self,
        site_dir: str | os.PathLike[str] | None = None,
        driver: str | None = None,
        virt_type: str | None = None,
        node: str = NODE_NAME,
        say: Callable[[str], None] | None = None,
        nodes: int | None = None,
    ) -> None:
        if driver is not None and driver not in DRIVERS:
            raise errors.InvalidArgument(f"unknown driver {driver!r}: use one of {DRIVERS}")
        if nodes is not None and not 1 <= nodes <= MAX_NODES:
            raise errors.InvalidArgument(f"--nodes {nodes}: give 1 to {MAX_NODES}")
        self.dir = Path(site_dir if site_dir is not None else default_site_dir())
        self.dir = self.dir.expanduser().resolve()
        # None: what the site was made with, else fake / qemu (TCG) / 1 node.
        self._driver = driver
        self._virt_type = virt_type
        self._nodes = nodes
        self.driver = driver or "fake"
        self.virt_type = virt_type or "qemu"
        self.nodes = nodes or 1
        self.node = node
        self._say = say or (lambda _msg: None)
        # The site's CA and identities, once `up` has made or found them.
        self.identities: identities.SiteIdentities | None = None

    # -- paths -------------------------------------------------------------------------

    @property
    def socket_path(self) -> Path:
        return self.dir / "service.sock"

    @property
    def address(self) -> str:
        return f"unix:{self.socket_path}"

    @property
    def service_config(self) -> Path:
        return self.dir / SERVICE_CONFIG

    @property
    def agent_config(self) -> Path:
        """Node 1's agent config (the only one on a one-node site)."""
        return self.node_specs()[0].config

    @property
    def service_log(self) -> Path:
        return self.dir / "service.log"

    @property
    def agent_log(self) -> Path:
        """Node 1's agent log (the only one on a one-node site)."""
        return self.node_specs()[0].log

    @property
    def netns_name(self) -> str:
        return "ws-" + hashlib.sha1(str(self.dir).encode()).hexdigest()[:8]

    def node_specs(self, count: int | None = None) -> list[NodeSpec]:
        """The nodes of a site of ``count`` nodes (default: this site's number)."""
        count = count or self.nodes
        if count == 1:
            return [NodeSpec(self.node, self.dir, self.netns_name)]
        return [
            NodeSpec(
                f"{self.node}-{i}",
                self.dir / NODES_DIR / f"{self.node}-{i}",
                f"{self.netns_name}-{i}",
            )
            for i in range(1, count + 1)
        ]

    def record(self) -> SiteRecord | None:
        return read_record(self.dir)

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        site_directory(self.dir)
        with contextlib.suppress(FileNotFoundError):
            os.chmod(self.dir / SETUP_FILE, 0o600)  # one written before it was made 0600
        with open_private(self.dir / LOCK_FILE) as f:
            fcntl.flock(f, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(f, fcntl.LOCK_UN)

    def _hostenv(self, netns: str, node_dir: Path | None = None) -> HostEnvLike:
        """The host environment (netns + private libvirtd) of the node in ``node_dir``."""
        env: HostEnvLike = hostenv.HostEnv(node_dir or self.dir, netns)
        return env

    def _node_env(self, netns: str, node_dir: str | Path) -> HostEnvLike:
        node_dir = Path(node_dir)
        return self._hostenv(netns) if node_dir == self.dir else self._hostenv(netns, node_dir)

    # -- what the site is (kept across down/up) ----------------------------------------

    def setup(self) -> SiteSetup | None:
        """What this site was made with: setup.json, else what an older site left.

        A site made before setup.json existed is recognised by its running record or
        by the agent.toml its last start wrote (rewritten at every start).
        """
        setup = read_setup(self.dir)
        if setup is not None:
            return setup
        rec = read_record(self.dir)
        if rec is not None:
            return SiteSetup(rec.driver, len(rec.agents), rec.virt_type)
        configs = [self.dir / AGENT_CONFIG] if (self.dir / AGENT_CONFIG).exists() else []
        if not configs:
            configs = sorted((self.dir / NODES_DIR).glob(f"*/{AGENT_CONFIG}"))
        if not configs:
            return None
        try:
            agent = config.load(AgentConfig, configs[0])
        except errors.ConfigError:
            return None
        virt_type = agent.libvirt.virt_type if agent.driver == "libvirt" else ""
        return SiteSetup(agent.driver, len(configs), virt_type)

    def _adopt_setup(self) -> SiteSetup | None:
        """Take the driver and node count the site was made with; refuse other ones."""
        setup = self.setup()
        if setup is None:
            return None
        where = self._dir_flag()
        purge = f"`ws-admin site down --purge{where}`"
        if self._driver is not None and self._driver != setup.driver:
            raise SiteError(
                f"the site in {self.dir} was made with driver {setup.driver} and keeps its "
                f"state (database, images, workspaces) across down/up, so it cannot start "
                f"with driver {self._driver}; run `ws-admin site up{where}` without --driver to "
                f"use {setup.driver}, or {purge} first for a clean slate"
            )
        if self._nodes is not None and self._nodes != setup.nodes:
            raise SiteError(
                f"the site in {self.dir} was started with {setup.nodes} node(s), not "
                f"{self._nodes}; run `ws-admin site up{where}` without --nodes, or {purge} "
                f"first for a clean slate"
            )
        self.driver = setup.driver
        self.nodes = setup.nodes
        self.virt_type = self._virt_type or setup.virt_type or "qemu"
        return setup

    def _dir_flag(self) -> str:
        here = default_site_dir().expanduser().resolve() == self.dir
        return "" if here else f" --dir {self.dir}"

    # -- start -------------------------------------------------------------------------

    def _spawn(self, module: str, config_path: Path, log_path: Path, prefix: list[str]) -> Any:
        env = dict(os.environ)
        env["PYTHONUNBUFFERED"] = "1"
        root = str(Path(__file__).resolve().parents[2])
        env["PYTHONPATH"] = os.pathsep.join(p for p in (root, env.get("PYTHONPATH", "")) if p)
        argv = [*prefix, sys.executable, "-m", module, "--config", str(config_path)]
        return hostproc.spawn_daemon(argv, log_path, cwd=self.dir, env=env)

    def up(self, timeout_s: float = START_TIMEOUT_S) -> UpResult:
        """Start whatever of the site is not running; wait until every node is READY."""
        if len(str(self.socket_path)) > UNIX_PATH_MAX:
            raise SiteError(
                f"site directory {self.dir} is too long for a unix socket path "
                f"({len(str(self.socket_path))} > {UNIX_PATH_MAX} bytes); use a shorter --dir"
            )
        with self._locked():
            setup = self._adopt_setup()
            old = read_record(self.dir)
            if old is not None:
                self._await_stopping(old)
            svc_alive = old is not None and self._service_runs(old)
            agents_alive = {
                a.node
                for a in (old.agents if old is not None else [])
                if hostproc.pid_if_ours(a.pid or None, agent_matcher(a.config)) is not None
            }
            everything = old is not None and svc_alive and len(agents_alive) == len(old.agents)
            if old is not None and everything and self._hostenvs_running(old):
                return UpResult(old, already_running=True)
            if old is not None and (svc_alive or agents_alive) and old.driver != self.driver:
                raise SiteError(
                    f"the site in {self.dir} is partly running with driver {old.driver}; "
                    f"run `ws-admin site down{self._dir_flag()}` first"
                )
            if old is not None and old.netns_names() and self.driver != "libvirt":
                raise SiteError(
                    f"the site in {self.dir} was started with driver {old.driver} and its "
                    f"network namespace(s) {', '.join(old.netns_names())} may still exist; "
                    f"run `ws-admin site down{self._dir_flag()}` first"
                )
            made = SiteSetup(self.driver, self.nodes, self.virt_type, time.time())
            if setup is not None:
                made = SiteSetup(setup.driver, setup.nodes, self.virt_type, setup.created_at)
            return self._start(old, svc_alive, agents_alive, timeout_s, made)

    def _await_stopping(self, rec: SiteRecord) -> None:
        """Wait for each daemon of ``rec`` that got its stop signal and still finishes its
        work (its lock file says so: workspace/sole.py) to be gone, so that it is started
        again rather than taken as running: `kill PID; ws-admin site up` used to say the
        site ran and leave it without the daemon a moment later."""
        daemons = [
            (
                "workspace-service",
                rec.service_pid,
                status.service_lock(self.dir),
                service_matcher(self.service_config),
            )
        ]
        daemons += [
            (
                f"workspace-agent of node {a.node}",
                a.pid,
                status.agent_lock(a),
                agent_matcher(a.config),
            )
            for a in rec.agents
        ]
        for what, pid, lock, matches in daemons:
            if not status.is_stopping(pid, lock, matches):
                continue
            self._say(f"waiting for {what} (pid {pid}) to finish stopping")
            deadline = time.monotonic() + STOPPING_WAIT_S
            while hostproc.process_alive(pid):
                if time.monotonic() > deadline:
                    raise SiteError(
                        f"{what} (pid {pid}) is still stopping after {STOPPING_WAIT_S:g} s; "
                        f"run `ws-admin site up{self._dir_flag()}` again once it is gone, or "
                        f"end it with `kill -9 {pid}`"
                    )
                time.sleep(0.2)

    def _service_runs(self, rec: SiteRecord) -> bool:
        matches = service_matcher(self.service_config)
        return hostproc.pid_if_ours(rec.service_pid or None, matches) is not None

    def _hostenvs_running(self, rec: SiteRecord) -> bool:
        """True unless a node's namespace or private libvirtd is gone (libvirt sites)."""
        if rec.driver != "libvirt":
            return True
        if rec.switch_netns and not self._switch(rec).running():
            return False
        return all(self._node_env(a.netns, a.dir).running() for a in rec.agents if a.netns)

    def _switch(self, rec: SiteRecord) -> Switch:
        """The switch between the nodes of ``rec`` (a libvirt site of several nodes)."""
        return Switch(rec.switch_netns, [a.netns for a in rec.agents], DEFAULT_NETWORK.gateway)

    def _start(
        self,
        old: SiteRecord | None,
        svc_alive: bool,
        agents_alive: set[str],
        timeout_s: float,
        setup: SiteSetup,
    ) -> UpResult:
        specs = self.node_specs()
        libvirt = self.driver == "libvirt"
        old_pids = {a.node: a.pid for a in old.agents} if old is not None else {}
        # The CA and identities first: every record written from here on names the
        # admin identity, which the start itself uses to talk to the service.
        # A running daemon keeps the identity it holds (one replaced under it would be
        # revoked: docs/security.md, "The local site").
        ids = identities.ensure(
            self.dir, self.owner, [spec.name for spec in specs], svc_alive, agents_alive
        )
        self.identities = ids
        rec = SiteRecord(
            dir=str(self.dir),
            address=self.address,
            driver=self.driver,
            service_pid=old.service_pid if old is not None and svc_alive else 0,
            virt_type=self.virt_type if libvirt else "",
            started_at=time.time(),
            identity_dir=str(ids.admin),
            agents=[
                AgentRecord(
                    node=spec.name,
                    pid=old_pids.get(spec.name, 0) if spec.name in agents_alive else 0,
                    netns=spec.netns if libvirt else "",
                    dir=str(spec.dir),
                )
                for spec in specs
            ],
        )
        rec.sync_first_node()
        prefixes: dict[str, list[str]] = {spec.name: [] for spec in specs}
        uris: dict[str, str] = {spec.name: "" for spec in specs}
        if libvirt:
            # A one-node site keeps its service in the node's namespace (as it always
            # did); with several nodes it runs in the host's: it needs no network.
            rec.service_netns = specs[0].netns if len(specs) == 1 else ""
            # Several nodes: one L2 segment between them (workspace.site.switch).
            rec.switch_netns = switch_netns(self.netns_name) if len(specs) > 1 else ""
            # Recorded first, so that `site down` can clean up a half-made host env.
            write_record(self.dir, rec)
            for spec in specs:
                who = f" for node {spec.name}" if len(specs) > 1 else ""
                self._say(f"setting up network namespace {spec.netns} and its libvirtd{who}")
                env = self._node_env(spec.netns, spec.dir)
                env.up()
                prefixes[spec.name] = list(env.run_prefix())
                uris[spec.name] = env.libvirt_uri
            if rec.switch_netns:
                self._say(f"setting up switch namespace {rec.switch_netns} between the nodes")
                # An agent running on a node whose uplink0 is new attaches it on its next
                # pass (it joins its uplinked networks on every pass).
                self._switch(rec).up()
        # From here on the site has state: what it is made with is kept (setup.json).
        if read_setup(self.dir) != setup:
            write_setup(self.dir, setup)
        running = {*agents_alive, *([metrics_ports.SERVICE] if svc_alive else [])}
        configs = {metrics_ports.SERVICE: self.service_config}
        configs.update({spec.name: spec.config for spec in specs})
        written = metrics_ports.configured(configs)
        metrics = metrics_ports.addresses(old, [spec.name for spec in specs], running, written)
        rec.service_metrics = metrics_ports.url(metrics[metrics_ports.SERVICE])
        for agent in rec.agents:
            agent.metrics = metrics_ports.url(metrics[agent.node])
        self._write_configs(uris, ids, metrics)
        service_prefix = prefixes[specs[0].name] if rec.service_netns else []
        started: list[tuple[str, Any]] = []
        deadline = time.monotonic() + timeout_s
        try:
            if not svc_alive:
                self._remove_socket()
                self._say(f"starting workspace-service (log {self.service_log})")
                proc = self._spawn(
                    SERVICE_MODULE, self.service_config, self.service_log, service_prefix
                )
                started.append(("service", proc))
                rec.service_pid = proc.pid
                write_record(self.dir, rec)
            self._wait_healthy(started, deadline)
            self._ensure_network()
            for spec, agent in zip(specs, rec.agents, strict=True):
                if spec.name in agents_alive:
                    continue
                who = f" for node {spec.name}" if len(specs) > 1 else ""
                self._say(f"starting workspace-agent{who} (log {spec.log})")
                proc = self._spawn(AGENT_MODULE, spec.config, spec.log, prefixes[spec.name])
                started.append((spec.name, proc))
                agent.pid = proc.pid
                write_record(self.dir, rec)
            self._wait_node_ready(started, deadline, rec.started_at)
        except status.NodesNotReady as exc:
            # Everything runs, but a node does not report: left running (its agent may
            # be refused, and what fixes that needs the service), and said so.
            raise SiteError(
                f"{exc.message}\nthe site's processes are left running: `ws-admin site "
                f"status{self._dir_flag()}` shows them, `ws-admin site down"
                f"{self._dir_flag()}` stops them"
            ) from exc
        except BaseException:
            self._abort(rec, started)
            raise
        return UpResult(rec, already_running=False)

    def _write_configs(
        self,
        libvirt_uris: dict[str, str],
        ids: identities.SiteIdentities,
        metrics: dict[str, str] | None = None,
    ) -> None:
        """service.toml and each node's agent.toml (``libvirt_uris``: node -> URI;
        ``metrics``: "service" and node -> metrics_listen)."""
        not_kept = write_configs(
            self.dir,
            self.address,
            self.node_specs(),
            self.driver,
            self.virt_type,
            libvirt_uris,
            ids,
            metrics,
        )
        for why in not_kept:
            self._say(f"not kept (the site's value used): {why}")

    @property
    def owner(self) -> str:
        """The admin user the site issues an identity to (the service's default_owner)."""
        return ServiceConfig().default_owner

    def client_tls(self) -> TlsConfig | None:
        """The admin identity of the site: the one this start issued, else the running
        site's record's (None: a site from before identities)."""
        if self.identities is not None:
            return TlsConfig(identity_dir=str(self.identities.admin))
        rec = read_record(self.dir)
        if rec is None or not rec.identity_dir:
            return None
        return TlsConfig(identity_dir=rec.identity_dir)

    def _abort(self, rec: SiteRecord, started: list[tuple[str, Any]]) -> None:
        """Stop what this start launched (it did not come up)."""
        for name, proc in reversed(started):
            hostproc.stop_child(proc, STOP_TIMEOUT_S)
            if name == "service":
                rec.service_pid = 0
            for agent in rec.agents:
                if agent.node == name:
                    agent.pid = 0
        if rec.service_pid or any(a.pid for a in rec.agents) or rec.netns_names():
            write_record(self.dir, rec)
        else:
            (self.dir / SITE_FILE).unlink(missing_ok=True)

    def _log_of(self, name: str) -> Path:
        if name == "service":
            return self.service_log
        return next((s.log for s in self.node_specs() if s.name == name), self.agent_log)

    def _wait_healthy(self, started: list[tuple[str, Any]], deadline: float) -> None:
        status.wait_healthy(self.address, started, deadline, self._log_of, self.client_tls())

    def _ensure_network(self) -> None:
        status.ensure_network(self.address, self._say, self.client_tls())

    def _wait_node_ready(
        self, started: list[tuple[str, Any]], deadline: float, since: float
    ) -> None:
        names = [spec.name for spec in self.node_specs()]
        status.wait_nodes_ready(
            self.address, names, started, deadline, self._log_of, self.client_tls(), since
        )

    def _remove_socket(self) -> None:
        for path in (self.socket_path, self.dir / "nodes.sock"):  # clients', agents'
            with contextlib.suppress(FileNotFoundError):
                if stat.S_ISSOCK(path.lstat().st_mode):
                    path.unlink()

    # -- stop --------------------------------------------------------------------------

    def down(self, timeout_s: float | None = None, purge: bool = False) -> list[str]:
        """Stop the recorded processes (and a libvirt site's namespaces); keep the data.
        Each daemon is waited for up to ``timeout_s`` after its SIGTERM, by default its
        own stop budget (an agent ``AGENT_STOP_TIMEOUT_S``, the service
        ``STOP_TIMEOUT_S``), then killed; a wait is said (``say``) as it goes on.

        With ``purge``, then remove everything the site wrote in its directory.
        """
        if not self.dir.is_dir():
            # Nothing to stop: a --dir mistyped is not made (with a lock file in it).
            return [f"no site in {self.dir}" if purge else f"no site running in {self.dir}"]
        with self._locked():
            rec = read_record(self.dir)
            done = self._stop(rec, timeout_s) if rec is not None else []
            if not purge:
                return done or [f"no site running in {self.dir}"]
            if rec is not None and self._still_running(rec):
                raise SiteError(
                    f"part of the site in {self.dir} still runs after stopping it; "
                    "its state was not purged (see `ws-admin site status`)"
                )
            removed = self._purge()
        if removed:
            self._remove_dir_if_empty()
            done.append(f"purged {self.dir}: removed {', '.join(removed)}")
        else:
            done.append(f"nothing to purge in {self.dir}")
        return done

    def _stop(self, rec: SiteRecord, timeout_s: float | None) -> list[str]:
        several = len(rec.agents) > 1
        budget = AGENT_STOP_TIMEOUT_S if timeout_s is None else timeout_s

        names = ["agent" + (f" {a.node}" if several else "") for a in rec.agents]
        daemons = [
            (
                a.pid,
                agent_matcher(a.config),
                self._waiting(
                    f"{what} (pid {a.pid})", budget, "to finish the operations under way", a.log
                ),
            )
            for what, a in zip(names, rec.agents, strict=True)
        ]
        # All at once (in turn, N agents took N budgets); a Ctrl-C ends the wait at once,
        # the agents left to finish their stop on their own.
        outcomes = hostproc.stop_sessions(daemons, budget)
        done = [f"{what}: {outcome}" for what, outcome in zip(names, outcomes, strict=True)]
        matches = service_matcher(self.service_config)
        budget = STOP_TIMEOUT_S if timeout_s is None else timeout_s
        waiting = self._waiting(
            f"service (pid {rec.service_pid})", budget, "to finish", self.service_log
        )
        outcome = hostproc.stop_session(rec.service_pid, matches, budget, waiting)
        done.append(f"service: {outcome}")
        for agent in rec.agents:
            if agent.netns:
                self._node_env(agent.netns, agent.dir).down()
                done.append(f"network namespace {agent.netns}: removed with its VMs")
        if not any(a.netns for a in rec.agents) and rec.netns:
            self._hostenv(rec.netns).down()  # a record from before per-node namespaces
            done.append(f"network namespace {rec.netns}: removed with its VMs")
        if rec.switch_netns:
            self._switch(rec).down()
            done.append(f"switch namespace {rec.switch_netns}: removed with its links")
        self._remove_socket()
        (self.dir / SITE_FILE).unlink(missing_ok=True)
        return done

    def _waiting(self, what: str, budget: float, why: str, log: Path) -> hostproc.Waiting:
        """What a stop says while it waits for ``what`` to go (hostproc's ``waiting``)."""

        def say(waited: float) -> None:
            if waited == 0:
                self._say(f"stopping {what}: waiting up to {budget:g} s for it {why}")
            else:
                self._say(
                    f"still waiting for {what} to stop ({waited:.0f} s of {budget:g} s; "
                    f"what it does: {log})"
                )

        return say

    def _still_running(self, rec: SiteRecord) -> bool:
        if self._service_runs(rec):
            return True
        if any(
            hostproc.pid_if_ours(a.pid or None, agent_matcher(a.config)) is not None
            for a in rec.agents
        ):
            return True
        if rec.switch_netns and hostenv.netns_exists(rec.switch_netns):
            return True
        return rec.driver == "libvirt" and any(
            self._node_env(a.netns, a.dir).running() for a in rec.agents if a.netns
        )

    def _purge(self) -> list[str]:
        """Remove what the site wrote (``SITE_ENTRIES``, ``NODE_ENTRIES``); nothing else."""
        paths = [self.dir / name for name in (*SITE_ENTRIES, *NODE_ENTRIES)]
        present = [p for p in paths if p.is_symlink() or p.exists()]
        for path in present:
            if path.is_dir() and not path.is_symlink():
                mounted = _mount_below(path)
                if mounted is not None:
                    raise SiteError(
                        f"{mounted} is a mount point: the site in {self.dir} was not purged"
                    )
        for path in present:
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path)
            else:
                path.unlink(missing_ok=True)
        (self.dir / LOCK_FILE).unlink(missing_ok=True)  # held: removed last
        return [p.name for p in present]

    def _remove_dir_if_empty(self) -> None:
        with contextlib.suppress(OSError):
            self.dir.rmdir()  # only when empty: files of others stay, and so does the dir

    # -- status ------------------------------------------------------------------------

    def status(self) -> dict[str, Any]:
        """What runs, whether the service answers and in which state every node is."""
        rec = read_record(self.dir)
        if rec is None:  # stopped, or never set up here
            made = (self.dir / SETUP_FILE).exists()
            return {"dir": str(self.dir), "state": "stopped" if made else "absent"}
        matches = service_matcher(self.service_config)
        return status.report(rec, self.dir, matches, self.service_log)

    def processes(self, rec: SiteRecord) -> dict[str, Any]:
        """What ``rec`` says the site started, in `status`'s keys (``site up -o json``)."""
        return status.processes(rec, self.service_log)


def _mount_below(top: Path) -> Path | None:
    """The first mount point at or below ``top`` (without following symlinks), if any."""
    if os.path.ismount(top):
        return top
    for root, dirs, _files in os.walk(top):
        for name in dirs:
            path = Path(root) / name
            if not path.is_symlink() and os.path.ismount(path):
                return path
    return None
