"""The Python example of docs/clusters.md, run as it is printed there against a site
(the fake driver): what a batch system written from that page does."""

from __future__ import annotations

from pathlib import Path

from tests.functional.doc_examples import marked_block, run_example
from tests.functional.harness import Site
from workspace.v1 import clusters_pb2


def test_the_clusters_doc_python_example_runs(site: Site, tmp_path: Path) -> None:
    site.stubs.network()
    site.stubs.import_image("appliance")
    site.stubs.import_image("debian-12:hpc")
    site.add_agent("node1", cpus=64, memory_mib=65536)  # a head and 16 workers of 2 vCPUs
    code = marked_block("docs/clusters.md", "test_clusters_doc.py")
    out = run_example(code, tmp_path, {"WS_SERVICE": site.cfg.listen})
    assert out.returncode == 0, out.stderr
    printed = out.stdout.splitlines()[-1]
    assert printed.startswith("[('mpi-head-0', '10.213.0.2'), ('mpi-worker-0', '10.213.0.3')")
    assert printed.count("mpi-worker-") == 16
    # The example destroyed the cluster it made, by name.
    every = clusters_pb2.ListClustersRequest(include_terminated=True)
    clusters = site.stubs.clusters.ListClusters(every).clusters
    assert [c.name for c in clusters] == ["mpi"]
    assert clusters[0].state in (
        clusters_pb2.CLUSTER_STATE_TERMINATING,
        clusters_pb2.CLUSTER_STATE_TERMINATED,
    )
