"""The node side: registration, each node's orders (its full desired state) and reports."""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Callable, Sequence
from dataclasses import replace

from sqlalchemy import and_, or_, select
from sqlalchemy.orm import Session

from images.model import Partition
from workspace.config import ServiceConfig
from workspace.domain.declared import declared_problem, most_of
from workspace.domain.leases import EXPIRED
from workspace.domain.model import (
    AuditRecord,
    BlobSources,
    Disk,
    NodeInfo,
    NodeOrders,
    NodeReport,
    Order,
)
from workspace.domain.states import (
    NOT_MOVED,
    TRUST_STOPPED,
    Desired,
    NodeState,
    Observed,
    State,
    state_from_report,
)
from workspace.errors import (
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    PermissionDenied,
    Unauthenticated,
)
from workspace.log import about
from workspace.ops import netpolicy, node_conditions, node_refusals, preempt, seeds, trust
from workspace.ops.cache_claims import assigned, believed
from workspace.ops.cluster_state import refresh
from workspace.ops.lifecycle import confirm_gone, held_on, is_held, release, saves_from
from workspace.ops.order_size import MAX_SOURCES
from workspace.ops.unit import Env, UnitOfWork, write
from workspace.store import Node, Workspace
from workspace.store.mapping import (
    allow_rules,
    bound_spec,
    cache_column,
    connectivity,
    limits,
    nics,
    set_applied_reboots,
    set_reason,
    shown_reason,
    stored_reason,
)

log = logging.getLogger("workspace.ops.reports")
# Reasons a stopped workspace keeps when its node reports it STOPPED without one.
STOPPED_FOR = (EXPIRED, TRUST_STOPPED)


def _back(node: Node) -> None:
    """A DOWN node reports again: READY, or DRAINING if an admin drained it."""
    node.state = (NodeState.DRAINING if node.drained else NodeState.READY).value
    node.reason = ""
    log.info("node %s is back (%s)", node.name, node.state)


def serial_text(serial: int) -> str:
    """How a certificate serial is stored (hex; serials are up to 159 bits)."""
    return f"{serial:x}" if serial else ""


def check_bound(node: Node, serial: int) -> None:
    """A node certificate may act for ``node`` only if it is the one bound to it, and not
    seen revoked (``serial`` 0: a service without TLS, nothing to check)."""
    if serial and node.cert_revoked and node.cert_serial == serial_text(serial):
        # Recorded by the replica that saw it in its CRL (ops/liveness.py): refused here
        # too, whatever this replica's copy of the CRL says.
        raise Unauthenticated(
            f"the certificate of node:{node.name} (serial 0x{node.cert_serial}) has been revoked"
        )
    if serial and node.cert_serial and node.cert_serial != serial_text(serial):
        raise PermissionDenied(
            f"node {node.name} is registered with another certificate (serial "
            f"0x{node.cert_serial}); revoke that one (`ws-admin pki revoke "
            f"0x{node.cert_serial}` at the CA that issued it) or remove the node (`ws-admin "
            f"node remove {node.name}`, once its workspaces are destroyed) first"
        )


# nodes.reason's width (its column is String(255)).
NODE_REASON_MAX = 255


class AnotherAgent(FailedPrecondition):
    """``check_one_agent``'s refusal: another agent (``holder``, its key) reports for
    the node."""

    holder = ""


def refused(env: Env, name: str, exc: PermissionDenied, agent_key: str = "") -> None:
    """The service refused ``name``'s agent (another certificate than the bound one; its
    key if it said it): remembered for the node's reason, and said where the admin looks
    (ops/node_refusals.py). A node DOWN already says it now (unless it is DOWN for its
    revoked certificate, which says more); one the liveness check marks DOWN later says
    it instead of "no heartbeat since …" (ops/liveness.py)."""
    said = exc.message.removeprefix(f"node {name} is ").split(";")[0]
    why = (node_refusals.REFUSED + said)[:NODE_REASON_MAX]
    with env.store.read() as s:
        node = s.get(Node, name)
        bound = node.cert_serial if node is not None else ""
        shows = node is not None and _shows_refusal(node, why)
    what = node_refusals.CERTIFICATE
    node_refusals.refused(env, name, agent_key, why, what, exc.message, bound)
    if not shows:
        return
    with write(env) as u:
        node = u.s.get(Node, name)
        if node is not None and _shows_refusal(node, why):
            node.reason = why
            u.nodes(name)


def _shows_refusal(node: Node, why: str) -> bool:
    """Whether ``node``'s reason should become ``why`` (DOWN for a reason other than its
    revoked certificate, and not saying it already)."""
    return NodeState(node.state) is NodeState.DOWN and not node.cert_revoked and node.reason != why


def register(
    env: Env,
    info: NodeInfo,
    cert_serial: int = 0,
    is_revoked: Callable[[int], bool] = lambda _serial: False,
) -> int:
    """Record a node (new, or back after a restart); returns its heartbeat interval.

    The name is bound to the certificate (``cert_serial``) that first registers it; a
    re-issued certificate takes it over only once the bound one is revoked."""
    try:
        interval = _register(env, info, cert_serial, is_revoked)
    except PermissionDenied as exc:
        if "another certificate" in exc.message:
            refused(env, info.name, exc, agent_key_of(info))
        raise
    except AnotherAgent as exc:
        why = f"{node_refusals.REFUSED}another agent, {agent_key_of(info)}, asks for its name"
        node_refusals.refused(
            env,
            info.name,
            agent_key_of(info),
            f"{why} while {exc.holder} reports for it"[:NODE_REASON_MAX],
            node_refusals.ANOTHER_AGENT,
            exc.message,
        )
        raise
    env.refused_nodes.pop(info.name, None)
    return interval


def check_size(info: NodeInfo) -> None:
    """InvalidArgument unless ``info``'s sizes are a host's: a node that said 2**31 CPUs
    was stored, and its capacity (times the overcommit) no longer fit the admin API's
    ``Node.cpu_capacity``: ``ws-admin node list`` failed, INTERNAL, for every node."""
    for what, value, least in (
        ("cpus", info.cpus, 1),
        ("memory_mib", info.memory_mib, 1),
        ("disk_gib", info.disk_gib, 0),
    ):
        most = most_of(what)
        if not least <= value <= most:
            raise InvalidArgument(
                f"node {info.name}: {what} must be {least} to {most}, got {value}"
            )


def check_declared(info: NodeInfo) -> None:
    """InvalidArgument unless ``info``'s labels and networks are a config's
    (``domain.declared.declared_problem``)."""
    why = declared_problem(info.labels, info.networks)
    if why:
        raise InvalidArgument(f"node {info.name}: {why}")


def _register(env: Env, info: NodeInfo, cert_serial: int, is_revoked: Callable[[int], bool]) -> int:
    if not info.name or len(info.name) > 255:
        raise InvalidArgument("a node name is required")
    check_size(info)
    check_declared(info)
    now = env.clock()
    with write(env) as u:
        node = u.s.get(Node, info.name)
        if node is not None and node.cert_serial and cert_serial:
            bound_revoked = node.cert_revoked or is_revoked(int(node.cert_serial, 16))
            if not bound_revoked or node.cert_serial == serial_text(cert_serial):
                check_bound(node, cert_serial)
            else:
                log.warning(
                    "node %s: certificate 0x%s is revoked; now bound to 0x%s",
                    info.name,
                    node.cert_serial,
                    serial_text(cert_serial),
                )
        if node is None:
            node = Node(
                name=info.name,
                used_cpus=0,
                used_memory_mib=0,
                used_disk_mbps=0,
                used_net_mbps=0,
                state=NodeState.READY.value,
            )
            u.s.add(node)
            log.info(
                "node %s registered (%s, %d cpus, %d MiB)",
                info.name,
                info.hypervisor,
                info.cpus,
                info.memory_mib,
            )
        elif NodeState(node.state) is NodeState.DOWN:
            _back(node)
        else:
            check_one_agent(node, info, now, 3 * env.cfg.heartbeat_interval_s)
        if info.agent_key:
            node.agent_key = agent_key_of(info)
        node.hypervisor = info.hypervisor or "unknown"
        node.cpus = info.cpus
        node.memory_mib = info.memory_mib
        node.disk_gib = info.disk_gib
        node.labels = dict(info.labels)
        node.networks = list(info.networks)
        node.cached_digests = believed(u.s, node, info.cached_digests, logging.INFO)
        node.peer_address = info.peer_address
        node.disk_mbps = max(0, info.disk_mbps)
        node.net_mbps = max(0, info.net_mbps)
        node.agent_version = info.agent_version[:64]
        node.last_heartbeat = now
        if cert_serial and node.cert_serial != serial_text(cert_serial):
            node.cert_serial = serial_text(cert_serial)
            node.cert_revoked = False  # a new certificate: revoked only if seen so
        u.nodes(info.name)
        u.capacity()
    return env.cfg.heartbeat_interval_s


# What the node's row keeps of an agent's key (nodes.agent_key is a String(512)).
AGENT_KEY_MAX = 512


def agent_key_of(info: NodeInfo) -> str:
    """The agent's key as the node's row keeps it: compared so too, or an agent whose
    key is longer (a deep state directory) was another agent to itself at a restart."""
    return info.agent_key[:AGENT_KEY_MAX]


def check_one_agent(node: Node, info: NodeInfo, now: float, silent_s: float) -> None:
    """Refuse another agent the name of a node whose agent reports (its last heartbeat
    within ``silent_s``): both would run the node's VMs (on two hosts: twice, with the
    same addresses), take each other's order streams and report each other's VMs gone.
    The same agent restarting says the same key; one that does not say is let be."""
    if not info.agent_key or not node.agent_key or agent_key_of(info) == node.agent_key:
        return
    age = now - node.last_heartbeat
    if age >= silent_s:
        log.warning(
            "node %s: now served by agent %s (agent %s last reported %.0f s ago)",
            node.name,
            info.agent_key,
            node.agent_key,
            age,
        )
        return
    exc = AnotherAgent(
        f"node {node.name} is served by another agent, {node.agent_key}, which reported "
        f"{max(age, 0):.0f} s ago: two agents of one node would both run its VMs. Stop one "
        "of them, or give this one a node name of its own (`node` in agent.toml); this "
        f"one may take the node over once the other has not reported for {silent_s:.0f} s"
    )
    exc.holder = node.agent_key
    raise exc


# -- orders ----------------------------------------------------------------------------------


def live_rows(s: Session, node_name: str, saves_from: float | None = None) -> list[Workspace]:
    """The workspaces ``node_name`` should hold (not terminated, nor to be; with
    ``saves_from``, also those to be whose save mark was set after it: destroyed while
    they are saved, they are kept, stopped, until the save ends: lifecycle.kept_for_save)."""
    live = Workspace.desired_state != Desired.TERMINATED.value
    if saves_from is not None:
        live = or_(live, and_(Workspace.saving_as != "", Workspace.saving_since > saves_from))
    return list(
        s.execute(
            select(Workspace)
            .where(Workspace.node == node_name, live, Workspace.state != State.TERMINATED.value)
            .order_by(Workspace.id)
        )
        .scalars()
        .all()
    )


def build_orders(
    s: Session,
    node_name: str,
    rows: Sequence[Workspace],
    with_envelopes: bool = True,
    cfg: ServiceConfig | None = None,
) -> tuple[Order, ...]:
    """The order of each row as ``node_name`` is sent it (its NICs as allocated now; with
    ``cfg``, the NoCloud seed of each workspace whose image takes one)."""
    nics_of = nics(s, [w.id for w in rows])
    seed_of = seeds.seeds(cfg, s, rows, nics_of) if cfg is not None else {}
    specs = {w.id: bound_spec(w) for w in rows}
    envelopes: dict[str, tuple[str, ...]] = {}
    if with_envelopes:
        for w in rows:
            if w.image not in envelopes:
                envelopes[w.image] = tuple(trust.envelopes(s, w.image))
    wanted = {p.digest for spec in specs.values() for p in spec.partitions if p.digest}
    sources = blob_sources(s, node_name, wanted)

    def disk(p: Partition) -> Disk:
        named = sources.get(p.digest) or BlobSources(p.digest)
        return Disk(p, named.sources, named.source_nodes)

    peers = netpolicy.peers(s, rows)
    return tuple(
        Order(
            workspace_id=w.id,
            name=w.name,
            hostname=w.name,
            # Destroyed while it is saved (kept until the save ends): it stays stopped.
            desired=Desired(w.desired_state)
            if w.desired_state != Desired.TERMINATED.value
            else Desired.STOPPED,
            cpus=w.cpus,
            memory_mib=w.memory_mib,
            image=w.image,
            disks=tuple(disk(p) for p in specs[w.id].partitions),
            nics=nics_of.get(w.id, ()),
            kernel_digest=specs[w.id].kernel_digest,
            initrd_digest=specs[w.id].initrd_digest,
            cmdline=specs[w.id].cmdline,
            reboot_count=w.reboot_count,
            stop_timeout_s=w.stop_timeout_s,
            force_stop=w.force_stop,
            seed=seed_of.get(w.id),
            # Bound order: what the service verified at create.
            envelopes=envelopes.get(w.image, ()),
            verified_digests=tuple(specs[w.id].digests()),
            connectivity=connectivity(w),
            allow=allow_rules(w),
            limits=limits(w),
            peers=peers.get(w.id, ()),
        )
        for w in rows
    )


def orders(env: Env, node_name: str, cert_serial: int = 0) -> NodeOrders:
    """Everything ``node_name`` should make real now (asked with ``cert_serial``: only
    the certificate bound to the node may read them)."""
    with env.store.read() as s:
        node = s.get(Node, node_name)
        if node is None:
            raise NotFound(f"node {node_name} is not registered")
        check_bound(node, cert_serial)
        rows = without_held(s, node_name, live_rows(s, node_name, saves_from(env)))
        out = build_orders(s, node_name, rows, env.check_trust, env.cfg)
        policy, stop_on_revoke = trust.node_policy(s) if env.check_trust else (None, False)
        cached = set(node.cached_digests or ())
        prefetch = tuple(d for d in node.prefetch or () if d not in cached)
        # Peers for a preload as for a disk: N nodes preloaded do not all ask the service.
        named = blob_sources(s, node_name, set(prefetch))
        prefetch_sources = tuple(named[d] for d in dict.fromkeys(prefetch) if d in named)
        signer = env.grant_signer
        return NodeOrders(
            generation=env.notifier.generation(node_name),
            orders=out,
            prefetch=prefetch,
            policy=policy,
            stop_running_on_revoke=stop_on_revoke,
            prefetch_sources=prefetch_sources,
            peer_grants=(
                None if signer is None else signer.grants(node_name, granted(out, prefetch_sources))
            ),
            # Numbered last: a set numbered later was read later.
            sequence=env.sent_orders.stamp(node_name, (o.workspace_id for o in out)),
        )


def granted(out: Sequence[Order], prefetch_sources: Sequence[BlobSources]) -> list[str]:
    """The blobs a node's orders name peers for, which it shows peers a grant for: a
    disk's, the kernel and initrd of an order naming peers for a disk (the agent asks
    those peers for them too), then the prefetch blobs'."""
    digests: list[str] = []
    for order in out:
        if any(d.sources for d in order.disks):
            digests += order.digests()
    digests += [b.digest for b in prefetch_sources if b.sources]
    return list(dict.fromkeys(d for d in digests if d))


def without_held(s: Session, node_name: str, rows: list[Workspace]) -> list[Workspace]:
    """``rows`` but those held back until the workspaces preempted on the node are gone
    (ops/preempt.py)."""
    waiting = preempt.held(s, node_name)
    return [w for w in rows if w.id not in waiting] if waiting else rows


def peer_sources(s: Session, node_name: str, wanted: set[str]) -> dict[str, list[tuple[str, str]]]:
    """Up to MAX_SOURCES peers per blob, as (node, peer address): nodes that serve peers
    and last reported holding it; READY ones first, the rest spread over requesters by
    rendezvous hashing (so N nodes fetching one blob do not all pick the same peer)."""
    if not wanted:
        return {}
    holders: dict[str, list[Node]] = {}
    for peer in s.execute(
        select(Node).where(
            Node.name != node_name, Node.peer_address != "", Node.state != NodeState.DOWN.value
        )
    ).scalars():
        for digest in wanted.intersection(peer.cached_digests or ()):
            holders.setdefault(digest, []).append(peer)

    def rank(peer: Node) -> tuple[bool, str]:
        spread = hashlib.sha256(f"{node_name}/{peer.name}".encode()).hexdigest()
        return (NodeState(peer.state) is not NodeState.READY, spread)

    return {
        digest: [(p.name, p.peer_address) for p in sorted(peers, key=rank)[:MAX_SOURCES]]
        for digest, peers in holders.items()
    }


def blob_sources(s: Session, node_name: str, wanted: set[str]) -> dict[str, BlobSources]:
    """The peers an order names for each of ``wanted`` (``peer_sources``), as sent: the
    addresses and the node at each; digests no peer holds are left out."""
    return {
        digest: BlobSources(digest, tuple(a for _, a in peers), tuple(n for n, _ in peers))
        for digest, peers in peer_sources(s, node_name, wanted).items()
    }


def check_node(env: Env, node_name: str, cert_serial: int) -> None:
    """NotFound if the node is not registered; PermissionDenied if it is bound to another
    certificate."""
    with env.store.read() as s:
        node = s.get(Node, node_name)
        if node is None:
            raise NotFound(f"node {node_name} is not registered; register first")
        check_bound(node, cert_serial)


def may_fetch(env: Env, node_name: str, digest: str, cert_serial: int = 0) -> None:
    """PermissionDenied unless ``digest`` is a blob of an order assigned to the node, or
    on its prefetch list."""
    with env.store.read() as s:
        node = s.get(Node, node_name)
        if node is None:
            raise NotFound(f"node {node_name} is not registered")
        check_bound(node, cert_serial)
        if digest in (node.prefetch or ()) or digest in assigned(s, node_name):
            return
    raise PermissionDenied(f"blob {digest} is not assigned to node {node_name}")


# -- reports ---------------------------------------------------------------------------------


# The most a node's cache may hold in all: what the admin API's ListCacheResponse
# (int64 used_bytes) says.
MAX_CACHE_BYTES = 2**63 - 1


def check_cache(r: NodeReport) -> None:
    """InvalidArgument unless ``r``'s cache sizes are a cache's: a report of two blobs of
    2**63-1 bytes was kept, and `ws-admin cache list` of the node failed INTERNAL from
    then on (their sum did not fit the API); negative ones were shown as they came."""
    sizes = [e.size_bytes for e in r.cache]
    if r.cache_budget_bytes < 0 or any(n < 0 for n in sizes) or sum(sizes) > MAX_CACHE_BYTES:
        raise InvalidArgument(
            f"node {r.node}: its cache's budget and blob sizes must not be negative, and "
            f"its blobs must add up to at most {MAX_CACHE_BYTES} bytes"
        )


def _heartbeat(env: Env, s: Session, node: Node, r: NodeReport) -> None:
    """A full report: the node is alive; keep its cache contents and its conditions (if
    it says them); drop prefetch digests now cached."""
    check_cache(r)
    node.last_heartbeat = env.clock()
    if NodeState(node.state) is NodeState.DOWN:
        _back(node)
    if r.conditions is not None:
        node_conditions.replace(s, node, r.conditions)
    node.cached_digests = kept = believed(s, node, r.cached_digests)
    node.cache = cache_column(r.cache)
    node.cache_budget_bytes = r.cache_budget_bytes
    if node.prefetch:
        cached = set(kept)
        left = [d for d in node.prefetch if d not in cached]
        if left != node.prefetch:
            node.prefetch = left


# What a workspace being destroyed says while its node fails to remove it (the node
# tries again; it is STOPPING until then), after why it is destroyed if that was said.
NOT_REMOVED = "its node has not removed it yet: "


def _not_removed(old: str, why: str) -> str:
    """``old`` reason (without what a failed removal said before) and ``why`` the node
    has not removed the workspace."""
    base = _without_removal(old)
    return f"{base}; {NOT_REMOVED}{why}" if base else NOT_REMOVED + why


def _without_removal(reason: str) -> str:
    return reason.partition(NOT_REMOVED)[0].removesuffix("; ")


def _end_reason(ws: Workspace) -> str:
    """What a workspace the node no longer has shows: why the service ended it (its
    lease, a preemption), else "destroyed"."""
    base = _without_removal(ws.reason)
    if base.startswith(EXPIRED) or preempt.end_reason(ws, ""):
        return base
    return "destroyed"


# States in which the node had made the workspace: a node that reports it PROPAGATING
# again found no VM of it and makes it anew from its image (agent/disks.py ``prepare``
# makes every writable disk afresh).
_MADE = frozenset({State.RUNNING, State.PAUSED, State.STOPPING, State.STOPPED, State.LOST})


def remade(node: str) -> str:
    """The reason of a workspace its node makes anew (``_MADE``)."""
    return (
        f"made anew on node {node} from its image, on new disks: its VM was not there "
        "(gone with its host, or destroyed since the backup the service's store was "
        "restored from)"
    )


# Ids bound per query (SQLite caps the number of bound parameters).
_CHUNK = 500


def _reported(s: Session, r: NodeReport) -> dict[str, Workspace]:
    """The rows of the workspaces ``r`` observes, by id: one query (per 500), not one
    per workspace (a full report, every heartbeat of every node, names them all)."""
    ids = sorted({obs.workspace_id for obs in r.observations})
    found: dict[str, Workspace] = {}
    for i in range(0, len(ids), _CHUNK):
        q = select(Workspace).where(Workspace.id.in_(ids[i : i + _CHUNK]))
        found.update((w.id, w) for w in s.execute(q).scalars())
    return found


def _observe(env: Env, u: UnitOfWork, r: NodeReport) -> set[str]:
    """Apply what the node saw; returns the ids it reported."""
    seen = set(r.unknown)
    rows = _reported(u.s, r)
    for obs in r.observations:
        seen.add(obs.workspace_id)
        ws = rows.get(obs.workspace_id)
        if ws is None or ws.node != r.node:
            continue
        if ws.state == State.TERMINATED.value:
            if Observed(obs.state) is Observed.ABSENT and is_held(u.s, ws):
                confirm_gone(env, u.s, ws, f"node {r.node} confirmed the VM is gone")
                u.changed(ws)
                preempt.terminated(u, ws)  # a victim: what waited for it may go out
            continue
        new = state_from_report(State(ws.state), Desired(ws.desired_state), obs.state)
        if new is State.TERMINATED:
            release(env, u.s, ws, _end_reason(ws))
            u.changed(ws)
            preempt.terminated(u, ws)
            continue
        if preempt.observed(env, u, ws, new):
            continue
        # Watchers see a reboot carried out (`ws reboot --wait` waits for it).
        rebooted = set_applied_reboots(ws, obs.applied_reboot_count)
        old_reason = shown_reason(ws)
        reason = obs.reason if new in (State.FAILED, State.RUNNING, State.STOPPED) else old_reason
        failed = Observed(obs.state) is Observed.FAILED
        if Desired(ws.desired_state) is Desired.TERMINATED and failed and obs.reason:
            # The node failed to remove it (FAILED, shown STOPPING: it tries again): said,
            # or a `ws destroy --wait` runs out of time with no word of why.
            reason = _not_removed(old_reason, obs.reason)
        if new is not None and ws.state == State.LOST.value and old_reason.endswith(NOT_MOVED):
            # Its node speaks for it again (back after a partition, an agent restarted):
            # why it was LOST no longer holds, in any state (a PAUSED one kept saying it).
            reason = obs.reason
        if new is State.PROPAGATING and State(ws.state) in _MADE:
            reason = remade(r.node)
        if new is State.RUNNING and not obs.reason:
            # it says it was made anew until something else is said of it
            reason = old_reason if old_reason == remade(r.node) else ""
        if ws.state == State.FAILED.value and new not in (None, State.FAILED):
            # Out of FAILED (the operation is tried again, or it worked after all): the
            # failure no longer says what the workspace is doing.
            reason = obs.reason
        if new is State.STOPPED and not obs.reason and old_reason.startswith(STOPPED_FOR):
            # Stopped because its lease ended or the trust policy stopped it: it keeps
            # saying so.
            reason = old_reason
        # As it will be stored: a longer one was never equal to the stored one, and each
        # report of the same failure was a change (sent to every watcher, logged whole).
        reason = stored_reason(reason)
        moved = new is not None and (new.value != ws.state or reason != old_reason)
        if new is not None and moved:
            if new is State.FAILED and ws.state != State.FAILED.value:
                log.warning(
                    "workspace %s (%s) failed on node %s: %s",
                    ws.id,
                    ws.name,
                    r.node,
                    stored_reason(obs.reason),
                    extra=about(ws.id, r.node),
                )
            if ws.state == State.LOST.value and new is not State.LOST:
                # Said as its going LOST was (ops/liveness.py): the node's DOWN line.
                log.info(
                    "workspace %s (%s) is back from LOST on node %s: %s",
                    ws.id,
                    ws.name,
                    r.node,
                    new.value,
                    extra=about(ws.id, r.node),
                )
            ws.state = new.value
            set_reason(ws, reason)
        if moved or rebooted:
            ws.updated_at = env.clock()
            u.changed(ws)
    return seen


def as_seen(s: Session, r: NodeReport) -> list[AuditRecord]:
    """``r``'s audit records as the service keeps them: from ``node:NAME`` whatever they
    say, and about a workspace only if it is (or was last) on that node. A node naming
    another node's workspace put its record, as a site event, in that workspace's
    history, which its owner reads with `ws events` ("deny boot: image tampered, …")."""
    named = sorted({a.workspace_id for a in r.audit if a.workspace_id})
    ours: set[str] = set()
    for i in range(0, len(named), _CHUNK):
        q = select(Workspace.id).where(
            Workspace.id.in_(named[i : i + _CHUNK]), Workspace.node == r.node
        )
        ours.update(s.execute(q).scalars())
    return [
        replace(
            a,
            where=f"node:{r.node}",
            workspace_id=a.workspace_id if a.workspace_id in ours else "",
        )
        for a in r.audit
    ]


def report(env: Env, r: NodeReport, cert_serial: int = 0) -> None:
    """Apply a node's report. Its audit records are stored as the service saw them come:
    from ``node:<name>``, whatever they say."""
    try:
        _report(env, r, cert_serial)
    except PermissionDenied as exc:
        if "another certificate" in exc.message:
            refused(env, r.node, exc)
        raise


def _report(env: Env, r: NodeReport, cert_serial: int) -> None:
    with write(env) as u:
        node = u.s.get(Node, r.node)
        if node is None:
            raise NotFound(f"node {r.node} is not registered; register first")
        check_bound(node, cert_serial)
        if r.full:
            _heartbeat(env, u.s, node, r)
        seen = _observe(env, u, r)
        # Not named because the node had not been sent them yet when it built the report,
        # not because they are gone (ops/sent_orders.py); None: the report's orders were
        # another process's, and it judges nothing.
        later = env.sent_orders.may_have(r.node, r.orders_sequence) if r.full else None
        if r.full and later is not None:
            seen |= later
            for ws in u.s.execute(
                select(Workspace).where(
                    Workspace.node == r.node,
                    Workspace.desired_state == Desired.TERMINATED.value,
                    Workspace.state != State.TERMINATED.value,
                )
            ).scalars():
                if ws.id not in seen:
                    release(env, u.s, ws, _end_reason(ws))
                    u.changed(ws)
                    preempt.terminated(u, ws)
            for ws in held_on(u.s, r.node):  # destroyed while the node was DOWN
                if ws.id not in seen:
                    confirm_gone(env, u.s, ws, f"node {r.node} confirmed the VM is gone")
                    u.changed(ws)
                    preempt.terminated(u, ws)
        if r.audit and env.check_trust:
            trust.record_audit(env, u.s, as_seen(u.s, r))
        refresh(env, u, u.changed_clusters())
