"""What ``ws-slurm resume|suspend|resume-fail`` do, over the client library.

* **resume**: the nodes are grouped by job (SLURM_RESUME_FILE; a reboot Slurm asks for,
  ``SLURM_JOB_ID``, makes them one group whose workspaces are all replaced); each group's
  nodes that have no workspace yet are mapped (features, mapping file) and created — one
  workspace for a lone node, one virtual cluster for a job's several nodes, so the service
  places them all or none in one decision. Each new node's address goes to slurmctld
  (``scontrol update NodeAddr=``). It returns once the creates are accepted; booting is
  covered by Slurm's ResumeTimeout. A group that cannot be created (a node no rule maps,
  the service's refusal: quota, capacity, unknown image) is marked DOWN in Slurm with
  the reason and powered down at once: its job is requeued now, not after ResumeTimeout.
* **suspend**: every workspace of the nodes is destroyed; a node without one is fine. A
  node whose workspace cannot be destroyed is marked DOWN with why (Slurm ignores the
  exit code and counts it powered down).
* **resume-fail**: what a failed resume made is destroyed, so nothing is left behind, and
  each node is marked DOWN with why (the workspace's failure reason, or that slurmd did
  not register in ResumeTimeout).
* every run also destroys the workspaces left on nodes Slurm has powered down
  (``sweep``); whatever stops a run (the service, its refusal of ws-slurm, the config)
  is told to Slurm too (``fail_nodes``).

Idempotent: the existing workspaces are listed first (one call) and a node that has a
live one is not created again; each create carries a request id derived from its nodes
and spec, so a create whose answer was lost and is sent again makes nothing new. A live
workspace that cannot serve (FAILED, LOST, STOPPED, PAUSED, or on a node that stopped
reporting: ``node_silent_since``) is destroyed and replaced;
a node's old workspace still being destroyed is waited for (``replace_wait_s``) before
its new one is made.

Which workspace is a node's, of ws-slurm's own (``mine``: never a project colleague's,
whatever its name): a lone node's workspace is named after the node (and made
with a ``ws-slurm-`` request id); a job's cluster is ``<prefix><job>`` and its members
``<prefix><job>-<node>-0`` with role ``<node>``. Hostnames are node names in both cases.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import re
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from workspace import errors
from workspace.slurm.answering import Answering, Service
from workspace.slurm.context import ContextError, user_data
from workspace.slurm.hostlist import brief
from workspace.slurm.nodelock import NodeLocks
from workspace.slurm.nodenames import name_problem
from workspace.slurm.reasons import (
    fail_nodes,
    fail_reason,
    mark_down,
    refuse,
    service_problem,
    silence,
)
from workspace.slurm.resumefile import Reboot, ResumeFile
from workspace.slurm.scontrol import Scontrol
from workspace.slurm.settings import NodeSpec, Settings, Unmapped
from workspace.v1 import clusters_pb2, common_pb2

log = logging.getLogger("ws-slurm")
WS = common_pb2.WorkspaceState
DS = common_pb2.DesiredState
REQUEST_PREFIX = "ws-slurm-"
# Cluster names (ops/clusters.py); workspace names: nodenames.
ROLE_RE = re.compile(r"[a-z0-9]([a-z0-9-]{0,14}[a-z0-9])?")
CLUSTER_NAME_RE = re.compile(r"[a-z0-9]([a-z0-9-]{0,38}[a-z0-9])?")
MAX_TRIES = 8
# A workspace in one of these states (or meant to be stopped or paused) cannot be a
# running Slurm node: resume replaces it (docs/design/slurm.md, "Idempotency").
DEAD_STATES = frozenset(
    {
        WS.WORKSPACE_STATE_FAILED,
        WS.WORKSPACE_STATE_LOST,
        WS.WORKSPACE_STATE_STOPPED,
        WS.WORKSPACE_STATE_PAUSED,
    }
)
DEAD_DESIRED = frozenset({DS.DESIRED_STATE_STOPPED, DS.DESIRED_STATE_PAUSED})
POLL_S = 0.5  # how often resume looks whether old workspaces have ended
# A node slurmctld asks ResumeProgram to reboot that is no State=CLOUD node.
NOT_REBOOTED = (
    "not rebooted: with power saving on, slurmctld reboots nodes through ResumeProgram "
    "(ws-slurm), which makes only State=CLOUD nodes anew; reboot it yourself"
)

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_UNREACHABLE = 3


@dataclass(frozen=True)
class Group:
    """Nodes created together: a job's nodes, or one node resumed without a job."""

    nodes: tuple[str, ...]
    job_id: int | None = None
    features: frozenset[str] = frozenset()

    @property
    def what(self) -> str:
        return f"job {self.job_id}" if self.job_id is not None else f"node {self.nodes[0]}"


def plan_groups(nodes: Sequence[str], resume: ResumeFile | None) -> list[Group]:
    """The nodes to resume, grouped by the job they were resumed for (in the resume
    file's order); nodes of no job are groups of their own."""
    wanted = dict.fromkeys(nodes)
    groups: list[Group] = []
    for job in resume.jobs if resume is not None else ():
        mine = tuple(n for n in job.nodes if n in wanted)
        if mine:
            groups.append(Group(mine, job.job_id, job.features))
            for n in mine:
                wanted.pop(n)
    groups.extend(Group((n,)) for n in wanted)
    return groups


def node_match_features(group: Group, own: frozenset[str] | None) -> frozenset[str]:
    """The features a node's mapping rule is chosen by: its own (``scontrol show node``
    AvailableFeatures, which hold every feature Slurm may give a job on it, changeable
    ones too); the job's constraint only when scontrol tells none. A job's feature the
    node lacks is an alternative Slurm did not pick for this node
    (``--constraint="bigmem|cloud"`` may run on nodes that are only ``cloud``): it must
    not choose the bigmem rule's image for them."""
    return own if own else group.features


def node_of(ws: common_pb2.Workspace, prefix: str) -> str | None:
    """The Slurm node a workspace of ws-slurm's own user is, or None if ws-slurm did not
    make it (its colleagues' are never listed: ``Program._by_node``)."""
    member = ws.cluster and ws.role and ws.name.startswith(prefix)
    if member and ws.name.endswith(f"-{ws.role}-0"):
        return ws.role
    if ws.request_id.startswith(REQUEST_PREFIX):
        return ws.name
    return None


def _gone(ws: common_pb2.Workspace) -> bool:
    return ws.state == WS.WORKSPACE_STATE_TERMINATED or (
        ws.desired_state == DS.DESIRED_STATE_TERMINATED
    )


def _serves(ws: common_pb2.Workspace) -> bool:
    """A workspace that is, or is on its way to be, a running node: not dead, and on a
    node that still reports (one silent for a while has likely died with its guests,
    and is not DOWN yet only because the service gives it node_grace_s)."""
    if _gone(ws):
        return False
    if ws.HasField("node_silent_since"):
        return False
    return ws.state not in DEAD_STATES and ws.desired_state not in DEAD_DESIRED


def _unfit(ws: common_pb2.Workspace) -> str:
    """Why a workspace that does not serve cannot be its node (for the log)."""
    if ws.state not in DEAD_STATES and silence(ws):
        return silence(ws)
    return ws.reason or "no reason given"


def _state(ws: common_pb2.Workspace) -> str:
    return WS.Name(ws.state).removeprefix("WORKSPACE_STATE_")


def request_id(group: Group, specs: Sequence[NodeSpec], data: Sequence[bytes], gen: int) -> str:
    """Stable for the same nodes, job, specs and generation."""
    h = hashlib.sha256()
    body = {
        "job": group.job_id,
        "nodes": [[s.node, s.image, s.cpus, s.memory_mib, dict(s.requirements)] for s in specs],
    }
    h.update(json.dumps(body, sort_keys=True).encode())
    for d in data:
        h.update(hashlib.sha256(d).digest())
    return f"{REQUEST_PREFIX}{h.hexdigest()[:32]}-{gen}"


class Program:
    def __init__(
        self,
        client: Service,
        settings: Settings,
        scontrol: Scontrol,
        locks: NodeLocks | None = None,
        started: float | None = None,
    ) -> None:
        """``started``: when the run began (``time.monotonic``): its waits, for another
        run's hold of a node and for old workspaces, end ``replace_wait_s`` after it."""
        self.client: Service = Answering(client, settings.timeout_s)
        self.s = settings
        self.scontrol = scontrol
        self.locks = locks if locks is not None else NodeLocks(settings.lock_file)
        begun = time.monotonic() if started is None else started
        self.deadline = begun + settings.replace_wait_s

    def close(self) -> None:
        """The run's node locks freed (as they are when it is killed)."""
        self.locks.close()

    def _left(self) -> float:
        """What is left of the run's ``replace_wait_s`` (0 when it is spent)."""
        return max(0.0, self.deadline - time.monotonic())

    def _hold(self, nodes: Sequence[str]) -> dict[str, str]:
        """Lock the run's nodes against other runs (``nodelock``), waiting for a run that
        holds one until ``replace_wait_s`` after this run began (the waits for old
        workspaces come out of the same time, so a run's waits end within it, and so
        before ResumeTimeout: ``check``); {node: why} for those still held by another run
        then: left alone by this run. (Until session 43 it waited ``replace_wait_s`` and
        ``timeout_s`` for the lock, then ``replace_wait_s`` again for an old workspace:
        150 s by default, past a ResumeTimeout ``check`` passed.)"""
        late = self.locks.acquire(nodes, self._left())
        why = f"another ws-slurm run held the node for {self.s.replace_wait_s:g} s"
        for n in late:
            log.error("node %s: %s; left alone", n, why)
        return {n: why for n in late}

    # -- what exists ---------------------------------------------------------------------

    def _by_node(self, include_terminated: bool) -> dict[str, list[common_pb2.Workspace]]:
        """ws-slurm's own workspaces by node: ``mine``, never a project colleague's, even
        one named like a node or made by another ws-slurm (another batch user of the
        project, or the same names in another Slurm cluster)."""
        found: dict[str, list[common_pb2.Workspace]] = {}
        for ws in self.client.list_workspaces(include_terminated=include_terminated, mine=True):
            node = node_of(ws, self.s.cluster_prefix)
            if node is not None:
                found.setdefault(node, []).append(ws)
        return found

    # -- resume --------------------------------------------------------------------------

    def resume(
        self, nodes: Sequence[str], resume: ResumeFile | None, reboot: Reboot | None = None
    ) -> int:
        """``reboot``: Slurm reboots these nodes for a job (they are up): every workspace
        of theirs is replaced, the nodes made together as the job's."""
        foreign: dict[str, str] = {}
        if reboot is not None:
            # With power saving on, slurmctld reboots every node through ResumeProgram,
            # the site's own too: not ws-slurm's to make anew (nor to mark powered down).
            foreign = self.scontrol.not_cloud(nodes)
            nodes = [n for n in nodes if n not in foreign]
            for n, state in foreign.items():
                log.error("node %s: Slurm reboots it for job %d, but it is no cloud node "
                          "(State=%s): not rebooted", n, reboot.job_id, state)  # fmt: skip
            mark_down(self.scontrol, "resume", {n: NOT_REBOOTED for n in foreign})
            if not nodes:
                return EXIT_FAILED
        busy = self._hold(nodes)
        groups = plan_groups(nodes, resume)
        renew = ""
        if reboot is not None:
            groups = [Group(tuple(nodes), reboot.job_id, reboot.features)]
            renew = f"Slurm reboots the node for job {reboot.job_id}"
        try:
            history = self._by_node(include_terminated=True)
        except errors.WorkspaceError as exc:
            # Unreachable, or it refuses ws-slurm itself (a revoked certificate).
            self._refuse(nodes, nodes, service_problem(exc))
            raise
        for n in busy:  # another run's to handle: neither kept nor replaced here
            history.pop(n, None)
        live = {n: [w for w in ws if not _gone(w)] for n, ws in history.items()}
        self.sweep(live, exclude=nodes)
        try:
            blocked = self._clear([n for n in nodes if n not in busy], live, history, renew)
            blocked.update(busy)
        except errors.WorkspaceError as exc:
            # Unreachable, or it refuses ws-slurm itself: a destroy's own refusal is the
            # node's (``_clear``).
            rest = [n for n in nodes if not any(_serves(w) for w in live.get(n, []))]
            self._refuse(rest, rest, service_problem(exc))
            raise
        todo_nodes = [n for n in nodes if not live.get(n) and n not in blocked]
        features = self.scontrol.features(todo_nodes) if todo_nodes else {}
        failed = 0
        for i, group in enumerate(groups):
            kept = [(n, ws) for n in group.nodes for ws in live.get(n, [])]
            for n, ws in kept:
                log.info(
                    "%snode %s already has workspace %s (%s): not created again",
                    f"{group.what}: " if group.job_id is not None else "",
                    n,
                    ws.name,
                    WS.Name(ws.state).removeprefix("WORKSPACE_STATE_"),
                )
            self._tell_addresses(kept)
            todo = tuple(n for n in group.nodes if not live.get(n))
            if not todo:
                continue
            stuck = {n: blocked[n] for n in todo if n in blocked}
            if stuck:
                # The job's nodes are made all or none: none of them now.
                for n, why in stuck.items():
                    log.error(
                        "%snode %s: %s; nothing created for %s",
                        f"{group.what}: " if group.job_id is not None else "",
                        n,
                        why,
                        group.what if group.job_id is not None else "it",
                    )
                reason = "; ".join(f"node {n}: {why}" for n, why in stuck.items())
                self._refuse(todo, list(stuck), reason)
                failed += 1
                continue
            gen = max(len(history.get(n, [])) for n in todo)
            try:
                ok = self._resume_group(Group(todo, group.job_id, group.features), features, gen)
            except errors.Unavailable as exc:
                # This group and the ones not tried yet cannot be made now.
                rest = [n for g in groups[i:] for n in g.nodes if not live.get(n)]
                self._refuse(rest, rest, service_problem(exc))
                raise
            if not ok:
                failed += 1
        return EXIT_FAILED if failed or foreign else EXIT_OK

    def _clear(
        self,
        nodes: Sequence[str],
        live: dict[str, list[common_pb2.Workspace]],
        history: Mapping[str, list[common_pb2.Workspace]],
        renew: str = "",
    ) -> dict[str, str]:
        """Make room for the nodes' new workspaces: a live workspace that cannot serve
        (``_serves``; with ``renew``, why Slurm wants them new, every one) is destroyed
        (``live`` keeps only those that serve); then, for the
        nodes that get a new one, every old workspace not yet TERMINATED (destroyed by
        this run, or by a suspend still under way) is waited for, up to
        ``replace_wait_s``: a lone node's name is taken until then, and its quota held.
        Returns {node: why its new workspace cannot be made now}."""
        blocked: dict[str, str] = {}
        for n in nodes:
            serving = [] if renew else [w for w in live.get(n, []) if _serves(w)]
            for ws in [w for w in live.get(n, []) if renew or not _serves(w)]:
                state = _state(ws)
                log.warning(
                    "node %s: workspace %s is %s (%s): destroying it to make a new one",
                    n,
                    ws.name,
                    state,
                    renew or _unfit(ws),
                )
                try:
                    self.client.destroy_workspace(ws.id)
                except errors.NotFound:
                    continue
                except errors.Unavailable:
                    raise
                except errors.WorkspaceError as exc:
                    blocked[n] = (
                        f"workspace {ws.name} is {state} and cannot be destroyed: {exc.message}"
                    )
            if serving:
                live[n] = serving
            else:
                live.pop(n, None)
        ending = {
            w.id: (n, w)
            for n in nodes
            if n not in live and n not in blocked
            for w in history.get(n, [])
            if w.state != WS.WORKSPACE_STATE_TERMINATED
        }
        if ending:
            left = self._wait_ended(ending)
            for n, ws in left.values():
                shown = "; ".join(x for x in (_state(ws), silence(ws)) if x)
                blocked.setdefault(
                    n,
                    f"its old workspace {ws.name} was still being destroyed after "
                    f"{self.s.replace_wait_s:g} s ({shown})",
                )
        return blocked

    def _wait_ended(
        self, ending: dict[str, tuple[str, common_pb2.Workspace]]
    ) -> dict[str, tuple[str, common_pb2.Workspace]]:
        """Wait until ``replace_wait_s`` after the run began (what is left of it after a
        wait for another run's hold of a node) for the workspaces ``ending`` to be
        TERMINATED; returns those that are not."""
        log.info(
            "waiting up to %d s for the old workspaces of the nodes to be destroyed: %s",
            math.ceil(self._left()),
            ", ".join(sorted(f"{w.name} ({_state(w)}, node {n})" for n, w in ending.values())),
        )
        deadline = self.deadline
        start = time.monotonic()
        while True:
            for wid, (n, _) in list(ending.items()):
                try:
                    ws = self.client.get_workspace(wid)
                except errors.NotFound:
                    ws = common_pb2.Workspace(state=WS.WORKSPACE_STATE_TERMINATED)
                if ws.state == WS.WORKSPACE_STATE_TERMINATED:
                    ending.pop(wid)
                else:
                    ending[wid] = (n, ws)
            if not ending:
                log.info("old workspaces ended after %.1f s", time.monotonic() - start)
                return ending
            if time.monotonic() >= deadline:
                return ending
            time.sleep(min(POLL_S, max(0.0, deadline - time.monotonic())))

    def _refuse(self, group_nodes: Sequence[str], down: Sequence[str], reason: str) -> None:
        refuse(self.scontrol, group_nodes, down, reason)

    def _resume_group(
        self, group: Group, node_features: Mapping[str, frozenset[str]], gen: int
    ) -> bool:
        specs: list[NodeSpec] = []
        unmapped: list[Unmapped] = []
        for n in group.nodes:
            try:
                specs.append(self.s.resolve(n, node_match_features(group, node_features.get(n))))
            except Unmapped as missing:
                unmapped.append(missing)
        if unmapped:
            for um in unmapped:
                log.error("%s: %s; nothing created for %s", group.what, um, group.what)
            self._refuse(
                group.nodes,
                [e.node for e in unmapped],
                "; ".join(e.short for e in unmapped),
            )
            return False
        try:
            data = [user_data(spec, self.s) for spec in specs]
        except ContextError as exc:
            log.error("%s: %s; nothing created for %s", group.what, exc, group.what)
            self._refuse(group.nodes, group.nodes, str(exc))
            return False
        bad = [n for n in group.nodes if name_problem(n)]
        if bad:
            log.error(
                "%s: Slurm node name(s) cannot be workspace names: %s; nothing created",
                group.what,
                "; ".join(f"{n} ({name_problem(n)})" for n in bad),
            )
            self._refuse(group.nodes, bad, "the node name cannot be a workspace name")
            return False
        together = len(specs) > 1 and all(ROLE_RE.fullmatch(n) for n in group.nodes)
        if len(specs) > 1 and not together:
            log.warning(
                "%s: node names longer than 16 characters cannot be cluster roles: "
                "its nodes are created one by one, not all-or-nothing",
                group.what,
            )
        try:
            if together:
                made = self._create_cluster(group, specs, data, gen)
            else:
                made = []
                for spec, d in zip(specs, data, strict=True):
                    made.append(self._create_one(group, spec, d, gen))
        except errors.Unavailable:
            raise
        except errors.WorkspaceError as exc:
            log.error("%s: the service refused the create: %s", group.what, exc.message)
            self._refuse(
                group.nodes, group.nodes, f"{group.what}: the service refused: {exc.message}"
            )
            return False
        for node, ws in made:
            log.info(
                "%snode %s is workspace %s (%s) on %s, address %s%s",
                f"{group.what}: " if group.job_id is not None else "",
                node,
                ws.name,
                ws.id,
                ws.node or "-",
                ws.nics[0].ip if ws.nics else "-",
                f" ({_state(ws)}: {ws.reason})" if ws.reason else "",
            )
        self._tell_addresses(made)
        return True

    def _create_one(
        self, group: Group, spec: NodeSpec, data: bytes, gen: int
    ) -> tuple[str, common_pb2.Workspace]:
        for g in range(gen, gen + MAX_TRIES):
            ws = self.client.create_workspace(
                spec.image,
                name=spec.node,
                cpus=spec.cpus,
                memory_mib=spec.memory_mib,
                networks=list(self.s.networks),
                user_data=data,
                request_id=request_id(Group((spec.node,), group.job_id), [spec], [data], g),
                requirements=dict(spec.requirements),
                project=self.s.project,
                lease_s=self.s.lease_s,
            )
            if not _gone(ws):
                return spec.node, ws
            # The request id named an earlier, destroyed workspace of this node: a new one.
        raise errors.FailedPrecondition(f"node {spec.node}: no fresh request id found")

    def cluster_name(self, group: Group, gen: int) -> str:
        base = f"{self.s.cluster_prefix}{group.job_id}"
        name = base if gen == 0 else f"{base}-{gen}"
        if not CLUSTER_NAME_RE.fullmatch(name):
            raise errors.InvalidArgument(f"cluster name {name!r} is not valid")
        return name

    def _create_cluster(
        self, group: Group, specs: Sequence[NodeSpec], data: Sequence[bytes], gen: int
    ) -> list[tuple[str, common_pb2.Workspace]]:
        for g in range(gen, gen + MAX_TRIES):
            req = clusters_pb2.CreateClusterRequest(
                request_id=request_id(group, specs, data, g),
                name=self.cluster_name(group, g),
                affinity=_affinity(self.s.affinity),
                project=self.s.project,
                lease_s=self.s.lease_s,
            )
            for spec, d in zip(specs, data, strict=True):
                req.members.add(
                    role=spec.node,
                    image=spec.image,
                    cpus=spec.cpus,
                    memory_mib=spec.memory_mib,
                    count=1,
                    networks=list(self.s.networks),
                    requirements=dict(spec.requirements),
                    user_data=d,
                )
            try:
                cluster = self.client.create_cluster(req)
            except errors.AlreadyExists:
                continue  # an earlier cluster of this job still lives: the next name
            members = [m for m in cluster.members if not _gone(m)]
            if cluster.state == clusters_pb2.CLUSTER_STATE_TERMINATED or not members:
                continue  # the request id named an earlier, destroyed cluster
            log.info("%s: cluster %s (%s) created", group.what, cluster.name, cluster.id)
            return [(m.role, m) for m in members]
        raise errors.FailedPrecondition(f"{group.what}: no fresh cluster name found")

    def _tell_addresses(self, found: Sequence[tuple[str, common_pb2.Workspace]]) -> None:
        """Tell slurmctld where the nodes' workspaces are: one update for a group."""
        addresses: dict[str, str] = {}
        for node, ws in found:
            if ws.nics and ws.nics[0].ip:
                addresses[node] = ws.nics[0].ip
            else:
                log.warning("node %s: workspace %s has no address yet", node, ws.name)
        if not addresses:
            return
        for node in self.scontrol.set_addresses(addresses):
            log.warning("node %s: could not tell slurmctld its address %s", node,
                        addresses[node])  # fmt: skip

    # -- suspend, resume-fail --------------------------------------------------------------

    def destroy(self, nodes: Sequence[str], why: str) -> int:
        """Suspend: every workspace of ``nodes`` destroyed; nodes without one are fine. A
        node whose workspace cannot be destroyed is marked DOWN with why (``fail_nodes``)."""
        busy = self._hold(nodes)
        if busy:
            fail_nodes(self.scontrol, why, list(busy), next(iter(busy.values())))
            nodes = [n for n in nodes if n not in busy]
        try:
            live = self._by_node(include_terminated=False)
        except errors.WorkspaceError as exc:
            fail_nodes(self.scontrol, why, nodes, service_problem(exc))
            raise
        self.sweep(live, exclude=nodes)
        failed, unreachable = self._destroy(nodes, live, why)
        mark_down(
            self.scontrol,
            why,
            {n: f"{why} could not destroy {left}" for n, left in failed.items()},
        )
        if unreachable is not None:
            raise unreachable
        return EXIT_FAILED if failed or busy else EXIT_OK

    def resume_fail(self, nodes: Sequence[str]) -> int:
        """What the failed resume made destroyed; each node DOWN with why (Slurm has marked
        it DOWN with "ResumeTimeout reached": ours says what happened to its workspace)."""
        busy = self._hold(nodes)
        if busy:
            fail_nodes(self.scontrol, "resume-fail", list(busy), next(iter(busy.values())))
            nodes = [n for n in nodes if n not in busy]
        try:
            live = self._by_node(include_terminated=False)
        except errors.WorkspaceError as exc:
            fail_nodes(self.scontrol, "resume-fail", nodes, service_problem(exc))
            raise
        self.sweep(live, exclude=nodes)
        reasons = {n: fail_reason(n, [w for w in live.get(n, []) if not _gone(w)]) for n in nodes}
        failed, unreachable = self._destroy(nodes, live, "resume-fail")
        for n, left in failed.items():
            reasons[n] = f"{reasons[n]}; could not destroy {left}"
        mark_down(self.scontrol, "resume-fail", reasons)
        if unreachable is not None:
            raise unreachable
        return EXIT_FAILED if failed or busy else EXIT_OK

    def sweep(self, live: dict[str, list[common_pb2.Workspace]], exclude: Sequence[str]) -> None:
        """Destroy the workspaces of nodes Slurm has powered down (a suspend that could not
        destroy them: the VM would hold its quota forever, for Slurm never suspends a
        powered-down node again). Safe: only ws-slurm's workspaces (``node_of``), only of
        nodes that scontrol says are POWERED_DOWN and not powering up, never of the nodes
        this run was given (a resume of them is under way, or this run handles them),
        never of a node another run holds (``nodelock``): a node is taken only when its
        lock is free, and its state read under the lock. slurmctld marks a node
        POWERING_UP before it runs ResumeProgram for it, and that resume holds the node
        from before its first look until it is done: so a node still POWERED_DOWN under
        the lock has no resume that could have kept its workspace. (Until session 42
        the state was read first and the workspaces destroyed after, unlocked: a resume
        of the node in between kept the workspace, which was then destroyed under it.)
        Without scontrol's answer nothing is destroyed. ``live`` loses what is destroyed."""
        skip = set(exclude)
        candidates = [
            n for n, ws in live.items() if n not in skip and any(not _gone(w) for w in ws)
        ]
        if not candidates:
            return
        taken = self.locks.try_acquire(candidates)
        if len(taken) < len(candidates):
            log.info("cleanup: %s left to a later run: another ws-slurm run holds them",
                     brief([n for n in candidates if n not in taken]))  # fmt: skip
        try:
            self._sweep(taken, live)
        finally:
            self.locks.release(taken)

    def _sweep(
        self, candidates: Sequence[str], live: dict[str, list[common_pb2.Workspace]]
    ) -> None:
        if not candidates:
            return
        down = self.scontrol.powered_off(candidates)
        for n in candidates:
            if down is None or n not in down:
                continue
            log.warning(
                "node %s is powered down in Slurm but still has a workspace (a suspend that "
                "failed?): destroying it",
                n,
            )
            left, _ = self._destroy([n], live, "cleanup")
            if left:
                log.error("cleanup: node %s keeps %s; tried again on the next run", n, left[n])
            else:
                live.pop(n, None)

    def _destroy(
        self, nodes: Sequence[str], live: Mapping[str, list[common_pb2.Workspace]], why: str
    ) -> tuple[dict[str, str], errors.Unavailable | None]:
        """Destroy the nodes' workspaces: ({node: why its workspace is left} for those that
        could not be destroyed, the service's Unavailable if it went away: every node not
        done yet then fails)."""
        failed: dict[str, str] = {}
        unknown: list[str] = []
        for i, n in enumerate(nodes):
            mine = [w for w in live.get(n, []) if not _gone(w)]
            if not mine:
                unknown.append(n)
                continue
            for ws in mine:
                try:
                    self.client.destroy_workspace(ws.id)
                except errors.NotFound:
                    log.info("%s: node %s: workspace %s is already gone", why, n, ws.name)
                    continue
                except errors.Unavailable as exc:
                    log.error("%s: node %s: cannot destroy %s: %s", why, n, ws.name, exc.message)
                    for m in nodes[i:]:
                        left = [w.name for w in live.get(m, []) if not _gone(w)]
                        if left:
                            failed[m] = f"workspace {left[0]}: {service_problem(exc)}"
                    return failed, exc
                except errors.WorkspaceError as exc:
                    log.error("%s: node %s: cannot destroy %s: %s", why, n, ws.name, exc.message)
                    failed[n] = f"workspace {ws.name}: {exc.message}"
                    continue
                log.info("%s: node %s: workspace %s (%s) destroyed", why, n, ws.name, ws.id)
        if unknown:
            # One line however many: a suspend of many unknown nodes is no error storm.
            log.info(
                "%s: %s %s %s no workspace; nothing to do",
                why,
                "node" if len(unknown) == 1 else "nodes",
                brief(unknown),
                "has" if len(unknown) == 1 else "have",
            )
        return failed, None


def _affinity(name: str) -> clusters_pb2.Affinity.ValueType:
    return clusters_pb2.Affinity.Value("AFFINITY_" + name.upper().replace("-", "_"))
