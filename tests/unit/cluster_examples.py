"""A cluster for the tests of cluster specs, `ws cluster`, `ws-admin` and the client: the
example spec of docs/clusters.md and the Cluster message a service returns for it."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from workspace.v1 import clusters_pb2, common_pb2

WS = common_pb2.WorkspaceState
CS = clusters_pb2.ClusterState

# The example of docs/clusters.md: a head node and 16 workers from different images.
MPI_TOML = """\
# an MPI job: one head, 16 workers
name = "mpi"
affinity = "soft-anti"
on_failure = "teardown"
wait_for_capacity_s = 600

[[members]]
role = "head"
image = "appliance"
cpus = 1
memory_mib = 256
count = 1
networks = ["default"]
requirements = { gpu = "1" }

[[members]]
role = "worker"
image = "debian-12:hpc"
cpus = 2
memory_mib = 1024
count = 16
networks = ["default", "ib"]
requirements = { hypervisor = "kvm" }
"""


def write_spec(tmp_path: Path, text: str, name: str = "spec.toml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def member(name: str, role: str, state: Any, ip: str = "", node: str = "") -> common_pb2.Workspace:
    nics = [common_pb2.Nic(network="default", ip=ip)] if ip else []
    return common_pb2.Workspace(
        id=f"id-{name}", name=name, role=role, state=state, node=node, nics=nics, cluster="c1"
    )


def cluster(state: Any = CS.CLUSTER_STATE_RUNNING, member_state: Any = None) -> Any:
    ms = WS.WORKSPACE_STATE_RUNNING if member_state is None else member_state
    return clusters_pb2.Cluster(
        id="c1",
        name="mpi",
        state=state,
        affinity=clusters_pb2.AFFINITY_SOFT_ANTI,
        on_failure=clusters_pb2.FAILURE_POLICY_TEARDOWN,
        members=[
            member("mpi-head-0", "head", ms, "10.0.0.2", "n1"),
            member("mpi-worker-0", "worker", ms, "10.0.0.3", "n2"),
        ],
        spec=[
            clusters_pb2.ClusterMember(role="head", image="a", count=1, cpus=1, memory_mib=256),
            clusters_pb2.ClusterMember(
                role="worker",
                image="b",
                count=1,
                requirements={"gpu": "1"},
                extra_partitions=[
                    common_pb2.Partition(name="scratch", size_bytes=10 * 2**30, ext4=True),
                    common_pb2.Partition(name="raw", size_bytes=1536 * 2**20),
                ],
            ),
        ],
    )
