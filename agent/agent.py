"""The node agent: its parts, wired.

- ``Link`` (agent.link): registration, the order stream (decoded into frozen
  ``NodeOrders`` at the edge), reports, heartbeats, console pushes.
- ``Executor`` (agent.executor): reconcile passes, plan → driver, disks, network.
- ``Staging`` (agent.staging): blobs for orders (cache, peers, service), pins, prefetch.
- ``TrustGate`` (agent.gate): the policy held, verdicts, audit records spooled in the
  state dir (``AuditSpool``, agent.audit) until the service acknowledges them.
- ``Consoles`` (agent.consoles): console logs pushed to the service.
- ``Tasks`` (agent.tasks): the task stream: commands run through guest agents,
  interactive consoles.

See docs/design/agent.md for how an order flows through them.
"""

from __future__ import annotations

import logging
import os
import secrets
import socket
import threading
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

from agent.audit import AuditSpool
from agent.cache import BlobCache
from agent.consoles import Consoles
from agent.disks import WorkspaceFiles
from agent.executor import Executor
from agent.gate import TrustGate
from agent.link import Link
from agent.metrics import AgentMetrics
from agent.netsetup import Networking, NullNetworking
from agent.peers import PeerChannels, PeerServer
from agent.save import Saver
from agent.staging import Staging
from agent.status import Sight
from agent.tasks import Tasks
from agent.virt.base import Driver, local_capacity
from images import signing
from workspace import version
from workspace.config import AgentConfig
from workspace.domain.model import NodeCondition, NodeInfo, NodeOrders
from workspace.errors import DriverError
from workspace.files import write_private

log = logging.getLogger("agent")

# The id of an agent's state directory (made once): with the host's name, the directory
# and the host's boot, the key the agent registers with (NodeInfo.agent_key).
AGENT_ID_FILE = "agent-id"
# The kernel's id of this boot of the host: a host cloned whole (its state directory, its
# agent-id and its name too) differs from the original by it alone.
BOOT_ID_FILE = "/proc/sys/kernel/random/boot_id"


def agent_key(state_dir: str) -> str:
    """ "HOST:STATE_DIR (ID, boot B)": the same for this agent after a restart (the one
    agent per state directory, workspace/sole.py), another for an agent of the same node
    name on another host or state directory, or on a clone of this host whole."""
    path = Path(state_dir) / AGENT_ID_FILE
    try:
        made = path.read_text().strip()
    except FileNotFoundError:
        made = ""
    if not made:
        made = secrets.token_hex(6)
        write_private(path, made + "\n")  # as every file of the agent's, whatever the umask
    try:
        boot = Path(BOOT_ID_FILE).read_text().strip()[:8]
    except OSError:
        boot = ""
    ids = f"{made}, boot {boot}" if boot else made
    return f"{socket.gethostname()}:{os.path.realpath(state_dir)} ({ids})"


class Agent:
    def __init__(
        self, cfg: AgentConfig, driver: Driver, networking: Networking | None = None
    ) -> None:
        self.cfg = cfg
        self.driver = driver
        self.net: Networking = networking or NullNetworking()
        state = Path(cfg.state_dir)
        state.mkdir(parents=True, exist_ok=True)
        os.chmod(state, 0o711)  # QEMU crosses it to the disks below; nobody lists it
        self.key = agent_key(cfg.state_dir)
        self.stop_event = threading.Event()
        self.cache = BlobCache(
            cfg.cache_path, cfg.cache_budget_bytes, quarantine_max_bytes=cfg.quarantine_max_bytes
        )
        self.files = WorkspaceFiles(state / "workspaces")
        self.audit = AuditSpool(state)
        self.gate = TrustGate(cfg.node, self.audit)
        self.link = Link(cfg, self, self.cache, self.audit, self.stop_event)
        self.peers = PeerChannels(cfg.node, cfg.tls)
        self.peer_server: PeerServer | None = None
        self.staging = Staging(
            self.cache,
            self.gate,
            self.peers.source,
            self.link.blob_source(),
            cfg.prefetch_parallel,
            self.link.report_soon,
        )
        self.executor = Executor(
            driver,
            self.files,
            self.net,
            self.staging,
            self.gate,
            self.link.report,
            cfg.max_parallel_ops,
            cfg.resync_interval_s,
            self.stop_event,
            self.link.report_soon,
        )
        self.consoles = Consoles(
            self.files, self.link, lambda: list(self.executor.orders()), self.stop_event
        )
        self.saver = Saver(self.files, driver)
        self.tasks = Tasks(
            cfg, driver, self.stop_event, self.link.wait_connected, self._name_of, self.saver
        )
        self._threads: list[threading.Thread] = []
        self.metrics: AgentMetrics | None = None
        self.metrics_url = ""
        # The host's (cpus, memory_mib) as the hypervisor last said (``_host_capacity``).
        self._capacity: tuple[int, int] | None = None
        # The sequence of the last orders taken (``sight``).
        self._sequence = 0

    def _name_of(self, workspace_id: str) -> str:
        order = self.executor.orders().get(workspace_id)
        return order.name if order is not None else ""

    @property
    def peer_address(self) -> str:
        """Where other agents fetch blobs from this one ('' when it serves no peers)."""
        return self.staging.own_address

    # -- lifecycle ---------------------------------------------------------------------

    def start(self) -> None:
        if self.cfg.metrics_listen:
            self.metrics = AgentMetrics(self.cfg.node, self.cache, self.executor, self.driver)
            self.metrics_url = self.metrics.serve(self.cfg.metrics_listen).url
        if self.cfg.peer_listen:
            self.peer_server = PeerServer(
                self.cache,
                self.cfg.node,
                self.cfg.peer_listen,
                self.cfg.peer_advertise,
                self.cfg.tls,
            )
            self.staging.own_address = self.peer_server.start()
        if gone := self.saver.leftovers():
            log.info("removed %d copy(ies) of disks a save left unfinished", gone)
        for target, name in (
            (self.link.run, "connection"),
            (self.executor.run, "reconcile"),
            (self.link.heartbeats, "heartbeat"),
            (self.consoles.run, "console"),
            (self.tasks.run, "tasks"),
        ):
            t = threading.Thread(target=target, name=name, daemon=True)
            t.start()
            self._threads.append(t)

    def stop(self) -> None:
        self.stop_event.set()
        self.link.close()
        self.tasks.close()
        self.executor.close()
        self.staging.close()
        if self.peer_server is not None:
            self.peer_server.stop()
        self.peers.close()
        if self.metrics is not None:
            self.metrics.close()
        self.net.close()
        self.driver.close()

    # -- what the link asks of the node (agent.link.Node) ------------------------------

    def node_info(self) -> NodeInfo:
        cpus, mem = self._host_capacity()
        st = os.statvfs(self.cfg.state_dir)
        disk_gib = self.cfg.disk_gib or (st.f_blocks * st.f_frsize) // 1024**3
        return NodeInfo(
            name=self.cfg.node,
            hypervisor=self.cfg.hypervisor or self.driver.hypervisor,
            cpus=self.cfg.cpus or cpus,
            memory_mib=self.cfg.memory_mib or mem,
            disk_gib=disk_gib,
            networks=tuple(n.name for n in self.cfg.networks),
            labels=dict(self.cfg.labels),
            cached_digests=tuple(self.cache.digests()),
            peer_address=self.peer_address,
            disk_mbps=self.cfg.disk_mbps,
            net_mbps=self.cfg.net_mbps,
            agent_version=version.version(),
            agent_key=self.key,
        )

    def _host_capacity(self) -> tuple[int, int]:
        """The host's (cpus, memory_mib) for registration: the config's when it names
        both, else the hypervisor's. While the hypervisor does not answer (libvirtd down
        when the agent starts or its link reconnects), what it said last, else the
        kernel's: a node that cannot register sends no heartbeat, and would go DOWN with
        all its workspaces LOST while their VMs run (the outage is the node's condition,
        hypervisor-unreachable, docs/design/agent.md)."""
        if self.cfg.cpus and self.cfg.memory_mib:
            return self.cfg.cpus, self.cfg.memory_mib
        try:
            self._capacity = self.driver.host_capacity()
        except DriverError as exc:
            log.warning(
                "the hypervisor does not answer (%s); registering with the host's size as %s",
                exc.message,
                "it said last" if self._capacity else "the kernel gives it",
            )
            return self._capacity or local_capacity()
        return self._capacity

    def take_orders(self, orders: NodeOrders, policy: signing.Policy | None) -> None:
        renewed = self.gate.update(policy, orders.stop_running_on_revoke)
        self.peers.take(orders.peer_grants)
        self.staging.take(orders)
        self.executor.take(orders.orders)
        # Set once the executor has them: a sight reads it first, so it never says a
        # later set than the one it saw (saying an earlier one only delays a release).
        self._sequence = orders.sequence
        if renewed:
            self.executor.recheck_running()
        self.staging.kick_prefetch()

    def sight(self, ids: Sequence[str] | None) -> Sight:
        sequence = self._sequence
        return replace(self.executor.sight(ids), orders_sequence=sequence)

    def conditions(self) -> tuple[NodeCondition, ...] | None:
        return self.executor.conditions()
