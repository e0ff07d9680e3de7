#!/usr/bin/env python3
"""Deliver one image to N agents, from the service alone and with peer fetch.

On this one machine: a real service and N real agents (each its own process, fake
driver, own cache directory), all over gRPC on unix sockets. The image is one raw
partition of --size-mib random bytes. "Delivered" = every node's workspace on that
image is RUNNING, which with the fake driver means: blob fetched, hashed, fsynced and
renamed into the node's cache, qcow2 overlay created, domain defined and started.

* ``deliver_nN_s``: N workspaces, one per node, created at once; every agent fetches the
  blob from the service (the agents serve no peers).
* ``deliver_nN_peers_s``: agents run their Peers service. One node is seeded from the
  service first; once it has reported the blob, the other N-1 get workspaces at once
  and the service names the seed as their source, so the service sends the blob once
  instead of N times. The time includes the seed's transfer.
* ``preload_nN_s`` / ``preload_nN_peers_s``: the same with ``ws-admin cache preload``
  (``Admin.PreloadImage``) instead of workspaces; "delivered" = every node reports the
  blob cached. Without peers all N nodes are preloaded at once; with peers one node is
  preloaded first and the other N-1 then at once, the service naming the seed as the
  source of their prefetch.

What "with peers" means here: every byte still crosses loopback on the same two cores,
so the total work (send, receive, hash, write) is the same either way; peer fetch only
moves the sending from the one service process to the agents' processes. A real site is
limited by the service host's network link instead, where N transfers from one server
take N times one transfer and peer fetch is what removes that factor. The agents' logs
say where each blob came from: ``deliver_nN_from_peer`` / ``preload_nN_from_peer``
count the agents that got it from a peer in the run with peers (N-1 when it worked).

    .venv/bin/python benchmarks/propagation.py [--size-mib 256] [--nodes 1,4,8]
                                               [--how create,preload]
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks._common import ROOT, emit, start_service
from tests.functional.harness import WS, Stubs, write_config
from workspace import config, rpc
from workspace.config import AgentConfig, node_address_for
from workspace.v1 import admin_pb2, common_pb2, images_pb2, workspaces_pb2

MIB = 1024 * 1024
POLL_S = 0.05
IMAGE = "prop:1"


def say(msg: str) -> None:
    print(f"propagation: {msg}", file=sys.stderr, flush=True)


def wait(pred: object, what: str, timeout_s: float = 600.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not pred():  # type: ignore[operator]
        if time.monotonic() > deadline:
            raise SystemExit(f"timed out waiting for {what}")
        time.sleep(POLL_S)


class Agents:
    """N agent processes; stopped by their own pids."""

    def __init__(self, tmp: Path, service: str, names: list[str], peers: bool) -> None:
        self.names = names
        self.logs: dict[str, Path] = {}
        self.procs: list[subprocess.Popen[bytes]] = []
        env = dict(os.environ, PYTHONPATH=str(ROOT))
        for name in names:
            conf = {
                "node": name,
                "service": service,
                "driver": "fake",
                "state_dir": str(tmp / name),
                "cpus": 8,
                "memory_mib": 16384,
                "disk_gib": 100,
                "resync_interval_s": 1.0,
                "cache_budget_bytes": 0,
                "log_level": "INFO",
                "peer_listen": f"unix:{tmp / (name + '-peers.sock')}" if peers else "",
                "labels": {"node": name},
                "insecure": True,
            }
            path = write_config(tmp / f"{name}.toml", config.from_dict(AgentConfig, conf))
            self.logs[name] = tmp / f"{name}.log"
            with open(self.logs[name], "wb") as log:
                self.procs.append(
                    subprocess.Popen(
                        [sys.executable, "-m", "agent.main", "--config", str(path)],
                        stdout=log,
                        stderr=log,
                        env=env,
                        cwd=ROOT,
                    )
                )

    def count(self, text: str) -> int:
        return sum(text in p.read_text() for p in self.logs.values())

    def stop(self) -> None:
        for p in self.procs:
            if p.poll() is None:
                p.terminate()
        for p in self.procs:
            try:
                p.wait(10)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait(10)


def upload(stubs: Stubs, size_mib: int) -> str:
    def chunks() -> Iterator[images_pb2.BlobChunk]:
        for _ in range(size_mib):
            yield images_pb2.BlobChunk(data=os.urandom(MIB))

    digest = str(stubs.images.UploadBlob(chunks(), timeout=600).digest)
    stubs.images.ImportImage(
        images_pb2.ImportImageRequest(
            name=IMAGE,
            partitions=[
                common_pb2.Partition(
                    name="root", digest=digest, format="raw", mode=common_pb2.PARTITION_MODE_COW
                )
            ],
        )
    )
    return digest


def ready(stubs: Stubs, names: list[str]) -> bool:
    nodes = stubs.admin.ListNodes(admin_pb2.ListNodesRequest()).nodes
    up = {n.name for n in nodes if n.state == admin_pb2.NODE_STATE_READY}
    return up >= set(names)


def states(stubs: Stubs, ids: list[str]) -> dict[str, int]:
    rows = stubs.ws.ListWorkspaces(workspaces_pb2.ListWorkspacesRequest()).workspaces
    return {w.id: w.state for w in rows if w.id in ids}


def create_on(stubs: Stubs, names: list[str], tag: str) -> list[str]:
    return [
        stubs.create(name=f"{tag}-{n}", image=IMAGE, requirements={"node": n}, memory_mib=64).id
        for n in names
    ]


def running(stubs: Stubs, ids: list[str]) -> bool:
    got = states(stubs, ids)
    failed = [i for i, s in got.items() if s == WS.WORKSPACE_STATE_FAILED]
    if failed:
        raise SystemExit(f"workspaces failed: {failed}")
    return all(got.get(i) == WS.WORKSPACE_STATE_RUNNING for i in ids)


def cached(stubs: Stubs, node: str, digest: str) -> bool:
    entries = stubs.admin.ListCache(admin_pb2.NodeRef(name=node)).entries
    return any(e.digest == digest for e in entries)


def preload_on(stubs: Stubs, names: list[str]) -> None:
    stubs.admin.PreloadImage(admin_pb2.PreloadImageRequest(image=IMAGE, nodes=names))


def all_cached(stubs: Stubs, names: list[str], digest: str) -> bool:
    return all(cached(stubs, n, digest) for n in names)


def deliver(
    stubs: Stubs, tmp: Path, service: str, digest: str, n: int, peers: bool, how: str
) -> tuple[float, int]:
    """Seconds to deliver the image to ``n`` new agents, and how many got it from a peer."""
    tag = f"{how[0]}{'p' if peers else 's'}{n}"
    names = [f"{tag}-n{i}" for i in range(n)]
    agents = Agents(tmp, service, names, peers)
    ids: list[str] = []
    try:
        wait(lambda: ready(stubs, names), f"{n} agents to register")
        t0 = time.perf_counter()
        if how == "preload":
            if peers and n > 1:
                preload_on(stubs, names[:1])
                wait(lambda: cached(stubs, names[0], digest), "the seed's report")
                preload_on(stubs, names[1:])
            else:
                preload_on(stubs, names)
            wait(lambda: all_cached(stubs, names, digest), f"{n} nodes to report the blob")
        elif peers and n > 1:
            ids = create_on(stubs, names[:1], tag)
            wait(lambda: running(stubs, ids), "the seed")
            wait(lambda: cached(stubs, names[0], digest), "the seed's report")
            ids += create_on(stubs, names[1:], tag)
            wait(lambda: running(stubs, ids), f"{n} workspaces RUNNING")
        else:
            ids = create_on(stubs, names, tag)
            wait(lambda: running(stubs, ids), f"{n} workspaces RUNNING")
        took = time.perf_counter() - t0
        from_peer = agents.count("from peer")
        from_service = agents.count("from service")
        say(
            f"{how} N={n} {'with' if peers else 'without'} peers: {took:.2f} s "
            f"({from_service} from the service, {from_peer} from a peer)"
        )
        return took, from_peer
    finally:
        for i in ids:
            stubs.ws.DestroyWorkspace(workspaces_pb2.WorkspaceRef(id=i))
        wait(
            lambda: all(s == WS.WORKSPACE_STATE_TERMINATED for s in states(stubs, ids).values()),
            "clean-up",
            60,
        )
        agents.stop()
        for name in names:
            stubs.admin.RemoveNode(admin_pb2.NodeRef(name=name))
        for name in names:
            shutil.rmtree(tmp / name, ignore_errors=True)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--size-mib", type=int, default=256, help="image size")
    p.add_argument("--nodes", default="1,4,8", help="values of N, comma-separated")
    p.add_argument(
        "--how", default="create,preload", help="create (workspaces) and/or preload, comma-sep."
    )
    p.add_argument("--dir", default="/var/tmp", help="where the temporary directory goes")
    p.add_argument("--keep", action="store_true", help="keep the temporary directory")
    args = p.parse_args()
    ns = [int(x) for x in args.nodes.split(",")]
    tmp = Path(tempfile.mkdtemp(prefix="ws-bench-prop-", dir=args.dir))
    proc, service = start_service(tmp, "heartbeat_interval_s = 1\n")
    stubs = Stubs(rpc.channel(service))
    service = node_address_for(service)  # what the agents dial: the Nodes API
    try:
        stubs.network()
        say(f"uploading a {args.size_mib} MiB image")
        digest = upload(stubs, args.size_mib)
        figures: dict[str, float] = {}
        for how in args.how.split(","):
            if how not in ("create", "preload"):
                raise SystemExit(f"--how: create or preload, not {how!r}")
            name = "deliver" if how == "create" else how
            for n in ns:
                took, _ = deliver(stubs, tmp, service, digest, n, False, how)
                figures[f"{name}_n{n}_s"] = took
                took, from_peer = deliver(stubs, tmp, service, digest, n, True, how)
                figures[f"{name}_n{n}_peers_s"] = took
                figures[f"{name}_n{n}_from_peer"] = from_peer
        figures["size_mib"] = args.size_mib
        emit(figures)
        return 0
    finally:
        stubs.channel.close()
        proc.terminate()
        proc.wait(10)
        if args.keep:
            say(f"kept {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
