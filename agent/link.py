"""The agent's link to the service: registration, the order stream, reports, heartbeats,
console pushes and the service as a blob source.

This is the agent's edge: it alone (with the peer server/client in ``agent.peers``)
speaks protobuf. Each AssignmentSet is decoded into frozen ``NodeOrders`` here
(``workspace.codec.node``) and handed on; reports are built from domain objects.
Any failure of the stream reconnects (crash-only) after the agent's backoff, and the
service then sends the full state again.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Sequence
from typing import Protocol

import grpc

from agent.audit import AuditSpool
from agent.backoff import Backoff
from agent.cache import BlobCache, Source
from agent.peers import service_source
from agent.status import Sight
from images import signing
from workspace import failover, rpc, rpc_status, tls_probe
from workspace.codec import node as codec
from workspace.codec import v1 as codec_v1
from workspace.config import AgentConfig
from workspace.domain.model import NodeCondition, NodeInfo, NodeOrders
from workspace.errors import DATABASE_AWAY, Unavailable
from workspace.log import Outage
from workspace.node.v1 import nodes_pb2, nodes_pb2_grpc

log = logging.getLogger("agent")

RECONNECT = Backoff(0.5, 5.0)
# Failures in a row between two looks at whether the service refused our certificate.
PROBE_EVERY = 12
DEFAULT_HEARTBEAT_S = 5.0
# A call to the service (Register, a report) is given twice the heartbeat interval the
# service asked for, within these bounds: a replica that stopped answering (hung, not
# dead: its connections stay up) is left after one missed heartbeat or two, well within
# node_grace_s, for the service's default heartbeat and for smaller ones.
CALL_TIMEOUT_MIN_S = 2.0
CALL_TIMEOUT_MAX_S = 10.0
# A report that failed with these moves the link to the next replica: the one in use is
# down, hung or cut off (not a refusal of the report itself).
_MOVE_ON = (
    grpc.StatusCode.UNAVAILABLE,
    grpc.StatusCode.DEADLINE_EXCEEDED,
    grpc.StatusCode.CANCELLED,
)


def call_timeout_s(heartbeat_s: float) -> float:
    """The deadline of one call to the service, given its heartbeat interval."""
    return min(CALL_TIMEOUT_MAX_S, max(CALL_TIMEOUT_MIN_S, 2 * heartbeat_s))


class Node(Protocol):
    """What the link needs from the rest of the agent."""

    def node_info(self) -> NodeInfo:
        """What to register: identity, capacity, cached blobs, peer address."""
        ...

    def take_orders(self, orders: NodeOrders, policy: signing.Policy | None) -> None:
        """New orders; ``policy`` None when the service sent none (trust is off)."""
        ...

    def sight(self, ids: Sequence[str] | None) -> Sight:
        """What to report of ``ids`` (None: of every workspace the node knows of), and
        which of them the node cannot tell now."""
        ...

    def conditions(self) -> tuple[NodeCondition, ...] | None:
        """What keeps the node from serving some workspaces (None: not checked yet)."""
        ...


def decode(aset: nodes_pb2.AssignmentSet) -> tuple[NodeOrders, signing.Policy | None]:
    """The orders of one AssignmentSet, and its policy if it carries one."""
    orders = codec.node_orders_from_proto(aset)
    return orders, orders.policy


class Link:
    def __init__(
        self,
        cfg: AgentConfig,
        node: Node,
        cache: BlobCache,
        audit: AuditSpool,
        stop: threading.Event,
    ) -> None:
        self.cfg = cfg
        self.node = node
        self.cache = cache
        self.audit = audit
        self.stop = stop
        self.heartbeat_s = DEFAULT_HEARTBEAT_S
        self._stub: nodes_pb2_grpc.NodesStub | None = None
        # The order stream in use, the replica it is on, and why the link leaves it (a
        # report that failed cancels the stream so that run() moves to the next replica).
        self._stream: grpc.Future | None = None
        self._where = ""
        self._leaving = ""
        self._connected = threading.Event()
        self._report_lock = threading.Lock()
        self._unknown_told = False  # the service said it does not know this node
        # Send the next full report now rather than at the next heartbeat.
        self._report_soon = threading.Event()
        # The service's database away (a site's PostgreSQL outage): said once, then at
        # most every minute, and when a report is taken again; not at every try.
        self._db_away = Outage(
            log,
            "the link to the service",
            RECONNECT.max_s,
            again=(
                f"reconnecting at most every {RECONNECT.max_s:g} s (the node's "
                "workspaces run on; their reports follow)"
            ),
        )

    def connected(self) -> bool:
        return self._connected.is_set()

    def wait_connected(self, timeout_s: float) -> bool:
        return self._connected.wait(timeout_s)

    def report_soon(self) -> None:
        """Send a full report now (e.g. a new blob is cached) rather than at the next beat."""
        self._report_soon.set()

    def close(self) -> None:
        self._report_soon.set()

    def blob_source(self) -> Source:
        """The service's Nodes.FetchBlob, through whatever connection the link has now."""
        return service_source(self.cfg.node, lambda: self._stub, self.cfg.service, self.stop)

    # -- the stream --------------------------------------------------------------------

    def run(self) -> None:
        """Register and follow the order stream (a thread of its own), until ``stop``."""
        failures = 0
        done: threading.Event | None = None
        turn = 0  # which replica of a list to try first (failover.rotated)
        while not self.stop.is_set():
            addresses = failover.rotated(self.cfg.service, turn)
            where = failover.split(addresses)[0] if addresses else addresses
            channel = rpc.channel(addresses, self.cfg.tls)
            try:
                stub = nodes_pb2_grpc.NodesStub(channel)
                req = codec.node_info_to_proto(self.node.node_info())
                resp = stub.Register(req, timeout=call_timeout_s(self.heartbeat_s))
                self.heartbeat_s = float(resp.heartbeat_interval_s or DEFAULT_HEARTBEAT_S)
                where = failover.in_use(channel, self.cfg.service)
                log.info("node %s registered with %s", self.cfg.node, where)
                failures = 0
                stream = stub.WatchAssignments(
                    nodes_pb2.WatchAssignmentsRequest(node=self.cfg.node)
                )
                done = self._cancel_on_stop(stream)
                with self._report_lock:
                    self._stream, self._where, self._leaving = stream, where, ""
                for aset in stream:
                    first = not self._connected.is_set()
                    # Taken before the first report can be built, so that it says the
                    # set's number (ops/sent_orders.py): one saying none is read as an
                    # agent's older than numbers, and the set just sent is not kept.
                    self.node.take_orders(*decode(aset))
                    # Connected once the order stream delivers its first set (sent at
                    # once), not at Register: a node removed in between fails the stream
                    # and is registered again by the next turn of this loop, and its
                    # reports and fetches must not run (and be refused) meanwhile.
                    if first:
                        self._stub = stub
                        self._connected.set()
                        # A full report at once: what was not sent while the link was
                        # away (a report that failed is sent again this way).
                        self._report_soon.set()
                if not self.stop.is_set():
                    log.warning(
                        "service %s ended the order stream; %s",
                        where,
                        self._then(turn, failures),
                    )
            except grpc.RpcError as exc:
                if self.stop.is_set():
                    pass
                elif _database_away(exc):
                    self._db_away.failed(_failed(where, exc))
                elif not (self._leaving and self._db_away.failing):  # said by _move_on
                    log.warning(
                        "service %s%s; %s",
                        f"{where}: {self._leaving}" if self._leaving else _failed(where, exc),
                        "" if self._leaving else self._refused(where, exc, failures),
                        self._then(turn, failures),
                    )
            except Exception:
                # Crash-only: whatever went wrong, reconnect and start from the full state.
                if not self.stop.is_set():
                    log.exception(
                        "assignment stream from %s failed; %s",
                        where,
                        self._then(turn, failures),
                    )
            finally:
                if done is not None:
                    done.set()
                done = None
                self._connected.clear()
                with self._report_lock:
                    # No report is being sent now: closing the channel cannot fail one.
                    self._stub = None
                    self._stream, self._where, self._leaving = None, "", ""
                channel.close()
            failures += 1
            turn += 1
            self.stop.wait(RECONNECT.delay_s(failures))

    def _refused(self, address: str, exc: grpc.RpcError, failures: int) -> str:
        """Why the service closed the connection when it refused this node's certificate
        in the TLS handshake (gRPC says only "Socket closed"; tls_probe asks once more),
        for the log line; asked at the first failure in a row, then every
        ``PROBE_EVERY`` ("" otherwise, and for any other failure)."""
        if not self.cfg.tls.enabled or failures % PROBE_EVERY:
            return ""
        tried = getattr(exc, "failures", None) or [(address, rpc_status.describe(exc))]
        return tls_probe.refused_by_any(tried, self.cfg.tls)

    def _then(self, turn: int, failures: int) -> str:
        """What the next turn of ``run`` does, for a log line: "trying B in 0.5 s" (the
        replica it tries first), or "retrying in 0.5 s" with one address."""
        delay = RECONNECT.delay_s(failures + 1)
        addresses = failover.split(failover.rotated(self.cfg.service, turn + 1))
        if len(addresses) < 2:
            return f"retrying in {delay:.1f} s"
        return f"trying {addresses[0]} in {delay:.1f} s"

    def _move_on(self, stub: nodes_pb2_grpc.NodesStub, exc: grpc.RpcError) -> None:
        """A report through ``stub`` could not be sent: leave that replica (cancel the
        order stream; ``run`` registers with the next one and a full report follows).
        Called with the report lock held."""
        if stub is not self._stub or self._stream is None or self._leaving:
            return  # the link has moved on already
        why = rpc_status.describe(exc)
        self._leaving = f"reports failed ({why}); leaving it"
        if _database_away(exc):
            self._db_away.failed(f"report to {self._where}: {why}")
        elif len(failover.split(self.cfg.service)) > 1:
            log.warning("report to %s failed: %s; moving to another replica", self._where, why)
        else:
            log.warning("report to %s failed: %s; reconnecting", self._where, why)
        self._stream.cancel()

    def _cancel_on_stop(self, stream: grpc.Future) -> threading.Event:
        """Cancel the stream when the agent stops; returns the event that ends the watcher
        when the stream ends first (so reconnects do not pile up threads)."""
        done = threading.Event()

        def cancel() -> None:
            while not done.is_set():
                if self.stop.wait(1.0):
                    stream.cancel()
                    return

        threading.Thread(target=cancel, daemon=True, name="stream-cancel").start()
        return done

    # -- reports -----------------------------------------------------------------------

    def report(self, ids: list[str] | None = None) -> None:
        """Send an incremental report for ``ids``, or a full one (a heartbeat) for None,
        with the audit records not yet acknowledged."""
        # One report at a time, observed and sent in turn: a report observed earlier (a
        # heartbeat taken while an operation still ran) must never reach the service
        # after one observed later, or it would set an older state again.
        with self._report_lock:
            try:
                self._report(ids)
            except Exception:
                # Never the caller's failure (an operation that reports a step goes on):
                # the next full report says it.
                log.exception("report not sent; it goes with the next full report")
                if ids is not None:
                    self._report_soon.set()

    def _report(self, ids: list[str] | None) -> None:
        stub = self._stub
        if stub is None:
            return  # not connected: the full report at the next connect says it
        full = ids is None
        sight = self.node.sight(ids)
        batch = self.audit.take()
        try:
            req = nodes_pb2.ReportStatusRequest(
                node=self.cfg.node,
                full=full,
                workspaces=[codec.observation_to_proto(o) for o in sight.observations],
                audit=[codec.audit_to_proto(r) for r in batch.records],
                orders_sequence=sight.orders_sequence if full else 0,
            )
            req.workspaces.extend(codec.unknown_to_proto(wid) for wid in sight.unknown)
            if full:
                req.cached_digests.extend(self.cache.digests())
                req.cache_budget_bytes = self.cache.budget_bytes
                req.cache.extend(codec.cache_to_proto(e) for e in self.cache.entries())
                conditions = self.node.conditions()
                if conditions is not None:
                    req.conditions_checked = True
                    req.conditions.extend(codec_v1.condition_to_proto(c) for c in conditions)
            stub.ReportStatus(req, timeout=call_timeout_s(self.heartbeat_s))
        except grpc.RpcError as exc:
            self.audit.failed(batch)  # sent with the next report
            code = exc.code() if hasattr(exc, "code") else None
            if code == grpc.StatusCode.NOT_FOUND:
                # The site no longer knows this node (`ws-admin node remove`): said once,
                # not at every heartbeat.
                (log.debug if self._unknown_told else log.error)(
                    "the service does not know node %s (removed with `ws-admin node remove`?): "
                    "its reports are refused; stop this agent, or restart it to register again",
                    self.cfg.node,
                )
                self._unknown_told = True
                return
            if code in _MOVE_ON:
                self._move_on(stub, exc)
            else:
                log.warning("report to %s failed: %s", self._where, rpc_status.describe(exc))
            return
        except ValueError as exc:
            # The channel was closed under the report (the link is reconnecting): it is
            # sent again, as part of the full report, on the next connection; the
            # operation that asked for it goes on.
            self.audit.failed(batch)
            log.info("report not sent (%s); it goes with the next connection", exc)
            return
        except BaseException:
            self.audit.failed(batch)
            raise
        self._unknown_told = False
        self._db_away.answered()  # a report taken: the whole link works
        self.audit.acked(batch)

    def heartbeats(self) -> None:
        """Full reports every ``heartbeat_s`` while connected (a thread of its own)."""
        while not self.stop.is_set():
            if self._connected.wait(1.0):
                self._report_soon.clear()
                try:
                    self.report(None)
                except Exception:
                    log.exception("heartbeat failed")
                self._report_soon.wait(self.heartbeat_s)  # set: a new blob is cached

    # -- consoles ----------------------------------------------------------------------

    def push_console(
        self, workspace_id: str, offset: int, data: bytes = b"", reset: bool = False
    ) -> int:
        """Send console bytes at ``offset`` (-1: only ask); returns the service's next
        offset. Raises Unavailable when not connected or when the call failed."""
        stub = self._stub
        if stub is None:
            raise Unavailable("not connected to the service")
        req = nodes_pb2.PushConsoleRequest(
            node=self.cfg.node, workspace_id=workspace_id, offset=offset, data=data, reset=reset
        )
        try:
            return int(stub.PushConsole(req, timeout=call_timeout_s(self.heartbeat_s)).next_offset)
        except (grpc.RpcError, ValueError) as exc:  # ValueError: a channel closed under it
            what = rpc_status.describe(exc) if isinstance(exc, grpc.RpcError) else str(exc)
            raise Unavailable(f"console push failed: {what}") from None


def _failed(where: str, exc: grpc.RpcError) -> str:
    """A call that failed, for a log line: the replica and why; a registration tried on
    several replicas (``failover.AllFailed``), each with why. Until session 40 the line
    named the first one tried with the last one's error: while a replica was dead and
    the database away, "service <the dead one>: the service's database cannot be
    reached"."""
    tried = getattr(exc, "failures", [])
    if len(tried) < 2:
        return f"{where}: {_why(exc)}"
    return "; ".join(f"{address}: {why}" for address, why in tried)


def _database_away(exc: grpc.RpcError) -> bool:
    """Whether the service (each replica tried) answered that its database cannot be
    reached: the site's outage, not one replica's."""
    if not hasattr(exc, "code") or exc.code() != grpc.StatusCode.UNAVAILABLE:
        return False
    tried = getattr(exc, "failures", None) or [("", exc.details() or "")]
    return all(DATABASE_AWAY in why for _address, why in tried)


def _why(exc: grpc.RpcError) -> str:
    """Why a call to the service failed; UNIMPLEMENTED there means the address is the
    service's client API (``listen``), not its Nodes API."""
    said = rpc_status.describe(exc)
    if exc.code() == grpc.StatusCode.UNIMPLEMENTED:
        return (
            f"{said} (this is not the service's Nodes API: set `service` to its "
            "node_listen, by default the port after its listen's, 7071 for 7070)"
        )
    return said
