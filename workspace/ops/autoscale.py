"""Autoscaled roles: set or clear a role's autoscaler, and the leader's pass that asks
each role's signal for a count and scales to it (clamped to [min, max], after the
cool-down since the last change). Every decision — a change, a hold, a failing signal —
is stored in ``Cluster.autoscale[role]["last"]`` and ``ws cluster show`` explains it.
docs/design/elastic-clusters.md.

Signals:

* ``command:/PATH`` runs PATH (no shell) with WS_CLUSTER, WS_ROLE, WS_CURRENT, WS_MIN and
  WS_MAX set, for at most ``autoscale_command_timeout_s``; it prints the wanted count;
* ``slurm-queue[:PARTITION]`` runs ``squeue_command`` and wants the nodes of the jobs
  PENDING and RUNNING (in PARTITION), each task of a job array counted.

A signal runs outside any transaction; the scale it asks for runs in one of its own.

A grow is made with the rights of whoever turned the role's autoscaler on (``by``), and
only while they still have them: their certificate not revoked, and they still may act
on the cluster (its owner, an admin, a member of its project) and still belong to its
project. Otherwise the grow is refused, with a site event naming why, until someone with
rights turns the autoscaler on again.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shlex
import signal
import subprocess
from collections.abc import Callable, Set
from dataclasses import dataclass, replace

from sqlalchemy import select

from workspace import callctx
from workspace.config import ServiceConfig
from workspace.domain import elastic
from workspace.domain.elastic import AutoscaleInfo, Decision, Signal
from workspace.domain.events import Kind as EventKind
from workspace.domain.events import Refusal, SiteEvent
from workspace.domain.model import ClusterView
from workspace.domain.states import ClusterState
from workspace.errors import InvalidArgument, PermissionDenied, WorkspaceError
from workspace.identity import Identity
from workspace.ops import grow_rights, refusals
from workspace.ops.cluster_scale import check_scalable, live, role_spec, scale_in
from workspace.ops.cluster_state import members_of, torn_down
from workspace.ops.clusters import MAX_MEMBERS, hint_name, resolve, view
from workspace.ops.projects import as_identity
from workspace.ops.unit import Env, write
from workspace.store import Cluster

log = logging.getLogger("workspace.ops.autoscale")

# Output of a signal read (bytes).
MAX_OUTPUT = 64 * 1024
_IDLE = (ClusterState.STOPPED.value, ClusterState.STOPPING.value)
_GONE = (ClusterState.TERMINATING.value, ClusterState.TERMINATED.value)
# A role's stored entry: who turned its autoscaler on (``_by``).
BY = "by"


class SignalError(Exception):
    """A signal gave no count (the message says why)."""


def check_signal(text: str, who: Identity | None = None, commands_dir: str = "") -> Signal:
    """``text`` parsed and checked for ``who`` (None: the site itself, as an admin).

    A ``command:`` signal runs a program on the service's host as the service's user:
    an admin may name any executable; a user only one under the site's
    ``autoscale_commands_dir`` (none when unset), after symbolic links are resolved —
    and the resolved path is what is stored and run."""
    try:
        sig = elastic.parse_signal(text)
    except ValueError as exc:
        raise InvalidArgument(str(exc)) from exc
    if sig.kind == elastic.COMMAND:
        if who is not None and not who.admin:
            if not commands_dir:
                raise PermissionDenied(
                    f"signal {text!r}: only an admin may set a command: signal on this site "
                    "(it runs on the service's host); use slurm-queue[:PARTITION], or ask an "
                    "admin for a commands directory (autoscale_commands_dir)"
                )
            base = os.path.realpath(commands_dir)
            real = os.path.realpath(sig.arg)
            if os.path.commonpath([base, real]) != base:
                raise PermissionDenied(
                    f"signal {text!r}: a user's command: signal must be a program in "
                    f"{commands_dir} (the site's autoscale_commands_dir)"
                )
            # What is checked is what runs: the program itself, not the user's path to
            # it (a link of theirs could be pointed at a program of their own later).
            sig = replace(sig, arg=real)
        if not os.path.isfile(sig.arg):
            raise InvalidArgument(
                f"signal {text!r}: {sig.arg} does not exist (on the service host)"
            )
        if not os.access(sig.arg, os.X_OK):
            raise InvalidArgument(f"signal {text!r}: {sig.arg} is not executable")
    return sig


def set_autoscale(
    env: Env,
    who: Identity | str,
    ref: str,
    role: str,
    off: bool = False,
    min_count: int = 0,
    max_count: int = 0,
    signal: str = "",
    cooldown_s: int = 0,
) -> ClusterView:
    """Turn the autoscaler of ``role`` on (or change it), or ``off``."""
    with write(env) as u:
        # It scales the cluster (down too) from now on: by a bare name, as a shrinking
        # scale, only the caller's own cluster (ops/lifecycle.py ``choose_owned``).
        c = resolve(u.s, who, ref, acting="autoscale")
        check_scalable(c, hint_name(who, c))
        role_spec(c, role)
        stored = dict(c.autoscale or {})
        if off:
            stored.pop(role, None)
        else:
            if not 0 <= min_count <= max_count:
                raise InvalidArgument(
                    f"autoscale {role}: give 0 <= --min <= --max, not {min_count}..{max_count}"
                )
            if max_count > MAX_MEMBERS:
                raise InvalidArgument(
                    f"autoscale {role}: --max {max_count} is above the cluster member limit "
                    f"({MAX_MEMBERS})"
                )
            if cooldown_s < 0:
                raise InvalidArgument(f"autoscale {role}: the cool-down must be 0 or more")
            sig = check_signal(signal, as_identity(who), env.cfg.autoscale_commands_dir)
            old = stored.get(role) or {}
            info = AutoscaleInfo(
                role,
                min_count,
                max_count,
                sig.text,
                cooldown_s or env.cfg.autoscale_cooldown_s,
                float(old.get("last_action_at", 0.0)),
                Decision.from_dict(old["last"]) if old.get("last") else None,
            )
            stored[role] = {**info.to_dict(), BY: grow_rights.stored(as_identity(who))}
        c.autoscale = stored
        c.updated_at = env.clock()
        shown = view(u.s, c)
    log.info("cluster %s (%s): autoscale %s %s", c.id, c.name, role, "off" if off else "set")
    return shown


# -- signals ---------------------------------------------------------------------------------


def _run(argv: list[str], env: dict[str, str] | None, timeout_s: float) -> str:
    """stdout of ``argv``; SignalError if it fails or runs past ``timeout_s`` (then its
    whole process group is killed: a script's children too)."""
    try:
        p = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=env,
            start_new_session=True,
        )
    except OSError as exc:
        raise SignalError(f"{argv[0]}: {exc.strerror or exc}") from exc
    try:
        out, err = p.communicate(timeout=timeout_s)
    except subprocess.TimeoutExpired as exc:
        with contextlib.suppress(OSError):
            os.killpg(p.pid, signal.SIGKILL)
        p.communicate()
        raise SignalError(f"{argv[0]} ran longer than {timeout_s:g} s") from exc
    if p.returncode != 0:
        lines = err[:400].decode(errors="replace").strip().splitlines()
        raise SignalError(f"{argv[0]} exited {p.returncode}" + (f": {lines[-1]}" if lines else ""))
    return out[:MAX_OUTPUT].decode(errors="replace")


def read_command(
    cfg: ServiceConfig, path: str, cluster: str, a: AutoscaleInfo, current: int
) -> int:
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "WS_CLUSTER": cluster,
        "WS_ROLE": a.role,
        "WS_CURRENT": str(current),
        "WS_MIN": str(a.min),
        "WS_MAX": str(a.max),
    }
    out = _run([path], env, cfg.autoscale_command_timeout_s).strip()
    try:
        return int(out.split()[0] if out else "")
    except ValueError as exc:
        raise SignalError(f"{path} printed {out[:40]!r}, not a count") from exc


def read_slurm(cfg: ServiceConfig, partition: str) -> int:
    # -r: a pending job array is one line of one task's nodes unless its tasks are listed.
    argv = [*shlex.split(cfg.squeue_command), "-h", "-r", "-t", "PENDING,RUNNING", "-o", "%D"]
    if partition:
        argv += ["-p", partition]
    out = _run(argv, None, cfg.autoscale_command_timeout_s)
    total = 0
    for line in out.split():
        try:
            total += int(line)
        except ValueError as exc:
            raise SignalError(f"squeue printed {line[:40]!r}, not a node count") from exc
    return total


def read_signal(cfg: ServiceConfig, cluster: str, a: AutoscaleInfo, current: int) -> int:
    sig = elastic.parse_signal(a.signal)
    if sig.kind == elastic.COMMAND:
        return read_command(cfg, sig.arg, cluster, a, current)
    return read_slurm(cfg, sig.arg)


# -- the leader's pass -------------------------------------------------------------------------


@dataclass(frozen=True)
class Outcome:
    cluster: str
    role: str
    decision: Decision


Reader = Callable[[ServiceConfig, str, AutoscaleInfo, int], int]


def evaluate(
    env: Env, reader: Reader = read_signal, revoked: Set[int] = frozenset()
) -> list[Outcome]:
    """One pass over every autoscaled role; each one's decision. ``revoked``: the serials
    the site's CRL revokes now (a grow set by a revoked certificate is refused)."""
    with env.store.read() as s:
        found = [
            (c.id, c.name, c.state, elastic.infos(c.autoscale), dict(c.autoscale))
            for c in s.execute(select(Cluster).where(Cluster.state.not_in(_GONE))).scalars()
            if c.autoscale and not torn_down(c)
        ]
        counts = {
            (cid, a.role): len(live([m for m in members_of(s, cid) if m.role == a.role]))
            for cid, _n, _st, infos, _e in found
            for a in infos
        }
    out = []
    for cid, name, state, infos, entries in found:
        for a in infos:
            current = counts[(cid, a.role)]
            read = _settings(entries.get(a.role))
            d = _one(env, reader, cid, name, state, a, current, revoked, read)
            out.append(Outcome(cid, a.role, d))
    return out


def _one(
    env: Env,
    reader: Reader,
    cid: str,
    name: str,
    state: str,
    a: AutoscaleInfo,
    current: int,
    revoked: Set[int],
    read: dict[str, object],
) -> Decision:
    """``read``: the role's settings as the pass read them (``_settings``); the scale
    is made only while they are still the role's."""
    now = env.clock()
    if state in _IDLE:
        d = Decision(now, -1, current, elastic.HOLD, f"hold: cluster is {state}")
        _record(env, cid, a.role, d, changed=False)
        return d
    try:
        wanted = reader(env.cfg, name, a, current)
    except SignalError as exc:
        d = Decision(now, -1, current, elastic.FAILED, f"signal failed: {exc}; no change")
        _record(env, cid, a.role, d, changed=False)
        log.warning("cluster %s, autoscale %s: %s", name, a.role, d.detail)
        return d
    target, action, detail = elastic.decide(a, wanted, current, now)
    d = Decision(now, wanted, current, action, detail)
    if target == current:
        _record(env, cid, a.role, d, changed=False)
        return d
    if target > current:
        problem = _setter_problem(env, cid, a.role, revoked)
        if problem:
            return _refuse_grow(env, cid, name, a, d, problem)
    refused: list[SiteEvent] = []
    try:
        with write(env, refused_into=refused) as u:
            c = u.s.get(Cluster, cid)
            if c is None:
                return d
            entry = (c.autoscale or {}).get(a.role) or {}
            if _settings(entry) != read:
                # Turned off or set anew while the signal was read: the next pass
                # decides on the settings as they are now.
                return replace(d, action=elastic.HOLD, detail=f"{detail}: not done, {CHANGED}")
            # Decided again on what the role is now: another pass (the old leader's, in
            # flight as the next one leads) or a scale may have changed it meanwhile.
            fresh = AutoscaleInfo.from_dict(a.role, entry)
            have = len(live([m for m in members_of(u.s, cid) if m.role == a.role]))
            at = env.clock()
            target, again, detail = elastic.decide(fresh, wanted, have, at)
            d = Decision(at, wanted, have, again, detail)
            if again != action:  # (a grow's rights were checked for a grow only)
                _store(c, a.role, d, 0.0)
                return d
            actor = grow_rights.actor(entry.get(BY))
            scale_in(env, u, c, a.role, target, 0, f"autoscale: {detail}", actor)
            _store(c, a.role, d, at)
    except WorkspaceError as exc:
        d = replace(d, action=elastic.FAILED, detail=f"{detail} refused: {exc.message}")
        # Tried again every pass: a refusal as before (nothing changed) is no news, and
        # its events (one per missing member) are not journaled again every pass.
        if refused and not (a.last is not None and _same(a.last, d)):
            refusals.record(env.store, env.notifier, refused)
        _record(env, cid, a.role, d, changed=False)
        log.warning("cluster %s, autoscale %s: %s", name, a.role, d.detail)
        return d
    log.info("cluster %s, autoscale %s: %s", name, a.role, detail)
    return d


def _setter_problem(env: Env, cid: str, role: str, revoked: Set[int]) -> str:
    """Why whoever turned ``role``'s autoscaler on can no longer have it grow the cluster
    ("": they can): their certificate is revoked, or they may no longer act on the
    cluster, or no longer belong to the project its new members would be charged to (a
    member an admin removed: ``ws-admin project remove-user``). An autoscaler set before
    its setter was stored grows with the owner's name, as it always did."""
    with env.store.read() as s:
        c = s.get(Cluster, cid)
        if c is None:
            return ""
        by = ((c.autoscale or {}).get(role) or {}).get(BY)
        return grow_rights.problem(s, c, by, revoked, "who turned the autoscaler on")


def _refuse_grow(
    env: Env, cid: str, name: str, a: AutoscaleInfo, d: Decision, problem: str
) -> Decision:
    """A grow its setter may no longer make: the decision says why, and a
    ``workspace.refused`` site event (state ``rights``) tells the admin, once while the
    refusal stays the same."""
    d = replace(
        d,
        action=elastic.FAILED,
        detail=f"{d.detail} refused: {problem}; until someone with rights on the cluster "
        "turns it on again (ws cluster autoscale)",
    )
    if not (a.last is not None and _same(a.last, d)):
        event = SiteEvent(
            at=env.clock(),
            kind=EventKind.WORKSPACE_REFUSED.value,
            who=callctx.current().who,
            cluster=cid,
            subject=a.role,
            state=Refusal.RIGHTS.value,
            reason=f"autoscale of cluster {name}, role {a.role}: {problem}",
        )
        refusals.record(env.store, env.notifier, [event])
    _record(env, cid, a.role, d, changed=False)
    log.warning("cluster %s, autoscale %s: %s", name, a.role, d.detail)
    return d


CHANGED = "the autoscaler was turned off or set anew meanwhile"


def _settings(entry: object) -> dict[str, object]:
    """A role's stored autoscaler without its decisions: what it was set to, and by whom
    (empty: off)."""
    if not isinstance(entry, dict):
        return {}
    return {k: v for k, v in entry.items() if k not in ("last", "last_action_at")}


def _store(c: Cluster, role: str, d: Decision, action_at: float) -> None:
    stored = dict(c.autoscale or {})
    entry = dict(stored.get(role) or {})
    if not entry:
        return  # turned off meanwhile
    entry["last"] = d.to_dict()
    if action_at:
        entry["last_action_at"] = action_at
    stored[role] = entry
    c.autoscale = stored


def _record(env: Env, cid: str, role: str, d: Decision, changed: bool) -> None:
    """Store ``d`` as the role's last decision, unless it says what the stored one says
    (a steady role costs one read a pass, not a write: ``at`` stays when it first said so)."""
    if not changed:
        with env.store.read() as s:
            c = s.get(Cluster, cid)
            last = ((c.autoscale or {}).get(role) or {}).get("last") if c is not None else None
            if last and _same(Decision.from_dict(last), d):
                return
    with env.store.write() as s:
        c = s.get(Cluster, cid)
        if c is not None:
            _store(c, role, d, env.clock() if changed else 0.0)


def _same(a: Decision, b: Decision) -> bool:
    return (a.wanted, a.current, a.action, a.detail) == (b.wanted, b.current, b.action, b.detail)
