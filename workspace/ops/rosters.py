"""Running cluster members learn their cluster's roster: the leader rewrites /etc/hosts,
/etc/workspace/cluster.json and /etc/ssh/ssh_known_hosts in each of them through its
guest agent (an exec task, ops/taskhub.py) whenever what the member should have differs
from what it was last given. docs/design/elastic-clusters.md says why service-side.

Level-triggered on the leader: each pass reads every running contextualized member and
its cluster's roster (ops/seeds.py ``rosters``, as a first boot's seed has it), renders
the member's files (workspace/domain/seed.py ``roster_files``) and pushes those whose
digest differs from the one this process last applied to that member. A member that
could not be reached (agent not connected, no guest agent yet, a failing command) is
retried on the next passes, with a back-off. A new leader knows nothing applied and
pushes once to every running member (the writes are idempotent: each file is written
to a temporary name and renamed).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from sqlalchemy import select

from workspace.domain import seed
from workspace.domain.states import Desired, State
from workspace.domain.tasks import ExecTask
from workspace.ops import seeds
from workspace.ops.unit import Env
from workspace.store import Workspace

log = logging.getLogger("workspace.ops.rosters")

# Before the first write, wait for cloud-init to finish its first boot (it writes the
# seed's roster, which may be older than ours).
WAIT_BOOT = (
    "sh",
    "-c",
    "command -v cloud-init >/dev/null 2>&1 && cloud-init status --wait >/dev/null 2>&1; true",
)
WAIT_BOOT_S = 300
WRITE_S = 30
ANSWER_GRACE_S = 30.0
# Members pushed to at once.
PARALLEL = 8
# Back-off of a member that could not be reached: doubled up to this.
MAX_BACKOFF_S = 300.0


def write_argv(path: str) -> tuple[str, ...]:
    """The command that writes stdin to ``path`` (0644) atomically."""
    parent = path.rsplit("/", 1)[0] or "/"
    tmp = path + ".ws-new"
    return (
        "sh",
        "-c",
        f"set -e; mkdir -p {parent}; cat > {tmp}; chmod 0644 {tmp}; mv -f {tmp} {path}",
    )


@dataclass(frozen=True)
class Target:
    workspace_id: str
    name: str
    node: str
    cluster: str
    roster: seed.Roster
    digest: str  # of its files

    @property
    def files(self) -> tuple[tuple[str, str], ...]:
        """What the member should have (rendered when pushed: most passes push nothing)."""
        return tuple(seed.roster_files(self.roster, self.name))


@dataclass
class _Retry:
    at: float
    backoff_s: float


class RosterPusher:
    """The leader's roster pushes (``run_once`` each ``roster_push_interval_s``, and
    when ``poke``d after a scale)."""

    def __init__(self, env: Env, run: Callable[[str, str, ExecTask, float], object]) -> None:
        self.env = env
        self.run = run
        self.applied: dict[str, str] = {}  # workspace id → digest last applied
        # Cluster id → (the roster its members' digests were rendered from, member name →
        # digest): each member's files hold the whole roster, so rendering them all is
        # quadratic in the cluster's size (1.5 s for 500 members), and a pass renders
        # them again only when the roster changed.
        self._digests: dict[str, tuple[seed.Roster, dict[str, str]]] = {}
        self._retry: dict[str, _Retry] = {}
        self._poked = threading.Event()
        self._lock = threading.Lock()

    def retrying(self) -> set[str]:
        """The members whose push failed and is to be retried."""
        return set(self._retry)

    def poke(self) -> None:
        self._poked.set()

    def wait(self, timeout_s: float) -> None:
        self._poked.wait(timeout_s)
        self._poked.clear()

    def targets(self) -> list[Target]:
        """Every running contextualized member and the files it should have."""
        q = select(Workspace.id, Workspace.name, Workspace.node, Workspace.cluster).where(
            Workspace.cluster != "",
            Workspace.state == State.RUNNING.value,
            Workspace.desired_state == Desired.RUNNING.value,
            Workspace.context == seeds.NOCLOUD,
            Workspace.node != "",
        )
        with self.env.store.read() as s:
            found = list(s.execute(q))
            cids = {r[3] for r in found}
            # Members being destroyed (a shrink) are left out at once, not once gone. (A
            # list of their names, taken out of every roster read, also took a running
            # namesake out of another user's cluster "mpi": names are per owner.)
            by_cluster = seeds.rosters(s, cids)
        out = []
        digests: dict[str, tuple[seed.Roster, dict[str, str]]] = {}
        for wid, name, node, cid in found:
            roster = by_cluster.get(cid)
            if roster is None:
                continue
            known = digests.get(cid)
            if known is None:
                known = self._digests.get(cid)
                if known is None or known[0] != roster:
                    known = (roster, {})
                digests[cid] = known
            digest = known[1].get(name)
            if digest is None:
                digest = known[1][name] = seed.roster_digest(seed.roster_files(roster, name))
            out.append(Target(wid, name, node, cid, known[0], digest))
        self._digests = digests  # the clusters with running members now
        return out

    def run_once(self) -> list[str]:
        """One pass; the names of the members given new files."""
        with self._lock:
            now = self.env.clock()
            targets = self.targets()
            live = {t.workspace_id for t in targets}
            for gone in set(self.applied) - live:
                del self.applied[gone]
            for gone in set(self._retry) - live:
                del self._retry[gone]
            due = [
                t
                for t in targets
                if self.applied.get(t.workspace_id) != t.digest
                and (t.workspace_id not in self._retry or self._retry[t.workspace_id].at <= now)
            ]
            if not due:
                return []
            with ThreadPoolExecutor(min(PARALLEL, len(due)), "roster") as pool:
                results = list(pool.map(self._push, due))
            done = []
            for t, error in zip(due, results, strict=True):
                if error is None:
                    self.applied[t.workspace_id] = t.digest
                    self._retry.pop(t.workspace_id, None)
                    done.append(t.name)
                else:
                    r = self._retry.get(t.workspace_id)
                    backoff = min(MAX_BACKOFF_S, r.backoff_s * 2) if r else 5.0
                    self._retry[t.workspace_id] = _Retry(self.env.clock() + backoff, backoff)
                    log.warning(
                        "roster of %s not written (retrying in %.0f s): %s", t.name, backoff, error
                    )
            if done:
                log.info("roster written in %d member(s): %s", len(done), ", ".join(done))
            return done

    def _push(self, t: Target) -> str | None:
        """None when every file was written; else why not."""
        try:
            if t.workspace_id not in self.applied:
                self.run(
                    t.node,
                    t.workspace_id,
                    ExecTask(WAIT_BOOT, b"", WAIT_BOOT_S),
                    WAIT_BOOT_S + ANSWER_GRACE_S,
                )
            for path, content in t.files:
                if not content:
                    continue
                out = self.run(
                    t.node,
                    t.workspace_id,
                    ExecTask(write_argv(path), content.encode(), WRITE_S),
                    WRITE_S + ANSWER_GRACE_S,
                )
                code = getattr(out, "exit_code", 0)
                if code != 0:
                    err = getattr(out, "stderr", b"").decode(errors="replace").strip()
                    return f"writing {path} exited {code}: {err[:200]}"
        except Exception as exc:
            return getattr(exc, "message", None) or str(exc) or type(exc).__name__
        return None
