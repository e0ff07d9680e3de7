"""The node agent: register, watch assignments, reconcile, report.

Level-triggered: each AssignmentSet is the full desired state of this node. A
reconcile pass compares it with the domains the driver lists and the files on
disk, and runs at most one operation per workspace at a time in a worker pool.
Events and new assignments wake it early; a periodic pass is the source of truth.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import grpc

from agent import trust
from agent.cache import BlobCache, Source
from agent.disks import WorkspaceFiles
from agent.netsetup import Networking, NullNetworking
from agent.peers import PeerChannels, PeerServer, service_source
from agent.reconcile import Action, Want, plan
from agent.virt.base import DomainInfo, DomainSpec, DomainState, Driver, NicSpec
from images import signing
from workspace import rpc
from workspace.config import AgentConfig
from workspace.errors import ImageError, PermissionDenied, WorkspaceError
from workspace.node.v1 import nodes_pb2, nodes_pb2_grpc
from workspace.v1 import common_pb2, trust_pb2

log = logging.getLogger("agent")

OBS = nodes_pb2.ObservedState
_FROM_DOMAIN = {
    DomainState.RUNNING: OBS.OBSERVED_STATE_RUNNING,
    DomainState.PAUSED: OBS.OBSERVED_STATE_PAUSED,
    DomainState.SHUTOFF: OBS.OBSERVED_STATE_STOPPED,
    DomainState.OTHER: OBS.OBSERVED_STATE_STARTING,
}
_DESIRED = {
    common_pb2.DESIRED_STATE_RUNNING: "RUNNING",
    common_pb2.DESIRED_STATE_PAUSED: "PAUSED",
    common_pb2.DESIRED_STATE_STOPPED: "STOPPED",
}
RETRY_BASE_S = 2.0
RETRY_MAX_S = 60.0
CONSOLE_POLL_S = 0.25
CONSOLE_CHUNK = 256 * 1024
PREFETCH_RETRY_MAX_S = 300.0


class Agent:
    def __init__(
        self, cfg: AgentConfig, driver: Driver, networking: Networking | None = None
    ) -> None:
        self.cfg = cfg
        self.driver = driver
        self.net: Networking = networking or NullNetworking()
        state = Path(cfg.state_dir)
        state.mkdir(parents=True, exist_ok=True)
        self.cache = BlobCache(cfg.cache_path, cfg.cache_budget_bytes)
        self.peers = PeerChannels(cfg.node, cfg.tls)
        self.peer_server: PeerServer | None = None
        self.peer_address = ""
        # From the latest AssignmentSet: blobs to prefetch, peers that hold each digest.
        self.prefetch: list[str] = []
        self.sources: dict[str, list[str]] = {}
        self._prefetching: set[str] = set()
        self._prefetch_failures: dict[str, tuple[int, float]] = {}  # digest → (count, not before)
        self.prefetch_pool = ThreadPoolExecutor(
            max(1, cfg.prefetch_parallel), thread_name_prefix="prefetch"
        )
        self.files = WorkspaceFiles(state / "workspaces")
        self.stop_event = threading.Event()
        self.wake = threading.Event()
        # Send the next full report now rather than at the next heartbeat.
        self.report_soon = threading.Event()
        self.connected = threading.Event()
        self._lock = threading.RLock()
        self.desired: dict[str, nodes_pb2.Assignment] | None = None
        # Overrides of what the driver shows, while an operation runs or after it failed.
        self.status: dict[str, tuple[nodes_pb2.ObservedState.ValueType, str]] = {}
        self.busy: set[str] = set()
        self.failures: dict[str, tuple[int, float]] = {}  # id → (count, retry not before)
        self.stub: nodes_pb2_grpc.NodesStub | None = None
        self.heartbeat_s = 5.0
        self.console_offsets: dict[str, int] = {}
        # Why a workspace was repaired behind the owner's back, until its desired state changes.
        self.notes: dict[str, str] = {}
        self._last_want: dict[str, Want] = {}
        self._last_actual: dict[str, DomainState] = {}
        # Trust: the policy from the latest AssignmentSet (None: the service sent none,
        # nothing is checked), digest → policy version it was last re-hashed under, and
        # verify decisions not yet sent to the service.
        self.policy: signing.Policy | None = None
        self.stop_running_on_revoke = False
        self._hashed_under: dict[str, int] = {}
        self._audit: list[trust_pb2.AuditEntry] = []
        self.pool = ThreadPoolExecutor(cfg.max_parallel_ops, thread_name_prefix="op")
        self._threads: list[threading.Thread] = []
        driver.set_event_callback(self._on_event)

    # -- lifecycle ---------------------------------------------------------------------

    def start(self) -> None:
        if self.cfg.peer_listen:
            self.peer_server = PeerServer(
                self.cache,
                self.cfg.node,
                self.cfg.peer_listen,
                self.cfg.peer_advertise,
                self.cfg.tls,
            )
            self.peer_address = self.peer_server.start()
        for target, name in (
            (self._connection_loop, "connection"),
            (self._reconcile_loop, "reconcile"),
            (self._heartbeat_loop, "heartbeat"),
            (self._console_loop, "console"),
        ):
            t = threading.Thread(target=target, name=name, daemon=True)
            t.start()
            self._threads.append(t)

    def stop(self) -> None:
        self.stop_event.set()
        self.wake.set()
        self.report_soon.set()
        self.pool.shutdown(wait=True, cancel_futures=True)
        self.prefetch_pool.shutdown(wait=True, cancel_futures=True)
        if self.peer_server is not None:
            self.peer_server.stop()
        self.peers.close()
        self.net.close()
        self.driver.close()

    # -- service connection ------------------------------------------------------------

    def _register_request(self) -> nodes_pb2.RegisterRequest:
        cpus, mem = self.driver.host_capacity()
        st = os.statvfs(self.cfg.state_dir)
        disk_gib = self.cfg.disk_gib or (st.f_blocks * st.f_frsize) // 1024**3
        return nodes_pb2.RegisterRequest(
            node=self.cfg.node,
            hypervisor=self.cfg.hypervisor or self.driver.hypervisor,
            cpus=self.cfg.cpus or cpus,
            memory_mib=self.cfg.memory_mib or mem,
            disk_gib=disk_gib,
            networks=[n.name for n in self.cfg.networks],
            labels=self.cfg.labels,
            agent_version="0.1.0",
            cached_digests=self.cache.digests(),
            peer_address=self.peer_address,
        )

    def _connection_loop(self) -> None:
        backoff = 0.5
        done: threading.Event | None = None
        while not self.stop_event.is_set():
            channel = rpc.channel(self.cfg.service, self.cfg.tls)
            try:
                stub = nodes_pb2_grpc.NodesStub(channel)
                resp = stub.Register(self._register_request(), timeout=10)
                self.heartbeat_s = float(resp.heartbeat_interval_s or 5)
                self.stub = stub
                self.connected.set()
                log.info("node %s registered with %s", self.cfg.node, self.cfg.service)
                backoff = 0.5
                stream = stub.WatchAssignments(
                    nodes_pb2.WatchAssignmentsRequest(node=self.cfg.node)
                )
                done = self._stop_stream_on_exit(stream)
                for aset in stream:
                    with self._lock:
                        self.desired = {a.workspace_id: a for a in aset.assignments}
                        self.prefetch = list(aset.prefetch)
                        self.sources = _disk_sources(aset)
                    self._set_policy(aset)
                    self.wake.set()
                    self._kick_prefetch()
            except grpc.RpcError as exc:
                if not self.stop_event.is_set():
                    log.warning(
                        "service %s: %s; retrying in %.1f s",
                        self.cfg.service,
                        exc.code() if hasattr(exc, "code") else exc,
                        backoff,
                    )
            except Exception:
                # Crash-only: whatever went wrong, reconnect and start from the full state.
                if not self.stop_event.is_set():
                    log.exception("assignment stream failed; reconnecting in %.1f s", backoff)
            finally:
                if done is not None:
                    done.set()
                done = None
                self.connected.clear()
                self.stub = None
                channel.close()
            self.stop_event.wait(backoff)
            backoff = min(backoff * 2, 5.0)

    def _stop_stream_on_exit(self, stream: grpc.Future) -> threading.Event:
        """Cancel the stream when the agent stops; returns the event that ends the watcher
        when the stream ends first (so reconnects do not pile up threads)."""
        done = threading.Event()

        def cancel() -> None:
            while not done.is_set():
                if self.stop_event.wait(1.0):
                    stream.cancel()
                    return

        threading.Thread(target=cancel, daemon=True, name="stream-cancel").start()
        return done

    def _report(self, ids: list[str] | None = None) -> None:
        """Send an incremental report for ``ids``, or a full one (a heartbeat) for None."""
        stub = self.stub
        if stub is None:
            return
        full = ids is None
        # Never call the driver while holding our lock: drivers call back into us.
        domains = {d.workspace_id: d for d in self.driver.list_domains()}
        with self._lock:
            if ids is None:
                ids = sorted(set(self.desired or {}) | set(domains) | set(self.status))
            observed = [self._observe(wid, domains) for wid in ids]
        req = nodes_pb2.ReportStatusRequest(node=self.cfg.node, full=full, workspaces=observed)
        with self._lock:
            audit, self._audit = self._audit, []
        req.audit.extend(audit)
        if full:
            req.cached_digests.extend(self.cache.digests())
            req.cache_budget_bytes = self.cache.budget_bytes
            for e in self.cache.entries():
                entry = req.cache.add(digest=e.digest, size_bytes=e.size_bytes, pinned=e.pinned)
                entry.last_used.FromNanoseconds(int(e.last_used * 1e9))
        try:
            stub.ReportStatus(req, timeout=10)
        except grpc.RpcError as exc:
            with self._lock:
                self._audit[:0] = audit  # sent with the next report
            log.warning("report to service failed: %s", exc.code() if hasattr(exc, "code") else exc)

    def _observe(self, wid: str, domains: dict[str, DomainInfo]) -> nodes_pb2.ObservedWorkspace:
        if wid in self.status:
            state, reason = self.status[wid]
        elif wid in domains:
            state, reason = _FROM_DOMAIN[domains[wid].state], self.notes.get(wid, "")
        elif self.desired is not None and wid in self.desired:
            state, reason = OBS.OBSERVED_STATE_PROPAGATING, ""
        else:
            state, reason = OBS.OBSERVED_STATE_ABSENT, ""
        return nodes_pb2.ObservedWorkspace(workspace_id=wid, state=state, reason=reason)

    def _heartbeat_loop(self) -> None:
        while not self.stop_event.is_set():
            if self.connected.wait(1.0):
                self.report_soon.clear()
                try:
                    self._report(None)
                except Exception:
                    log.exception("heartbeat failed")
                self.report_soon.wait(self.heartbeat_s)  # set: a new blob is cached

    def _on_event(self, workspace_id: str) -> None:
        with self._lock:
            if workspace_id in self.busy:
                return  # the running operation reports when it is done
        self.wake.set()
        self.pool.submit(self._report, [workspace_id])

    # -- reconciling -------------------------------------------------------------------

    def _reconcile_loop(self) -> None:
        while not self.stop_event.is_set():
            self.wake.wait(self.cfg.resync_interval_s)
            self.wake.clear()
            if self.stop_event.is_set():
                return
            try:
                self.reconcile_once()
            except Exception:
                log.exception("reconcile pass failed")

    def reconcile_once(self) -> None:
        with self._lock:
            if self.desired is None:
                return  # never act before the service said what should exist
            desired = dict(self.desired)
            busy = set(self.busy)
        self.net.sync(list(desired.values()))
        actual = {d.workspace_id: d.state for d in self.driver.list_domains()}
        leftovers = self.files.existing()
        self._sync_pins(desired, set(actual) | leftovers | busy)
        self._forget_failed(desired, set(actual) | leftovers | busy)
        self._kick_prefetch()
        wants = {
            wid: Want(_DESIRED.get(a.desired, "RUNNING"), a.reboot_count, a.force_stop)
            for wid, a in desired.items()
        }
        applied = {wid: self.files.load_state(wid).get("reboot_count", 0) for wid in actual}
        now = time.monotonic()
        for wid, want in wants.items():
            if self._last_want.get(wid) != want:
                self.notes.pop(wid, None)  # the owner asked for something new
        for wid, action in plan(wants, actual, leftovers, applied).items():
            if wid in busy:
                continue
            self._note_repair(wid, action, wants.get(wid))
            count, not_before = self.failures.get(wid, (0, 0.0))
            if count and now < not_before and action is not Action.REMOVE:
                continue
            with self._lock:
                self.busy.add(wid)
            self.pool.submit(self._run, wid, action, desired.get(wid))

        self._last_want = wants
        self._last_actual = actual

    def _forget_failed(self, desired: dict[str, nodes_pb2.Assignment], present: set[str]) -> None:
        """A create that failed before anything reached the host (refused by the trust
        policy, a blob that would not fetch) leaves only its FAILED status: once the
        workspace is no longer desired, report it ABSENT so the service can let it go."""
        with self._lock:
            gone = [
                wid
                for wid, (state, _) in self.status.items()
                if state == OBS.OBSERVED_STATE_FAILED and wid not in desired and wid not in present
            ]
            for wid in gone:
                self.status[wid] = (OBS.OBSERVED_STATE_ABSENT, "")
                self.failures.pop(wid, None)
        if gone:
            self.pool.submit(self._report, gone)

    def _note_repair(self, wid: str, action: Action, want: Want | None) -> None:
        """Record (and log) when the host drifted from a desired state it had reached."""
        if want is None or self._last_want.get(wid) != want:
            return
        before = self._last_actual.get(wid)
        when = time.strftime("%H:%M:%S")
        if action is Action.START and before in (DomainState.RUNNING, DomainState.PAUSED):
            note = f"domain was found shut off at {when} (not by us); started again"
        elif action is Action.CREATE and before is not None:
            note = f"domain had disappeared at {when} (not by us); recreated"
        else:
            return
        log.warning("workspace %s: %s", wid, note)
        self.notes[wid] = note

    def _run(self, wid: str, action: Action, a: nodes_pb2.Assignment | None) -> None:
        try:
            log.info("workspace %s: %s", wid, action.value)
            self._execute(wid, action, a)
            self.failures.pop(wid, None)
            with self._lock:
                self.status.pop(wid, None)
        except Exception as exc:
            reason = exc.message if isinstance(exc, WorkspaceError) else f"{exc}"
            count = self.failures.get(wid, (0, 0.0))[0] + 1
            delay = min(RETRY_MAX_S, RETRY_BASE_S * 2 ** (count - 1))
            self.failures[wid] = (count, time.monotonic() + delay)
            log.error(
                "workspace %s: %s failed (attempt %d, retry in %.0f s): %s",
                wid,
                action.value,
                count,
                delay,
                reason,
            )
            with self._lock:
                self.status[wid] = (OBS.OBSERVED_STATE_FAILED, f"{action.value} failed: {reason}")
            if not isinstance(exc, WorkspaceError):
                log.debug("traceback", exc_info=True)
        finally:
            with self._lock:
                self.busy.discard(wid)
            self._report([wid])
            self.wake.set()

    def _set_status(self, wid: str, state: nodes_pb2.ObservedState.ValueType) -> None:
        with self._lock:
            self.status[wid] = (state, "")
        self._report([wid])

    def _execute(self, wid: str, action: Action, a: nodes_pb2.Assignment | None) -> None:
        d = self.driver
        if action is Action.CREATE:
            assert a is not None
            self._create(a)
        elif action is Action.START:
            if a is not None:
                self._check_order(a, "start")  # signatures only: the disks exist already
            self._set_status(wid, OBS.OBSERVED_STATE_STARTING)
            d.start(wid)
        elif action is Action.STOP:
            assert a is not None
            self._set_status(wid, OBS.OBSERVED_STATE_STOPPING)
            if not d.shutdown(wid, float(a.stop_timeout_s or 60)):
                log.info(
                    "workspace %s did not power off within %d s; forcing", wid, a.stop_timeout_s
                )
                d.destroy(wid)
        elif action is Action.FORCE_STOP:
            self._set_status(wid, OBS.OBSERVED_STATE_STOPPING)
            d.destroy(wid)
        elif action is Action.PAUSE:
            d.suspend(wid)
        elif action is Action.RESUME:
            d.resume(wid)
        elif action is Action.REBOOT:
            assert a is not None
            d.reboot(wid)
            state = self.files.load_state(wid)
            state["reboot_count"] = a.reboot_count
            self.files.save_state(wid, state)
        elif action is Action.REMOVE:
            self._set_status(wid, OBS.OBSERVED_STATE_STOPPING)
            d.undefine(wid)
            self.files.remove(wid)
            self.cache.unpin(wid)
            self.console_offsets.pop(wid, None)
            with self._lock:
                self.status[wid] = (OBS.OBSERVED_STATE_ABSENT, "")
            self._report([wid])

    def _create(self, a: nodes_pb2.Assignment) -> None:
        wid = a.workspace_id
        self._set_status(wid, OBS.OBSERVED_STATE_PROPAGATING)
        self._check_order(a, "boot")
        paths = self._ensure_blobs(a)
        disks = self.files.prepare(a, paths)
        console = self.files.console_log(wid)
        spec = DomainSpec(
            workspace_id=wid,
            name=a.name,
            cpus=a.cpus,
            memory_mib=a.memory_mib,
            disks=disks,
            nics=tuple(NicSpec(n.mac, n.bridge, n.ip) for n in a.nics),
            kernel=str(paths[a.kernel_digest]) if a.kernel_digest else "",
            initrd=str(paths[a.initrd_digest]) if a.initrd_digest else "",
            cmdline=a.cmdline,
            console_log=str(console),
            hostname=a.hostname,
        )
        self.files.save_state(wid, {"reboot_count": a.reboot_count})
        self._set_status(wid, OBS.OBSERVED_STATE_STARTING)
        self.driver.define(spec)
        if a.desired in (common_pb2.DESIRED_STATE_RUNNING, common_pb2.DESIRED_STATE_PAUSED):
            self.driver.start(wid)
        log.info(
            "workspace %s (%s) defined%s",
            wid,
            a.name,
            "" if a.desired == common_pb2.DESIRED_STATE_STOPPED else " and started",
        )

    # -- blob cache: sources, pins, prefetch ----------------------------------------

    def _sources(self, peers: list[str]) -> list[Source]:
        """Where to fetch a blob: the peers the service named, in its order, then it."""
        out = [self.peers.source(p) for p in dict.fromkeys(peers) if p != self.peer_address]
        out.append(service_source(self.cfg.node, lambda: self.stub, self.cfg.service))
        return out

    def _ensure_blobs(self, a: nodes_pb2.Assignment) -> dict[str, Path]:
        """Pin then fetch (or find) every blob ``a`` uses; returns digest → cached path."""
        wanted: dict[str, tuple[int, list[str]]] = {}  # digest → (size, peers)
        all_peers: list[str] = []
        for disk in a.disks:
            if disk.digest:
                wanted[disk.digest] = (disk.size_bytes, list(disk.sources))
                all_peers += disk.sources
        for digest in (a.kernel_digest, a.initrd_digest):
            if digest and digest not in wanted:
                # No sources in the proto for these: peers holding the disks likely hold them.
                wanted[digest] = (0, all_peers)
        self.cache.pin(a.workspace_id, wanted)
        before = set(self.cache.digests())
        paths: dict[str, Path] = {}
        for dg, (size, peers) in wanted.items():
            self._rehash_if_stale(a, dg)
            try:
                paths[dg] = self.cache.ensure(dg, self._sources(peers), size)
            except ImageError as exc:
                raise ImageError(f"image {a.image or '?'}: {exc.message}") from exc
            with self._lock:
                if self.policy is not None:
                    self._hashed_under[dg] = self.policy.version
        if set(wanted) - before:
            self.report_soon.set()  # the service learns at once that this node holds them
        return paths

    # -- trust -------------------------------------------------------------------------

    def _set_policy(self, aset: nodes_pb2.AssignmentSet) -> None:
        """Take the policy of a new AssignmentSet; on a new version, re-check running VMs."""
        if not aset.HasField("policy"):
            return
        with self._lock:
            old = self.policy
            self.policy = trust.policy_from_proto(aset.policy)
            self.stop_running_on_revoke = aset.policy.stop_running_on_revoke
            desired = dict(self.desired or {})
        if old is None or old.version != self.policy.version:
            log.info("trust policy version %d", self.policy.version)
            self.pool.submit(self._recheck_running, desired)

    def _recheck_running(self, desired: dict[str, nodes_pb2.Assignment]) -> None:
        """Under a new policy, the VMs running an image no longer trusted are reported
        (a note on the workspace and an audit entry), not killed."""
        running = {
            d.workspace_id
            for d in self.driver.list_domains()
            if d.state in (DomainState.RUNNING, DomainState.PAUSED)
        }
        for wid in sorted(running & set(desired)):
            a = desired[wid]
            verdict = self._verdict(a)
            if verdict is None or verdict.trusted:
                continue
            self._record("running", a, verdict)
            stop = self.stop_running_on_revoke and not verdict.allowed
            note = (
                f"image {a.image} is no longer trusted under policy version "
                f"{verdict.policy_version} ({verdict.reason}); "
                + (
                    "powered off (the site stops VMs on revocation)"
                    if stop
                    else "the VM keeps running"
                )
            )
            log.warning("workspace %s: %s", wid, note)
            if stop:
                # It stays off: starting it again needs a verdict that allows it.
                self.driver.destroy(wid)
            with self._lock:
                self.notes[wid] = note
            self._report([wid])

    def _verdict(self, a: nodes_pb2.Assignment) -> signing.Verdict | None:
        with self._lock:
            policy = self.policy
        if policy is None:
            return None
        return trust.check_order(a, policy, time.time())

    def _record(
        self, action: str, a: nodes_pb2.Assignment, verdict: signing.Verdict, digest: str = ""
    ) -> None:
        entry = trust.audit_entry(self.cfg.node, action, a, verdict, time.time(), digest)
        with self._lock:
            self._audit.append(entry)

    def _check_order(self, a: nodes_pb2.Assignment, action: str) -> None:
        """Verify ``a`` against the policy held; raise (nothing boots) when it denies."""
        verdict = self._verdict(a)
        if verdict is None:
            return
        self._record(action, a, verdict)
        if verdict.trusted:
            return
        if not verdict.allowed:
            raise PermissionDenied(f"image {a.image or '?'} refused on this node: {verdict.reason}")
        log.warning(
            "workspace %s: image %s is not trusted (%s); booting it anyway: the policy only warns",
            a.workspace_id,
            a.image,
            verdict.reason,
        )

    def _rehash_if_stale(self, a: nodes_pb2.Assignment, digest: str) -> None:
        """Re-hash a cached blob not yet verified under the current policy version; a
        corrupted one is deleted (``ensure`` then fetches it again) and audited."""
        with self._lock:
            policy = self.policy
            done = self._hashed_under.get(digest)
        if policy is None or done == policy.version:
            return
        intact = self.cache.rehash(digest)
        if intact is None:
            return  # not cached: the fetch hashes it while streaming
        if intact:
            reason = f"cached blob {digest} re-hashed: intact"
        else:
            reason = f"cached blob {digest} does not match its digest; discarded, fetching it again"
            log.error("workspace %s: %s", a.workspace_id, reason)
        verdict = signing.Verdict(intact, intact, reason, "", policy.version)
        self._record("cache-hit", a, verdict, digest)

    def _sync_pins(self, desired: dict[str, nodes_pb2.Assignment], present: set[str]) -> None:
        """Pins = the blobs of the workspaces on this node (after a restart, too)."""
        for owner in self.cache.pin_owners() - present:
            self.cache.unpin(owner)
        owners = self.cache.pin_owners()
        for wid in present - owners:
            a = desired.get(wid)
            if a is not None:
                digests = [x.digest for x in a.disks] + [a.kernel_digest, a.initrd_digest]
                self.cache.pin(wid, digests)

    def _kick_prefetch(self) -> None:
        """Fetch the blobs the service asked for (``cache preload``) in the background."""
        now = time.monotonic()
        with self._lock:
            todo = [
                d
                for d in dict.fromkeys(self.prefetch)
                if d not in self._prefetching
                and self._prefetch_failures.get(d, (0, 0.0))[1] <= now
                and not self.cache.has(d)
            ]
            self._prefetching.update(todo)
        for digest in todo:
            self.prefetch_pool.submit(self._prefetch_one, digest)

    def _prefetch_one(self, digest: str) -> None:
        try:
            with self._lock:
                peers = list(self.sources.get(digest, []))
            self.cache.ensure(digest, self._sources(peers))
            self._prefetch_failures.pop(digest, None)
            log.info("prefetched %s", digest)
            self.report_soon.set()
        except Exception as exc:
            count = self._prefetch_failures.get(digest, (0, 0.0))[0] + 1
            delay = min(PREFETCH_RETRY_MAX_S, RETRY_BASE_S * 2**count)
            self._prefetch_failures[digest] = (count, time.monotonic() + delay)
            reason = exc.message if isinstance(exc, WorkspaceError) else repr(exc)
            log.warning("prefetch of %s failed (retry in %.0f s): %s", digest, delay, reason)
        finally:
            with self._lock:
                self._prefetching.discard(digest)

    # -- consoles ----------------------------------------------------------------------

    def _console_loop(self) -> None:
        while not self.stop_event.wait(CONSOLE_POLL_S):
            stub = self.stub
            if stub is None:
                continue
            with self._lock:
                ids = list(self.desired or {})
            for wid in ids:
                try:
                    self._push_console(stub, wid)
                except grpc.RpcError:
                    self.console_offsets.pop(wid, None)
                except Exception:
                    log.exception("console push for %s failed", wid)

    def _push_console(self, stub: nodes_pb2_grpc.NodesStub, wid: str) -> None:
        path = self.files.console_log(wid)
        if not path.exists():
            return
        size = path.stat().st_size
        offset = self.console_offsets.get(wid)
        node = self.cfg.node
        if offset is None:
            resp = stub.PushConsole(
                nodes_pb2.PushConsoleRequest(node=node, workspace_id=wid, offset=-1), timeout=10
            )
            offset = resp.next_offset
            if size < offset:  # the log was recreated: start the service's copy again
                resp = stub.PushConsole(
                    nodes_pb2.PushConsoleRequest(node=node, workspace_id=wid, offset=0, reset=True),
                    timeout=10,
                )
                offset = resp.next_offset
            self.console_offsets[wid] = offset
        if size <= offset:
            return
        with open(path, "rb") as f:
            f.seek(offset)
            data = f.read(CONSOLE_CHUNK)
        resp = stub.PushConsole(
            nodes_pb2.PushConsoleRequest(node=node, workspace_id=wid, offset=offset, data=data),
            timeout=10,
        )
        self.console_offsets[wid] = resp.next_offset


def _disk_sources(aset: nodes_pb2.AssignmentSet) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for a in aset.assignments:
        for disk in a.disks:
            if disk.digest and disk.sources:
                out.setdefault(disk.digest, list(disk.sources))
    return out
