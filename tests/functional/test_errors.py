"""Bad input gets a clear error and loses nothing."""

from __future__ import annotations

import json
from pathlib import Path

import grpc
import pytest

from tests.functional.harness import WS, Site, wait_for
from workspace.v1 import (
    admin_pb2,
    common_pb2,
    images_pb2,
    projects_pb2,
    projects_pb2_grpc,
    trust_pb2,
    workspaces_pb2,
)

DS = common_pb2.DesiredState


def rpc_error(fn, *args, **kw) -> grpc.RpcError:  # type: ignore[no-untyped-def]
    with pytest.raises(grpc.RpcError) as err:
        fn(*args, **kw)
    return err.value


def nothing_left(site: Site) -> None:
    s = site.stubs
    assert list(s.ws.ListWorkspaces(workspaces_pb2.ListWorkspacesRequest()).workspaces) == []
    node = s.admin.ListNodes(admin_pb2.ListNodesRequest()).nodes[0]
    assert (node.used_cpus, node.used_memory_mib, node.workspaces) == (0, 0, 0)
    assert all(
        n.allocated == 0 for n in s.admin.ListNetworks(admin_pb2.ListNetworksRequest()).networks
    )


@pytest.mark.parametrize(
    ("kw", "code", "words"),
    [
        ({"image": "nope"}, grpc.StatusCode.NOT_FOUND, "image 'nope' not found"),
        ({"image": ""}, grpc.StatusCode.INVALID_ARGUMENT, "an image is required"),
        ({"cpus": -1}, grpc.StatusCode.INVALID_ARGUMENT, "cpus must be between"),
        ({"cpus": 1000}, grpc.StatusCode.INVALID_ARGUMENT, "cpus must be between"),
        ({"memory_mib": 1}, grpc.StatusCode.INVALID_ARGUMENT, "memory_mib must be between"),
        ({"memory_mib": 10**9}, grpc.StatusCode.INVALID_ARGUMENT, "memory_mib must be between"),
        ({"name": "Bad_Name"}, grpc.StatusCode.INVALID_ARGUMENT, "is not valid"),
        ({"networks": ["nonet"]}, grpc.StatusCode.NOT_FOUND, "network 'nonet' does not exist"),
        ({"memory_mib": 65536}, grpc.StatusCode.RESOURCE_EXHAUSTED, "too little free memory"),
    ],
)
def test_invalid_create_is_refused_and_leaves_nothing(
    ready_site: Site, kw: dict[str, object], code: grpc.StatusCode, words: str
) -> None:
    err = rpc_error(ready_site.stubs.create, **kw)
    assert err.code() == code
    assert words in err.details()
    nothing_left(ready_site)


@pytest.mark.parametrize(
    ("kw", "code", "says"),
    [
        (
            {"cpus": -1},
            grpc.StatusCode.INVALID_ARGUMENT,
            "cpus must be between 1 and 64, got -1 (the site's limits.max_cpus)",
        ),
        (
            {"cpus": 1000},
            grpc.StatusCode.INVALID_ARGUMENT,
            "cpus must be between 1 and 64, got 1000 (the site's limits.max_cpus)",
        ),
        (
            {"memory_mib": -5},
            grpc.StatusCode.INVALID_ARGUMENT,
            "memory_mib must be between 16 and 524288, got -5 (the site's "
            "limits.min_memory_mib and max_memory_mib)",
        ),
        (
            {"networks": ["default", "nonet"]},
            grpc.StatusCode.NOT_FOUND,
            "network 'nonet' does not exist; `ws-admin network list` shows them",
        ),
    ],
)
def test_scheduler_input_of_a_request_a_create_refuses_is_refused_as_it(
    ready_site: Site, kw: dict[str, object], code: grpc.StatusCode, says: str
) -> None:
    """`GetSchedulerInput` (`ws-admin schedule dump`, whose own flags stop a bad size
    before the call; a batch system calls it directly) dumped -1 CPUs, -5 MiB and a
    network that does not exist as the request, for `schedule explain` to replay: a
    request no create would send. It is refused as the create refuses it."""
    err = rpc_error(ready_site.stubs.admin.GetSchedulerInput, admin_pb2.SchedulerInputRequest(**kw))
    assert (err.code(), err.details()) == (code, says)


def test_scheduler_input_without_a_network_is_a_create_s_default(ready_site: Site) -> None:
    """A request naming no network joins "default", as a create does; the input said it
    joined none, so nodes not serving "default" seemed to fit it."""
    doc = json.loads(
        ready_site.stubs.admin.GetSchedulerInput(admin_pb2.SchedulerInputRequest()).json
    )
    (request,) = doc["requests"]
    assert (request["cpus"], request["memory_mib"], request["networks"]) == (
        1,
        512,
        ["default"],
    )


def test_duplicate_name_is_refused(ready_site: Site) -> None:
    ready_site.stubs.create(name="dup")
    err = rpc_error(ready_site.stubs.create, name="dup")
    assert err.code() == grpc.StatusCode.ALREADY_EXISTS


def test_no_node_registered(site: Site) -> None:
    site.stubs.network()
    site.stubs.import_image("img")
    err = rpc_error(site.stubs.create, name="lonely")
    assert err.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "no nodes are registered" in err.details()


def test_pool_exhaustion_loses_nothing(site: Site) -> None:
    site.stubs.network("tiny", "10.213.9.0/29")  # 6 hosts: gateway + 5 addresses
    site.stubs.import_image("img")
    site.add_agent("node1", networks=[{"name": "tiny"}])
    for i in range(5):
        site.stubs.create(name=f"t{i}", networks=["tiny"], memory_mib=64)
    err = rpc_error(site.stubs.create, name="t5", networks=["tiny"], memory_mib=64)
    assert err.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "no free address" in err.details()
    live = site.stubs.ws.ListWorkspaces(workspaces_pb2.ListWorkspacesRequest()).workspaces
    assert len(live) == 5
    assert len({w.nics[0].ip for w in live}) == 5
    node = site.stubs.admin.ListNodes(admin_pb2.ListNodesRequest()).nodes[0]
    assert node.workspaces == 5


def test_destroy_twice_and_operations_on_destroyed(ready_site: Site) -> None:
    s = ready_site.stubs
    w = s.create(name="gone")
    s.wait_state(w.id, WS.WORKSPACE_STATE_RUNNING)
    first = s.ws.DestroyWorkspace(s.ref(w.id))
    # Again (a retry whose answer was lost): the workspace as it is, not an error.
    again = s.ws.DestroyWorkspace(s.ref(w.id))
    assert again.desired_state == first.desired_state == DS.DESIRED_STATE_TERMINATED
    s.wait_state(w.id, WS.WORKSPACE_STATE_TERMINATED)
    assert s.ws.DestroyWorkspace(s.ref(w.id)).state == WS.WORKSPACE_STATE_TERMINATED
    for call in (
        s.ws.StartWorkspace,
        s.ws.RebootWorkspace,
        s.ws.PauseWorkspace,
    ):
        err = rpc_error(call, s.ref(w.id))
        assert err.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert "was destroyed" in err.details()
    nothing_left(ready_site)


def test_invalid_transitions(ready_site: Site) -> None:
    s = ready_site.stubs
    w = s.create(name="trans")
    s.wait_state(w.id, WS.WORKSPACE_STATE_RUNNING)
    s.ws.PauseWorkspace(s.ref(w.id))
    s.wait_state(w.id, WS.WORKSPACE_STATE_PAUSED)
    err = rpc_error(s.ws.RebootWorkspace, s.ref(w.id))
    assert err.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "it is PAUSED" in err.details()
    err = rpc_error(s.ws.StartWorkspace, s.ref(w.id))
    assert err.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "only a STOPPED or FAILED workspace can be started" in err.details()
    # What is already so is not refused: a retried (or making-sure) request.
    assert s.ws.PauseWorkspace(s.ref(w.id)).state == WS.WORKSPACE_STATE_PAUSED
    s.ws.ResumeWorkspace(s.ref(w.id))
    s.wait_state(w.id, WS.WORKSPACE_STATE_RUNNING)
    assert s.ws.ResumeWorkspace(s.ref(w.id)).state == WS.WORKSPACE_STATE_RUNNING
    assert s.ws.StartWorkspace(s.ref(w.id)).state == WS.WORKSPACE_STATE_RUNNING


def test_a_resume_withdraws_a_pause_its_node_has_not_made(ready_site: Site) -> None:
    """A pause shows the workspace RUNNING until its node has paused it (here never: its
    agent is away). A batch system that suspends a job and resumes it at once got
    FAILED_PRECONDITION "cannot resume ...: it is RUNNING; only a PAUSED workspace can be
    resumed", and the pause went ahead; a reboot meanwhile silently undid the pause."""
    s = ready_site.stubs
    w = s.create(name="susp")
    s.wait_state(w.id, WS.WORKSPACE_STATE_RUNNING)
    ready_site.stop_agent("node1")
    paused = s.ws.PauseWorkspace(s.ref(w.id))
    assert (paused.state, paused.desired_state) == (
        WS.WORKSPACE_STATE_RUNNING,
        DS.DESIRED_STATE_PAUSED,
    )
    err = rpc_error(s.ws.RebootWorkspace, s.ref(w.id))
    assert err.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert err.details() == (
        "cannot reboot workspace susp: it is being paused (still RUNNING); resume it first"
    )
    assert s.get(w.id).desired_state == DS.DESIRED_STATE_PAUSED
    resumed = s.ws.ResumeWorkspace(s.ref(w.id))
    # Accepted; PAUSED, being resumed, until its node reports (it may have paused it).
    assert (resumed.state, resumed.desired_state) == (
        WS.WORKSPACE_STATE_PAUSED,
        DS.DESIRED_STATE_RUNNING,
    )
    assert s.ws.ResumeWorkspace(s.ref(w.id)).desired_state == DS.DESIRED_STATE_RUNNING


# Each RPC that names an image, a node, a network or a project, with the name left empty.
NAMELESS = {
    "GetImage": ("images", images_pb2.GetImageRequest(), "give an image name"),
    "DeleteImage": ("images", images_pb2.GetImageRequest(), "give an image name"),
    "SetImagePublic": ("images", images_pb2.SetImagePublicRequest(), "give an image name"),
    "GetSignatures": ("trust", trust_pb2.ImageSignaturesRequest(), "give an image name"),
    "AddSignature": ("trust", trust_pb2.AddSignatureRequest(), "give an image name"),
    "DrainNode": ("admin", admin_pb2.NodeRef(), "give a node name"),
    "EnableNode": ("admin", admin_pb2.NodeRef(), "give a node name"),
    "RemoveNode": ("admin", admin_pb2.NodeRef(), "give a node name"),
    "ListCache": ("admin", admin_pb2.NodeRef(), "give a node name"),
    "PreloadImage": ("admin", admin_pb2.PreloadImageRequest(image="img", nodes=[""]), "node"),
    "DeleteNetwork": ("admin", admin_pb2.NetworkRef(), "give a network name"),
    "UpdateNetwork": ("admin", admin_pb2.UpdateNetworkRequest(set_dns=True), "network name"),
    "AddProjectUser": ("projects", projects_pb2.ProjectUserRequest(user="u"), "project name"),
    "RemoveProjectUser": ("projects", projects_pb2.ProjectUserRequest(user="u"), "project"),
    "SetProjectDefaults": ("projects", projects_pb2.SetProjectDefaultsRequest(), "project"),
    "DeleteProject": ("projects", projects_pb2.DeleteProjectRequest(), "give a project name"),
}


@pytest.mark.parametrize("method", sorted(NAMELESS))
def test_a_request_that_names_nothing_is_an_invalid_argument(ready_site: Site, method: str) -> None:
    """As a workspace's or a cluster's RPCs say "give a workspace id or name": these said
    NOT_FOUND, "image '' not found", "no node ''", as if a name had been given."""
    stubs = ready_site.stubs
    service, req, words = NAMELESS[method]
    stub = projects_pb2_grpc.ProjectsStub(stubs.channel) if service == "projects" else None
    err = rpc_error(getattr(stub or getattr(stubs, service), method), req)
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT, err.details()
    assert err.details().startswith("give a") and words in err.details()


def test_a_negative_console_tail_is_refused(ready_site: Site) -> None:
    """GetConsole's tail_bytes is a count (0: everything): a negative one returned the
    whole console, as if 0, while the API refuses every other negative count."""
    s = ready_site.stubs
    s.wait_state(s.create(name="tail").id, WS.WORKSPACE_STATE_RUNNING)
    wait_for(lambda: s.ws.GetConsole(workspaces_pb2.GetConsoleRequest(id="tail")).data)
    req = workspaces_pb2.GetConsoleRequest(id="tail", tail_bytes=-5)
    err = rpc_error(s.ws.GetConsole, req)
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert err.details() == "tail_bytes must not be negative (0: everything), got -5"
    whole = s.ws.GetConsole(workspaces_pb2.GetConsoleRequest(id="tail")).data
    req = workspaces_pb2.GetConsoleRequest(id="tail", tail_bytes=5)
    assert s.ws.GetConsole(req).data == whole[-5:]


def test_unknown_workspace(ready_site: Site) -> None:
    err = rpc_error(ready_site.stubs.get, "does-not-exist")
    assert err.code() == grpc.StatusCode.NOT_FOUND


@pytest.mark.parametrize("char", ["x", "é", "\U0001f600"])
def test_a_refusal_echoing_a_huge_name_still_reaches_the_caller(
    ready_site: Site, char: str
) -> None:
    """The refusal, not "Stream removed" (gRPC's limit on metadata, where status
    details travel percent-encoded, is 16 KiB)."""
    err = rpc_error(ready_site.stubs.get, char * 20_000)
    assert err.code() == grpc.StatusCode.NOT_FOUND
    details = err.details() or ""
    assert details.startswith("no workspace '") and details.endswith(" more characters)")
    assert len(details.encode()) <= 2048


def test_driver_failure_is_reported_with_reason(site: Site) -> None:
    site.stubs.network()
    site.stubs.import_image("img")
    site.add_agent("node1", fake={"fail_create": ["broken*"]})
    w = site.stubs.create(name="broken-1")
    w = site.stubs.wait_state(w.id, WS.WORKSPACE_STATE_FAILED)
    assert "injected failure" in w.reason
    site.stubs.ws.DestroyWorkspace(site.stubs.ref(w.id))
    site.stubs.wait_state(w.id, WS.WORKSPACE_STATE_TERMINATED)
    nothing_left(site)


def test_unsafe_image_is_refused(site: Site, tmp_path: Path) -> None:
    import struct

    header = b"QFI\xfb" + struct.pack(">IQIIQI", 3, 512, 8, 16, 1 << 20, 0)
    hostile = header.ljust(512, b"\0") + b"/etc/shadow"
    digest = site.stubs.upload(hostile)
    req = images_pb2.ImportImageRequest(
        name="evil",
        partitions=[common_pb2.Partition(name="root", digest=digest, format="qcow2")],
    )
    err = rpc_error(site.stubs.images.ImportImage, req)
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "backing file" in err.details()
    # The refused blob left the repository: it is sent again.
    assert list(site.stubs.images.HasBlobs(images_pb2.HasBlobsRequest(digests=[digest])).missing)
    assert site.stubs.upload(hostile) == digest
    req.partitions[0].format = "raw"
    err = rpc_error(site.stubs.images.ImportImage, req)
    assert "declared raw but the content is qcow2" in err.details()
    assert list(site.stubs.images.ListImages(images_pb2.ListImagesRequest()).images) == []


def test_image_with_unknown_blob(site: Site) -> None:
    req = images_pb2.ImportImageRequest(
        name="ghost",
        partitions=[common_pb2.Partition(name="root", digest="sha256:" + "0" * 64, format="raw")],
    )
    err = rpc_error(site.stubs.images.ImportImage, req)
    assert err.code() == grpc.StatusCode.NOT_FOUND


def test_bad_networks(site: Site) -> None:
    for kw, words in (
        ({"subnet": "10.0.0.0/33"}, "not a CIDR"),
        ({"subnet": "10.0.0.1/24"}, "host bits"),
        ({"subnet": "10.0.0.0/24", "gateway": "10.9.9.9"}, "not a host of"),
        ({"subnet": "10.0.0.0/24", "mac_prefix": "zz:00:00"}, "MAC prefix"),
    ):
        err = rpc_error(site.stubs.admin.CreateNetwork, admin_pb2.Network(name="n", **kw))
        assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert words in err.details()
    site.stubs.network("n", "10.0.0.0/24")
    err = rpc_error(site.stubs.network, "n", "10.0.1.0/24")
    assert err.code() == grpc.StatusCode.ALREADY_EXISTS


def test_agent_gone_while_creating(tmp_path: Path) -> None:
    site = Site(tmp_path, node_grace_s=2)
    try:
        site.stubs.network()
        site.stubs.import_image("img")
        site.add_agent("node1", fake={"boot_delay_s": 30.0})
        w = site.stubs.create(name="orphan")
        site.stubs.wait_state(w.id, WS.WORKSPACE_STATE_STARTING)
        # the agent vanishes mid-boot (its stop waits for nothing we need: cut it off)
        agent = site.agents.pop("node1")
        agent.stop_event.set()
        w = site.stubs.wait_state(w.id, WS.WORKSPACE_STATE_LOST, timeout_s=15)
        assert "node1 stopped reporting" in w.reason
        node = site.stubs.admin.ListNodes(admin_pb2.ListNodesRequest()).nodes[0]
        assert node.state == admin_pb2.NODE_STATE_DOWN
        # nothing else is placed on a DOWN node
        err = rpc_error(site.stubs.create, name="next")
        assert err.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "DOWN" in err.details()
        # a LOST workspace can still be destroyed; its address is held until the node
        # confirms the VM is gone (test_lost_destroy.py), or is removed
        site.stubs.ws.DestroyWorkspace(site.stubs.ref(w.id))
        wait_for(lambda: site.stubs.get(w.id).state == WS.WORKSPACE_STATE_TERMINATED)

        def allocated() -> int:
            nets = site.stubs.admin.ListNetworks(admin_pb2.ListNetworksRequest()).networks
            return nets[0].allocated

        assert allocated() == 1
        site.stubs.admin.RemoveNode(admin_pb2.NodeRef(name="node1"))
        assert allocated() == 0
    finally:
        site.close()
