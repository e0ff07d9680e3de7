"""`workspace-service`: the central daemon."""

from __future__ import annotations

import argparse
import gc
import logging
import os
import socket
import sys
import threading
import time
import uuid
from dataclasses import replace
from pathlib import Path

from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from workspace import callctx, config, grants, metrics_http, rpc, sole, version
from workspace.config import ServiceConfig
from workspace.domain.replicas import ReplicaView
from workspace.edge.admin import AdminServicer
from workspace.edge.calls import stopping
from workspace.edge.clusters import ClustersServicer
from workspace.edge.guests import GuestsServicer
from workspace.edge.images import ImagesServicer
from workspace.edge.keys import KeysServicer
from workspace.edge.limits import StreamCap
from workspace.edge.nodes import NodesServicer
from workspace.edge.projects import ProjectsServicer
from workspace.edge.trust import TrustServicer
from workspace.edge.workspaces import WorkspacesServicer
from workspace.errors import ConfigError, Unavailable, WorkspaceError
from workspace.log import setup as setup_logging
from workspace.node.v1 import nodes_pb2_grpc
from workspace.ops import autoscale, leases, liveness, purge, queue, save, site_events
from workspace.ops.backfill import Backfiller
from workspace.ops.events import Notifier
from workspace.ops.images import Catalog
from workspace.ops.rosters import RosterPusher
from workspace.ops.taskhub import TaskHub
from workspace.ops.unit import Env
from workspace.service import backup, dbwait
from workspace.service.metrics import ServiceMetrics
from workspace.service.registry import Registry
from workspace.service.replicas import Leader, Relay, conninfo
from workspace.service.task_relay import TaskForwarder
from workspace.stopsignals import StopSignals
from workspace.store import Store, engines
from workspace.store.blobs import BlobRepository
from workspace.v1 import (
    access_pb2,
    access_pb2_grpc,
    admin_pb2,
    admin_pb2_grpc,
    clusters_pb2,
    clusters_pb2_grpc,
    images_pb2,
    images_pb2_grpc,
    projects_pb2,
    projects_pb2_grpc,
    trust_pb2,
    trust_pb2_grpc,
    workspaces_pb2,
    workspaces_pb2_grpc,
)

log = logging.getLogger("workspace.service")
# The queue is also retried this often (deadlines, capacity freed by a node coming back).
QUEUE_POLL_S = 2.0
# Site events beyond `event_retention` are deleted, lapsed save marks cleared, TERMINATED
# workspaces past `terminated_retention` deleted, and blobs never imported collected when no
# upload did for a while (Catalog.collect_blobs_due), this often.
EVENT_PRUNE_S = 300.0
# The CRL file is checked (a stat; re-read if it changed) at least this often, calls or none.
CRL_POLL_S = 1.0
# How long a stopping service keeps its connections open after its streams have sent their
# last status (within the stop's grace), for their clients to read it (see stop()).
STREAMS_LINGER_S = 1.0
# How long a starting replica waits for its relay to listen before it registers (its
# database connection: a moment; then it registers anyway and the relay keeps trying).
LISTEN_FIRST_S = 10.0


def pass_failed(what: str) -> None:
    """Log, in an ``except`` block, that a background pass failed: because the database
    cannot be reached (``Unavailable``: the store says once that it is away, and when it
    is back), in one line; anything else with its traceback, a bug to report."""
    exc = sys.exc_info()[1]
    if isinstance(exc, Unavailable):
        log.warning("%s: %s", what, exc.message)
    else:
        log.exception(what)


def _grant_signer(cfg: ServiceConfig) -> grants.Signer | None:
    """What signs the peer grants of nodes' orders: this service's TLS key (None, said,
    if it cannot: peers then refuse every fetch and nodes fetch from the service)."""
    try:
        files = rpc.tls_files(cfg.tls)
        return grants.Signer(files.cert_file, files.key_file)
    except ConfigError:
        return None  # start() says what is missing
    except (OSError, ValueError, WorkspaceError) as exc:
        reason = exc.message if isinstance(exc, WorkspaceError) else str(exc)
        log.warning("cannot sign peer grants (nodes will fetch from the service): %s", reason)
        return None


def check_addresses(cfg: ServiceConfig) -> None:
    """ConfigError naming the first address of ``cfg`` that cannot be listened on now."""
    rpc.check_free(cfg.listen, "listen")
    rpc.check_free(cfg.node_address, "node_listen")
    if cfg.metrics_listen:
        metrics_http.check_free(cfg.metrics_listen)


class Service:
    """The service with its gRPC server; start() returns once it listens."""

    def __init__(self, cfg: ServiceConfig) -> None:
        self.cfg = cfg
        # The store and the blobs are the service's alone (file modes: store/db.py, blobs.py).
        try:
            Path(cfg.data_dir).mkdir(parents=True, exist_ok=True, mode=0o700)
            Path(cfg.data_dir).chmod(0o700)
        except OSError as exc:  # a file in its way, not ours, a read-only filesystem
            raise ConfigError(f"data_dir {cfg.data_dir}: {exc.strerror or exc}") from None
        # A SQLite store is this process's alone (workspace/sole.py): a second service on
        # it refuses to start.
        database = engines.sqlite_file(cfg.db_url)
        self.sole = sole.hold_store(database) if database is not None else None
        try:
            # An address it cannot listen on (another process has it) is said now, before
            # the store is made or migrated; start() binds them (metrics_http, rpc).
            check_addresses(cfg)
            self.store = Store(cfg.db_url, migrate_in_child=True)
        except BaseException:
            if self.sole is not None:
                self.sole.release()
            raise
        self.notifier = Notifier()
        # Events of plain store writes (an image import, a save) are published as a unit
        # of work's are: counted by the metrics, waking WatchEvents streams.
        self.store.on_site_events(self.notifier.site_events)
        self.env = Env.of(cfg, self.store, self.notifier, check_trust=True)
        if cfg.tls.enabled:
            # Peers serve a node only the blobs the service grants it (workspace/grants.py).
            self.env = replace(self.env, grant_signer=_grant_signer(cfg))
        # Replicas (service/replicas.py): on PostgreSQL, changes reach the other replicas'
        # streams by NOTIFY, and the background loops run only on the leader.
        postgres = self.store.engine.dialect.name == "postgresql"
        if postgres:  # the saves it runs are marked with its id (service/registry.py)
            self.env = replace(self.env, replica_id=uuid.uuid4().hex[:12])
        self.relay = Relay(self.env, self.store.engine, self.env.replica_id) if postgres else None
        # What `ws-admin replica list` calls this process on SQLite (its saves are not
        # marked with it: it is the store's only process).
        self.local_id = uuid.uuid4().hex[:12]
        # Which replicas are alive (made in start(), once its addresses are known).
        self.registry: Registry | None = None
        # When this replica last became the leader (liveness gives the nodes their grace
        # from then: heartbeats lost to an outage it did not see are not held against them).
        self.leading_since = 0.0
        self.leader = Leader(
            self.store.engine if postgres else None,
            on_change=self._leading,
            fence_s=cfg.leader_fence_s,
        )
        # Clients and agents on two servers, each with its own threads (limits: the
        # stream cap per identity; node_server: the Nodes API, never starved by clients).
        # Metrics (metrics_listen; service/metrics.py): RPCs counted by an interceptor on
        # both servers, site events by a notifier listener.
        self.metrics = ServiceMetrics(self.env) if cfg.metrics_listen else None
        counted = [self.metrics.rpc] if self.metrics else []
        if self.metrics:
            self.notifier.on_site_events(self.metrics.on_events)
            self.metrics.leader.set_function(lambda: 1.0 if self.leader.acting() else 0.0)
        self.stream_cap = StreamCap(cfg.max_streams_per_caller, cfg.default_owner)
        self.server = rpc.server(
            cfg.max_workers,
            cfg.max_concurrent_rpcs,
            [*counted, self.stream_cap],
            on_refused=self.metrics.rpc.refused if self.metrics else None,
        )
        self.node_stream_cap = StreamCap(cfg.max_streams_per_caller, cfg.default_owner)
        self.node_server = rpc.server(
            cfg.node_max_workers, None, [*counted, self.node_stream_cap], thread_name_prefix="nodes"
        )
        # The servicers: each decodes, calls an operation (workspace/ops), encodes.
        # The agents' task streams: exec, interactive consoles and saves go through them.
        self.hub = TaskHub(lambda wid, c: save.copying(self.env, wid, c.partition, c.percent))
        self.workspaces = WorkspacesServicer(self.env)
        blobs = BlobRepository(cfg.blob_dir, cfg.bad_blobs_max_bytes)
        self.catalog = ImagesServicer(Catalog(self.env, blobs), self.hub)
        self.clusters = ClustersServicer(self.env)
        self.admin = AdminServicer(self.env)
        self.admin.replicas = self.replicas
        # On replicas, an exec for an agent connected to another replica goes through it.
        self.forwarder = (
            TaskForwarder(self.hub, self.relay, self._replica_gone, self._picture)
            if self.relay
            else None
        )
        self.nodes = NodesServicer(self.env, self.catalog.catalog, self.hub)
        self.guests = GuestsServicer(self.env, self.hub)
        # Elastic clusters: running members learn changed rosters (on the leader).
        self.rosters = RosterPusher(self.env, self.hub.exec)
        self.clusters.on_scaled = self.rosters.poke
        self.trust = TrustServicer(self.env)
        self.projects = ProjectsServicer(self.catalog.catalog)
        self.keys = KeysServicer(self.env)
        workspaces_pb2_grpc.add_WorkspacesServicer_to_server(self.workspaces, self.server)
        images_pb2_grpc.add_ImagesServicer_to_server(self.catalog, self.server)
        admin_pb2_grpc.add_AdminServicer_to_server(self.admin, self.server)
        clusters_pb2_grpc.add_ClustersServicer_to_server(self.clusters, self.server)
        nodes_pb2_grpc.add_NodesServicer_to_server(self.nodes, self.node_server)
        trust_pb2_grpc.add_TrustServicer_to_server(self.trust, self.server)
        projects_pb2_grpc.add_ProjectsServicer_to_server(self.projects, self.server)
        access_pb2_grpc.add_KeysServicer_to_server(self.keys, self.server)
        access_pb2_grpc.add_GuestsServicer_to_server(self.guests, self.server)
        self.health = health.HealthServicer()
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self.server)
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self.node_server)
        names = [
            workspaces_pb2.DESCRIPTOR.services_by_name["Workspaces"].full_name,
            images_pb2.DESCRIPTOR.services_by_name["Images"].full_name,
            admin_pb2.DESCRIPTOR.services_by_name["Admin"].full_name,
            clusters_pb2.DESCRIPTOR.services_by_name["Clusters"].full_name,
            trust_pb2.DESCRIPTOR.services_by_name["Trust"].full_name,
            projects_pb2.DESCRIPTOR.services_by_name["Projects"].full_name,
            access_pb2.DESCRIPTOR.services_by_name["Keys"].full_name,
            access_pb2.DESCRIPTOR.services_by_name["Guests"].full_name,
            health_pb2.DESCRIPTOR.services_by_name["Health"].full_name,
            reflection.SERVICE_NAME,
        ]
        reflection.enable_server_reflection(names, self.server)
        self.port = 0
        self.node_port = 0
        self._stop = threading.Event()
        self._monitor = threading.Thread(target=self._watch_nodes, name="liveness", daemon=True)
        self._queue_thread = threading.Thread(target=self._run_queue, name="queue", daemon=True)
        self._lease_thread = threading.Thread(target=self._run_leases, name="leases", daemon=True)
        self._prune_thread = threading.Thread(target=self._prune_events, name="events", daemon=True)
        self._backfill_thread = threading.Thread(
            target=self._run_backfill, name="backfill", daemon=True
        )
        self._roster_thread = threading.Thread(
            target=self._push_rosters, name="rosters", daemon=True
        )
        self._autoscale_thread = threading.Thread(
            target=self._run_autoscale, name="autoscale", daemon=True
        )
        # Revocation (ops/liveness.py check_revocations): a node whose certificate is revoked
        # is DOWN as soon as this replica reads the CRL that says so, whichever thread reads
        # it (a call, a stream, the crl loop below); the leader's liveness loop repeats it.
        self.auth = self.nodes.auth
        if self.auth.revocations is not None:
            self.auth.revocations.on_change(self._revoked)
        self._crl_thread = threading.Thread(target=self._watch_crl, name="crl", daemon=True)
        self.metrics_url = ""
        self.started_at = time.time()

    def replicas(self) -> list[ReplicaView]:
        """The live replicas (`ws-admin replica list`): on PostgreSQL the registry's
        picture at its last check (this one first); on SQLite this process, the leader."""
        if self.registry is not None:
            return self.registry.live()
        me = ReplicaView(
            self.env.replica_id or self.local_id,
            socket.gethostname(),
            os.getpid(),
            _bound(self.cfg.listen, self.port),
            _bound(self.cfg.node_address, self.node_port),
            self.started_at,
            self.metrics_url,
            self.leader.acting(),
        )
        return [me]

    def start(self) -> None:
        self.started_at = time.time()
        # Refuses plaintext unless insecure = true (said at ERROR off loopback/unix).
        plaintext = rpc.check_listen(self.cfg.listen, self.cfg.tls, self.cfg.insecure)
        rpc.check_listen(self.cfg.node_address, self.cfg.tls, self.cfg.insecure)
        if plaintext:
            log.log(*rpc.insecure_warning("workspace-service", self.cfg.listen))
            log.warning("INSECURE: every caller acts as the admin user %r", self.cfg.default_owner)
        elif not self.cfg.tls.crl_file:
            log.warning("[tls] crl_file is not set: revoked certificates are not refused")
        if self.sole is not None and (lost := save.clear_orphaned(self.env)):
            # This process is the store's only one: the marks are its previous run's.
            log.warning("%d save(s) under way when the service stopped were lost", lost)
        if gone := self.catalog.catalog.recover_files(sole=self.sole is not None):
            log.warning("%d upload(s) cut short when the service stopped were removed", gone)
        self.port = rpc.listen_on(self.server, self.cfg.listen, self.cfg.tls, "listen")
        self.node_port = rpc.listen_on(
            self.node_server, self.cfg.node_address, self.cfg.tls, "node_listen"
        )
        if self.metrics is not None:
            self.metrics_url = self.metrics.serve(self.cfg.metrics_listen).url
        if self.relay is not None:
            # Listening before it is registered: the others count on an answer to their
            # offers of an exec or attach from every replica they see in the registry
            # (service/offers.py). Registered first, a replica in that moment made an
            # offer for an agent no replica holds wait ANSWER_S, then name it as silent.
            if self.forwarder is not None:
                self.forwarder.start()
            self.relay.start()
            if not self.relay.listening.wait(LISTEN_FIRST_S):
                log.warning(
                    "not listening to the other replicas after %g s; registering anyway",
                    LISTEN_FIRST_S,
                )
            # Registered before it serves: a save it marks names a replica the others know.
            self.registry = Registry(
                conninfo(self.store.engine),
                self.env.replica_id,
                _bound(self.cfg.listen, self.port),
                _bound(self.cfg.node_address, self.node_port),
                acting=self.leader.acting,
                on_gone=lambda gone: save.clear_gone(self.env, gone),
                fence_s=self.cfg.leader_fence_s,
                metrics_url=self.metrics_url,
                leader_session=lambda: self.leader.session,
            )
            self.registry.start()
        self.node_server.start()
        self.server.start()
        self.health.set("", health_pb2.HealthCheckResponse.SERVING)
        self.leader.start()
        self._monitor.start()
        self._queue_thread.start()
        self._lease_thread.start()
        self._prune_thread.start()
        self._backfill_thread.start()
        self._roster_thread.start()
        self._autoscale_thread.start()
        self._crl_thread.start()
        log.info(
            "workspace-service %s listening on %s, nodes on %s (%s; store %s)",
            version.version(),
            self.cfg.listen,
            self.cfg.node_address,
            "plaintext" if plaintext else "mutual TLS",
            self.store.display_url,
        )

    def _watch_nodes(self) -> None:
        interval = max(0.5, min(5.0, self.cfg.node_grace_s / 4))
        while not self._stop.wait(interval):
            if not self.leader.acting():
                continue
            try:
                liveness.check_liveness(self.env, self.leading_since)
                # Again what _revoked did (or failed to do: the database away).
                liveness.check_revocations(self.env, self.auth.revoked(), self._superseded())
            except Exception:
                pass_failed("liveness check failed")

    def _replica_gone(self, replica_id: str) -> bool:
        return self.registry is not None and self.registry.gone(replica_id)

    def _picture(self) -> tuple[float, list[str]]:
        """The replicas alive at the registry's last check (``Registry.picture``; made
        before anything is served)."""
        return self.registry.picture() if self.registry is not None else (0.0, [])

    def _leading(self, held: bool) -> None:
        if held:
            self.leading_since = self.env.clock()

    def _watch_crl(self) -> None:
        """On every replica: read the CRL when it changes even if no call comes, so that
        streams idle meanwhile and the nodes it revokes (``_revoked``) learn of it."""
        while not self._stop.wait(CRL_POLL_S):
            self.auth.revoked()

    def _superseded(self) -> frozenset[int]:
        crl = self.auth.revocations
        return crl.superseded() if crl is not None else frozenset()

    def _revoked(self, serials: frozenset[int]) -> None:
        """The CRL this replica reads changed: nodes bound to a revoked certificate are
        DOWN now, not after the heartbeat timeout (their streams end as they wake)."""
        if self._stop.is_set():
            return
        try:
            with callctx.system():  # whichever call read the CRL, this is not its doing
                liveness.check_revocations(self.env, serials, self._superseded())
        except Exception:
            pass_failed("marking the nodes of revoked certificates DOWN failed")

    def _run_queue(self) -> None:
        seen = 0
        shown: dict[str, str] = {}  # what the passes sent the waiting requests' watchers
        while not self._stop.is_set():
            seen = self.notifier.wait_capacity(seen, QUEUE_POLL_S)
            if self._stop.is_set():
                return
            if not self.leader.acting():
                shown.clear()  # another leader's passes send them meanwhile
                continue
            try:
                queue.process(self.env, self.auth.revoked(), shown)
            except Exception:
                pass_failed("capacity queue pass failed")

    def _run_leases(self) -> None:
        while not self._stop.wait(self.cfg.lease_check_interval_s):
            if not self.leader.acting():
                continue
            try:
                leases.check(self.env)
            except Exception:
                pass_failed("lease check failed")

    def _run_backfill(self) -> None:
        """Backfill (ops/backfill.py) on the leader, every backfill_interval_s."""
        filler = Backfiller(self.env)
        while not self._stop.wait(self.cfg.backfill_interval_s):
            if not self.leader.acting():
                continue
            try:
                filler.run()
            except Exception:
                pass_failed("backfill pass failed")

    def _push_rosters(self) -> None:
        while not self._stop.is_set():
            self.rosters.wait(self.cfg.roster_push_interval_s)
            if self._stop.is_set():
                return
            if not self.leader.acting():
                self.rosters.applied.clear()  # a later term starts from nothing known
                continue
            try:
                self.rosters.run_once()
            except Exception:
                pass_failed("roster push pass failed")

    def _run_autoscale(self) -> None:
        while not self._stop.wait(self.cfg.autoscale_interval_s):
            if not self.leader.acting():
                continue
            try:
                if any(
                    o.decision.action in ("grew", "shrank")
                    for o in autoscale.evaluate(self.env, revoked=self.auth.revoked())
                ):
                    self.rosters.poke()
            except Exception:
                pass_failed("autoscale pass failed")

    def _prune_events(self) -> None:
        """Housekeeping: site events past their retention, saves that never ended,
        TERMINATED workspaces and clusters past ``terminated_retention``, blobs never
        imported past ``blob_grace_s``."""
        while True:
            # The first pass once leader, then every EVENT_PRUNE_S.
            if self.leader.wait_acting(EVENT_PRUNE_S):
                try:
                    pruned = site_events.prune(self.env)
                    if pruned:
                        log.info(
                            "deleted %d site event(s) past event_retention = %r",
                            pruned,
                            self.env.cfg.event_retention,
                        )
                    save.clear_lapsed(self.env)
                    gone = purge.purge(self.env, self.leader.acting)
                    if any(gone):
                        log.info(
                            "deleted %d workspace(s) and %d cluster(s) TERMINATED for longer "
                            "than terminated_retention = %r",
                            *gone,
                            self.env.cfg.terminated_retention,
                        )
                except Exception:
                    pass_failed(
                        "housekeeping pass failed (site events, lapsed saves, terminated rows)"
                    )
                try:  # after clear_lapsed: the disks of a save whose mark lapsed may go
                    self.catalog.catalog.collect_blobs_due()
                except Exception:
                    pass_failed("collecting the blobs never imported failed")
            if self._stop.wait(EVENT_PRUNE_S if self.leader.acting() else 0):
                return

    def stop(self, grace_s: float = 2.0) -> None:
        self._stop.set()
        if self.auth.revocations is not None:
            self.auth.revocations.off_change(self._revoked)
        self.rosters.poke()
        self.leader.close()
        if self.relay is not None:
            self.relay.close()
        if self.registry is not None:
            self.registry.close()
        self.health.enter_graceful_shutdown()
        deadline = time.monotonic() + grace_s
        self._end_streams(deadline)
        left = max(0.0, deadline - time.monotonic())
        stopped = [self.server.stop(left), self.node_server.stop(left)]
        for done in stopped:
            done.wait()
        if self.metrics is not None:
            self.metrics.close()
        self.store.close()
        if self.sole is not None:
            self.sole.release()

    def _end_streams(self, deadline: float) -> None:
        """End the open streams (watches, consoles, the agents' order and task streams) with
        their statuses, wait until their handlers have returned, then keep the connections
        open a moment longer (all within ``deadline``): a server's stop closes a connection
        as soon as its last call ended, and a client that had not yet read the status (a
        loaded machine) then lost it to the closed connection ("Stream removed (sendmsg:
        Broken pipe)") instead of the service's "the service is stopping; watch again"."""
        caps = (self.stream_cap, self.node_stream_cap)
        for cap in caps:
            cap.refuse_new(stopping().message)
        were_open = sum(cap.open_responses() for cap in caps)
        self.notifier.close()
        self.hub.end_consoles()
        self.hub.wake_lines()
        if not were_open:
            return
        for cap in caps:
            cap.wait_ended(deadline - time.monotonic())
        time.sleep(max(0.0, min(STREAMS_LINGER_S, deadline - time.monotonic())))

    def wait(self) -> None:
        self.server.wait_for_termination()


def _bound(address: str, port: int) -> str:
    """``address`` with the port it was given (``host:0``: any free one) when it ends in 0."""
    host, sep, asked = address.rpartition(":")
    return f"{host}:{port}" if sep and asked == "0" and not address.startswith("unix:") else address


def _backup_command(cfg: ServiceConfig, command: str, where: Path) -> int:
    """``workspace-service backup|restore DIR`` (service/backup.py): one line on stdout
    saying what was copied; errors on stderr, exit 1."""
    started = time.monotonic()
    try:
        act = backup.backup if command == "backup" else backup.restore
        done = act(cfg, where)
    except WorkspaceError as exc:
        print(f"workspace-service: error: {exc.message}", file=sys.stderr)
        return 1
    except OSError as exc:  # DIR not writable, under a file, a full disk: one line
        path = f"{exc.filename}: " if exc.filename else ""
        print(
            f"workspace-service: error: {command} {where}: {path}{exc.strerror or exc}",
            file=sys.stderr,
        )
        return 1
    print(backup.summary(command, where, done, started))
    for digest in done.bad:
        print(
            f"workspace-service: error: blob {digest} does not match its content: left out",
            file=sys.stderr,
        )
    return 1 if done.bad else 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="workspace-service", description=__doc__)
    version.add_option(p)
    p.add_argument("--config", help="TOML config file (see conf/service.toml)")
    p.add_argument("--listen", help="override `listen` (host:port or unix:/path)")
    p.add_argument("--data-dir", help="override `data_dir`")
    sub = p.add_subparsers(dest="command", metavar="COMMAND", help="(none: serve)")
    b = sub.add_parser(
        "backup", help="copy the store and the image blobs into DIR (while the service runs)"
    )
    b.add_argument("dir", metavar="DIR")
    r = sub.add_parser("restore", help="put the backup in DIR in place (the service stopped)")
    r.add_argument("dir", metavar="DIR")
    args = p.parse_args(argv)
    try:
        cfg = config.load(ServiceConfig, args.config, listen=args.listen, data_dir=args.data_dir)
    except ConfigError as exc:
        print(f"workspace-service: {exc}", file=sys.stderr)
        return 2
    if args.command:
        return _backup_command(cfg, args.command, Path(args.dir))
    setup_logging(cfg.log_level, "workspace-service", cfg.log_format)
    try:
        # What it cannot serve with (no TLS and not insecure, a TLS file missing) is said
        # before the store is made or migrated, as the agent does: nothing is written
        # for a config that cannot run (start() checks again, and warns if insecure).
        rpc.check_listen(cfg.listen, cfg.tls, cfg.insecure)
        rpc.check_listen(cfg.node_address, cfg.tls, cfg.insecure)
        dbwait.wait_for_database(cfg.db_url)
        svc = Service(cfg)
    except KeyboardInterrupt:  # Ctrl-C while it waits for the database (up to 5 minutes)
        log.info("interrupted while starting")
        return 130
    except ConfigError as exc:
        log.error("cannot start: %s", exc.message)
        return 1
    except Exception as exc:
        # One line, in the configured log format; the traceback only at DEBUG.
        log.error("cannot start: %s", dbwait.reason(exc))
        log.debug("traceback", exc_info=True)
        return 1
    stops = StopSignals().install()
    try:
        svc.start()
    except (ConfigError, RuntimeError) as exc:
        log.error("cannot start: %s", exc)
        stops.restore()
        return 1
    except OSError as exc:  # a file or directory it needs: one line naming it
        log.error("cannot start: %s: %s", exc.filename or "", exc.strerror or exc)
        log.debug("traceback", exc_info=True)
        stops.restore()
        return 1
    # What start-up made (modules, the servers, the caches) lives as long as the process:
    # out of the collector's way, a full collection no longer walks it (it cost a create
    # about 4 % of its time).
    gc.freeze()
    signum = stops.wait()
    if svc.sole is not None:
        svc.sole.stopping()  # `ws-admin site up` meanwhile waits for us to go
    log.info("signal %d: shutting down", signum)
    svc.stop()
    # The last line of a clean stop: a log that ends without it was cut short (kill -9,
    # a crash, the SIGKILL of a stop that took too long).
    log.info("workspace-service stopped")
    return 0


if __name__ == "__main__":
    sys.exit(main())
