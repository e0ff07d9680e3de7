"""A real service and fake-driver agents, in-process or as subprocesses, over real gRPC.

``Site`` runs plaintext on a unix socket with ``insecure = true`` (every caller is the
admin user ``default_owner``): the fast functional tests. ``TlsSite`` runs the same
over mutual TLS with a CA of its own (``SitePki``, one per test module is enough):
``site.identity("alice", projects=("physics",))`` issues a user identity on demand
and returns stubs bound to it; agents present node identities.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import psycopg

from agent.agent import Agent
from agent.netsetup import Networking
from agent.virt.fake import FakeDriver
from workspace import config, grants, hostproc, pki, rpc
from workspace.config import AgentConfig, ServiceConfig, TlsConfig
from workspace.domain.model import PeerGrants
from workspace.identity import Identity, Kind
from workspace.node.v1 import nodes_pb2_grpc
from workspace.service.main import Service
from workspace.service.replicas import LEADER_LOCK
from workspace.store.engines import LOCK_CLASS
from workspace.v1 import (
    admin_pb2,
    admin_pb2_grpc,
    clusters_pb2_grpc,
    common_pb2,
    images_pb2,
    images_pb2_grpc,
    trust_pb2_grpc,
    workspaces_pb2,
    workspaces_pb2_grpc,
)

ROOT = Path(__file__).resolve().parents[2]
WS = common_pb2.WorkspaceState


def wait_for(pred: Callable[[], Any], timeout_s: float = 20.0, what: str = "condition") -> Any:
    deadline = time.monotonic() + timeout_s
    last: Any = None
    while time.monotonic() < deadline:
        last = pred()
        if last:
            return last
        time.sleep(0.05)
    raise AssertionError(f"timed out after {timeout_s} s waiting for {what} (last: {last!r})")


def answering_late(site: Site, op: str, seconds: float = 3.0) -> None:
    """``site``'s replica hears every ``op`` offer on the tasks channel (``exec``,
    ``console``) ``seconds`` late: its notification thread held, as a loaded machine held
    it (docs/design/replicas.md, "Who holds the agent")."""
    relay = site.service.relay if site.service is not None else None
    assert relay is not None and relay.on_task is not None
    handle = relay.on_task

    def late(payload: str) -> None:
        if json.loads(payload).get("op") == op:
            time.sleep(seconds)
        handle(payload)

    relay.on_task = late


@dataclass
class Stubs:
    channel: grpc.Channel
    # The Nodes API's own server (``node_listen``); None: the same channel.
    node_channel: grpc.Channel | None = None
    ws: workspaces_pb2_grpc.WorkspacesStub = field(init=False)
    images: images_pb2_grpc.ImagesStub = field(init=False)
    admin: admin_pb2_grpc.AdminStub = field(init=False)
    nodes: nodes_pb2_grpc.NodesStub = field(init=False)
    clusters: clusters_pb2_grpc.ClustersStub = field(init=False)
    trust: trust_pb2_grpc.TrustStub = field(init=False)

    def __post_init__(self) -> None:
        self.ws = workspaces_pb2_grpc.WorkspacesStub(self.channel)
        self.images = images_pb2_grpc.ImagesStub(self.channel)
        self.admin = admin_pb2_grpc.AdminStub(self.channel)
        if self.node_channel is None:
            self.node_channel = self.channel
        self.nodes = nodes_pb2_grpc.NodesStub(self.node_channel)
        self.clusters = clusters_pb2_grpc.ClustersStub(self.channel)
        self.trust = trust_pb2_grpc.TrustStub(self.channel)

    # -- conveniences used by many tests -------------------------------------------------

    def upload(self, data: bytes) -> str:
        chunks = (
            images_pb2.BlobChunk(data=data[i : i + 65536]) for i in range(0, len(data), 65536)
        )
        return str(self.images.UploadBlob(chunks).digest)

    def import_image(
        self, name: str, data: bytes = b"\0" * 65536, fmt: str = "raw", context: str = ""
    ) -> None:
        """``context="nocloud"``: workspaces of it get a NoCloud seed (and may have user-data)."""
        digest = self.upload(data)
        self.images.ImportImage(
            images_pb2.ImportImageRequest(
                name=name,
                context=context,
                login_user="debian" if context == "nocloud" else "",
                partitions=[
                    common_pb2.Partition(
                        name="root", digest=digest, format=fmt, mode=common_pb2.PARTITION_MODE_COW
                    )
                ],
            )
        )

    def network(self, name: str = "default", subnet: str = "10.213.0.0/24", **kw: Any) -> None:
        self.admin.CreateNetwork(admin_pb2.Network(name=name, subnet=subnet, **kw))

    def create(self, **kw: Any) -> common_pb2.Workspace:
        kw.setdefault("image", "img")
        return self.ws.CreateWorkspace(workspaces_pb2.CreateWorkspaceRequest(**kw))

    def get(self, ref: str) -> common_pb2.Workspace:
        return self.ws.GetWorkspace(workspaces_pb2.GetWorkspaceRequest(id=ref))

    def wait_state(self, ref: str, state: int, timeout_s: float = 20.0) -> common_pb2.Workspace:
        return wait_for(
            lambda: (w := self.get(ref)).state == state and w,
            timeout_s,
            f"{ref} to be {WS.Name(state)}",
        )  # type: ignore[arg-type]

    def ref(self, ref: str) -> workspaces_pb2.WorkspaceRef:
        return workspaces_pb2.WorkspaceRef(id=ref)


def service_config(tmp: Path, **kw: Any) -> ServiceConfig:
    kw.setdefault("listen", f"unix:{tmp / 'service.sock'}")
    kw.setdefault("data_dir", str(tmp / "service"))
    kw.setdefault("heartbeat_interval_s", 1)
    kw.setdefault("default_stop_timeout_s", 2)
    kw.setdefault("insecure", "tls" not in kw)
    return config.load(ServiceConfig, None, **kw)


def agent_config(tmp: Path, node: str, service: str, **kw: Any) -> AgentConfig:
    kw.setdefault("state_dir", str(tmp / f"agent-{node}"))
    kw.setdefault("cpus", 8)
    kw.setdefault("memory_mib", 16384)
    kw.setdefault("disk_gib", 100)
    kw.setdefault("resync_interval_s", 1.0)
    kw.setdefault("insecure", "tls" not in kw)
    return config.from_dict(AgentConfig, {"node": node, "service": service, "driver": "fake", **kw})


class Site:
    """One in-process service and any number of in-process fake agents."""

    def __init__(self, tmp: Path, **service_kw: Any) -> None:
        self.tmp = tmp
        self.cfg = service_config(tmp, **service_kw)
        self.service: Service | None = None
        self.agents: dict[str, Agent] = {}
        self.start_service()
        tls = self.client_tls()
        self.stubs = Stubs(
            rpc.channel(self.cfg.listen, tls), rpc.channel(self.cfg.node_address, tls)
        )

    def client_tls(self) -> TlsConfig | None:
        """What the site's own stubs (an admin) connect with (None: plaintext)."""
        return None

    def agent_kw(self, node: str) -> dict[str, Any]:
        """Extra agent config for ``node`` (its identity on a TLS site)."""
        return {}

    @property
    def address(self) -> str:
        """The client API."""
        return self.cfg.listen

    @property
    def node_address(self) -> str:
        """The Nodes API, which agents dial."""
        return self.cfg.node_address

    def start_service(self) -> None:
        self.service = Service(self.cfg)
        self.service.start()

    def stop_service(self) -> None:
        if self.service is not None:
            self.service.stop(0)
            self.service = None

    def add_agent(
        self, node: str = "node1", networking: Networking | None = None, **kw: Any
    ) -> Agent:
        """Start an agent of ``node`` (``kw``: its config; ``networking``: what stands for
        the host's networking, none by default)."""
        cfg = agent_config(self.tmp, node, self.node_address, **{**self.agent_kw(node), **kw})
        agent = Agent(cfg, FakeDriver(cfg.fake, cfg.state_dir), networking)
        agent.start()
        self.agents[node] = agent
        # READY with this agent's networks: a node whose agent was just replaced is still
        # READY with the networks the one before registered until this one registers.
        networks = sorted(n.name for n in cfg.networks)
        wait_for(
            lambda: any(
                n.name == node
                and n.state == admin_pb2.NODE_STATE_READY
                and sorted(n.networks) == networks
                for n in self.stubs.admin.ListNodes(admin_pb2.ListNodesRequest()).nodes
            ),
            what=f"node {node} READY with networks {networks}",
        )
        wait_for(agent.link.connected, what=f"node {node}'s order stream")
        return agent

    def stop_agent(self, node: str) -> None:
        self.agents.pop(node).stop()

    def close(self) -> None:
        for node in list(self.agents):
            self.stop_agent(node)
        self.stubs.channel.close()
        if self.stubs.node_channel is not None:
            self.stubs.node_channel.close()
        self.stop_service()


class SitePki:
    """A site CA in ``dir`` and the identity directories issued from it, made on demand."""

    def __init__(self, dir: Path) -> None:
        self.dir = dir
        self.ca = pki.init(dir / "ca")
        self._issued: dict[tuple[Identity, tuple[str, ...]], Path] = {}

    @property
    def crl_file(self) -> Path:
        return self.ca.dir / pki.CRL

    def issue(self, who: Identity, hosts: tuple[str, ...] = ()) -> Path:
        """The identity directory of ``who`` (issued once per identity and hosts)."""
        key = (who, hosts)
        if key not in self._issued:
            out = self.dir / "ids" / f"{who.kind.value}-{who.name}-{len(self._issued)}"
            self.ca.issue(who, out, hosts)
            self._issued[key] = out
        return self._issued[key]

    def user(self, name: str, admin: bool = False, projects: tuple[str, ...] = ()) -> Path:
        return self.issue(Identity(Kind.USER, name, admin, tuple(sorted(projects))))

    def node(self, name: str) -> Path:
        return self.issue(Identity(Kind.NODE, name))

    def service(self) -> Path:
        return self.issue(Identity(Kind.SERVICE, "localhost"), ("localhost",))

    def tls(self, identity_dir: Path) -> TlsConfig:
        return TlsConfig(identity_dir=str(identity_dir), crl_file=str(self.crl_file))

    def grants(
        self, node: str, digests: list[str], clock: Callable[[], float] = time.time
    ) -> PeerGrants:
        """Peer grants of ``digests`` to ``node``, signed as the service signs them."""
        d = self.service()
        return grants.Signer(d / pki.CERT, d / pki.KEY, clock).grants(node, digests)


class TlsSite(Site):
    """A ``Site`` over mutual TLS: the service presents a service identity (``localhost``)
    and checks the CRL; ``stubs`` are the admin user ``default_owner``'s; agents present
    node identities issued on demand."""

    def __init__(self, tmp: Path, site_pki: SitePki, **service_kw: Any) -> None:
        self.pki = site_pki
        self.channels: list[grpc.Channel] = []
        service_kw.setdefault("tls", config.to_dict(site_pki.tls(site_pki.service())))
        super().__init__(tmp, **service_kw)

    def client_tls(self) -> TlsConfig:
        return self.pki.tls(self.pki.user(self.cfg.default_owner, admin=True))

    def agent_kw(self, node: str) -> dict[str, Any]:
        tls = self.pki.tls(self.pki.node(node))
        return {"tls": config.to_dict(tls)}

    def identity(
        self, name: str, admin: bool = False, projects: tuple[str, ...] = (), kind: str = "user"
    ) -> Stubs:
        """Stubs bound to the identity ``kind``/``name`` (issued now if not yet)."""
        if Kind(kind) is Kind.USER:
            d = self.pki.user(name, admin, projects)
        else:
            d = self.pki.issue(Identity(Kind(kind), name), ("localhost",))
        stubs = Stubs(rpc.channel(self.address, self.pki.tls(d)))
        self.channels.append(stubs.channel)
        return stubs

    def revoke(self, name: str) -> None:
        """Revoke every certificate issued to ``name`` (the service re-reads the CRL)."""
        self.pki.ca.revoke(name)

    def close(self) -> None:
        for ch in self.channels:
            ch.close()
        super().close()


class Proc:
    """A daemon as a subprocess, for kill -9 tests. Killed by its own pid only."""

    def __init__(self, args: list[str], log: Path) -> None:
        self.log = log
        env = dict(os.environ, PYTHONPATH=str(ROOT))
        with open(log, "ab") as f:
            self.popen = subprocess.Popen(
                [sys.executable, *args], stdout=f, stderr=f, env=env, cwd=ROOT
            )

    def kill9(self) -> None:
        if self.popen.poll() is None:
            os.kill(self.popen.pid, signal.SIGKILL)
        self.popen.wait(10)

    def terminate(self) -> None:
        hostproc.stop_child(self.popen, timeout_s=10)


def write_config(path: Path, cfg: ServiceConfig | AgentConfig) -> Path:
    """Write a config dataclass as the TOML file its daemon reads (``--config``)."""
    return config.write(path, cfg)


@dataclass
class Replica:
    """A service replica as a subprocess (``start_replicas``): its client and node
    addresses (unix sockets) and its log."""

    proc: Proc
    listen: str
    nodes: str
    log: Path

    @property
    def pid(self) -> int:
        return self.proc.popen.pid

    def said(self, text: str) -> bool:
        return text in self.log.read_text()


def start_replicas(tmp: Path, database_url: str, **kw: Any) -> dict[str, Replica]:
    """Service replicas ``a`` and ``b`` as processes on one database and one data_dir
    (``tmp/data``), each in ``tmp/NAME`` with its sockets ``svc.sock`` and ``nodes.sock``
    and its log ``service.log``; ``kw``: more of their config. Not waited for."""
    made: dict[str, Replica] = {}
    for name in ("a", "b"):
        d = tmp / name
        d.mkdir()
        listen = f"unix:{d / 'svc.sock'}"
        cfg = service_config(
            d, listen=listen, data_dir=str(tmp / "data"), database_url=database_url, **kw
        )
        conf = write_config(d / "service.toml", cfg)
        log = d / "service.log"
        proc = Proc(["-m", "workspace.service.main", "--config", str(conf)], log)
        made[name] = Replica(proc, listen, listen.replace("svc.sock", "nodes.sock"), log)
    return made


def leader_pid(url: str) -> int:
    """The pid of the replica whose session holds the leader lock on database ``url``
    (0: none), as pg_stat_activity names it (``workspace-service leader <pid>``)."""
    with psycopg.connect(url.replace("+psycopg", ""), autocommit=True) as conn:
        row = conn.execute(
            "SELECT a.application_name FROM pg_locks l JOIN pg_stat_activity a USING (pid)"
            " WHERE l.locktype = 'advisory' AND l.classid = %s AND l.objid = %s AND l.granted"
            " AND a.datname = current_database()",
            (LOCK_CLASS, LEADER_LOCK),
        ).fetchone()
    return int(row[0].rsplit(" ", 1)[-1]) if row else 0


def iter_events(stubs: Stubs, ref: str = "") -> Iterator[workspaces_pb2.WorkspaceEvent]:
    yield from stubs.ws.WatchWorkspaces(workspaces_pb2.WatchWorkspacesRequest(id=ref))
