"""A real service and fake-driver agents, in-process or as subprocesses, over real gRPC."""

from __future__ import annotations

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

from agent.agent import Agent
from agent.virt.fake import FakeDriver
from workspace import config, hostproc, rpc
from workspace.config import AgentConfig, ServiceConfig
from workspace.node.v1 import nodes_pb2_grpc
from workspace.service.main import Service
from workspace.v1 import (
    admin_pb2,
    admin_pb2_grpc,
    common_pb2,
    images_pb2,
    images_pb2_grpc,
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


@dataclass
class Stubs:
    channel: grpc.Channel
    # The Nodes API's own server (``node_listen``); None: the same channel.
    node_channel: grpc.Channel | None = None
    ws: workspaces_pb2_grpc.WorkspacesStub = field(init=False)
    images: images_pb2_grpc.ImagesStub = field(init=False)
    admin: admin_pb2_grpc.AdminStub = field(init=False)
    nodes: nodes_pb2_grpc.NodesStub = field(init=False)

    def __post_init__(self) -> None:
        self.ws = workspaces_pb2_grpc.WorkspacesStub(self.channel)
        self.images = images_pb2_grpc.ImagesStub(self.channel)
        self.admin = admin_pb2_grpc.AdminStub(self.channel)
        if self.node_channel is None:
            self.node_channel = self.channel
        self.nodes = nodes_pb2_grpc.NodesStub(self.node_channel)

    # -- conveniences used by many tests -------------------------------------------------

    def upload(self, data: bytes) -> str:
        chunks = (
            images_pb2.BlobChunk(data=data[i : i + 65536]) for i in range(0, len(data), 65536)
        )
        return str(self.images.UploadBlob(chunks).digest)

    def import_image(self, name: str, data: bytes = b"\0" * 65536, fmt: str = "raw") -> None:
        digest = self.upload(data)
        self.images.ImportImage(
            images_pb2.ImportImageRequest(
                name=name,
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
    return config.load(ServiceConfig, None, **kw)


def agent_config(tmp: Path, node: str, service: str, **kw: Any) -> AgentConfig:
    kw.setdefault("state_dir", str(tmp / f"agent-{node}"))
    kw.setdefault("cpus", 8)
    kw.setdefault("memory_mib", 16384)
    kw.setdefault("disk_gib", 100)
    kw.setdefault("resync_interval_s", 1.0)
    return config.from_dict(AgentConfig, {"node": node, "service": service, "driver": "fake", **kw})


class Site:
    """One in-process service and any number of in-process fake agents."""

    def __init__(self, tmp: Path, **service_kw: Any) -> None:
        self.tmp = tmp
        self.cfg = service_config(tmp, **service_kw)
        self.service: Service | None = None
        self.agents: dict[str, Agent] = {}
        self.start_service()
        self.stubs = Stubs(rpc.channel(self.cfg.listen), rpc.channel(self.cfg.node_address))

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

    def add_agent(self, node: str = "node1", **kw: Any) -> Agent:
        cfg = agent_config(self.tmp, node, self.node_address, **kw)
        agent = Agent(cfg, FakeDriver(cfg.fake, cfg.state_dir))
        agent.start()
        self.agents[node] = agent
        wait_for(
            lambda: any(
                n.name == node and n.state == admin_pb2.NODE_STATE_READY
                for n in self.stubs.admin.ListNodes(admin_pb2.ListNodesRequest()).nodes
            ),
            what=f"node {node} READY",
        )
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


def iter_events(stubs: Stubs, ref: str = "") -> Iterator[workspaces_pb2.WorkspaceEvent]:
    yield from stubs.ws.WatchWorkspaces(workspaces_pb2.WatchWorkspacesRequest(id=ref))
