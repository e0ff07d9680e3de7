"""What mutual TLS costs a caller: per-call latency and a new connection's first call,
plaintext (insecure, unix socket) against mutual TLS (same socket, site identities).

    PYTHONPATH=. python benchmarks/tls.py [--calls 500] [--connects 50]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks._common import emit, summary, timed  # noqa: E402
from tests.functional.harness import Site, SitePki, Stubs, TlsSite  # noqa: E402
from workspace import rpc  # noqa: E402
from workspace.config import TlsConfig  # noqa: E402
from workspace.v1 import admin_pb2  # noqa: E402


def measure(
    name: str, site: Site, tls: TlsConfig | None, calls: int, connects: int
) -> dict[str, float]:
    req = admin_pb2.ListNetworksRequest()
    out = summary(f"{name}_call", timed(lambda: site.stubs.admin.ListNetworks(req), calls))

    def connect_and_call() -> None:
        stubs = Stubs(rpc.channel(site.address, tls))
        stubs.admin.ListNetworks(req)
        stubs.channel.close()

    out.update(summary(f"{name}_connect", timed(connect_and_call, connects)))
    return out


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--calls", type=int, default=500)
    p.add_argument("--connects", type=int, default=50)
    args = p.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / "plain").mkdir()
        (Path(tmp) / "tls").mkdir()
        plain = Site(Path(tmp) / "plain")
        figures = measure("plaintext", plain, None, args.calls, args.connects)
        plain.close()
        site_pki = SitePki(Path(tmp) / "pki")
        secure = TlsSite(Path(tmp) / "tls", site_pki)
        figures.update(measure("mtls", secure, secure.client_tls(), args.calls, args.connects))
        secure.close()
    emit(figures)


if __name__ == "__main__":
    main()
