"""The denial matrix: every RPC of the service, for every kind of caller, over real mutual TLS.

The service runs with the site's TLS material (a CA of our own, a CRL); each caller holds
an identity directory issued by that CA (or none). Each cell makes one minimal call and
checks only whether it got past authorization: allowed means any status but
PERMISSION_DENIED/UNAUTHENTICATED (a NOT_FOUND or INVALID_ARGUMENT of a minimal request
is fine), denied means one of those two (or UNAVAILABLE for a caller without a
certificate, whose TLS handshake fails).

The seed: user A (project P) has image ``img-a`` and workspace ``wa`` on node n1.
Callers: no certificate, A (P), B (Q), C (P), an admin, node n1, node n2, a revoked user.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from tests.functional.harness import service_config
from workspace import pki, rpc
from workspace.config import ServiceConfig
from workspace.identity import Identity, Kind
from workspace.node.v1 import nodes_pb2, nodes_pb2_grpc
from workspace.service.main import Service
from workspace.v1 import (
    access_pb2,
    access_pb2_grpc,
    admin_pb2,
    admin_pb2_grpc,
    clusters_pb2,
    clusters_pb2_grpc,
    common_pb2,
    images_pb2,
    images_pb2_grpc,
    projects_pb2,
    projects_pb2_grpc,
    trust_pb2,
    trust_pb2_grpc,
    usage_pb2,
    workspaces_pb2,
    workspaces_pb2_grpc,
)

CALLERS = ("none", "A", "B", "C", "admin", "n1", "n2", "revoked")
# Expected results per caller, in the order of CALLERS: Y allowed, - denied.
USER = "-YYYY---"
ADMIN = "----Y---"
NODE = "-----Y--"  # every Nodes request below names node n1
OPEN = "-YYYYYYY"
DENIED = (grpc.StatusCode.PERMISSION_DENIED, grpc.StatusCode.UNAUTHENTICATED)
CALL_TIMEOUT_S = 10.0


@dataclass
class Caller:
    channel: grpc.Channel
    ws: workspaces_pb2_grpc.WorkspacesStub
    clusters: clusters_pb2_grpc.ClustersStub
    images: images_pb2_grpc.ImagesStub
    trust: trust_pb2_grpc.TrustStub
    admin: admin_pb2_grpc.AdminStub
    projects: projects_pb2_grpc.ProjectsStub
    nodes: nodes_pb2_grpc.NodesStub
    health: health_pb2_grpc.HealthStub
    node_channel: grpc.Channel
    keys: access_pb2_grpc.KeysStub
    guests: access_pb2_grpc.GuestsStub

    def close(self) -> None:
        self.channel.close()
        self.node_channel.close()

    @classmethod
    def of(cls, channel: grpc.Channel, node_channel: grpc.Channel) -> Caller:
        """Stubs on the client API's channel; the Nodes API has a server of its own."""
        return cls(
            channel,
            workspaces_pb2_grpc.WorkspacesStub(channel),
            clusters_pb2_grpc.ClustersStub(channel),
            images_pb2_grpc.ImagesStub(channel),
            trust_pb2_grpc.TrustStub(channel),
            admin_pb2_grpc.AdminStub(channel),
            projects_pb2_grpc.ProjectsStub(channel),
            nodes_pb2_grpc.NodesStub(node_channel),
            health_pb2_grpc.HealthStub(channel),
            node_channel,
            access_pb2_grpc.KeysStub(channel),
            access_pb2_grpc.GuestsStub(channel),
        )


def connect(cfg: ServiceConfig, ca_file: Path, identity_dir: Path | None) -> Caller:
    creds = grpc.ssl_channel_credentials(
        root_certificates=ca_file.read_bytes(),
        private_key=(identity_dir / "key.pem").read_bytes() if identity_dir else None,
        certificate_chain=(identity_dir / "cert.pem").read_bytes() if identity_dir else None,
    )
    options = [("grpc.ssl_target_name_override", rpc.expected_name())]
    return Caller.of(
        grpc.secure_channel(cfg.listen, creds, options=options),
        grpc.secure_channel(cfg.node_address, creds, options=options),
    )


@dataclass
class World:
    service: Service
    ca: pki.CA
    dirs: dict[str, Path]
    callers: dict[str, Caller]
    workspace_id: str
    image_digest: str
    tmp: Path

    def connect(self, identity_dir: Path | None) -> Caller:
        return connect(self.service.cfg, self.ca.dir / "ca.pem", identity_dir)


def issue(ca: pki.CA, tmp: Path, label: str, ident: Identity, hosts: tuple[str, ...] = ()) -> Path:
    out = tmp / f"id-{label}"
    ca.issue(ident, out, hosts)
    return out


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    tmp = tmp_path_factory.mktemp("access")
    ca = pki.init(tmp / "ca")
    svc_dir = issue(ca, tmp, "service", Identity(Kind.SERVICE, "localhost"), ("localhost",))
    identities = {
        "A": Identity(Kind.USER, "alice", projects=("p",)),
        "B": Identity(Kind.USER, "bob", projects=("q",)),
        "C": Identity(Kind.USER, "carol", projects=("p",)),
        "admin": Identity(Kind.USER, "root", admin=True),
        "n1": Identity(Kind.NODE, "n1"),
        "n2": Identity(Kind.NODE, "n2"),
        "revoked": Identity(Kind.USER, "mallory"),
    }
    dirs = {label: issue(ca, tmp, label, ident) for label, ident in identities.items()}
    ca.revoke("mallory")
    cfg = service_config(
        tmp,
        tls={
            "ca_file": str(ca.dir / "ca.pem"),
            "cert_file": str(svc_dir / "cert.pem"),
            "key_file": str(svc_dir / "key.pem"),
            "crl_file": str(ca.dir / "crl.pem"),
        },
    )
    service = Service(cfg)
    service.start()
    callers = {"none": connect(cfg, ca.dir / "ca.pem", None)}
    callers.update({label: connect(cfg, ca.dir / "ca.pem", d) for label, d in dirs.items()})
    try:
        admin, a, n1 = callers["admin"], callers["A"], callers["n1"]
        admin.admin.CreateNetwork(admin_pb2.Network(name="default", subnet="10.77.0.0/24"))
        for project in ("p", "q"):  # the projects the certificates name
            admin.projects.CreateProject(projects_pb2.Project(name=project))
        n1.nodes.Register(
            nodes_pb2.RegisterRequest(
                node="n1", hypervisor="fake", cpus=8, memory_mib=8192, networks=["default"]
            )
        )
        chunk = images_pb2.BlobChunk(data=b"\0" * 65536)
        digest = a.images.UploadBlob(iter([chunk])).digest
        a.images.ImportImage(
            images_pb2.ImportImageRequest(
                name="img-a",
                partitions=[
                    common_pb2.Partition(
                        name="root",
                        digest=digest,
                        format="raw",
                        mode=common_pb2.PARTITION_MODE_COW,
                    )
                ],
            )
        )
        ws = a.ws.CreateWorkspace(workspaces_pb2.CreateWorkspaceRequest(name="wa", image="img-a"))
        assert ws.node == "n1" and ws.project == "p"
        yield World(service, ca, dirs, callers, ws.id, digest, tmp)
    finally:
        for c in callers.values():
            c.close()
        service.stop(0)


# -- the table -------------------------------------------------------------------------------

Call = Callable[[Caller, World], Any]


def first(stream: Any) -> Any:
    """The first message of a server stream (or its end), then cancel it."""
    try:
        return next(iter(stream), None)
    finally:
        stream.cancel()


def audit_entry() -> trust_pb2.AuditEntry:
    return trust_pb2.AuditEntry(where="service", action="boot", verdict="allow", reason="forged")


NOPE = "does-not-exist"
KY = "workspace.v1.Keys"
GU = "workspace.v1.Guests"
WS, CL, IM, TR, AD, PR, ND = (
    "workspace.v1.Workspaces",
    "workspace.v1.Clusters",
    "workspace.v1.Images",
    "workspace.v1.Trust",
    "workspace.v1.Admin",
    "workspace.v1.Projects",
    "workspace.node.v1.Nodes",
)
T = CALL_TIMEOUT_S

MATRIX: list[tuple[str, str, str, Call]] = [
    # service, method, expected (CALLERS order), the minimal call
    (WS, "CreateWorkspace", USER, lambda c, w: c.ws.CreateWorkspace(
        workspaces_pb2.CreateWorkspaceRequest(name="m"), timeout=T)),
    (WS, "GetWorkspace", USER, lambda c, w: c.ws.GetWorkspace(
        workspaces_pb2.GetWorkspaceRequest(id=NOPE), timeout=T)),
    (WS, "ListWorkspaces", USER, lambda c, w: c.ws.ListWorkspaces(
        workspaces_pb2.ListWorkspacesRequest(), timeout=T)),
    (WS, "StartWorkspace", USER, lambda c, w: c.ws.StartWorkspace(
        workspaces_pb2.WorkspaceRef(id=NOPE), timeout=T)),
    (WS, "StopWorkspace", USER, lambda c, w: c.ws.StopWorkspace(
        workspaces_pb2.StopWorkspaceRequest(id=NOPE), timeout=T)),
    (WS, "RebootWorkspace", USER, lambda c, w: c.ws.RebootWorkspace(
        workspaces_pb2.WorkspaceRef(id=NOPE), timeout=T)),
    (WS, "PauseWorkspace", USER, lambda c, w: c.ws.PauseWorkspace(
        workspaces_pb2.WorkspaceRef(id=NOPE), timeout=T)),
    (WS, "ResumeWorkspace", USER, lambda c, w: c.ws.ResumeWorkspace(
        workspaces_pb2.WorkspaceRef(id=NOPE), timeout=T)),
    (WS, "DestroyWorkspace", USER, lambda c, w: c.ws.DestroyWorkspace(
        workspaces_pb2.WorkspaceRef(id=NOPE), timeout=T)),
    (WS, "WatchWorkspaces", USER, lambda c, w: first(c.ws.WatchWorkspaces(
        workspaces_pb2.WatchWorkspacesRequest(id=NOPE), timeout=T))),
    (WS, "WatchWorkspaceEvents", USER, lambda c, w: first(c.ws.WatchWorkspaceEvents(
        workspaces_pb2.WatchWorkspaceEventsRequest(id=NOPE), timeout=T))),
    (WS, "GetConsole", USER, lambda c, w: c.ws.GetConsole(
        workspaces_pb2.GetConsoleRequest(id=NOPE), timeout=T)),
    (WS, "ExtendLease", USER, lambda c, w: c.ws.ExtendLease(
        workspaces_pb2.ExtendLeaseRequest(id=NOPE, add_s=60), timeout=T)),
    (WS, "UpdateWorkspace", USER, lambda c, w: c.ws.UpdateWorkspace(
        workspaces_pb2.UpdateWorkspaceRequest(id=NOPE, connectivity="cluster"), timeout=T)),
    (WS, "GetUsage", USER, lambda c, w: c.ws.GetUsage(
        usage_pb2.GetUsageRequest(), timeout=T)),
    (WS, "WhoAmI", USER, lambda c, w: c.ws.WhoAmI(
        workspaces_pb2.WhoAmIRequest(), timeout=T)),
    (CL, "CreateCluster", USER, lambda c, w: c.clusters.CreateCluster(
        clusters_pb2.CreateClusterRequest(name="BAD"), timeout=T)),
    (CL, "GetCluster", USER, lambda c, w: c.clusters.GetCluster(
        clusters_pb2.ClusterRef(id=NOPE), timeout=T)),
    (CL, "ListClusters", USER, lambda c, w: c.clusters.ListClusters(
        clusters_pb2.ListClustersRequest(), timeout=T)),
    (CL, "StartCluster", USER, lambda c, w: c.clusters.StartCluster(
        clusters_pb2.ClusterRef(id=NOPE), timeout=T)),
    (CL, "StopCluster", USER, lambda c, w: c.clusters.StopCluster(
        clusters_pb2.ClusterRef(id=NOPE), timeout=T)),
    (CL, "DestroyCluster", USER, lambda c, w: c.clusters.DestroyCluster(
        clusters_pb2.ClusterRef(id=NOPE), timeout=T)),
    (CL, "ScaleCluster", USER, lambda c, w: c.clusters.ScaleCluster(
        clusters_pb2.ScaleClusterRequest(id=NOPE, role="worker", count=1), timeout=T)),
    (CL, "ExtendClusterLease", USER, lambda c, w: c.clusters.ExtendClusterLease(
        clusters_pb2.ExtendClusterLeaseRequest(id=NOPE, add_s=60), timeout=T)),
    (CL, "SetAutoscale", USER, lambda c, w: c.clusters.SetAutoscale(
        clusters_pb2.SetAutoscaleRequest(id=NOPE, role="worker", off=True), timeout=T)),
    (CL, "WatchClusterEvents", USER, lambda c, w: first(c.clusters.WatchClusterEvents(
        clusters_pb2.WatchClusterEventsRequest(id=NOPE), timeout=T))),
    (IM, "UploadBlob", USER, lambda c, w: c.images.UploadBlob(
        iter([images_pb2.BlobChunk(data=b"x")]), timeout=T)),
    (IM, "ImportImage", USER, lambda c, w: c.images.ImportImage(
        images_pb2.ImportImageRequest(name=""), timeout=T)),
    (IM, "ListImages", USER, lambda c, w: c.images.ListImages(
        images_pb2.ListImagesRequest(), timeout=T)),
    (IM, "GetImage", USER, lambda c, w: c.images.GetImage(
        images_pb2.GetImageRequest(name=NOPE), timeout=T)),
    (IM, "HasBlobs", USER, lambda c, w: c.images.HasBlobs(
        images_pb2.HasBlobsRequest(), timeout=T)),
    (IM, "DeleteImage", USER, lambda c, w: c.images.DeleteImage(
        images_pb2.GetImageRequest(name=NOPE), timeout=T)),
    (IM, "GetRepositoryUsage", USER, lambda c, w: c.images.GetRepositoryUsage(
        images_pb2.RepositoryUsageRequest(), timeout=T)),
    (IM, "SetImagePublic", ADMIN, lambda c, w: c.images.SetImagePublic(
        images_pb2.SetImagePublicRequest(name=NOPE, public=True), timeout=T)),
    (IM, "SaveImage", USER, lambda c, w: c.images.SaveImage(
        images_pb2.SaveImageRequest(workspace=NOPE, image="saved:1"), timeout=T)),
    (TR, "AddSignature", USER, lambda c, w: c.trust.AddSignature(
        trust_pb2.AddSignatureRequest(image=NOPE, envelope_json="{}"), timeout=T)),
    (TR, "GetSignatures", USER, lambda c, w: c.trust.GetSignatures(
        trust_pb2.ImageSignaturesRequest(image=NOPE), timeout=T)),
    (TR, "GetPolicy", USER, lambda c, w: c.trust.GetPolicy(
        trust_pb2.GetPolicyRequest(), timeout=T)),
    (TR, "AddKey", ADMIN, lambda c, w: c.trust.AddKey(
        trust_pb2.AddKeyRequest(public_key_pem="not a key"), timeout=T)),
    (TR, "RevokeKey", ADMIN, lambda c, w: c.trust.RevokeKey(
        trust_pb2.RevokeKeyRequest(key_id=NOPE), timeout=T)),
    (TR, "RevokeDigest", ADMIN, lambda c, w: c.trust.RevokeDigest(
        trust_pb2.RevokeDigestRequest(digest="not-a-digest"), timeout=T)),
    (TR, "SetMode", ADMIN, lambda c, w: c.trust.SetMode(
        trust_pb2.SetModeRequest(), timeout=T)),
    (TR, "ListAudit", ADMIN, lambda c, w: c.trust.ListAudit(
        trust_pb2.ListAuditRequest(limit=1), timeout=T)),
    (AD, "ListNodes", ADMIN, lambda c, w: c.admin.ListNodes(
        admin_pb2.ListNodesRequest(), timeout=T)),
    (AD, "CreateNetwork", ADMIN, lambda c, w: c.admin.CreateNetwork(
        admin_pb2.Network(name=""), timeout=T)),
    (AD, "ListNetworks", USER, lambda c, w: c.admin.ListNetworks(
        admin_pb2.ListNetworksRequest(), timeout=T)),
    (AD, "DeleteNetwork", ADMIN, lambda c, w: c.admin.DeleteNetwork(
        admin_pb2.NetworkRef(name=NOPE), timeout=T)),
    (AD, "UpdateNetwork", ADMIN, lambda c, w: c.admin.UpdateNetwork(
        admin_pb2.UpdateNetworkRequest(name=NOPE, set_dns=True), timeout=T)),
    (AD, "DrainNode", ADMIN, lambda c, w: c.admin.DrainNode(
        admin_pb2.NodeRef(name=NOPE), timeout=T)),
    (AD, "EnableNode", ADMIN, lambda c, w: c.admin.EnableNode(
        admin_pb2.NodeRef(name=NOPE), timeout=T)),
    (AD, "RemoveNode", ADMIN, lambda c, w: c.admin.RemoveNode(
        admin_pb2.NodeRef(name=NOPE), timeout=T)),
    (AD, "ListQueue", ADMIN, lambda c, w: c.admin.ListQueue(
        admin_pb2.ListQueueRequest(), timeout=T)),
    (AD, "GetSchedulerInput", ADMIN, lambda c, w: c.admin.GetSchedulerInput(
        admin_pb2.SchedulerInputRequest(image=NOPE), timeout=T)),
    (AD, "ListCache", ADMIN, lambda c, w: c.admin.ListCache(
        admin_pb2.NodeRef(name=NOPE), timeout=T)),
    (AD, "PreloadImage", ADMIN, lambda c, w: c.admin.PreloadImage(
        admin_pb2.PreloadImageRequest(image=NOPE), timeout=T)),
    (AD, "GetUsage", ADMIN, lambda c, w: c.admin.GetUsage(
        usage_pb2.GetUsageRequest(), timeout=T)),
    (AD, "WatchEvents", ADMIN, lambda c, w: first(c.admin.WatchEvents(
        admin_pb2.WatchEventsRequest(), timeout=T))),
    (AD, "SetBackfill", ADMIN, lambda c, w: c.admin.SetBackfill(
        admin_pb2.BackfillEntry(image=NOPE, max=1), timeout=T)),
    (AD, "ListBackfill", ADMIN, lambda c, w: c.admin.ListBackfill(
        admin_pb2.ListBackfillRequest(), timeout=T)),
    (AD, "ClearBackfill", ADMIN, lambda c, w: c.admin.ClearBackfill(
        admin_pb2.ClearBackfillRequest(image=NOPE), timeout=T)),
    (AD, "ListReplicas", ADMIN, lambda c, w: c.admin.ListReplicas(
        admin_pb2.ListReplicasRequest(), timeout=T)),
    (PR, "CreateProject", ADMIN, lambda c, w: c.projects.CreateProject(
        projects_pb2.Project(name=""), timeout=T)),
    (PR, "AddProjectUser", ADMIN, lambda c, w: c.projects.AddProjectUser(
        projects_pb2.ProjectUserRequest(project=NOPE, user="x"), timeout=T)),
    (PR, "ListProjects", ADMIN, lambda c, w: c.projects.ListProjects(
        projects_pb2.ListProjectsRequest(), timeout=T)),
    (PR, "GetQuota", USER, lambda c, w: c.projects.GetQuota(
        projects_pb2.GetQuotaRequest(), timeout=T)),
    (PR, "SetProjectDefaults", ADMIN, lambda c, w: c.projects.SetProjectDefaults(
        projects_pb2.SetProjectDefaultsRequest(project=NOPE), timeout=T)),
    (PR, "RemoveProjectUser", ADMIN, lambda c, w: c.projects.RemoveProjectUser(
        projects_pb2.ProjectUserRequest(project=NOPE, user="x"), timeout=T)),
    (PR, "DeleteProject", ADMIN, lambda c, w: c.projects.DeleteProject(
        projects_pb2.DeleteProjectRequest(name=NOPE), timeout=T)),
    (KY, "AddSshKey", USER, lambda c, w: c.keys.AddSshKey(
        access_pb2.AddSshKeyRequest(public_key="not a key"), timeout=T)),
    (KY, "ListSshKeys", USER, lambda c, w: c.keys.ListSshKeys(
        access_pb2.ListSshKeysRequest(), timeout=T)),
    (KY, "RemoveSshKey", USER, lambda c, w: c.keys.RemoveSshKey(
        access_pb2.RemoveSshKeyRequest(key=NOPE), timeout=T)),
    (ND, "Register", NODE, lambda c, w: c.nodes.Register(
        nodes_pb2.RegisterRequest(node="n1"), timeout=T)),
    (ND, "WatchAssignments", NODE, lambda c, w: first(c.nodes.WatchAssignments(
        nodes_pb2.WatchAssignmentsRequest(node="n1"), timeout=T))),
    (ND, "ReportStatus", NODE, lambda c, w: c.nodes.ReportStatus(
        nodes_pb2.ReportStatusRequest(node="n1"), timeout=T)),
    (ND, "PushConsole", NODE, lambda c, w: c.nodes.PushConsole(
        nodes_pb2.PushConsoleRequest(node="n1", workspace_id=w.workspace_id, offset=-1),
        timeout=T)),
    (ND, "FetchBlob", NODE, lambda c, w: first(c.nodes.FetchBlob(
        nodes_pb2.FetchBlobRequest(node="n1", digest=w.image_digest), timeout=T))),
    # The hello, then the agent closes its side: the service ends the stream at once.
    (ND, "Tasks", NODE, lambda c, w: first(c.nodes.Tasks(
        iter([nodes_pb2.TaskReply(node="n1")]), timeout=T))),
    # No save of the workspace under way (FAILED_PRECONDITION): past authorization.
    (ND, "PutBlob", NODE, lambda c, w: c.nodes.PutBlob(
        iter([nodes_pb2.PutBlobChunk(node="n1", workspace_id=w.workspace_id)]), timeout=T)),
    # A workspace that is not running (NOT_FOUND for others): past authorization.
    (GU, "Exec", USER, lambda c, w: c.guests.Exec(
        access_pb2.ExecRequest(id=NOPE, argv=["true"]), timeout=T)),
    (GU, "AttachConsole", USER, lambda c, w: first(c.guests.AttachConsole(
        iter([access_pb2.ConsoleInput(id=NOPE)]), timeout=T))),
    ("grpc.health.v1.Health", "Check", OPEN, lambda c, w: c.health.Check(
        health_pb2.HealthCheckRequest(), timeout=T)),
    ("grpc.health.v1.Health", "List", OPEN, lambda c, w: c.health.List(
        health_pb2.HealthListRequest(), timeout=T)),
    ("grpc.health.v1.Health", "Watch", OPEN, lambda c, w: first(c.health.Watch(
        health_pb2.HealthCheckRequest(), timeout=T))),
]  # fmt: skip


def outcome(call: Call, caller: Caller, w: World) -> grpc.StatusCode:
    try:
        call(caller, w)
    except grpc.RpcError as exc:
        return exc.code()  # type: ignore[no-any-return]
    return grpc.StatusCode.OK


def all_rpcs() -> set[str]:
    """Every RPC the service serves (but reflection), as "service/method"."""
    from workspace.node.v1 import nodes_pb2 as node_protos

    modules = [
        workspaces_pb2, clusters_pb2, images_pb2, trust_pb2, admin_pb2, projects_pb2,
        health_pb2,
    ]  # fmt: skip
    names = {
        f"{svc.full_name}/{m.name}"
        for mod in modules
        for svc in mod.DESCRIPTOR.services_by_name.values()
        for m in svc.methods
    }
    names |= {
        f"workspace.node.v1.Nodes/{m.name}"
        for m in node_protos.DESCRIPTOR.services_by_name["Nodes"].methods
    }
    names |= {f"{KY}/{m.name}" for m in access_pb2.DESCRIPTOR.services_by_name["Keys"].methods}
    names |= {
        f"workspace.v1.Guests/{m.name}"
        for m in access_pb2.DESCRIPTOR.services_by_name["Guests"].methods
    }
    return names


def test_the_matrix_names_every_rpc() -> None:
    assert {f"{svc}/{m}" for svc, m, _, _ in MATRIX} == all_rpcs()


def test_denial_matrix(world: World) -> None:
    started = time.monotonic()
    wrong: list[str] = []
    for svc, method, expected, call in MATRIX:
        for caller_name, want in zip(CALLERS, expected, strict=True):
            code = outcome(call, world.callers[caller_name], world)
            handshake_failed = caller_name == "none" and code is grpc.StatusCode.UNAVAILABLE
            denied = code in DENIED or handshake_failed
            if denied != (want == "-"):
                word = "deny" if want == "-" else "allow"
                wrong.append(f"{svc}/{method} by {caller_name}: {code.name}, expected {word}")
    assert not wrong, "\n".join(wrong)
    assert time.monotonic() - started < 60


# -- what the matrix cannot say: whose objects, which node, when revoked -----------------------


def code_of(fn: Callable[[], Any]) -> grpc.StatusCode:
    try:
        fn()
    except grpc.RpcError as exc:
        return exc.code()  # type: ignore[no-any-return]
    return grpc.StatusCode.OK


def listed(c: Caller) -> set[str]:
    return {w.name for w in c.ws.ListWorkspaces(workspaces_pb2.ListWorkspacesRequest()).workspaces}


def test_another_project_neither_sees_nor_touches_a_workspace(world: World) -> None:
    b, wid = world.callers["B"], world.workspace_id
    for ref in (wid, "wa"):
        assert code_of(lambda r=ref: b.ws.GetWorkspace(
            workspaces_pb2.GetWorkspaceRequest(id=r))) is grpc.StatusCode.NOT_FOUND  # fmt: skip
        assert code_of(lambda r=ref: b.ws.DestroyWorkspace(
            workspaces_pb2.WorkspaceRef(id=r))) is grpc.StatusCode.NOT_FOUND  # fmt: skip
        assert code_of(lambda r=ref: b.ws.GetConsole(
            workspaces_pb2.GetConsoleRequest(id=r))) is grpc.StatusCode.NOT_FOUND  # fmt: skip
        events = workspaces_pb2.WatchWorkspaceEventsRequest(id=ref)
        assert code_of(lambda e=events: list(b.ws.WatchWorkspaceEvents(e))) is (
            grpc.StatusCode.NOT_FOUND
        )
    assert "wa" not in listed(b)
    a_view = world.callers["A"].ws.GetWorkspace(workspaces_pb2.GetWorkspaceRequest(id=wid))
    assert a_view.desired_state == common_pb2.DESIRED_STATE_RUNNING  # B's destroy did nothing
    # ... nor its image.
    images = b.images.ListImages(images_pb2.ListImagesRequest()).images
    assert "img-a" not in {i.name for i in images}
    create = workspaces_pb2.CreateWorkspaceRequest(name="wb", image="img-a")
    assert code_of(lambda: b.ws.CreateWorkspace(create)) is grpc.StatusCode.NOT_FOUND


def test_the_same_project_sees_the_workspace_and_its_image(world: World) -> None:
    c = world.callers["C"]
    for ref in (world.workspace_id, "wa"):
        got = c.ws.GetWorkspace(workspaces_pb2.GetWorkspaceRequest(id=ref))
        assert (got.id, got.owner, got.project) == (world.workspace_id, "alice", "p")
    assert "wa" in listed(c)
    # ... and what happened to it: its events only, by whom.
    req = workspaces_pb2.WatchWorkspaceEventsRequest(id="wa")
    events = list(c.ws.WatchWorkspaceEvents(req))
    assert events and {e.workspace_id for e in events} == {world.workspace_id}
    assert ("workspace.created", "user:alice") in {(e.kind, e.who) for e in events}
    assert "img-a" in {i.name for i in c.images.ListImages(images_pb2.ListImagesRequest()).images}


def test_only_admins_list_every_user(world: World) -> None:
    everyone = workspaces_pb2.ListWorkspacesRequest(all_users=True)
    admin = world.callers["admin"]
    assert "wa" in {w.name for w in admin.ws.ListWorkspaces(everyone).workspaces}
    assert "wa" not in listed(admin)  # by default, an admin's own and projects' only
    b = world.callers["B"]
    assert code_of(lambda: b.ws.ListWorkspaces(everyone)) is grpc.StatusCode.PERMISSION_DENIED
    every_cluster = clusters_pb2.ListClustersRequest(all_users=True)
    assert admin.clusters.ListClusters(every_cluster) is not None
    assert code_of(lambda: b.clusters.ListClusters(every_cluster)) is (
        grpc.StatusCode.PERMISSION_DENIED
    )


def test_a_project_not_yours_is_refused(world: World) -> None:
    """Whether the project exists or not, the same refusal: B learns no project names."""
    b = world.callers["B"]
    for project in ("p", "nope"):
        asked = workspaces_pb2.CreateWorkspaceRequest(name="x", image="img-a", project=project)
        err = None
        try:
            b.ws.CreateWorkspace(asked)
        except grpc.RpcError as exc:
            err = exc
        assert err is not None and err.code() is grpc.StatusCode.PERMISSION_DENIED
        assert err.details() == f"you are not a member of project '{project}'"
    assert "x" not in listed(b)


def test_a_node_acts_only_for_itself(world: World) -> None:
    n1, n2 = world.callers["n1"], world.callers["n2"]
    watch = nodes_pb2.WatchAssignmentsRequest(node="n1")
    err = None
    try:
        first(n2.nodes.WatchAssignments(watch, timeout=T))
    except grpc.RpcError as exc:
        err = exc
    assert err is not None and err.code() is grpc.StatusCode.PERMISSION_DENIED
    assert "cannot act for node 'n1'" in err.details()
    # n1 reads its own: A's workspace, with its user data and addresses.
    orders = first(n1.nodes.WatchAssignments(watch, timeout=T))
    assert [a.workspace_id for a in orders.assignments] == [world.workspace_id]
    # Blobs: only those of its orders.
    stray = "sha256:" + "0" * 64
    fetch = nodes_pb2.FetchBlobRequest(node="n1", digest=stray)
    assert code_of(lambda: first(n1.nodes.FetchBlob(fetch))) is grpc.StatusCode.PERMISSION_DENIED
    # Consoles: only of workspaces placed on it.
    push = nodes_pb2.PushConsoleRequest(node="n1", workspace_id="nope", data=b"x")
    assert code_of(lambda: n1.nodes.PushConsole(push)) is grpc.StatusCode.NOT_FOUND


def test_node_audit_records_are_stored_as_the_service_saw_them(world: World) -> None:
    forged = trust_pb2.AuditEntry(
        where="service", action="boot", verdict="allow", reason="forged-by-n1"
    )
    world.callers["n1"].nodes.ReportStatus(nodes_pb2.ReportStatusRequest(node="n1", audit=[forged]))
    entries = world.callers["admin"].trust.ListAudit(trust_pb2.ListAuditRequest(limit=50)).entries
    mine = [e for e in entries if e.reason == "forged-by-n1"]
    assert [e.where for e in mine] == ["node:n1"]


def test_a_node_name_stays_with_its_certificate_until_revoked(world: World) -> None:
    old_dir = world.tmp / "id-n3-old"
    old = world.ca.issue(Identity(Kind.NODE, "n3"), old_dir)
    new_dir = world.tmp / "id-n3-new"
    world.ca.issue(Identity(Kind.NODE, "n3"), new_dir)
    register = nodes_pb2.RegisterRequest(node="n3", hypervisor="fake", cpus=1, memory_mib=1024)
    first_cert, second = world.connect(old_dir), world.connect(new_dir)
    try:
        first_cert.nodes.Register(register)
        err = None
        try:
            second.nodes.Register(register)
        except grpc.RpcError as exc:
            err = exc
        assert err is not None and err.code() is grpc.StatusCode.PERMISSION_DENIED
        assert "registered with another certificate" in err.details()
        watch = nodes_pb2.WatchAssignmentsRequest(node="n3")
        assert (
            code_of(lambda: first(second.nodes.WatchAssignments(watch, timeout=T)))
            is grpc.StatusCode.PERMISSION_DENIED
        )
        # The old certificate revoked: the new one takes the name, the old is refused.
        world.ca.revoke(str(old.serial))
        second.nodes.Register(register)
        assert code_of(lambda: first_cert.nodes.Register(register)) is (
            grpc.StatusCode.UNAUTHENTICATED
        )
    finally:
        first_cert.close()
        second.close()


def test_a_revoked_user_is_refused_at_once(world: World) -> None:
    d_dir = world.tmp / "id-dave"
    world.ca.issue(Identity(Kind.USER, "dave"), d_dir)
    dave = world.connect(d_dir)
    try:
        assert listed(dave) == set()
        world.ca.revoke("dave")
        err = None
        try:
            listed(dave)
        except grpc.RpcError as exc:
            err = exc
        assert err is not None and err.code() is grpc.StatusCode.UNAUTHENTICATED
        assert "revoked" in err.details()
    finally:
        dave.close()


def test_a_revoked_node_loses_its_order_stream(world: World) -> None:
    n4_dir = world.tmp / "id-n4"
    world.ca.issue(Identity(Kind.NODE, "n4"), n4_dir)
    n4 = world.connect(n4_dir)
    try:
        n4.nodes.Register(nodes_pb2.RegisterRequest(node="n4", cpus=1, memory_mib=512))
        stream = n4.nodes.WatchAssignments(nodes_pb2.WatchAssignmentsRequest(node="n4"))
        assert next(stream).assignments is not None
        world.ca.revoke("n4")
        started = time.monotonic()
        with pytest.raises(grpc.RpcError) as info:
            next(stream)
        assert info.value.code() is grpc.StatusCode.UNAUTHENTICATED
        assert time.monotonic() - started < 15
    finally:
        n4.close()


def test_a_revoked_admin_loses_the_site_event_stream(world: World) -> None:
    e_dir = world.tmp / "id-erin"
    world.ca.issue(Identity(Kind.USER, "erin", admin=True), e_dir)
    erin = world.connect(e_dir)
    try:
        events = erin.admin.WatchEvents(admin_pb2.WatchEventsRequest(follow=True))
        assert next(events).kind  # what happened so far streams
        world.ca.revoke("erin")
        started = time.monotonic()
        with pytest.raises(grpc.RpcError) as info:
            for _ in events:  # the rest of the history, then following
                pass
        assert info.value.code() is grpc.StatusCode.UNAUTHENTICATED
        assert "revoked" in (info.value.details() or "")
        assert time.monotonic() - started < 15
    finally:
        erin.close()


def test_an_admins_image_outside_projects_is_a_site_image(world: World) -> None:
    admin, b = world.callers["admin"], world.callers["B"]
    digest = admin.images.UploadBlob(iter([images_pb2.BlobChunk(data=b"\1" * 4096)])).digest
    part = common_pb2.Partition(name="root", digest=digest, format="raw")
    site_image = images_pb2.ImportImageRequest(name="site:1", partitions=[part])
    shown = admin.images.ImportImage(site_image)
    assert shown.public and shown.project == ""
    assert "site:1" in {i.name for i in b.images.ListImages(images_pb2.ListImagesRequest()).images}
    # A user's image is not: B's own image stays private to B (and B's project q).
    mine = b.images.ImportImage(images_pb2.ImportImageRequest(name="bob:1", partitions=[part]))
    assert (mine.public, mine.project) == (False, "q")
    a_images = world.callers["A"].images.ListImages(images_pb2.ListImagesRequest()).images
    assert "bob:1" not in {i.name for i in a_images}


def test_an_admin_removing_a_node_frees_its_name(world: World) -> None:
    dirs = [world.tmp / "id-n5-a", world.tmp / "id-n5-b"]
    for d in dirs:
        world.ca.issue(Identity(Kind.NODE, "n5"), d)
    old, new = (world.connect(d) for d in dirs)
    register = nodes_pb2.RegisterRequest(node="n5", hypervisor="fake", cpus=1, memory_mib=512)
    try:
        old.nodes.Register(register)
        assert code_of(lambda: new.nodes.Register(register)) is grpc.StatusCode.PERMISSION_DENIED
        world.callers["admin"].admin.RemoveNode(admin_pb2.NodeRef(name="n5"))
        new.nodes.Register(register)
        # Now the name is the new certificate's: the old one may not act for it.
        report = nodes_pb2.ReportStatusRequest(node="n5", full=True)
        assert code_of(lambda: old.nodes.ReportStatus(report)) is grpc.StatusCode.PERMISSION_DENIED
        new.nodes.ReportStatus(report)
    finally:
        old.close()
        new.close()


def test_a_clusters_events_are_its_projects_only(world: World) -> None:
    """A's cluster: B (another project) cannot read its events, by name or id (NOT_FOUND,
    as GetCluster); C (A's project) reads them: its member's creation by alice, and no
    other workspace's."""
    a, b, c = (world.callers[k] for k in ("A", "B", "C"))
    member = clusters_pb2.ClusterMember(role="worker", image="img-a", memory_mib=128)
    made = a.clusters.CreateCluster(clusters_pb2.CreateClusterRequest(name="ca", members=[member]))
    try:
        for ref in ("ca", made.id):
            req = clusters_pb2.WatchClusterEventsRequest(id=ref)
            assert code_of(lambda r=req: list(b.clusters.WatchClusterEvents(r))) is (
                grpc.StatusCode.NOT_FOUND
            )
        events = list(
            c.clusters.WatchClusterEvents(clusters_pb2.WatchClusterEventsRequest(id="ca"))
        )
        assert {e.cluster for e in events} == {made.id}
        assert {e.workspace_name for e in events} == {"ca-worker-0"}
        assert ("workspace.created", "user:alice") in {(e.kind, e.who) for e in events}
    finally:
        a.clusters.DestroyCluster(clusters_pb2.ClusterRef(id=made.id))
