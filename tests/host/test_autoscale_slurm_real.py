"""The ``slurm-queue`` autoscale signal against a real slurmctld (Debian's), on loopback.

slurmctld runs in the foreground (its pid recorded; stopped by that pid) with a
slurm.conf of the test's own: ``AuthType=auth/none``, a port of its own on 127.0.0.1,
three partitions of nodes that never run (no slurmd). Held jobs are PENDING: 2 nodes in
``debug``, 1 in ``other``, and in ``arrays`` a job array of 3 one-node tasks (squeue
shows a pending array as one line unless asked for its tasks). A cluster on the fake
driver autoscales on ``slurm-queue:debug`` (the service's ``squeue_command`` points
squeue at that slurm.conf) and grows to the 2 nodes its partition waits for;
``slurm-queue:arrays`` wants 3, ``slurm-queue`` (every partition) 6.
"""

from __future__ import annotations

import os
import shutil
import socket
import stat
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.functional.harness import Site
from workspace.domain.elastic import AutoscaleInfo
from workspace.ops import autoscale
from workspace.v1 import clusters_pb2, clusters_pb2_grpc

pytestmark = pytest.mark.host


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _conf(d: Path, port: int) -> str:
    return f"""\
ClusterName=wseauto
SlurmctldHost=localhost(127.0.0.1)
SlurmctldPort={port}
SlurmdPort={port + 1}
SlurmUser=root
AuthType=auth/none
CredType=cred/none
StateSaveLocation={d}/state
SlurmdSpoolDir={d}/spool
SlurmctldPidFile={d}/slurmctld.pid
SlurmctldLogFile={d}/slurmctld.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
MpiDefault=none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
ReturnToService=2
NodeName=wse[1-6] NodeAddr=127.0.0.1 CPUs=1 State=UNKNOWN
PartitionName=debug Nodes=wse[1-2] Default=YES MaxTime=INFINITE State=UP
PartitionName=other Nodes=wse3 MaxTime=INFINITE State=UP
PartitionName=arrays Nodes=wse[4-6] MaxTime=INFINITE State=UP
"""


@pytest.fixture(scope="module")
def slurm(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    if not shutil.which("slurmctld", path="/usr/sbin:/usr/bin"):
        pytest.skip("slurmctld is not installed")
    d = tmp_path_factory.mktemp("wse-slurm")
    (d / "state").mkdir()
    (d / "spool").mkdir()
    conf = d / "slurm.conf"
    conf.write_text(_conf(d, _free_port()))
    env = dict(os.environ, SLURM_CONF=str(conf))
    log = (d / "slurmctld.out").open("wb")
    proc = subprocess.Popen(
        ["/usr/sbin/slurmctld", "-D", "-f", str(conf)],
        stdin=subprocess.DEVNULL,
        stdout=log,
        stderr=subprocess.STDOUT,
        env=env,
    )
    log.close()
    try:
        deadline = time.monotonic() + 60
        while subprocess.run(["sinfo"], env=env, capture_output=True).returncode != 0:
            assert proc.poll() is None, (d / "slurmctld.out").read_text()
            assert time.monotonic() < deadline, "slurmctld did not answer"
            time.sleep(0.5)
        for part, nodes, more in (("debug", "2", []), ("other", "1", []),
                                  ("arrays", "1", ["--array=1-3"])):  # fmt: skip
            argv = ["sbatch", "--hold", "-p", part, "-N", nodes, *more, "--chdir=/tmp"]
            subprocess.run(
                [*argv, "--wrap", "hostname"],
                env=env,
                check=True,
                capture_output=True,
            )
        yield conf
    finally:
        proc.terminate()  # the pid we started
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)


def test_slurm_queue_reads_the_pending_nodes_of_a_partition(slurm: Path, tmp_path: Path) -> None:
    squeue = tmp_path / "squeue"
    squeue.write_text(f'#!/bin/sh\nSLURM_CONF={slurm} exec squeue "$@"\n')
    squeue.chmod(squeue.stat().st_mode | stat.S_IXUSR)
    site = Site(tmp_path / "site", squeue_command=str(squeue), autoscale_interval_s=3600)
    try:
        site.stubs.network()
        site.stubs.import_image("img")
        site.add_agent("node1")
        stub = clusters_pb2_grpc.ClustersStub(site.stubs.channel)
        stub.CreateCluster(
            clusters_pb2.CreateClusterRequest(
                name="wse",
                members=[clusters_pb2.ClusterMember(role="worker", image="img", memory_mib=64)],
            )
        )
        stub.SetAutoscale(
            clusters_pb2.SetAutoscaleRequest(
                id="wse", role="worker", min=1, max=8, signal="slurm-queue:debug", cooldown_s=1
            )
        )
        assert site.service is not None
        (out,) = autoscale.evaluate(site.service.env)
        assert (out.decision.action, out.decision.wanted) == ("grew", 2), out.decision.detail
        c = stub.GetCluster(clusters_pb2.ClusterRef(id="wse"))
        assert sorted(m.name for m in c.members) == ["wse-worker-0", "wse-worker-1"]

        # A pending job array wants a node per task (3), not the one line squeue shows
        # for it by default.
        arrays = AutoscaleInfo("worker", 1, 8, "slurm-queue:arrays", 1)
        assert autoscale.read_signal(site.service.env.cfg, "wse", arrays, 2) == 3
        # Every partition: 2 + 1 + 3 nodes.
        every = AutoscaleInfo("worker", 1, 8, "slurm-queue", 1)
        assert autoscale.read_signal(site.service.env.cfg, "wse", every, 2) == 6
    finally:
        site.close()
