"""docs/api.md, checked against a site (the fake driver): its Python example run exactly
as printed, as the development site's admin (plaintext) and as a user identity over
mutual TLS; and the services it lists are the ones the service reflects."""

from __future__ import annotations

import subprocess
import threading
from pathlib import Path

from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import (
    ProtoReflectionDescriptorDatabase,
)

from tests.functional.doc_examples import marked_block, run_example
from tests.functional.harness import ROOT, WS, Site, SitePki, TlsSite, wait_for
from workspace.v1 import images_pb2, workspaces_pb2

DOC = "docs/api.md"


def example() -> str:
    return marked_block(DOC, "test_api_doc.py")


def prepare(site: Site) -> None:
    """The network, a public image `tiny` (a user sees it too) and one node."""
    site.stubs.network()
    site.stubs.import_image("tiny")
    site.stubs.images.SetImagePublic(images_pb2.SetImagePublicRequest(name="tiny", public=True))
    site.add_agent("node1")


def check_run(site: Site, tmp: Path, env: dict[str, str], owner: str) -> None:
    out = run_example(example(), tmp, {"WS_SERVICE": site.address, **env})
    assert out.returncode == 0, out.stderr
    assert out.stdout.splitlines() == [
        "created gamma and the retry returned it again: True",
        "refused: INVALID_ARGUMENT request id 'job-18-gamma' was already used for a "
        "different request; use a new id",
        "gamma WORKSPACE_STATE_RUNNING node1 ['10.213.0.2']",
        "listed gamma WORKSPACE_STATE_RUNNING",
        "NOT_FOUND: no workspace 'no-such-workspace'; `ws list` shows yours",
        "destroying gamma WORKSPACE_STATE_STOPPING",
    ]
    # One workspace came of the three creates, the caller's, and the example destroyed it.
    every = workspaces_pb2.ListWorkspacesRequest(include_terminated=True, all_users=True)
    made = site.stubs.ws.ListWorkspaces(every).workspaces
    assert [(w.name, w.owner, w.request_id) for w in made] == [("gamma", owner, "job-18-gamma")]
    site.stubs.wait_state(made[0].id, WS.WORKSPACE_STATE_TERMINATED)


def test_the_example_runs_on_a_development_site(site: Site, tmp_path: Path) -> None:
    prepare(site)
    check_run(site, tmp_path, {}, site.cfg.default_owner)


def test_the_example_runs_as_a_user_over_mutual_tls(tmp_path: Path) -> None:
    site = TlsSite(tmp_path / "site", SitePki(tmp_path / "pki"))
    try:
        prepare(site)
        alice = site.pki.user("alice")
        assert sorted(p.name for p in alice.iterdir()) == ["ca.pem", "cert.pem", "key.pem"]
        run_dir = tmp_path / "run"
        run_dir.mkdir()
        check_run(site, run_dir, {"WS_IDENTITY": str(alice)}, "alice")
    finally:
        site.close()


def test_the_services_listed_are_the_ones_reflected(site: Site) -> None:
    reflected = ProtoReflectionDescriptorDatabase(site.stubs.channel).get_services()
    text = (ROOT / DOC).read_text()
    for name in reflected:
        if name != "grpc.reflection.v1alpha.ServerReflection":
            assert f"`{name}`" in text, f"{DOC} does not list the service {name}"
    health = health_pb2_grpc.HealthStub(site.stubs.channel)
    served = health.Check(health_pb2.HealthCheckRequest(service=""), timeout=10).status
    assert served == health_pb2.HealthCheckResponse.SERVING


def test_the_create_defaults_it_states_are_the_sites(site: Site) -> None:
    """docs/api.md once did not say what cpus=0 / memory_mib=0 give."""
    text = " ".join((ROOT / DOC).read_text().split())
    assert "`CreateWorkspaceRequest.cpus` 0 takes 1 vCPU and `memory_mib` 0 takes 512 MiB" in text
    assert "`disk_mbps` is MB/s" in text and "`net_mbps` Mbit/s" in text
    prepare(site)
    w = site.stubs.create(image="tiny", name="sized", cpus=0, memory_mib=0)
    assert (w.cpus, w.memory_mib) == (1, 512)


def test_the_example_stops_waiting_for_a_workspace_destroyed_meanwhile(
    site: Site, tmp_path: Path
) -> None:
    """Its wait settled only on RUNNING, FAILED or LOST: a workspace destroyed while it
    booted (a batch job cancelled) kept it waiting out its whole deadline for a state
    that never came. It now ends at once, saying the workspace is TERMINATED."""
    site.stubs.network()
    site.stubs.import_image("tiny")
    site.add_agent("node1", fake={"boot_delay_s": 3})  # destroyed while it boots
    done: list[subprocess.CompletedProcess[str]] = []
    run = threading.Thread(
        target=lambda: done.append(
            run_example(example(), tmp_path, {"WS_SERVICE": site.address}, timeout_s=60)
        )
    )
    every = workspaces_pb2.ListWorkspacesRequest()
    run.start()
    try:
        gamma = wait_for(
            lambda: next(
                (w for w in site.stubs.ws.ListWorkspaces(every).workspaces if w.name == "gamma"),
                None,
            ),
            what="the example's workspace",
        )
        site.stubs.ws.DestroyWorkspace(workspaces_pb2.WorkspaceRef(id=gamma.id))
    finally:
        run.join()
    assert done, "the example did not end"
    out = done[0]
    assert out.returncode == 1, out.stderr
    assert out.stderr.strip() == "gamma is WORKSPACE_STATE_TERMINATED: destroyed"
