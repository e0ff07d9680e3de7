#!/usr/bin/env python3
"""The node cache: disk preparation on a cache hit, and one transfer's throughput.

In one run, in a temporary directory (default under /var/tmp):

1. writes a 64 MiB and a 2 GiB file of random bytes (real data: nothing sparse), and
   puts both into a BlobCache (the agent's cache) as blobs;
2. cache hit: N times, ``BlobCache.ensure`` (a hit: index lookup, a stat compared with
   the one recorded when the blob was verified, utime of the record) and
   ``images.qemu_img.create_overlay`` (qemu-img create -f qcow2 -b BASE -F raw) of a
   fresh overlay, exactly what the agent does to prepare a cow disk whose base is
   cached -> median ``hit_64mib_ms``, ``hit_2gib_ms``; next to it ``cp_2gib_ms``, a plain
   ``cp`` of the 2 GiB file (the cost of preparing the disk by copying). Also
   ``hit_2gib_after_restart_ms``: the first hit after an agent restart (the record is
   reloaded; nothing is read while the blob's stat is unchanged);
   the verification on a hit, alone: ``verify_hit_2gib_us``, median of
   ``BlobCache.check`` (one stat compared with the record) next to
   ``rehash_2gib_ms``, the same check after the blob's mtime moved (a full re-hash:
   what every hit would cost without the record);
3. transfer: starts a real service (subprocess), uploads the 2 GiB file (or --transfer-mib
   of it), then times one ``Nodes.FetchBlob`` stream into an empty BlobCache through the
   agent's own fetch path (agent.peers.service_source: gRPC over a unix socket, hash while
   writing, fsync, rename) -> ``transfer_mb_s``; next to it ``cp_mb_s``, ``cp`` of the
   same file. MB = 10^6 bytes.

The page cache is not dropped: the source files were just written, so both ``cp`` and
the service read them from memory; the figures compare our code paths with cp on equal
terms, not disk speed. Every write goes to a new file that is kept until the end of the
run, for cp as for the cache: on a VM, page-cache pages freed by an unlink and reused at
once are several times cheaper than fresh ones, which would favour whichever ran second.

    .venv/bin/python benchmarks/cache.py [--repeat 20] [--big-mib 2048] [--dir /var/tmp]
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from agent.cache import BlobCache, Source
from agent.peers import service_source
from benchmarks._common import MIB, emit, random_file, start_service
from images import qemu_img
from images.digest import of_file
from workspace import rpc
from workspace.config import node_address_for
from workspace.node.v1 import nodes_pb2_grpc
from workspace.v1 import images_pb2, images_pb2_grpc


def say(msg: str) -> None:
    print(f"cache: {msg}", file=sys.stderr, flush=True)


def from_file(path: Path) -> Source:
    def fetch(digest: str, offset: int) -> Iterator[bytes]:
        with open(path, "rb") as f:
            f.seek(offset)
            while chunk := f.read(MIB):
                yield chunk

    return Source("local file", fetch)


def no_fetch(digest: str, offset: int) -> Iterator[bytes]:
    raise AssertionError("a cache hit must not fetch")


def hit_ms(cache: BlobCache, digest: str, work: Path, repeat: int) -> float:
    times = []
    for i in range(repeat):
        overlay = work / f"overlay-{i}.qcow2"
        t0 = time.perf_counter()
        base = cache.ensure(digest, no_fetch)
        qemu_img.create_overlay(base, "raw", overlay)
        times.append(time.perf_counter() - t0)
        overlay.unlink()
    return statistics.median(times) * 1000


def verify_us(cache: BlobCache, digest: str, repeat: int) -> float:
    """Median microseconds of the integrity check a hit does (stat vs the record)."""
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        checked = cache.check(digest)
        times.append(time.perf_counter() - t0)
        assert checked is not None and not checked.rehashed
    return statistics.median(times) * 1e6


def rehash_ms(cache: BlobCache, digest: str, repeat: int) -> float:
    """Median milliseconds of the same check when the blob's stat changed (touched, not
    modified): a full re-hash."""
    path = cache.path(digest)
    times = []
    for _ in range(repeat):
        st = path.stat()
        os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 1000))
        t0 = time.perf_counter()
        checked = cache.check(digest)
        times.append(time.perf_counter() - t0)
        assert checked is not None and checked.rehashed and checked.intact
    return statistics.median(times) * 1000


def cp_s(src: Path, dst: Path) -> float:
    """Seconds for ``cp SRC DST``; DST is kept until the end of the run (see below)."""
    t0 = time.perf_counter()
    subprocess.run(["cp", str(src), str(dst)], check=True)
    return time.perf_counter() - t0


def transfer(tmp: Path, src: Path) -> float:
    """Seconds for one FetchBlob of ``src`` from a real service into an empty cache."""
    (tmp / "svc").mkdir()
    proc, address = start_service(tmp / "svc")
    try:
        channel = rpc.channel(address)
        images = images_pb2_grpc.ImagesStub(channel)

        def chunks() -> Iterator[images_pb2.BlobChunk]:
            with open(src, "rb") as f:
                while data := f.read(MIB):
                    yield images_pb2.BlobChunk(data=data)

        say(f"uploading {src.stat().st_size // MIB} MiB to the service")
        digest = images.UploadBlob(chunks(), timeout=600).digest
        node_address = node_address_for(address)  # the service's Nodes API
        nodes = nodes_pb2_grpc.NodesStub(rpc.channel(node_address))
        cache = BlobCache(tmp / "transfer-cache")
        source = service_source("bench", lambda: nodes, node_address)
        t0 = time.perf_counter()
        cache.ensure(digest, [source], src.stat().st_size)
        took = time.perf_counter() - t0
        channel.close()
        return took
    finally:
        proc.terminate()
        proc.wait(10)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--repeat", type=int, default=20, help="cache hits timed per size")
    p.add_argument("--small-mib", type=int, default=64)
    p.add_argument("--big-mib", type=int, default=2048)
    p.add_argument("--dir", default="/var/tmp", help="where the temporary directory goes")
    p.add_argument("--keep", action="store_true", help="keep the temporary directory")
    args = p.parse_args()
    if not qemu_img.available():
        raise SystemExit("qemu-img is needed (Debian package qemu-utils)")
    tmp = Path(tempfile.mkdtemp(prefix="ws-bench-cache-", dir=args.dir))
    try:
        small, big = tmp / "small.raw", tmp / "big.raw"
        say(f"writing {args.small_mib} MiB and {args.big_mib} MiB of random data in {tmp}")
        random_file(small, args.small_mib)
        random_file(big, args.big_mib)
        cache = BlobCache(tmp / "cache")
        work = tmp / "work"
        work.mkdir()
        digests = {}
        for name, path in (("small", small), ("big", big)):
            digests[name] = of_file(path)
            t0 = time.perf_counter()
            cache.ensure(digests[name], [from_file(path)], path.stat().st_size)
            say(f"{name}: into the cache in {time.perf_counter() - t0:.2f} s")
        figures: dict[str, float] = {
            "hit_64mib_ms": hit_ms(cache, digests["small"], work, args.repeat),
            "hit_2gib_ms": hit_ms(cache, digests["big"], work, args.repeat),
            "cp_2gib_ms": statistics.median(cp_s(big, work / f"cp-{i}") for i in range(3)) * 1000,
        }
        restarted = BlobCache(tmp / "cache")  # an agent restart: records reloaded
        figures["hit_2gib_after_restart_ms"] = hit_ms(restarted, digests["big"], work, 1)
        figures["verify_hit_2gib_us"] = verify_us(cache, digests["big"], args.repeat * 50)
        figures["rehash_2gib_ms"] = rehash_ms(cache, digests["big"], 3)

        took = transfer(tmp, big)
        size_mb = big.stat().st_size / 1e6
        figures["transfer_mb_s"] = size_mb / took
        figures["cp_mb_s"] = size_mb / cp_s(big, work / "cp-transfer")
        emit(figures)
        return 0
    finally:
        if args.keep:
            say(f"kept {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
