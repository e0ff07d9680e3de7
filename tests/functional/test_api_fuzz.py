"""Every RPC of the public API, and of the agents' Nodes API as an agent would call it,
called with requests generated from its protobuf descriptor (hypothesis): empty, long,
unicode and NUL strings, names of real objects, "../"; zero, negative and huge numbers;
unknown enum numbers; repeated fields, maps, nested messages, timestamps far out of range.

What must hold: no answer is UNKNOWN or INTERNAL (a caller's bad input is theirs to fix,
and the status says what), DEADLINE_EXCEEDED only where the call waits on purpose (the
streams that follow), no traceback in the service's log, and the service still answers
health and a normal create afterwards.

The site is insecure (plaintext on a unix socket): every caller is the admin, which
reaches every RPC, and a Nodes call may act for any node it names (edge/auth.py
``node_name``). The fuzzed Nodes calls name other nodes than the site's real agent's.

Run: ``pytest -q tests/functional/test_api_fuzz.py`` (about 40 s: EXAMPLES requests per
RPC, fixed by ``derandomize``).
"""

from __future__ import annotations

import base64
import hashlib
import logging
from collections.abc import Iterator
from dataclasses import dataclass, field
from types import ModuleType
from typing import Any

import grpc
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519
from google.protobuf import message_factory, timestamp_pb2
from google.protobuf.descriptor import FieldDescriptor, MethodDescriptor
from google.protobuf.message import Message
from grpc_health.v1 import health_pb2, health_pb2_grpc
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.functional.harness import WS, Site
from workspace.node.v1 import nodes_pb2
from workspace.v1 import (
    access_pb2,
    admin_pb2,
    clusters_pb2,
    common_pb2,
    images_pb2,
    projects_pb2,
    projects_pb2_grpc,
    trust_pb2,
    usage_pb2,
    workspaces_pb2,
)

# Each call's deadline: every unary call here answers in milliseconds.
DEADLINE_S = 5.0
# Streams that follow (watches, orders) wait on purpose; they get this long, then are cut.
STREAM_S = 0.5
EXAMPLES = 30

FD = FieldDescriptor
INT_RANGES = {
    FD.TYPE_INT32: (-(2**31), 2**31 - 1),
    FD.TYPE_SINT32: (-(2**31), 2**31 - 1),
    FD.TYPE_SFIXED32: (-(2**31), 2**31 - 1),
    FD.TYPE_UINT32: (0, 2**32 - 1),
    FD.TYPE_FIXED32: (0, 2**32 - 1),
    FD.TYPE_INT64: (-(2**63), 2**63 - 1),
    FD.TYPE_SINT64: (-(2**63), 2**63 - 1),
    FD.TYPE_SFIXED64: (-(2**63), 2**63 - 1),
    FD.TYPE_UINT64: (0, 2**64 - 1),
    FD.TYPE_FIXED64: (0, 2**64 - 1),
}
EDGE_INTS = [0, 1, -1, 2, 60, 1024, 2**31 - 1, 2**31, -(2**31), 2**32, 2**53, 2**63 - 1, -(2**63)]
NASTY_STRINGS = [
    "",
    " ",
    "x" * 10_000,
    "a\0b",
    "\0",
    "../",
    "../../etc/passwd",
    "/",
    ".",
    "é世界🙂",
    "\u202e",
    "-",
    "--help",
    "%s%n",
    "'; DROP TABLE workspaces; --",
    "*",
    "a,b",
    "a=b",
    "10.0.0.0/8",
    "0.0.0.0/0",
    "::/0",
    "10.213.0.0/33",
    "sha256:" + "0" * 64,
    "sha256:../x",
    "1" * 40,
    "SHA256:abc",
    "ssh-ed25519 AAAA x",
    "#cloud-config\n",
    "qcow2",
    "raw",
    "cow",
    "ro",
    "rw",
    "slurm-queue:debug",
    "command:/bin/true",
    "tcp:22",
    "udp:0-65535",
    "icmp",
    "none",
    "private",
    "public",
    "permissive",
    "enforce",
    "gpu=1",
    "1h",
    "-5",
]

# Server-streaming and bidirectional RPCs that wait for what comes next: for them the
# caller's deadline ending the call is the normal end.
FOLLOWING = {
    "/workspace.v1.Workspaces/WatchWorkspaces",
    "/workspace.v1.Admin/WatchEvents",
    "/workspace.v1.Workspaces/WatchWorkspaceEvents",
    "/workspace.v1.Clusters/WatchClusterEvents",
    "/workspace.v1.Guests/AttachConsole",
    "/workspace.node.v1.Nodes/WatchAssignments",
    "/workspace.node.v1.Nodes/Tasks",
}
# Not fuzzed, and why: none. Streams get STREAM_S, UploadBlob up to three chunks of what
# the fuzz draws (big blobs are not its business), Tasks and AttachConsole the same.
SKIPPED: dict[str, str] = {}

_W = workspaces_pb2
# What the module's site holds: the image `img`'s one blob (Stubs.import_image's default).
DIGEST = "sha256:" + hashlib.sha256(b"\0" * 65536).hexdigest()
SSH_KEY = (
    "ssh-ed25519 "
    + base64.b64encode(b"\0\0\0\x0bssh-ed25519\0\0\0\x20" + bytes(range(32))).decode()
    + " fuzz@example"
)
PEM_KEY = (
    ed25519.Ed25519PrivateKey.generate()
    .public_key()
    .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    .decode()
)
_C = clusters_pb2
_N = nodes_pb2
# Valid requests (against the module's site) that the fuzz mutates a field or two of.
SEEDS: dict[str, list[Message]] = {
    "/workspace.v1.Workspaces/CreateWorkspace": [
        _W.CreateWorkspaceRequest(image="img", cpus=1, memory_mib=128),
        _W.CreateWorkspaceRequest(
            image="cloud",
            memory_mib=128,
            networks=["default", "second"],
            user_data=b"#cloud-config\n",
            extra_partitions=[common_pb2.Partition(name="scratch", size_bytes=2**20)],
            requirements={"gpu": "0"},
            connectivity="outbound",
            allow=["tcp:22"],
            lease_s=3600,
            project="physics",
        ),
    ],
    "/workspace.v1.Workspaces/StopWorkspace": [_W.StopWorkspaceRequest(id="w1", timeout_s=1)],
    "/workspace.v1.Workspaces/GetConsole": [_W.GetConsoleRequest(id="w0", tail_bytes=100)],
    "/workspace.v1.Workspaces/ExtendLease": [_W.ExtendLeaseRequest(id="w0", add_s=60)],
    "/workspace.v1.Workspaces/UpdateWorkspace": [
        _W.UpdateWorkspaceRequest(id="w1", connectivity="cluster", set_allow=True, allow=["tcp:22"])
    ],
    "/workspace.v1.Workspaces/ListWorkspaces": [_W.ListWorkspacesRequest(page_size=1)],
    "/workspace.v1.Clusters/CreateCluster": [
        _C.CreateClusterRequest(
            name="fzc",
            members=[_C.ClusterMember(role="worker", image="img", count=1, memory_mib=128)],
        )
    ],
    "/workspace.v1.Clusters/ScaleCluster": [
        _C.ScaleClusterRequest(id="c1", role="worker", count=3)
    ],
    "/workspace.v1.Clusters/ExtendClusterLease": [_C.ExtendClusterLeaseRequest(id="c1", add_s=60)],
    "/workspace.v1.Clusters/SetAutoscale": [
        _C.SetAutoscaleRequest(id="c1", role="worker", min=1, max=3, signal="command:/bin/true")
    ],
    "/workspace.v1.Images/ImportImage": [
        images_pb2.ImportImageRequest(
            name="fz-img",
            partitions=[common_pb2.Partition(name="root", digest=DIGEST, format="raw")],
        )
    ],
    "/workspace.v1.Admin/CreateNetwork": [admin_pb2.Network(name="fznet", subnet="10.215.0.0/24")],
    "/workspace.v1.Admin/SetBackfill": [admin_pb2.BackfillEntry(image="img", max=1, memory_mib=64)],
    "/workspace.v1.Admin/PreloadImage": [admin_pb2.PreloadImageRequest(image="img")],
    "/workspace.v1.Projects/CreateProject": [
        projects_pb2.Project(name="fzproj", default_lease_s=60)
    ],
    "/workspace.v1.Projects/SetProjectDefaults": [
        projects_pb2.SetProjectDefaultsRequest(project="physics")
    ],
    "/workspace.v1.Guests/Exec": [access_pb2.ExecRequest(id="w2", argv=["true"], timeout_s=2)],
    "/workspace.v1.Guests/AttachConsole": [access_pb2.ConsoleInput(id="w2")],
    "/workspace.v1.Keys/AddSshKey": [access_pb2.AddSshKeyRequest(public_key=SSH_KEY)],
    "/workspace.v1.Trust/AddKey": [trust_pb2.AddKeyRequest(public_key_pem=PEM_KEY)],
    "/workspace.node.v1.Nodes/Register": [
        _N.RegisterRequest(
            node="fz-node",
            hypervisor="fake",
            cpus=2,
            memory_mib=1024,
            disk_gib=10,
            networks=["default"],
        )
    ],
    "/workspace.node.v1.Nodes/ReportStatus": [_N.ReportStatusRequest(node="fz-node", full=True)],
    "/workspace.node.v1.Nodes/PushConsole": [
        _N.PushConsoleRequest(node="fz-node", workspace_id="w0", data=b"x")
    ],
}

PUBLIC: list[tuple[ModuleType, str]] = [
    (workspaces_pb2, "Workspaces"),
    (clusters_pb2, "Clusters"),
    (images_pb2, "Images"),
    (admin_pb2, "Admin"),
    (trust_pb2, "Trust"),
    (projects_pb2, "Projects"),
    (access_pb2, "Keys"),
    (access_pb2, "Guests"),
]
AGENT: list[tuple[ModuleType, str]] = [(nodes_pb2, "Nodes")]


def _methods(services: list[tuple[ModuleType, str]]) -> list[MethodDescriptor]:
    out = []
    for module, name in services:
        out.extend(module.DESCRIPTOR.services_by_name[name].methods)
    return out


def _path(m: MethodDescriptor) -> str:
    return f"/{m.containing_service.full_name}/{m.name}"


PUBLIC_METHODS = [m for m in _methods(PUBLIC) if _path(m) not in SKIPPED]
AGENT_METHODS = [m for m in _methods(AGENT) if _path(m) not in SKIPPED]


# -- requests from descriptors ------------------------------------------------------------


@dataclass
class Gen:
    """Strategies for the fields of any message; ``names``: strings of real objects."""

    names: list[str]
    _cache: dict[str, st.SearchStrategy[Any]] = field(default_factory=dict)

    def strings(self) -> st.SearchStrategy[str]:
        return st.one_of(
            st.sampled_from(self.names),
            st.sampled_from(NASTY_STRINGS),
            st.text(max_size=12),
            st.builds(
                lambda n, s: n + s,
                st.sampled_from(self.names),
                st.sampled_from(["/", "\0", " ", "-x", "../"]),
            ),
        )

    def scalar(self, f: FieldDescriptor) -> st.SearchStrategy[Any]:
        t = f.type
        if t == FD.TYPE_STRING:
            return self.strings()
        if t == FD.TYPE_BYTES:
            return st.one_of(
                st.sampled_from([b"", b"\0", b"x" * 10_000, b"\xff\xfe"]),
                st.binary(max_size=32),
                self.strings().map(lambda s: s.encode()),
            )
        if t == FD.TYPE_BOOL:
            return st.booleans()
        if t in (FD.TYPE_DOUBLE, FD.TYPE_FLOAT):
            specials = [0.0, -1.0, 1e308, -1e308, float("nan"), float("inf"), float("-inf")]
            return st.one_of(st.sampled_from(specials), st.floats(width=32))
        if t == FD.TYPE_ENUM:
            known = [v.number for v in f.enum_type.values]
            return st.sampled_from([*known, -1, 99, 2**31 - 1])
        lo, hi = INT_RANGES[t]
        edges = [i for i in EDGE_INTS if lo <= i <= hi] + [hi, lo]
        return st.one_of(
            st.sampled_from(edges),
            st.integers(lo, hi),
            st.integers(-5, 5000).filter(lambda i: lo <= i <= hi),
        )

    def message(self, desc: Any, depth: int = 0) -> st.SearchStrategy[Message]:
        key = f"{desc.full_name}@{depth}"
        if key not in self._cache:
            self._cache[key] = st.deferred(lambda: self._message(desc, depth))
        return self._cache[key]

    def _message(self, desc: Any, depth: int) -> st.SearchStrategy[Message]:
        cls = message_factory.GetMessageClass(desc)
        if desc.full_name in ("google.protobuf.Timestamp", "google.protobuf.Duration"):
            secs = st.sampled_from(
                [0, -1, 1, 2**31, 253402300800, -62135596801, 2**63 - 1, -(2**63)]
            )
            return st.builds(
                lambda s, n: cls(seconds=s, nanos=n),
                st.one_of(secs, st.integers(-(10**12), 10**12)),
                st.sampled_from([0, 1, -1, 999_999_999, 10**9, 2**31 - 1]),
            )
        fields = list(desc.fields)

        @st.composite
        def build(draw: st.DrawFn) -> Message:
            msg = cls()
            for f in fields:
                if draw(st.booleans()):
                    self.set_field(draw, msg, f, depth)
            return msg

        return build()

    def set_field(self, draw: st.DrawFn, msg: Message, f: FieldDescriptor, depth: int) -> None:
        """Set field ``f`` of ``msg`` to a drawn value (replacing what it held)."""
        msg.ClearField(f.name)
        if f.message_type is not None and f.message_type.GetOptions().map_entry:
            kf, vf = f.message_type.fields_by_name["key"], f.message_type.fields_by_name["value"]
            for _ in range(draw(st.integers(0, 3))):
                k = draw(self.scalar(kf))
                if vf.message_type is None:
                    getattr(msg, f.name)[k] = draw(self.scalar(vf))
                elif depth < 3:
                    getattr(msg, f.name)[k].CopyFrom(draw(self.message(vf.message_type, depth + 1)))
        elif f.message_type is not None:
            if depth >= 3:
                return
            sub = self.message(f.message_type, depth + 1)
            if f.is_repeated:
                for item in draw(st.lists(sub, max_size=3)):
                    getattr(msg, f.name).add().CopyFrom(item)
            else:
                getattr(msg, f.name).CopyFrom(draw(sub))
        elif f.is_repeated:
            many = st.lists(self.scalar(f), min_size=100, max_size=100)
            few = st.lists(self.scalar(f), max_size=4)
            getattr(msg, f.name).extend(draw(st.one_of(few, many) if depth == 0 else few))
        else:
            setattr(msg, f.name, draw(self.scalar(f)))

    def request(self, m: MethodDescriptor) -> st.SearchStrategy[Message]:
        """Requests of ``m``: any, or (where SEEDS has some) a valid one with one or two
        fields replaced, which gets past the first checks to the deeper ones."""
        anything = self.message(m.input_type)
        seeds = SEEDS.get(_path(m))
        if not seeds:
            return anything
        fields = list(m.input_type.fields)

        @st.composite
        def mutated(draw: st.DrawFn) -> Message:
            seed = draw(st.sampled_from(seeds))
            msg = type(seed)()
            msg.CopyFrom(seed)
            for f in draw(st.lists(st.sampled_from(fields), min_size=1, max_size=2)):
                self.set_field(draw, msg, f, 0)
            return msg

        return st.one_of(anything, mutated())


# -- calling any RPC ------------------------------------------------------------------------


def call(
    channel: grpc.Channel, m: MethodDescriptor, requests: list[Message]
) -> tuple[grpc.StatusCode, str]:
    """Call ``m`` with ``requests`` (one for a unary request): the status it ended with and
    its details."""
    path = _path(m)
    out = message_factory.GetMessageClass(m.output_type)
    ser, de = (lambda r: r.SerializeToString()), out.FromString
    timeout = STREAM_S if path in FOLLOWING else DEADLINE_S
    try:
        if m.client_streaming and m.server_streaming:
            it = channel.stream_stream(path, ser, de)(iter(requests), timeout=timeout)
            for _ in it:
                pass
        elif m.client_streaming:
            channel.stream_unary(path, ser, de)(iter(requests), timeout=timeout)
        elif m.server_streaming:
            for _ in channel.unary_stream(path, ser, de)(requests[0], timeout=timeout):
                pass
        else:
            channel.unary_unary(path, ser, de)(requests[0], timeout=timeout)
    except grpc.RpcError as exc:
        return exc.code(), exc.details() or ""
    return grpc.StatusCode.OK, ""


class Tracebacks(logging.Handler):
    """Log records with a traceback (service or agent), or at ERROR from the service."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        # The agent says at ERROR what an admin's fuzzed call legitimately did to it (its
        # node removed, its image's digest revoked); a traceback is a bug anywhere.
        service = record.name.startswith("workspace")
        if record.exc_info or (service and record.levelno >= logging.ERROR):
            self.records.append(record)

    def take(self) -> list[str]:
        out = [
            f"{r.name}: {r.getMessage()}"
            + (f" [{type(r.exc_info[1]).__name__}: {r.exc_info[1]}]" if r.exc_info else "")
            for r in self.records
        ]
        self.records.clear()
        return out


@dataclass
class Fuzz:
    site: Site
    gen: Gen
    logs: Tracebacks
    node_gen: Gen


@pytest.fixture(scope="module")
def fuzz(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fuzz]:
    site = Site(tmp_path_factory.mktemp("fuzz"))
    logs = Tracebacks()
    for name in ("workspace", "agent"):
        logging.getLogger(name).addHandler(logs)
    try:
        s = site.stubs
        s.network()
        s.network("second", subnet="10.214.0.0/24")
        s.import_image("img")
        s.import_image("cloud", context="nocloud")
        site.add_agent("node1")
        ws = [s.create(name=f"w{i}", cpus=1, memory_mib=256) for i in range(3)]
        for w in ws:
            s.wait_state(w.id, WS.WORKSPACE_STATE_RUNNING)
        worker = clusters_pb2.ClusterMember(role="worker", image="img", count=2, memory_mib=128)
        s.clusters.CreateCluster(clusters_pb2.CreateClusterRequest(name="c1", members=[worker]))
        projects = projects_pb2_grpc.ProjectsStub(s.channel)
        projects.CreateProject(projects_pb2.Project(name="physics"))
        projects.AddProjectUser(projects_pb2.ProjectUserRequest(project="physics", user="local"))
        digest = s.images.GetImage(images_pb2.GetImageRequest(name="img")).partitions[0].digest
        names = ["default", "second", "img", "cloud", "node1", "c1", "worker", "local", digest]
        names += ["physics", "c1-worker-0", "tcp:22", "10.213.0.2"]
        names += [w.id for w in ws] + [w.name for w in ws]
        logs.take()
        yield Fuzz(site, Gen(names), logs, Gen([n for n in names if n != "node1"] + ["fz-node"]))
    finally:
        for name in ("workspace", "agent"):
            logging.getLogger(name).removeHandler(logs)
        site.close()


def check_still_serving(site: Site) -> None:
    """Health answers SERVING and a read of a real workspace answers."""
    health = health_pb2_grpc.HealthStub(site.stubs.channel)
    assert (
        health.Check(health_pb2.HealthCheckRequest(), timeout=DEADLINE_S).status
        == health_pb2.HealthCheckResponse.SERVING
    )
    site.stubs.ws.GetWorkspace(workspaces_pb2.GetWorkspaceRequest(id="w0"), timeout=DEADLINE_S)


def _fuzz_one(
    fz: Fuzz, channel: grpc.Channel, gen: Gen, m: MethodDescriptor, data: st.DataObject
) -> None:
    msg = gen.request(m)
    requests = data.draw(st.lists(msg, max_size=3)) if m.client_streaming else [data.draw(msg)]
    code, _ = call(channel, m, requests)
    bad = {grpc.StatusCode.UNKNOWN, grpc.StatusCode.INTERNAL}
    if _path(m) not in FOLLOWING:
        bad.add(grpc.StatusCode.DEADLINE_EXCEEDED)
    assert code not in bad, f"{_path(m)} answered {code.name} to {requests!r}"
    logged = fz.logs.take()
    assert not logged, f"{_path(m)} logged {logged} for {requests!r}"


FUZZ_SETTINGS = settings(
    max_examples=EXAMPLES,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[
        HealthCheck.function_scoped_fixture,
        HealthCheck.too_slow,
        HealthCheck.data_too_large,
        HealthCheck.filter_too_much,
    ],
)


@pytest.mark.parametrize("method", PUBLIC_METHODS, ids=_path)
def test_public_rpc_never_answers_internal(fuzz: Fuzz, method: MethodDescriptor) -> None:
    @FUZZ_SETTINGS
    @given(data=st.data())
    def run(data: st.DataObject) -> None:
        _fuzz_one(fuzz, fuzz.site.stubs.channel, fuzz.gen, method, data)

    run()
    check_still_serving(fuzz.site)


@pytest.mark.parametrize("method", AGENT_METHODS, ids=_path)
def test_nodes_rpc_never_answers_internal(fuzz: Fuzz, method: MethodDescriptor) -> None:
    channel = fuzz.site.stubs.node_channel
    assert channel is not None

    @FUZZ_SETTINGS
    @given(data=st.data())
    def run(data: st.DataObject) -> None:
        _fuzz_one(fuzz, channel, fuzz.node_gen, method, data)

    run()
    check_still_serving(fuzz.site)


# -- what the fuzzing found, each pinned ----------------------------------------------------

METHODS = {_path(m): m for m in PUBLIC_METHODS + AGENT_METHODS}


def refused(fz: Fuzz, path: str, request: Message) -> str:
    """Call ``path`` with ``request``: it must answer INVALID_ARGUMENT and log no traceback;
    the details."""
    m = METHODS[path]
    channel = fz.site.stubs.node_channel if m in AGENT_METHODS else fz.site.stubs.channel
    assert channel is not None
    code, details = call(channel, m, [request])
    assert code == grpc.StatusCode.INVALID_ARGUMENT, (code, details)
    assert not fz.logs.take()
    return details


def _case_id(x: object) -> str:
    return x.rsplit("/", 1)[-1] if isinstance(x, str) and x.startswith("/") else "-"


# Enum numbers the protos do not define (a newer client's, or a wrong one).
UNKNOWN_ENUMS = [
    (
        "/workspace.v1.Workspaces/CreateWorkspace",
        workspaces_pb2.CreateWorkspaceRequest(
            name="enum-victim",
            image="img",
            extra_partitions=[common_pb2.Partition(name="scratch", size_bytes=2**20, mode=99)],
        ),
        "partition mode 99",
    ),
    (
        "/workspace.v1.Images/ImportImage",
        images_pb2.ImportImageRequest(
            name="enum-victim", partitions=[common_pb2.Partition(name="root", mode=-1)]
        ),
        "partition mode -1",
    ),
    (
        "/workspace.v1.Clusters/CreateCluster",
        clusters_pb2.CreateClusterRequest(
            name="enum-victim",
            members=[clusters_pb2.ClusterMember(role="worker", image="img")],
            affinity=99,
        ),
        # every valid value named, AFFINITY_NONE (0) too
        "unknown affinity 99; one of AFFINITY_NONE (0), AFFINITY_SOFT_ANTI (1)",
    ),
    (
        "/workspace.v1.Clusters/CreateCluster",
        clusters_pb2.CreateClusterRequest(
            name="enum-victim",
            members=[clusters_pb2.ClusterMember(role="worker", image="img")],
            on_failure=99,
        ),
        "unknown on_failure 99; one of FAILURE_POLICY_KEEP (1), FAILURE_POLICY_TEARDOWN (2)",
    ),
    (
        "/workspace.v1.Projects/CreateProject",
        projects_pb2.Project(name="enum-victim", on_expiry=99),
        "unknown on_expiry 99; one of LEASE_ACTION_STOP (1), LEASE_ACTION_DESTROY (2)",
    ),
    (
        "/workspace.v1.Projects/SetProjectDefaults",
        projects_pb2.SetProjectDefaultsRequest(
            project="physics", leases=projects_pb2.LeasePolicy(on_expiry=-1)
        ),
        "unknown on_expiry -1",
    ),
    ("/workspace.v1.Workspaces/GetUsage", usage_pb2.GetUsageRequest(by=99), "grouping 99"),
    ("/workspace.v1.Admin/GetUsage", usage_pb2.GetUsageRequest(by=2**31 - 1), "grouping"),
    (
        "/workspace.node.v1.Nodes/ReportStatus",
        nodes_pb2.ReportStatusRequest(
            node="fz-node", workspaces=[nodes_pb2.ObservedWorkspace(workspace_id="w0", state=99)]
        ),
        "observed state 99",
    ),
]


@pytest.mark.parametrize(("path", "request_", "said"), UNKNOWN_ENUMS, ids=_case_id)
def test_an_unknown_enum_number_is_invalid_argument(
    fuzz: Fuzz, path: str, request_: Message, said: str
) -> None:
    details = refused(fuzz, path, request_)
    assert said in details, details
    # Nothing was made of it.
    s = fuzz.site.stubs
    names = [w.name for w in s.ws.ListWorkspaces(workspaces_pb2.ListWorkspacesRequest()).workspaces]
    assert "enum-victim" not in names
    clusters = s.clusters.ListClusters(clusters_pb2.ListClustersRequest()).clusters
    assert "enum-victim" not in [c.name for c in clusters]
    images = s.images.ListImages(images_pb2.ListImagesRequest()).images
    assert "enum-victim" not in [i.name for i in images]
    projects = projects_pb2_grpc.ProjectsStub(s.channel)
    listed = projects.ListProjects(projects_pb2.ListProjectsRequest()).projects
    assert "enum-victim" not in [p.name for p in listed]


def _ts(seconds: int, nanos: int = 0) -> timestamp_pb2.Timestamp:
    return timestamp_pb2.Timestamp(seconds=seconds, nanos=nanos)


# Timestamps a Timestamp cannot be (before year 1, after 9999, nanos outside 0..999999999).
BAD_TIMES = [
    ("/workspace.v1.Workspaces/GetUsage", usage_pb2.GetUsageRequest(since=_ts(1, -1)), "since"),
    ("/workspace.v1.Admin/GetUsage", usage_pb2.GetUsageRequest(until=_ts(2**63 - 1)), "until"),
    ("/workspace.v1.Admin/WatchEvents", admin_pb2.WatchEventsRequest(since=_ts(-(2**63))), "since"),
    (
        "/workspace.v1.Clusters/WatchClusterEvents",
        clusters_pb2.WatchClusterEventsRequest(id="c1", since=_ts(2**63 - 1)),
        "since",
    ),
    (
        "/workspace.v1.Trust/AddKey",
        trust_pb2.AddKeyRequest(public_key_pem="x", expires_at=_ts(0, 10**9)),
        "expires_at",
    ),
    (
        "/workspace.node.v1.Nodes/ReportStatus",
        nodes_pb2.ReportStatusRequest(
            node="fz-node", cache=[admin_pb2.CacheEntry(digest="d", last_used=_ts(253402300800))]
        ),
        "last_used",
    ),
    (
        "/workspace.node.v1.Nodes/ReportStatus",
        nodes_pb2.ReportStatusRequest(node="fz-node", audit=[trust_pb2.AuditEntry(at=_ts(0, -5))]),
        "at",
    ),
]


@pytest.mark.parametrize(("path", "request_", "said"), BAD_TIMES, ids=_case_id)
def test_an_impossible_timestamp_is_invalid_argument(
    fuzz: Fuzz, path: str, request_: Message, said: str
) -> None:
    details = refused(fuzz, path, request_)
    assert said in details and "not a valid time" in details, details


@pytest.mark.parametrize("offset", [-65, 2**63 - 1, 65537])
def test_a_blob_offset_outside_the_blob_is_invalid_argument(fuzz: Fuzz, offset: int) -> None:
    """Nodes.FetchBlob seeked to any offset: a negative or huge one was an OSError (INTERNAL)."""
    request = nodes_pb2.FetchBlobRequest(node="fz-node", digest=DIGEST, offset=offset)
    details = refused(fuzz, "/workspace.node.v1.Nodes/FetchBlob", request)
    assert f"offset {offset} is outside blob {DIGEST} (65536 bytes)" in details, details


def test_a_blob_read_from_its_end_is_empty(fuzz: Fuzz) -> None:
    m = METHODS["/workspace.node.v1.Nodes/FetchBlob"]
    channel = fuzz.site.stubs.node_channel
    assert channel is not None
    request = nodes_pb2.FetchBlobRequest(node="fz-node", digest=DIGEST, offset=65536)
    assert call(channel, m, [request]) == (grpc.StatusCode.OK, "")


@pytest.mark.parametrize(
    ("path", "payloads"),
    [
        ("/workspace.v1.Workspaces/GetWorkspace", [b"\xff\xff\xff\xff\x0f"]),  # bad varint
        ("/workspace.v1.Workspaces/CreateWorkspace", [b"\x0a\x02\xc3\x28"]),  # not UTF-8
        ("/workspace.v1.Workspaces/WatchWorkspaces", [b"\x0a\x05ab"]),  # truncated
        ("/workspace.v1.Images/UploadBlob", [b"\x0a\x01", b"\x12"]),  # a request stream
    ],
)
def test_bytes_that_are_no_message_are_invalid_argument(
    fuzz: Fuzz, path: str, payloads: list[bytes]
) -> None:
    """A client of another language sending a broken message is told so, not INTERNAL."""
    channel = fuzz.site.stubs.channel
    method = path.rsplit("/", 1)[-1]
    with pytest.raises(grpc.RpcError) as err:
        if path.endswith("UploadBlob"):
            channel.stream_unary(path)(iter(payloads), timeout=DEADLINE_S)
        elif path.endswith("WatchWorkspaces"):
            list(channel.unary_stream(path)(payloads[0], timeout=DEADLINE_S))
        else:
            channel.unary_unary(path)(payloads[0], timeout=DEADLINE_S)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT, err.value.details()
    assert (err.value.details() or "").startswith(
        f"{method}: the request is not a valid message of its type ("
    )
    assert not fuzz.logs.take()
    check_still_serving(fuzz.site)


def test_the_site_still_creates_after_the_fuzz(fuzz: Fuzz) -> None:
    """Last in the module: after everything above, undo what the fuzzed admin calls may
    legitimately have done (node1 removed or drained, trust enforced, img's digest
    revoked, nodes without an agent registered), then a normal create of a fresh image
    runs."""
    site, s = fuzz.site, fuzz.site.stubs
    nodes = {n.name: n for n in s.admin.ListNodes(admin_pb2.ListNodesRequest()).nodes}
    if "node1" not in nodes:  # removed: its agent registers again when restarted
        site.stop_agent("node1")
        site.add_agent("node1")
    s.admin.EnableNode(admin_pb2.NodeRef(name="node1"))
    for name in nodes.keys() - {"node1"}:  # registered by the fuzzed Nodes calls: no agent
        s.admin.DrainNode(admin_pb2.NodeRef(name=name))
    s.trust.SetMode(trust_pb2.SetModeRequest(mode=trust_pb2.TRUST_MODE_WARN))
    s.import_image("after-fuzz", data=b"\1" * 65536)
    w = s.create(image="after-fuzz", name="after-fuzz", cpus=1, memory_mib=128)
    try:
        s.wait_state(w.id, WS.WORKSPACE_STATE_RUNNING)
    except AssertionError:
        w = s.get(w.id)
        nodes = s.admin.ListNodes(admin_pb2.ListNodesRequest()).nodes
        raise AssertionError(f"{WS.Name(w.state)} {w.reason!r} {w.node} {nodes}") from None
    assert not fuzz.logs.take()
