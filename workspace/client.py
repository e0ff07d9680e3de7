"""The Python client of the workspace service.

One ``Client`` per service address; every method is a thin, typed wrapper around
one RPC of ``workspace.v1`` (Workspaces, Clusters, Images, Admin) and returns the
protobuf message the service sent. gRPC errors come back as ``workspace.errors`` classes,
so callers catch ``WorkspaceError`` (``Unavailable`` when the service cannot be
reached). A few helpers build on the RPCs: ``upload_blob`` (16-256 KiB chunks),
``watch`` (an event iterator that can survive a service restart), ``health``, and the
waits (``workspace/client_waits.py``): ``wait_until`` a condition on a workspace holds
(level-triggered: watch events plus a periodic re-read), ``wait_for_state``,
``wait_for_reboot`` (the node carried a reboot out) and ``wait_for_cluster_state``
(polls GetCluster).

Where the service is and who calls it: ``workspace/client_address.py``.
"""

from __future__ import annotations

import os
import re
import time
import uuid
from collections.abc import Callable, Generator, Iterable, Mapping, Sequence
from types import TracebackType
from typing import Any, TypeVar

import grpc
from google.protobuf.timestamp_pb2 import Timestamp
from grpc_health.v1 import health_pb2, health_pb2_grpc

from workspace import client_streams, errors, failover, rpc, rpc_status
from workspace.client_address import (
    CUT,
    connect_reason,
    local_site_hint,
    no_connection,
    older_service,
)
from workspace.client_address import IDENTITY_ENV as IDENTITY_ENV  # re-exported
from workspace.client_address import SERVICE_ENV as SERVICE_ENV  # re-exported
from workspace.client_address import TLS_ENV as TLS_ENV  # re-exported
from workspace.client_address import ServiceNotConfigured as ServiceNotConfigured
from workspace.client_address import ServiceUnreachable as ServiceUnreachable
from workspace.client_address import identity_tls as identity_tls  # re-exported
from workspace.client_address import resolve_address as resolve_address  # re-exported
from workspace.client_address import resolve_tls as resolve_tls  # re-exported
from workspace.client_address import tls_from_env as tls_from_env  # re-exported
from workspace.client_admin import AdminClientMixin
from workspace.client_args import BadArgument as BadArgument  # re-exported
from workspace.client_args import address as address_arg
from workspace.client_args import checked_arguments, grpc_timeout, seconds, strings
from workspace.client_backfill import BackfillClientMixin
from workspace.client_choices import AFFINITIES as AFFINITIES  # re-exported
from workspace.client_choices import FAILURE_POLICIES as FAILURE_POLICIES  # re-exported
from workspace.client_choices import USAGE_GROUPINGS as USAGE_GROUPINGS  # re-exported
from workspace.client_choices import affinity_value as affinity_value  # re-exported
from workspace.client_choices import failure_policy_value as failure_policy_value  # re-exported
from workspace.client_choices import own_usage_by_project
from workspace.client_elastic import ElasticClientMixin
from workspace.client_events import EventsClientMixin
from workspace.client_guests import GuestsClientMixin
from workspace.client_images import ImagesClientMixin
from workspace.client_images import PushProgress as PushProgress  # re-exported
from workspace.client_images import PushResult as PushResult  # re-exported
from workspace.client_images import blank_partition as blank_partition  # re-exported
from workspace.client_images import parse_blank as parse_blank  # re-exported
from workspace.client_keys import KeysClientMixin
from workspace.client_policy import PolicyClientMixin, limits_message
from workspace.client_projects import ProjectsClientMixin
from workspace.client_waits import CLUSTER_POLL_S as CLUSTER_POLL_S  # re-exported
from workspace.client_waits import CS as CS  # re-exported
from workspace.client_waits import DS as DS  # re-exported
from workspace.client_waits import FINAL_STATES as FINAL_STATES  # re-exported
from workspace.client_waits import RESYNC_S as RESYNC_S  # re-exported
from workspace.client_waits import WS as WS  # re-exported
from workspace.client_waits import ClusterWaitFailed as ClusterWaitFailed  # re-exported
from workspace.client_waits import ClusterWaitTimeout as ClusterWaitTimeout  # re-exported
from workspace.client_waits import WaitFailed as WaitFailed  # re-exported
from workspace.client_waits import WaitsClientMixin
from workspace.client_waits import WaitTimeout as WaitTimeout  # re-exported
from workspace.client_waits import cluster_state_name as cluster_state_name  # re-exported
from workspace.client_waits import rebooted as rebooted  # re-exported
from workspace.client_waits import state_name as state_name  # re-exported
from workspace.client_whoami import WhoAmIClientMixin
from workspace.config import TlsConfig
from workspace.tls_probe import refused_by_any
from workspace.v1 import (
    access_pb2_grpc,
    admin_pb2_grpc,
    clusters_pb2,
    clusters_pb2_grpc,
    common_pb2,
    images_pb2_grpc,
    projects_pb2_grpc,
    trust_pb2_grpc,
    usage_pb2,
    workspaces_pb2,
    workspaces_pb2_grpc,
)

T = TypeVar("T")

CHUNK_BYTES = 1024 * 1024
# list_workspaces, list_clusters and get_usage ask for this many per page.
LIST_PAGE_SIZE = 500
# A create whose answer was lost is sent again (the same request id) this often.
CREATE_RETRY_S = 0.5

# Of CONNECT_MARKERS (client_address), the ones that say nothing listens at the address
# at all, or that its name does not resolve (no identity would have helped).
_NOTHING_THERE = (
    "connection refused",
    "no such file or directory",
    "dns resolution",
    "errors resolving",
)


# gRPC's own words for a message over the size limit, on either side.
_TOO_BIG = re.compile(r"(Sent|Received) message larger than max \((\d+) vs\. (\d+)\)")


def _mib(n: int) -> str:
    return f"{n / 2**20:.1f} MiB"


@checked_arguments
class Client(
    WaitsClientMixin,
    ImagesClientMixin,
    ProjectsClientMixin,
    KeysClientMixin,
    GuestsClientMixin,
    EventsClientMixin,
    PolicyClientMixin,
    BackfillClientMixin,
    ElasticClientMixin,
    WhoAmIClientMixin,
    AdminClientMixin,
):
    """A connection to one workspace service. Thread-safe; close() when done (or use it
    as a context manager). A wrong argument (type, range) raises ``BadArgument``, an
    ``errors.InvalidArgument``; a call after ``close()``, or one under way that it ends,
    ``errors.ClientClosed``."""

    def __init__(
        self,
        address: str,
        tls: TlsConfig | None = None,
        timeout_s: float = 30.0,
        identity: str | os.PathLike[str] | None = None,
        *,
        identity_hint: str = "",
    ) -> None:
        """``timeout_s``: each call's deadline (above 0, at most 2**31 - 1 s; BadArgument else).
        ``identity``: an identity directory to call as (instead of ``tls``).
        ``identity_hint``: what a caller refused for want of a certificate is told to
        give (``from_env`` reads $WS_IDENTITY; this constructor does not)."""
        address = address_arg(address)
        if identity is not None:
            tls = identity_tls(identity)
        self._identity_hint = identity_hint or (
            f"Client(address, identity=DIR), or Client.from_env() with ${IDENTITY_ENV} set"
        )
        self.address = address
        self.timeout_s = seconds(timeout_s, "Client: timeout_s")
        self.tls = tls
        # Whether the service answered a call of this client: one that fails later
        # stopped or restarted, it does not want an identity it did not want before.
        self._answered = False
        self._closed = False
        self._channel = rpc.channel(address, tls)
        self._workspaces = workspaces_pb2_grpc.WorkspacesStub(self._channel)
        self._images = images_pb2_grpc.ImagesStub(self._channel)
        self._admin = admin_pb2_grpc.AdminStub(self._channel)
        self._clusters = clusters_pb2_grpc.ClustersStub(self._channel)
        self._trust = trust_pb2_grpc.TrustStub(self._channel)
        self._projects = projects_pb2_grpc.ProjectsStub(self._channel)
        self._keys = access_pb2_grpc.KeysStub(self._channel)
        # Every stub now: one made on a closed channel crashes the process (SIGSEGV).
        self._guests = access_pb2_grpc.GuestsStub(self._channel)
        self._health = health_pb2_grpc.HealthStub(self._channel)

    @classmethod
    def from_env(
        cls,
        service: str | None = None,
        tls: TlsConfig | None = None,
        timeout_s: float = 30.0,
        identity: str | None = None,
        identity_hint: str = "",
    ) -> Client:
        """A client for ``service``, else $WS_SERVICE, else the local site; as
        ``identity`` (or ``tls``), else as ``resolve_tls`` finds. ``identity_hint``: how
        the caller's user names an identity, for a refusal for want of one (ws's
        ``--identity DIR or $WS_IDENTITY``, the default)."""
        address = resolve_address(service)
        if identity or tls is None:
            tls = resolve_tls(address, identity)
        return cls(
            address,
            tls,
            timeout_s,
            identity_hint=identity_hint or f"--identity DIR or ${IDENTITY_ENV}",
        )

    def close(self) -> None:
        """Calls under way (another thread's) and any later end with ``ClientClosed``."""
        self._closed = True
        self._channel.close()

    @property
    def closed(self) -> bool:
        """Whether ``close()`` was called."""
        return self._closed

    def __enter__(self) -> Client:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    # -- plumbing ----------------------------------------------------------------------

    def _error(self, exc: grpc.RpcError) -> errors.WorkspaceError:
        code = exc.code() if hasattr(exc, "code") else None
        details = (exc.details() if hasattr(exc, "details") else "") or ""
        failures = (
            exc.failures
            if isinstance(exc, failover.AllFailed)
            else [(self.address, details or "unavailable")]
        )
        said = " ".join(d for _a, d in failures)
        if code == grpc.StatusCode.UNAVAILABLE and (not details or no_connection(said)):
            return rpc_status.coded(self._unreachable(details, failures), code)
        too_big = _TOO_BIG.search(details) if code == grpc.StatusCode.RESOURCE_EXHAUSTED else None
        if too_big is not None:
            what = "request" if too_big[1] == "Sent" or "CLIENT" not in details else "answer"
            size, most = int(too_big[2]), int(too_big[3])
            why = " (user-data or a file given is too large)" if what == "request" else ""
            return rpc_status.coded(
                errors.ResourceExhausted(
                    f"the {what} is {_mib(size)}, more than the {_mib(most)} one message may "
                    f"carry{why}"
                ),
                code,
            )
        if code == grpc.StatusCode.UNIMPLEMENTED:
            # gRPC's own words ("Method not found!"): a service of an older release (a
            # user who upgraded first), or an address that is not its client API.
            return rpc_status.coded(
                older_service(
                    self.address,
                    f"does not know this call ({details or code.name})",
                    "Or the address is not the service's client API (its node_listen, the "
                    "agents' port, say)",
                ),
                code,
            )
        if code == grpc.StatusCode.CANCELLED and self._closed:
            # Our own close() ended it (another thread's): not the service's doing.
            return rpc_status.coded(
                errors.ClientClosed(f"the client was closed during the call ({details})"), code
            )
        if rpc_status.cancelled_by_service(exc):
            # Its server stopped before it answered: an outage (exit 3, a wait goes on),
            # not "CANCELLED" ended with exit 1. A change may have been made before.
            return rpc_status.coded(
                errors.Unavailable(
                    f"the workspace service at {self.address} stopped during the call "
                    "(stopping or restarting); a change asked may or may not have been made"
                ),
                code,
            )
        if code == grpc.StatusCode.DEADLINE_EXCEEDED:
            # Unavailable (retry with back-off), as before; ``code`` tells them apart.
            return rpc_status.coded(
                errors.Unavailable(
                    f"the workspace service at {self.address} did not answer in time ({details})"
                ),
                code,
            )
        return rpc_status.from_rpc_error(exc)

    def _unreachable(self, details: str, failures: list[tuple[str, str]]) -> ServiceUnreachable:
        """No connection could be made: to the one address, what gRPC said; to several
        replicas, each address with what gRPC said of it, one indented line each."""
        said = " ".join(d for _a, d in failures).lower()
        # Nothing at any of them: no identity would have helped (one that answered and
        # closed the connection may want one).
        absent = all(any(m in why.lower() for m in _NOTHING_THERE) for _a, why in failures)
        answered = rpc_status.server_identity_hint(said)
        if not answered and self.tls is not None:
            # Closed: down, or our certificate refused in the handshake (no alert says so).
            answered = refused_by_any(failures, self.tls)
        hint = (
            answered
            if self.tls is not None or absent
            else f" (no identity given: a service with mutual TLS needs {self._identity_hint})"
        )
        if not answered and len(failures) == 1 and failures[0][1].lower().startswith(CUT):
            hint = " (it went away during the call: it stopped or restarted)"
        elif not answered and self._answered:
            hint = " (it answered this client before: it stopped or restarted since)"
        # A server whose certificate was refused answered: the local site is not down.
        site = "" if answered else local_site_hint(self.address)
        if len(failures) < 2:
            return ServiceUnreachable(
                f"cannot reach the workspace service at {failures[0][0]}: "
                f"{connect_reason(details) or 'unavailable'}{hint}{site}",
                failures,
                hint + site,
            )
        each = "".join(f"\n  {address}: {connect_reason(why)}" for address, why in failures)
        return ServiceUnreachable(
            f"cannot reach the workspace service at any of the {len(failures)} addresses "
            f"tried{hint}{site}:{each}",
            failures,
            hint + site,
        )

    def _call(self, method: Callable[..., T], request: Any, timeout_s: float | None = None) -> T:
        try:
            given = self.timeout_s if timeout_s is None else timeout_s
            found = method(request, timeout=grpc_timeout(given))
        except grpc.RpcError as exc:
            raise self._error(exc) from None
        self._answered = True
        return found

    def _create(self, method: Callable[..., T], request: Any) -> T:
        """A create RPC, retried with the same request (and so the same request id) when
        it fails with UNAVAILABLE (or CANCELLED by a server that stopped under it): a lost
        answer never makes a second object. Once if the call never left (no service
        there); if it may have reached the service (which went away under it: killed,
        stopped, restarted), until the service answers or ``timeout_s`` has
        passed. Retried once only, a create cut short by a restart failed "cannot reach"
        while the service restarted, though it may have made the object: the user ran it
        again, and an unnamed workspace or cluster was made twice."""
        deadline = time.monotonic() + self.timeout_s
        try:
            return method(request, timeout=self.timeout_s)
        except grpc.RpcError as exc:
            cut = rpc_status.cancelled_by_service(exc)  # its server stopped under it
            if exc.code() != grpc.StatusCode.UNAVAILABLE and not cut:
                raise self._error(exc) from None
            reached = cut or failover.may_have_reached(exc)
        while True:
            time.sleep(CREATE_RETRY_S)
            try:
                return self._call(method, request)
            except ServiceUnreachable:  # not the service's own UNAVAILABLE (its store)
                if not reached or time.monotonic() > deadline:
                    raise

    # -- health ------------------------------------------------------------------------

    def health(self, service: str = "", timeout_s: float | None = None) -> str:
        """One grpc.health.v1 Check round trip; returns the status name ("SERVING")."""
        resp = self._call(
            self._health.Check, health_pb2.HealthCheckRequest(service=service), timeout_s
        )
        return str(health_pb2.HealthCheckResponse.ServingStatus.Name(resp.status))

    # -- Workspaces --------------------------------------------------------------------

    def create_workspace(
        self,
        image: str,
        name: str = "",
        cpus: int = 0,
        memory_mib: int = 0,
        networks: Sequence[str] = (),
        user_data: bytes = b"",
        request_id: str | None = None,
        requirements: Mapping[str, str] | None = None,
        wait_for_capacity_s: int = 0,
        extra_partitions: Sequence[common_pb2.Partition] = (),
        grow_bytes: Mapping[str, int] | None = None,
        project: str = "",
        lease_s: int = 0,
        connectivity: str = "",
        allow: Sequence[str] = (),
        limits: Mapping[str, int] | None = None,
        preemptible: bool = False,
    ) -> common_pb2.Workspace:
        """Create a workspace; idempotent by ``request_id`` (a fresh uuid4 if not given).

        ``requirements`` are node labels the workspace needs (``{"gpu": "1"}``;
        ``hypervisor`` matches the node's type). With ``wait_for_capacity_s`` a request
        that does not fit now waits that long in the service's queue (the workspace is
        PENDING meanwhile) instead of failing at once.

        ``extra_partitions`` adds blank disks to the image's (``blank_partition`` makes
        one); ``grow_bytes`` gives cow partitions of the image a larger virtual size
        (partition name -> bytes). Both are checked against the site's limits.

        ``lease_s``: the workspace is stopped (or destroyed, per its project) that many
        seconds from now; 0 = the project's default lease.

        ``connectivity`` ("open", "cluster", "outbound"; "" = the default), ``allow``
        (rules such as "tcp/22") and ``limits`` ({"net_mbps": 50, ...}; 0 = the default).
        ``preemptible``: the preemptible class (destroyed, reason PREEMPTED, when a
        normal request needs its place).

        A create that fails with UNAVAILABLE (or CANCELLED as its server stopped) is sent
        again with the same request id (once if it never left; until the service answers,
        within ``timeout_s``, if the service may have taken it), so a lost answer never
        makes a second workspace.
        """
        req = workspaces_pb2.CreateWorkspaceRequest(
            request_id=request_id or str(uuid.uuid4()),
            name=name,
            image=image,
            cpus=cpus,
            memory_mib=memory_mib,
            networks=strings(networks, "networks"),
            user_data=user_data,
            requirements=dict(requirements or {}),
            wait_for_capacity_s=wait_for_capacity_s,
            extra_partitions=list(extra_partitions),
            grow_bytes=dict(grow_bytes or {}),
            project=project,
            lease_s=lease_s,
            connectivity=connectivity,
            allow=strings(allow, "allow"),
            limits=limits_message(limits),
            preemptible=preemptible,
        )
        return self._create(self._workspaces.CreateWorkspace, req)

    def get_workspace(self, id: str) -> common_pb2.Workspace:
        return self._call(self._workspaces.GetWorkspace, workspaces_pb2.GetWorkspaceRequest(id=id))

    def list_workspaces(
        self,
        include_terminated: bool = False,
        page_size: int = LIST_PAGE_SIZE,
        all_users: bool = False,
        mine: bool = False,
    ) -> list[common_pb2.Workspace]:
        """Every workspace the caller sees (theirs and their projects'; an admin's
        ``all_users``: everyone's; ``mine``: only the caller's own, not their project
        colleagues'), fetched page by page (oldest first)."""
        out: list[common_pb2.Workspace] = []
        token = ""
        while True:
            resp = self._call(
                self._workspaces.ListWorkspaces,
                workspaces_pb2.ListWorkspacesRequest(
                    include_terminated=include_terminated,
                    page_size=page_size,
                    page_token=token,
                    all_users=all_users,
                    mine=mine,
                ),
            )
            out.extend(self._own(mine, resp.mine, resp.workspaces, "workspace"))
            token = resp.next_page_token
            if not token:
                return out

    def start_workspace(self, id: str) -> common_pb2.Workspace:
        return self._call(self._workspaces.StartWorkspace, workspaces_pb2.WorkspaceRef(id=id))

    def stop_workspace(
        self, id: str, timeout_s: int = 0, force: bool = False
    ) -> common_pb2.Workspace:
        req = workspaces_pb2.StopWorkspaceRequest(id=id, timeout_s=timeout_s, force=force)
        return self._call(self._workspaces.StopWorkspace, req)

    def reboot_workspace(self, id: str) -> common_pb2.Workspace:
        return self._call(self._workspaces.RebootWorkspace, workspaces_pb2.WorkspaceRef(id=id))

    def pause_workspace(self, id: str) -> common_pb2.Workspace:
        return self._call(self._workspaces.PauseWorkspace, workspaces_pb2.WorkspaceRef(id=id))

    def resume_workspace(self, id: str) -> common_pb2.Workspace:
        return self._call(self._workspaces.ResumeWorkspace, workspaces_pb2.WorkspaceRef(id=id))

    def destroy_workspace(self, id: str) -> common_pb2.Workspace:
        return self._call(self._workspaces.DestroyWorkspace, workspaces_pb2.WorkspaceRef(id=id))

    def get_console(self, id: str, tail_bytes: int = 0) -> bytes:
        req = workspaces_pb2.GetConsoleRequest(id=id, tail_bytes=tail_bytes)
        return bytes(self._call(self._workspaces.GetConsole, req).data)

    def extend_lease(self, id: str, add_s: int) -> common_pb2.Workspace:
        """The workspace's lease ends ``add_s`` seconds later (from now, once it ended)."""
        req = workspaces_pb2.ExtendLeaseRequest(id=id, add_s=add_s)
        return self._call(self._workspaces.ExtendLease, req)

    def get_usage(
        self,
        since: float = 0.0,
        until: float = 0.0,
        by: str = "workspace",
        all_users: bool = False,
        page_size: int = LIST_PAGE_SIZE,
        mine: bool = False,
    ) -> usage_pb2.UsageReport:
        """Core-, memory-GiB- and disk-GiB-hours in [since, until) (epoch s; 0 = from the
        first record / until now) per ``by``, one of USAGE_GROUPINGS: the caller's own and
        their projects', or with ``all_users`` every workspace (Admin.GetUsage); ``mine``:
        the caller's own rows only (by workspace or user), as ``list(mine=True)``. Fetched
        page by page (``page_size`` rows each), returned as one report."""
        if not isinstance(by, str) or by.lower() not in USAGE_GROUPINGS:
            raise ValueError(f"by must be one of {', '.join(USAGE_GROUPINGS)}, not {by!r}")
        if mine and by.lower() == "project":
            raise ValueError(own_usage_by_project(by))
        req = usage_pb2.GetUsageRequest(
            since=_timestamp(since),
            until=_timestamp(until),
            by=usage_pb2.UsageGrouping.Value(f"USAGE_GROUPING_{by.upper()}"),
            page_size=page_size,
        )
        method = self._admin.GetUsage if all_users else self._workspaces.GetUsage
        report: usage_pb2.UsageReport = self._call(method, req)
        while report.next_page_token:
            req.page_token = report.next_page_token
            page: usage_pb2.UsageReport = self._call(method, req)
            report.rows.extend(page.rows)
            report.next_page_token = page.next_page_token
        if mine:
            me = self.whoami().user
            kept = [r for r in report.rows if r.owner == me]
            del report.rows[:]
            report.rows.extend(kept)
        return report

    def watch(
        self,
        id: str = "",
        include_terminated: bool = False,
        reconnect: bool = False,
        timeout_s: float | None = None,
        on_outage: Callable[[str], None] | None = None,
        mine: bool = False,
    ) -> Generator[workspaces_pb2.WorkspaceEvent, None, None]:
        """Workspace events: first a snapshot (``initial``), then every change; of the
        caller's workspaces and their projects', with ``mine`` only the caller's own (as
        ``list_workspaces``; against a service older than it, those its certificate's
        user owns, or ``FailedPrecondition`` without a certificate).

        With ``reconnect`` a dropped stream (service restart, network blip), one the
        service ended because it fell behind, or one refused because the caller has too
        many streams open is re-opened with back-off and starts again with a fresh
        snapshot (a revoked certificate still raises); otherwise the error that ended the
        stream is raised (``Unavailable`` for an outage). ``on_outage`` is told once when
        the stream is lost (the reason) and once when events flow again (""). ``timeout_s``
        bounds the whole watch (then it just ends; ``float("inf")``: nothing). Closing the
        iterator cancels the stream.
        """
        req = workspaces_pb2.WatchWorkspacesRequest(
            id=id, include_terminated=include_terminated, mine=mine
        )
        events = client_streams.reopening(
            lambda remaining: self._workspaces.WatchWorkspaces(req, timeout=remaining),
            self._error,
            reconnect,
            timeout_s,
            on_outage,
            again_after_end=True,
        )
        yield from self._own_events(events, id) if mine else events

    # -- Clusters ----------------------------------------------------------------------

    def create_cluster(
        self,
        request: clusters_pb2.CreateClusterRequest | None = None,
        /,
        *,
        name: str = "",
        members: Iterable[clusters_pb2.ClusterMember | Mapping[str, Any]] = (),
        affinity: int | str = 0,
        on_failure: int | str = 0,
        wait_for_capacity_s: int = 0,
        request_id: str | None = None,
        lease_s: int = 0,
        connectivity: str = "",
        allow: Sequence[str] = (),
        limits: Mapping[str, int] | None = None,
        preemptible: bool = False,
        project: str = "",
    ) -> clusters_pb2.Cluster:
        """Create a virtual cluster, placed all or nothing; idempotent by request id.

        Give a whole ``CreateClusterRequest`` or the fields as keywords (members as
        ``ClusterMember`` or dicts of its fields; ``affinity`` and ``on_failure`` as
        numbers or short names, "soft-anti", "teardown"; ``project``: the project charged,
        as ``ws cluster create --project``, "" = the caller's only one). A request without
        a request id gets a fresh uuid4 (the caller's message is not changed). Retried
        once on UNAVAILABLE with the same request id, like create_workspace.
        """
        if request is not None:
            given = (name, tuple(members), affinity, on_failure, wait_for_capacity_s, lease_s)
            extra = connectivity or allow or limits or preemptible or project
            if given != ("", (), 0, 0, 0, 0) or extra:
                raise TypeError("create_cluster: give a request or keywords, not both")
            req = clusters_pb2.CreateClusterRequest()
            req.CopyFrom(request)
        else:
            req = clusters_pb2.CreateClusterRequest(
                name=name,
                members=[
                    m if isinstance(m, clusters_pb2.ClusterMember) else _member(m) for m in members
                ],
                affinity=affinity_value(affinity),  # type: ignore[arg-type]
                on_failure=failure_policy_value(on_failure),  # type: ignore[arg-type]
                wait_for_capacity_s=wait_for_capacity_s,
                lease_s=lease_s,
                connectivity=connectivity,
                preemptible=preemptible,
                allow=strings(allow, "allow"),
                limits=limits_message(limits),
                project=project,
            )
        if request_id:
            req.request_id = request_id
        elif not req.request_id:
            req.request_id = str(uuid.uuid4())
        return self._create(self._clusters.CreateCluster, req)

    def get_cluster(self, id: str) -> clusters_pb2.Cluster:
        return self._call(self._clusters.GetCluster, clusters_pb2.ClusterRef(id=id))

    def list_clusters(
        self,
        include_terminated: bool = False,
        all_users: bool = False,
        page_size: int = LIST_PAGE_SIZE,
        mine: bool = False,
    ) -> list[clusters_pb2.Cluster]:
        """The caller's clusters and their projects'; with ``all_users`` (admins only,
        else PermissionDenied) every user's; ``mine``: only the caller's own; fetched
        page by page (oldest first)."""
        out: list[clusters_pb2.Cluster] = []
        req = clusters_pb2.ListClustersRequest(
            include_terminated=include_terminated,
            all_users=all_users,
            page_size=page_size,
            mine=mine,
        )
        while True:
            resp = self._call(self._clusters.ListClusters, req)
            out.extend(self._own(mine, resp.mine, resp.clusters, "cluster"))
            req.page_token = resp.next_page_token
            if not req.page_token:
                return out

    def start_cluster(self, id: str) -> clusters_pb2.Cluster:
        return self._call(self._clusters.StartCluster, clusters_pb2.ClusterRef(id=id))

    def stop_cluster(self, id: str) -> clusters_pb2.Cluster:
        return self._call(self._clusters.StopCluster, clusters_pb2.ClusterRef(id=id))

    def destroy_cluster(self, id: str) -> clusters_pb2.Cluster:
        return self._call(self._clusters.DestroyCluster, clusters_pb2.ClusterRef(id=id))

    def extend_cluster_lease(self, id: str, add_s: int) -> clusters_pb2.Cluster:
        """Every live member's lease ends ``add_s`` seconds later (from now, once it
        ended), or none's: a member that cannot be extended so far refuses the whole."""
        req = clusters_pb2.ExtendClusterLeaseRequest(id=id, add_s=add_s)
        return self._call(self._clusters.ExtendClusterLease, req)


def _timestamp(epoch_s: float) -> Timestamp | None:
    if not epoch_s:
        return None
    t = Timestamp()
    t.FromNanoseconds(int(epoch_s * 1e9))
    return t


def _member(fields: Mapping[str, Any]) -> clusters_pb2.ClusterMember:
    data = dict(fields)
    if "networks" in data:
        data["networks"] = strings(data["networks"], "networks")
    if "requirements" in data:
        data["requirements"] = {str(k): str(v) for k, v in data["requirements"].items()}
    return clusters_pb2.ClusterMember(**data)
