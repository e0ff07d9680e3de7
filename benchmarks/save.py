#!/usr/bin/env python3
"""`ws image save`: how long a stopped workspace's disk takes to become an image, next to
what its two steps cost alone, in the same run.

In a temporary directory (default under /var/tmp), with an in-process service and a
fake-driver agent (real qemu-img on the node's real overlay files, real gRPC over unix
sockets, the real repository):

1. an image whose root is ``--base-mib`` of random bytes (raw) is pushed; a workspace of
   it is created and stopped, and ``--written-mib`` of random bytes are written into its
   overlay with qemu-io (what a guest installing software does to its disk);
2. ``SaveImage`` of it, ``--repeat`` times (each a new version): ``save_s`` (median),
   the whole call: the node's flatten, the upload (hashed, fsynced), the import's checks;
   ``save_mb_s``: MB of the saved blob per second (MB = 10^6 bytes);
3. the baselines, on the same overlay: ``convert_s``, a bare ``qemu-img convert -O qcow2``
   of it (the copy alone); ``cp_sync_s``, ``cp`` of the resulting file and ``sync`` of
   the copy (writing those bytes durably once more, as the repository does);
   ``sha256_s``, hashing the file with hashlib (the repository hashes what it receives);
   ``save_vs_steps``: save_s / (convert_s + cp_sync_s + sha256_s), what the transfer and
   the service add to the steps a save cannot do without.

The page cache is not dropped: everything was just written, so each step reads from
memory; the figures compare code paths, not the disk.

    .venv/bin/python benchmarks/save.py [--base-mib 1024] [--written-mib 256] [--repeat 3]
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks._common import MIB, emit, random_file
from images.digest import of_file
from tests.functional.harness import WS, Site, wait_for
from workspace.client import Client
from workspace.v1 import common_pb2, images_pb2, workspaces_pb2


def say(msg: str) -> None:
    print(f"save: {msg}", file=sys.stderr, flush=True)


def timed(argv: list[str]) -> float:
    t0 = time.perf_counter()
    subprocess.run(argv, check=True, capture_output=True)
    return time.perf_counter() - t0


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--base-mib", type=int, default=1024)
    p.add_argument("--written-mib", type=int, default=256)
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--dir", default="/var/tmp")
    args = p.parse_args()
    with tempfile.TemporaryDirectory(prefix="ws-bench-save-", dir=args.dir) as d:
        tmp = Path(d)
        base = tmp / "base.raw"
        say(f"writing a {args.base_mib} MiB base")
        random_file(base, args.base_mib)
        site = Site(tmp / "site", limits={"max_blob_bytes": 64 * 1024 * MIB})
        try:
            site.stubs.network()
            with Client(site.address) as c:
                blob = c.upload_blob(base)
                site.stubs.images.ImportImage(
                    images_pb2.ImportImageRequest(
                        name="bench:1",
                        partitions=[
                            common_pb2.Partition(
                                name="root",
                                digest=blob.digest,
                                format="raw",
                                mode=common_pb2.PARTITION_MODE_COW,
                            )
                        ],
                    )
                )
                agent = site.add_agent("node1")
                assert site.service is not None
                hub = site.service.hub
                wait_for(lambda: hub.connected("node1"), what="the task stream")
                w = site.stubs.create(name="box", image="bench:1")
                site.stubs.wait_state(w.id, WS.WORKSPACE_STATE_RUNNING, 120)
                site.stubs.ws.StopWorkspace(workspaces_pb2.StopWorkspaceRequest(id=w.id))
                site.stubs.wait_state(w.id, WS.WORKSPACE_STATE_STOPPED, 120)
                overlay = agent.files.dir(w.id) / "root.qcow2"
                written = args.written_mib * MIB
                say(f"writing {args.written_mib} MiB into the overlay")
                pattern = tmp / "written.raw"
                random_file(pattern, args.written_mib)
                subprocess.run(
                    ["qemu-io", "-f", "qcow2", "-c",
                     f"write -s {pattern} 0 {written}", str(overlay)],
                    check=True, capture_output=True,
                )  # fmt: skip
                saves: list[float] = []
                size = 0
                for i in range(args.repeat):
                    t0 = time.perf_counter()
                    img = c.save_image("box", f"bench:{i + 2}")
                    saves.append(time.perf_counter() - t0)
                    size = img.partitions[0].size_bytes
                    say(f"save {i + 1}: {saves[-1]:.2f} s ({size / 1e6:.0f} MB)")
            converts, cps, hashes = [], [], []
            for i in range(args.repeat):
                out = tmp / f"convert-{i}.qcow2"
                converts.append(
                    timed(["qemu-img", "convert", "-f", "qcow2", "-O", "qcow2",
                           str(overlay), str(out)])
                )  # fmt: skip
                copy = tmp / f"cp-{i}.qcow2"
                cps.append(timed(["sh", "-c", f"cp {out} {copy} && sync {copy}"]))
                t0 = time.perf_counter()
                of_file(out)
                hashes.append(time.perf_counter() - t0)
        finally:
            site.close()
        save_s = statistics.median(saves)
        convert_s = statistics.median(converts)
        cp_s = statistics.median(cps)
        sha_s = statistics.median(hashes)
        shutil.rmtree(tmp / "site", ignore_errors=True)
    emit(
        {
            "base_mib": args.base_mib,
            "written_mib": args.written_mib,
            "saved_blob_mb": size / 1e6,
            "save_s": save_s,
            "save_mb_s": size / 1e6 / save_s,
            "convert_s": convert_s,
            "cp_sync_s": cp_s,
            "sha256_s": sha_s,
            "save_vs_steps": save_s / (convert_s + cp_s + sha_s),
        }
    )


if __name__ == "__main__":
    main()
