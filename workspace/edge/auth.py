"""Who is calling, and may they call this: identities from client certificates, and the
one table of every RPC and the role it needs.

Every caller is an ``Identity`` (workspace/identity.py) taken from its client certificate
(mutual TLS with the site CA), checked against the site's CRL on every call, and on a
stream before every message it sends (edge/calls.py ``stream``). Without TLS
(a service started with ``insecure = true`` on loopback or a unix socket) every caller is
the admin user ``default_owner``.

Roles (``Role``): ADMIN is a user certificate with the admin role; USER is any user (what
they may touch is decided by the operations: their own objects and their projects');
NODE is a node certificate, acting only for the node it names (edge/nodes.py); OPEN needs
no identity (health). ``RULES`` names the role of every RPC; an RPC missing from it is
refused (and tests/unit/test_access.py fails).
"""

from __future__ import annotations

import enum
import functools
import logging
import threading
from collections import OrderedDict
from pathlib import Path

import grpc

from workspace import identity, rpc
from workspace.config import ServiceConfig, TlsConfig
from workspace.errors import AccessDenied, PermissionDenied, Unauthenticated
from workspace.identity import Identity, Kind
from workspace.pki import Revocations

log = logging.getLogger("workspace.edge.auth")
# Parsed client certificates kept (by their PEM bytes).
CERT_CACHE_SIZE = 1024


class Role(enum.Enum):
    OPEN = "open"
    USER = "user"
    ADMIN = "admin"
    NODE = "node"


def _rules() -> dict[str, Role]:
    u, a, n = Role.USER, Role.ADMIN, Role.NODE
    table: dict[str, dict[str, Role]] = {
        "workspace.v1.Workspaces": {
            "CreateWorkspace": u,
            "GetWorkspace": u,
            "ListWorkspaces": u,
            "StartWorkspace": u,
            "StopWorkspace": u,
            "RebootWorkspace": u,
            "PauseWorkspace": u,
            "ResumeWorkspace": u,
            "DestroyWorkspace": u,
            "WatchWorkspaces": u,
            "GetConsole": u,
            "ExtendLease": u,
            "GetUsage": u,
            "UpdateWorkspace": u,
            # A workspace the caller may see (as GetWorkspace): checked by the operation.
            "WatchWorkspaceEvents": u,
            # The caller's own name, role and projects.
            "WhoAmI": u,
        },
        "workspace.v1.Clusters": {
            "CreateCluster": u,
            "GetCluster": u,
            "ListClusters": u,
            "StartCluster": u,
            "StopCluster": u,
            "DestroyCluster": u,
            "ScaleCluster": u,
            "ExtendClusterLease": u,
            "SetAutoscale": u,
            "WatchClusterEvents": u,
        },
        "workspace.v1.Images": {
            "UploadBlob": u,
            "ImportImage": u,
            "ListImages": u,
            "GetImage": u,
            "HasBlobs": u,
            "DeleteImage": u,
            "GetRepositoryUsage": u,
            "SetImagePublic": a,
            # The workspace's owner (or an admin): checked by the operation.
            "SaveImage": u,
        },
        "workspace.v1.Trust": {
            # A signature must verify against a key the site trusts; only an image's
            # owner (or an admin) may attach one.
            "AddSignature": u,
            "GetSignatures": u,
            "GetPolicy": u,
            "AddKey": a,
            "RevokeKey": a,
            "RevokeDigest": a,
            "SetMode": a,
            "ListAudit": a,
        },
        "workspace.v1.Admin": {
            "ListNodes": a,
            "CreateNetwork": a,
            "ListNetworks": u,
            "DeleteNetwork": a,
            "UpdateNetwork": a,
            "DrainNode": a,
            "EnableNode": a,
            "RemoveNode": a,
            "ListQueue": a,
            "GetSchedulerInput": a,
            "ListCache": a,
            "PreloadImage": a,
            "GetUsage": a,
            "WatchEvents": a,
            "SetBackfill": a,
            "ListBackfill": a,
            "ClearBackfill": a,
            "ListReplicas": a,
        },
        "workspace.v1.Projects": {
            "CreateProject": a,
            "AddProjectUser": a,
            "ListProjects": a,
            "GetQuota": u,
            "SetProjectDefaults": a,
            "RemoveProjectUser": a,
            "DeleteProject": a,
        },
        "workspace.node.v1.Nodes": {
            "Register": n,
            "WatchAssignments": n,
            "ReportStatus": n,
            "PushConsole": n,
            "FetchBlob": n,
            "Tasks": n,
            "PutBlob": n,
        },
        # Keys are the caller's own.
        "workspace.v1.Keys": {"AddSshKey": u, "ListSshKeys": u, "RemoveSshKey": u},
        "workspace.v1.Guests": {
            # The owner's workspaces (or any, for an admin): checked by the operation.
            "Exec": u,
            "AttachConsole": u,
        },
        "grpc.health.v1.Health": {"Check": Role.OPEN, "Watch": Role.OPEN, "List": Role.OPEN},
    }
    return {f"/{svc}/{m}": role for svc, methods in table.items() for m, role in methods.items()}


RULES: dict[str, Role] = _rules()


def method_name(service: str, method: str) -> str:
    return f"/{service}/{method}"


class Authenticator:
    """Identifies callers of one service (cached certificates, the CRL re-read on change)."""

    def __init__(self, tls: TlsConfig, default_owner: str) -> None:
        self.tls_enabled = tls.enabled
        self.insecure_identity = Identity(Kind.USER, default_owner, admin=True)
        ca_file = tls.ca_file or (
            str(Path(tls.identity_dir) / "ca.pem") if tls.identity_dir else ""
        )
        self.revocations = Revocations(tls.crl_file, ca_file) if tls.crl_file else None
        self._cache: OrderedDict[bytes, Identity | PermissionDenied] = OrderedDict()
        self._lock = threading.Lock()
        self._crl_error = ""

    @property
    def insecure(self) -> bool:
        """No TLS: every caller is the admin user ``default_owner`` (development, tests)."""
        return not self.tls_enabled

    def _parse(self, pem: bytes) -> Identity:
        with self._lock:
            hit = self._cache.get(pem)
            if hit is not None:
                self._cache.move_to_end(pem)
        if hit is None:
            try:
                hit = identity.from_pem(pem)
            except PermissionDenied as exc:
                hit = exc
            except ValueError as exc:
                hit = PermissionDenied(f"the client certificate cannot be read: {exc}")
            with self._lock:
                self._cache[pem] = hit
                while len(self._cache) > CERT_CACHE_SIZE:
                    self._cache.popitem(last=False)
        if isinstance(hit, PermissionDenied):
            raise AccessDenied(hit.message)
        return hit

    def identify(self, context: grpc.ServicerContext) -> Identity:
        """The caller: from its client certificate (refused if it has none, names no
        identity, or is revoked), or the insecure-mode admin without TLS."""
        if self.insecure:
            return self.insecure_identity
        pem = rpc.peer_certificate(context)
        if pem is None:
            raise Unauthenticated("no client certificate: call with an identity of the site CA")
        who = self._parse(pem)
        self.check_revoked(who)
        return who

    def check_revoked(self, who: Identity) -> None:
        """Unauthenticated if ``who``'s certificate is revoked now (streams call this
        before every message they send, and their loops as they wait: edge/calls.py)."""
        if not who.serial or self.revocations is None:
            return
        self.revoked()  # the files checked, a problem said
        if self.revocations.lists(who.serial, who.authority):
            raise Unauthenticated(f"the certificate of {who.principal} has been revoked")

    def revoked(self) -> frozenset[int]:
        """The serials the CRL revokes now: the file is checked (a stat) and re-read if it
        changed (the service also calls this every second, calls or none: service/main.py)."""
        crl = self.revocations
        if crl is None:
            return frozenset()
        serials = crl.serials()
        if crl.error != self._crl_error:  # said once per new problem (or its end)
            self._crl_error = crl.error
            if crl.error:
                log.error("%s", crl.error)
        return serials

    def authorize(self, context: grpc.ServicerContext, method: str) -> Identity:
        """The caller, if the role ``method`` needs is theirs; else PermissionDenied."""
        role = RULES.get(method)
        if role is None:
            raise AccessDenied(f"{method} has no access rule; refused")
        if role is Role.OPEN:
            return self.insecure_identity if self.insecure else Identity(Kind.SERVICE, "anonymous")
        who = self.identify(context)
        if self.insecure:
            return who
        if role is Role.NODE:
            if not who.is_node:
                raise AccessDenied(f"{method} is for node agents; {who.principal} is not one")
        elif not who.is_user:
            raise AccessDenied(f"{method} is for users; {who.principal} is not one")
        elif role is Role.ADMIN and not who.admin:
            raise AccessDenied(
                f"{method} needs the admin role, which {who.principal} does not have"
            )
        return who


@functools.lru_cache(maxsize=16)
def authenticator(tls: TlsConfig, default_owner: str) -> Authenticator:
    """The one Authenticator of a service's config (shared by its servicers)."""
    return Authenticator(tls, default_owner)


def for_config(cfg: ServiceConfig) -> Authenticator:
    return authenticator(cfg.tls, cfg.default_owner)


def identify(
    context: grpc.ServicerContext, cfg: ServiceConfig, revocations: Revocations | None = None
) -> Identity:
    """The caller of ``context`` under ``cfg`` (``revocations``: the CRL to check, default
    the one ``cfg.tls.crl_file`` names)."""
    found = for_config(cfg).identify(context)
    if revocations is not None and revocations.is_revoked(found.serial, found.authority):
        raise Unauthenticated(f"the certificate of {found.principal} has been revoked")
    return found


def node_name(who: Identity, insecure: bool, asked: str) -> str:
    """The node a Nodes call acts for: the one its certificate names (``asked`` must be it).
    Without TLS (insecure), the node the request names."""
    if who.is_node:
        if asked != who.name:
            raise AccessDenied(
                f"this certificate is node {who.name}'s; it cannot act for node {asked!r}"
            )
        return who.name
    if insecure:
        return asked
    raise AccessDenied(f"{who.principal} is not a node")
