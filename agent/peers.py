"""Peer fetch: agents serve complete cached blobs to each other (``Peers.FetchBlob``).

An agent with ``peer_listen`` set runs a small read-only gRPC server over its blob
cache and registers the address other agents reach it at. The service tells an
agent which peers hold a blob (``DiskAssignment.sources``); the agent tries them in
order and finally the service (see ``Staging.sources``). The receiving cache hashes
every byte, so a peer is never trusted: a bad or failed one only costs a retry
from the next source.

A peer serves only blobs that are complete in its cache and intact: before each
transfer it checks the blob's stat against the one recorded when it was verified and
re-hashes it if that changed (a corrupted one is quarantined and refused with
DATA_LOSS). It never relays a transfer in progress.

With TLS (``[tls]`` of the agent) the peer server requires a client certificate of
the site CA and serves only node identities (``workspace://node/NAME``) whose
certificate the CRL (``tls.crl_file``, re-read when it changes) does not revoke, and
each only the blobs the service granted it: the request must carry the service's
grant of that digest to that node (``workspace/grants.py``: signed by an unrevoked
service certificate of the site CA, unexpired), else PERMISSION_DENIED, checked before
the peer says whether it holds the blob. The service grants a node the blobs its orders
name peers for (``AssignmentSet.peer_grants``), so a node can get from a peer only what
it could get from the service's own ``Nodes.FetchBlob``; the agent shows each blob's
grant (``PeerChannels.take``), and a refused fetch goes on to the next source, finally
the service. Without TLS nothing is checked (there are no identities to grant to). The
peer client presents the agent's own node identity, and fetches only from the node the
service named for the address: its channel expects that node's name
(``NODE.node.workspace.invalid``, which only node NODE's certificate carries), so
another node, the service or a user cannot pose as it. A source the service names no
node for (a service older than that) is not used with TLS: the blob comes from the next
source, at worst from the service.
"""

from __future__ import annotations

import functools
import logging
import socket
import threading
import time
from collections.abc import Callable, Iterator

import grpc

from agent.backoff import Backoff
from agent.cache import BlobCache, BlobCorrupted, Source
from agent.cache.blobs import CHUNK_BYTES
from workspace import grants, identity, pki, rpc, rpc_status
from workspace.codec import node as codec
from workspace.config import TlsConfig
from workspace.domain.model import Grant, PeerGrants
from workspace.errors import ImageError, PermissionDenied, Unavailable
from workspace.node.v1 import nodes_pb2, nodes_pb2_grpc

log = logging.getLogger("agent.peers")

# The deadline of one FetchBlob call. A call it cuts after bytes came (a large image
# over a slow link) goes on from the byte reached, as a broken stream does (``_stream``);
# one that brought none in all that time (a stall) fails the fetch.
FETCH_TIMEOUT_S = 3600.0
# A transfer from the service whose stream broke (its replica died or hung, or the link
# left it) goes on from the offset reached through the replica the agent's link moves
# to; one the service answered UNAVAILABLE while the link stays where it is (the
# service's database away for a moment) goes on through the same link after a backoff
# (``SAME_LINK``). It gives up when no byte came for this long (docs/design/replicas.md).
FOLLOW_LINK_S = 30.0
SAME_LINK = Backoff(0.5, 5.0)
_FOLLOW_POLL_S = 0.1
# Consecutive moves that brought no byte before a transfer from the service gives up.
_FOLLOW_MOVES = 3
# A stream that ended so broke with its connection (the other side gone, the channel
# closed under it), not with an answer.
_BROKEN = (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.CANCELLED)
# Concurrent peer transfers one agent serves (more callers queue in gRPC).
SERVE_PARALLEL = 8


class PeerGate:
    """Who may fetch what from this peer: with TLS, only unrevoked node identities, each
    only the blobs the service granted it (``workspace/grants.py``)."""

    def __init__(self, tls: TlsConfig, clock: Callable[[], float] = time.time) -> None:
        self.secure = tls.enabled
        self.revocations: pki.Revocations | None = None
        self.grants: grants.Verifier | None = None
        if tls.enabled:
            ca_file = str(rpc.tls_files(tls).ca_file)
            if tls.crl_file:
                self.revocations = pki.Revocations(tls.crl_file, ca_file)
            self.grants = grants.Verifier(ca_file, self._revoked, clock)

    def _revoked(self, serial: int, authority: bytes = b"") -> bool:
        return self.revocations is not None and self.revocations.is_revoked(serial, authority)

    def allow(
        self, context: grpc.ServicerContext, node: str, digest: str, grant: Grant | None
    ) -> None:
        """Aborts the call (PERMISSION_DENIED) unless ``grant`` lets ``node`` (the caller,
        from ``caller``) fetch ``digest``; without TLS there is nothing to check."""
        if self.grants is None:
            return
        refusal = self.grants.problem(grant, node, digest)
        if refusal:
            log.warning("refused a blob fetch: %s", refusal)
            context.abort(grpc.StatusCode.PERMISSION_DENIED, refusal)

    def caller(self, context: grpc.ServicerContext) -> str:
        """The calling node's name ('' without TLS); aborts the call when refused."""
        if not self.secure:
            return ""
        name, refusal = self.check(rpc.peer_certificate(context))
        if refusal:
            log.warning("refused a blob fetch: %s", refusal)
            code = (
                grpc.StatusCode.UNAUTHENTICATED if not name else grpc.StatusCode.PERMISSION_DENIED
            )
            context.abort(code, refusal)
        return name

    def check(self, pem: bytes | None) -> tuple[str, str]:
        """(who, why refused) for a client certificate: (node name, '') when it may
        fetch; ('', reason) without a certificate; (principal or '?', reason) otherwise."""
        if pem is None:
            return "", "peers serve only callers presenting a certificate of the site CA"
        try:
            who = identity.from_pem(pem)
        except PermissionDenied as exc:
            return "?", exc.message
        except ValueError:
            return "?", "the client certificate cannot be read"
        if not who.is_node:
            return (
                who.principal,
                f"peers serve blobs only to node identities, not to {who.principal}",
            )
        if self._revoked(who.serial, who.authority):
            return (
                who.principal,
                f"the certificate of {who.principal} (serial {who.serial:#x}) is revoked",
            )
        return who.name, ""


class PeersServicer(nodes_pb2_grpc.PeersServicer):
    def __init__(self, cache: BlobCache, node: str, gate: PeerGate | None = None) -> None:
        self.cache = cache
        self.node = node
        self.gate = gate or PeerGate(TlsConfig())
        self.served_bytes = 0
        self._lock = threading.Lock()

    def FetchBlob(
        self, request: nodes_pb2.FetchBlobRequest, context: grpc.ServicerContext
    ) -> Iterator[nodes_pb2.BlobData]:
        node = self.gate.caller(context)
        caller = f"node {node} (certificate)" if node else f"{request.node!r} (unauthenticated)"
        digest = request.digest
        try:
            path = self.cache.path(digest)
        except ImageError as exc:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, exc.message)
        if node:
            self.gate.allow(context, node, digest, codec.grant_from_proto(request))
        try:
            held = self.cache.check(digest) is not None
        except BlobCorrupted as exc:
            context.abort(grpc.StatusCode.DATA_LOSS, f"node {self.node}: {exc.message}")
        if not held:
            context.abort(grpc.StatusCode.NOT_FOUND, f"node {self.node} does not hold {digest}")
        try:
            f = open(path, "rb")  # noqa: SIM115 - closed below; stays readable if evicted
        except FileNotFoundError:
            context.abort(grpc.StatusCode.NOT_FOUND, f"node {self.node} does not hold {digest}")
        with f:
            total = f.seek(0, 2)
            if not 0 <= request.offset <= total:
                context.abort(
                    grpc.StatusCode.OUT_OF_RANGE,
                    f"offset {request.offset} is outside {digest} ({total} bytes)",
                )
            f.seek(request.offset)
            log.info("serving %s from byte %d to %s", digest, request.offset, caller)
            while chunk := f.read(CHUNK_BYTES):
                with self._lock:
                    self.served_bytes += len(chunk)
                yield nodes_pb2.BlobData(data=chunk, total_size=total)


class PeerServer:
    """The agent's Peers service on ``listen``; ``address`` is what it registers."""

    def __init__(
        self, cache: BlobCache, node: str, listen: str, advertise: str, tls: TlsConfig
    ) -> None:
        self.listen = listen
        self.advertise = advertise
        self.servicer = PeersServicer(cache, node, PeerGate(tls))
        self.server = rpc.server(SERVE_PARALLEL)
        nodes_pb2_grpc.add_PeersServicer_to_server(self.servicer, self.server)
        self.tls = tls
        self.address = ""

    def start(self) -> str:
        # A socket left by a killed agent is replaced; one a live agent serves is refused.
        port = rpc.listen_on(self.server, self.listen, self.tls, "peer_listen")
        self.server.start()
        self.address = self.advertise or advertised_address(self.listen, port)
        log.info("serving cached blobs to peers on %s (as %s)", self.listen, self.address)
        return self.address

    def stop(self) -> None:
        self.server.stop(1).wait()


def advertised_address(listen: str, port: int) -> str:
    """What other agents dial: the listen address, a wildcard host replaced by our name."""
    if listen.startswith("unix:"):
        return listen
    host = listen.rsplit(":", 1)[0]
    if host in ("", "0.0.0.0", "[::]", "::"):
        host = socket.getfqdn()
    return f"{host}:{port}"


def _stream(
    call: Callable[[nodes_pb2.FetchBlobRequest], Iterator[nodes_pb2.BlobData]],
    req: nodes_pb2.FetchBlobRequest,
    where: str,
) -> Iterator[bytes]:
    """The chunks of one FetchBlob call; gRPC errors as Unavailable (the cache names
    the source in its messages). A stream that broke, or that its deadline cut after
    bytes came, is ``_Broken``: the transfer goes on from the byte reached (through the
    service: ``_following``; from a peer: the cache's next source). Until session 43 a
    deadline was a failure: a blob slower to come than ``FETCH_TIMEOUT_S`` failed every
    create that needed it, each attempt adding at most an hour's bytes to the partial."""
    responses = call(req)
    received = 0
    try:
        for msg in responses:
            received += len(msg.data)
            if msg.total_size and req.offset + received > msg.total_size:
                raise ImageError(f"{where} sent more than the {msg.total_size} bytes it announced")
            yield msg.data
    except grpc.RpcError as exc:
        said = rpc_status.describe(exc)
        code = exc.code() if hasattr(exc, "code") else None
        cut = code == grpc.StatusCode.DEADLINE_EXCEEDED and received > 0
        raise (_Broken(said) if code in _BROKEN or cut else Unavailable(said)) from None
    finally:
        cancel = getattr(responses, "cancel", None)
        if cancel is not None:
            cancel()  # a no-op once the call has ended


class PeerChannels:
    """One channel per peer (address and node), reused across fetches; close() on agent
    stop."""

    def __init__(self, node: str, tls: TlsConfig) -> None:
        self.node = node
        self.tls = tls
        self._lock = threading.Lock()
        self._stubs: dict[tuple[str, str], tuple[grpc.Channel, nodes_pb2_grpc.PeersStub]] = {}
        self._grants: PeerGrants | None = None

    def take(self, peer_grants: PeerGrants | None) -> None:
        """The grants of the latest orders: each fetch shows the peer its blob's."""
        with self._lock:
            self._grants = peer_grants

    def grant(self, digest: str) -> Grant | None:
        with self._lock:
            held = self._grants
        return None if held is None else held.grant(digest)

    def _stub(self, address: str, node: str) -> nodes_pb2_grpc.PeersStub:
        with self._lock:
            if (address, node) not in self._stubs:
                ch = rpc.channel(address, self.tls, node=node)
                self._stubs[address, node] = (ch, nodes_pb2_grpc.PeersStub(ch))
            return self._stubs[address, node][1]

    def source(self, address: str, node: str = "") -> Source:
        """The peer at ``address``, which must prove it is node ``node`` (with TLS: a
        source without a valid node name fails at once, and the cache moves on to the
        next one)."""
        where = f"peer {node} at {address}" if node else f"peer {address}"
        unchecked = self.tls.enabled and identity.name_problem(identity.Kind.NODE, node)

        def fetch(digest: str, offset: int) -> Iterator[bytes]:
            if unchecked:
                raise Unavailable(
                    f"not fetching from {where}: the service names no node for it "
                    "(a service older than this agent?), so its certificate cannot be checked"
                )
            stub = self._stub(address, node)
            req = nodes_pb2.FetchBlobRequest(
                node=self.node,
                digest=digest,
                offset=offset,
                grant=codec.grant_to_proto(self.grant(digest)),
            )
            return _stream(lambda r: stub.FetchBlob(r, timeout=FETCH_TIMEOUT_S), req, where)

        return Source(f"peer {address}", fetch)

    def close(self) -> None:
        with self._lock:
            stubs, self._stubs = self._stubs, {}
        for ch, _ in stubs.values():
            ch.close()


class _Broken(Unavailable):
    """A transfer's stream broke with its connection (``_BROKEN``)."""


Stub = Callable[[], nodes_pb2_grpc.NodesStub | None]


def service_source(
    node: str,
    stub: Stub,
    address: str,
    stop: threading.Event | None = None,
    follow_s: float = FOLLOW_LINK_S,
) -> Source:
    """The service's Nodes.FetchBlob, through whatever connection the agent has now (and
    through the next one, should the replica of this one die mid-way, unless ``stop``:
    the agent stops)."""
    where = f"service {address}"
    stopping = stop or threading.Event()

    def fetch(digest: str, offset: int) -> Iterator[bytes]:
        current = stub()
        if current is None:
            raise Unavailable("not connected to the service; cannot fetch blobs")
        return _following(
            current,
            nodes_pb2.FetchBlobRequest(node=node, digest=digest, offset=offset),
            where,
            lambda old, tries, deadline: _next_try(stub, old, tries, deadline, stopping),
            follow_s,
        )

    return Source(where, fetch)


# After a transfer from the service broke: the stub to go on through, and whether it is
# the link's new connection (True) or the same one again (False); None: give up.
_NextTry = Callable[
    [nodes_pb2_grpc.NodesStub, int, float], tuple[nodes_pb2_grpc.NodesStub, bool] | None
]


def _following(
    current: nodes_pb2_grpc.NodesStub,
    req: nodes_pb2.FetchBlobRequest,
    where: str,
    next_try: _NextTry,
    within_s: float,
) -> Iterator[bytes]:
    """The chunks of ``req`` through ``current``; when its stream breaks, the rest at the
    offset reached: through the link's next connection once the link moves to another
    replica (a new stub), or through the same one again after a backoff (``SAME_LINK``)
    while the link stays on it. Gives up when no byte came for ``within_s``, or after
    ``_FOLLOW_MOVES`` moves in a row that brought none.

    Until session 40 the transfer failed: a replica killed while a node fetched an image
    from it failed the create (FAILED, `ws create --wait` exit 1) although the link was
    on the next replica within a second. Until session 41 a fetch the service answered
    UNAVAILABLE while the link stayed up (its database away for a second) waited 30 s
    for a move of the link that never came, then failed."""
    moves = tries = 0  # in a row, that brought no byte
    deadline = 0.0  # no byte since the first of them broke: give up then
    while True:
        got = 0
        call = functools.partial(current.FetchBlob, timeout=FETCH_TIMEOUT_S)
        try:
            for chunk in _stream(call, req, where):
                got += len(chunk)
                yield chunk
            return
        except (_Broken, ValueError) as exc:  # ValueError: a call on a closed channel
            if got or not deadline:
                moves = tries = 0
                deadline = time.monotonic() + within_s
            following = None if moves >= _FOLLOW_MOVES else next_try(current, tries, deadline)
            if following is None:
                if isinstance(exc, ValueError):
                    raise Unavailable(f"{where}: {exc}") from None
                raise
            current, moved = following
            if moved:
                moves, tries = moves + 1, 0
            else:
                tries += 1
            req = nodes_pb2.FetchBlobRequest(
                node=req.node, digest=req.digest, offset=req.offset + got
            )
            log.info(
                "fetching %s from %s broke at byte %d (%s); %s",
                req.digest,
                where,
                req.offset,
                exc,
                "going on through the replica the agent moved to"
                if moved
                else f"tried again through the same link after {SAME_LINK.delay_s(tries):g} s "
                "(the link did not move)",
            )


def _next_try(
    stub: Stub,
    old: nodes_pb2_grpc.NodesStub,
    tries: int,
    deadline: float,
    stop: threading.Event,
) -> tuple[nodes_pb2_grpc.NodesStub, bool] | None:
    """After a transfer through ``old`` broke (``tries`` tries on it in a row before
    this one broke too): the link's next connection as soon as it has one other than
    ``old`` (True); ``old`` again once the backoff of ``tries + 1`` failures has passed
    and the link is still on it (False): the link did not move (the service answered
    UNAVAILABLE, e.g. its database away for a moment). While the link has no connection
    (it is moving), its next one is waited for. None: not before ``deadline``
    (monotonic), or the agent stops."""
    again_at = time.monotonic() + SAME_LINK.delay_s(tries + 1)
    while True:
        now = stub()
        if now is not None and now is not old:
            return now, True
        at = time.monotonic()
        if now is old and at >= again_at and at < deadline:
            return old, False
        if at >= deadline or stop.wait(_FOLLOW_POLL_S):
            return None
