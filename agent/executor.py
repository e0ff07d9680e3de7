"""Orders made real: plan → driver, disks, network.

Level-triggered: the latest orders are the full desired state of this node. A
reconcile pass compares them with the domains the driver lists and the files on disk
(``agent.reconcile.plan``), and runs at most one operation per workspace at a time in
a worker pool. Events and new orders wake it early; a periodic pass (``resync_interval_s``)
is the source of truth. What the executor sees and does is what the node reports
(``observe``).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace

from agent.backoff import Backoff, Retries
from agent.disks import WorkspaceFiles, domain_spec
from agent.gate import Refused, TrustGate
from agent.hypervisor import HypervisorWatch
from agent.netsetup import Networking
from agent.reconcile import Action, Want, limit_changes, plan
from agent.staging import Staging
from agent.status import Sight, StatusBoard
from agent.trust import KEPT_OLD_FORMAT, recheck, running_note
from agent.virt.base import (
    PAUSED_IO_ERROR,
    DomainInfo,
    DomainState,
    Driver,
)
from workspace import callctx
from workspace.domain.model import NodeCondition, Observation, Order
from workspace.domain.states import Desired, Observed
from workspace.errors import DriverError, WorkspaceError
from workspace.log import about, named

log = logging.getLogger("agent")


# What a workspace busy waiting for its guest (a stop, a reboot) gets at once, not after
# the wait: a forced stop, and its removal (`ws destroy`).
_UNPLUGS = (Action.FORCE_STOP, Action.REMOVE)

OP_RETRY = Backoff(2.0, 60.0)
DEFAULT_STOP_TIMEOUT_S = 60
# A workspace's agent state (agent.json): the trust verdict word it runs under, and the
# reboots carried out (the highest Order.reboot_count acted on).
TRUST_KEY = "trust"
REBOOTS_KEY = "reboot_count"
# What a workspace cannot do while one of its networks is not ready on the node.
NEEDS_NETWORK = frozenset({Action.CREATE, Action.START, Action.RESUME})
# What boots an image, after the trust gate's check (``_trust_refused``).
BOOTS = frozenset({Action.CREATE, Action.START})
# What a workspace whose guest the hypervisor paused after a failed disk write says.
IO_PAUSED = (
    "paused by the hypervisor: a write to its disk failed (the node's disk is full?); "
    "resumed again every {every} s at most until its writes succeed"
)
# What keeps a workspace busy besides an Action: its running VM checked against a new
# trust policy (``_recheck_running``).
RECHECK = "trust-recheck"


class Executor:
    def __init__(
        self,
        driver: Driver,
        files: WorkspaceFiles,
        net: Networking,
        staging: Staging,
        gate: TrustGate,
        report: Callable[[list[str]], None],
        max_parallel_ops: int,
        resync_interval_s: float,
        stop: threading.Event,
        conditions_changed: Callable[[], None] = lambda: None,
    ) -> None:
        self.driver = driver
        self.files = files
        self.net = net
        self.staging = staging
        self.gate = gate
        self.report = report  # send an incremental report for these workspaces
        self.conditions_changed = conditions_changed  # send a full report soon
        self.resync_interval_s = resync_interval_s
        self.stop = stop
        self.wake = threading.Event()
        self.pool = ThreadPoolExecutor(max_parallel_ops, thread_name_prefix="op")
        self._lock = threading.RLock()
        self._desired: dict[str, Order] | None = None  # None: no orders yet
        # Each workspace's name as its orders last gave it, for the log lines of its
        # removal too (the orders no longer name it then; ``who``); kept while the node
        # has anything of it.
        self._names: dict[str, str] = {}
        self.status = StatusBoard()
        # Workspaces with an operation under way, and which.
        self._busy: dict[str, Action | str] = {}
        # Of those, the ones whose plug was pulled while a stop or reboot waited.
        self._unplugged: set[str] = set()
        self._failures = Retries(OP_RETRY)
        # Failed removals, apart: a removal does not wait out another operation's backoff
        # (`ws destroy` of a workspace whose start failed goes at once), only its own.
        self._removals = Retries(OP_RETRY)
        # Resumes of guests the hypervisor paused after a failed disk write (``_io_wait``).
        self._io_paused = Retries(OP_RETRY)
        # Boots the trust policy refused: workspace → (the policy's version, what was
        # wanted). Not tried again until either changes (``_trust_refused``): the same
        # policy gives the same verdict, and each try would only add a deny to the audit.
        self._refused: dict[str, tuple[int, Want]] = {}
        self._last_want: dict[str, Want] = {}
        self._last_actual: dict[str, DomainState] = {}
        # Running workspaces noted as not isolated (``_note_unisolated``).
        self._unisolated: set[str] = set()
        # The node's conditions as the last pass found them (None: no pass yet).
        self._conditions: tuple[NodeCondition, ...] | None = None
        # Whether the hypervisor answers (a condition of the node when it does not).
        self.hypervisor = HypervisorWatch(conditions_changed)
        # Operations run, by (action, "ok" | "error") (agent/metrics.py reads them).
        self.operations: dict[tuple[str, str], int] = {}
        # The trust policy version whose re-check of the running VMs has not completed
        # yet (None: none pending), and whether a re-check runs now (``recheck_running``).
        self._recheck_due: int | None = None
        self._rechecking = False
        # Guests the last pass found paused by the hypervisor after a failed disk write.
        self._io_noted: set[str] = set()
        # Why the last pass could not sync the node's networking ("": it could).
        self._net_failure = ""
        driver.set_event_callback(self._on_event)

    def close(self) -> None:
        self.wake.set()
        self.pool.shutdown(wait=True, cancel_futures=True)

    # -- what the node should have, and what it has ------------------------------------

    def take(self, orders: Sequence[Order]) -> None:
        """The node's new desired state (every workspace it should have)."""
        with self._lock:
            self._desired = {o.workspace_id: o for o in orders}
            self._names.update((o.workspace_id, o.name) for o in orders if o.name)
        self.wake.set()

    def who(self, wid: str) -> str:
        """How the log names workspace ``wid``: "ID (NAME)" (its id alone if it was never
        in this agent's orders)."""
        with self._lock:
            return named(wid, self._names.get(wid, ""))

    def _note(self, level: int, wid: str, what: str, *args: object) -> None:
        """A log line about workspace ``wid``: named in the message and in the record."""
        log.log(level, "workspace %s: " + what, self.who(wid), *args, extra=about(wid))

    def orders(self) -> dict[str, Order]:
        """The latest orders by workspace id (empty before the first ones)."""
        with self._lock:
            return dict(self._desired or {})

    def idle(self) -> bool:
        """True when no operation (nor trust re-check) runs."""
        with self._lock:
            return not self._busy and not self._rechecking

    def seen(self, workspace_id: str) -> DomainState | None:
        """The domain state the last reconcile pass found (None: no domain, or no pass)."""
        with self._lock:
            return self._last_actual.get(workspace_id)

    def observe(self, ids: Sequence[str] | None = None) -> list[Observation]:
        """What to report of ``ids``, or of every workspace the node knows of (None):
        each with the reboots carried out (``applied_reboots``); those the node cannot
        tell now are left out (``sight`` names them)."""
        return self.sight(ids).observations

    def sight(self, ids: Sequence[str] | None = None) -> Sight:
        """``observe``, with the workspaces the node cannot tell now (the hypervisor does
        not answer): a report names them with no state, and the service keeps theirs."""
        # Never call the driver while holding our lock: drivers call back into us.
        listed = self._list_domains()
        domains = None if listed is None else {d.workspace_id: d for d in listed}
        with self._lock:
            known = set(self._last_actual)
        if domains is None:
            known |= self.files.existing()
        sight = self.status.observe(ids, domains, self.orders(), known)
        return replace(
            sight,
            observations=[
                replace(o, applied_reboot_count=self.applied_reboots(o.workspace_id))
                for o in sight.observations
            ],
        )

    def _list_domains(self) -> list[DomainInfo] | None:
        """The driver's domains; None when the hypervisor does not answer (said once by
        ``hypervisor``, and a condition of the node until it answers again)."""
        try:
            domains = self.driver.list_domains()
        except DriverError as exc:
            self.hypervisor.failed(exc.message)
            return None
        self.hypervisor.answered()
        return domains

    def conditions(self) -> tuple[NodeCondition, ...] | None:
        """What keeps the node from serving some workspaces, as the last reconcile pass
        found it, and ``hypervisor-unreachable`` while the hypervisor does not answer
        (None before the first pass: not checked yet)."""
        with self._lock:
            found = self._conditions
        return None if found is None else (*self.hypervisor.conditions(), *found)

    def applied_reboots(self, workspace_id: str) -> int:
        """The reboots carried out of those the orders asked for: the highest
        ``Order.reboot_count`` acted on (a create takes its order's), kept in the
        workspace's agent state (agent.json) across agent restarts; 0 without one."""
        count = self.files.load_state(workspace_id).get(REBOOTS_KEY, 0)
        return count if isinstance(count, int) else 0

    def _on_event(self, workspace_id: str) -> None:
        with self._lock:
            if workspace_id in self._busy:
                return  # the running operation reports when it is done
        self.wake.set()
        try:
            self.pool.submit(self.report, [workspace_id])
        except RuntimeError:
            # The agent is stopping (``close`` shut the pool): a hypervisor event that
            # comes now has nobody to report to; the next agent's first pass reports
            # the workspace's state.
            return

    # -- reconciling -------------------------------------------------------------------

    def run(self) -> None:
        """The reconcile loop (a thread of its own), until ``stop`` is set."""
        while not self.stop.is_set():
            self.wake.wait(self.resync_interval_s)
            self.wake.clear()
            if self.stop.is_set():
                return
            try:
                self.reconcile_once()
            except Exception:
                log.exception("reconcile pass failed")

    def reconcile_once(self) -> None:
        with self._lock:
            if self._desired is None:
                return  # never act before the service said what should exist
            desired = dict(self._desired)
            busy = dict(self._busy)
        broken = self._sync_network(desired)
        held = self.net.holds()
        listed = self._list_domains()
        self._check_conditions()
        if listed is None:
            # Nothing can be judged, nor done, without the hypervisor: the workspaces are
            # left as they were (and reported unknown) until it answers again.
            return
        self._start_recheck()  # one the trust policy still asks for (e.g. after an outage)
        try:
            self.driver.resync_host()
        except WorkspaceError as exc:
            log.error("the node's network limits could not be checked or restored: %s", exc.message)
        domains = listed
        actual = {d.workspace_id: d.state for d in domains}
        self._reattach(desired, actual)
        leftovers = self.files.existing()
        present = set(actual) | leftovers | set(busy)
        with self._lock:  # the names of workspaces gone from the orders and the node
            keep = present | set(self._desired or ())
            self._names = {w: n for w, n in self._names.items() if w in keep}
        self.staging.sync_pins(desired, present)
        self._forget_failed(desired, present)
        self.staging.kick_prefetch()
        wants = {wid: Want(o.desired, o.reboot_count, o.force_stop) for wid, o in desired.items()}
        applied = {wid: self.applied_reboots(wid) for wid in actual}
        for wid, want in wants.items():
            if self._last_want.get(wid) != want:
                self.status.drop_note(wid)  # the owner asked for something new
        actions = plan(wants, actual, leftovers, applied)
        self._io_resumed({d.workspace_id for d in domains if d.reason == PAUSED_IO_ERROR})
        settled = {w for w, st in actual.items() if st is not DomainState.OTHER}
        self._clear_stale_failures((set(desired) & settled) - set(actions) - set(busy))
        limits = {wid: o.limits for wid, o in desired.items()}
        have = {d.workspace_id: d.limits for d in domains}
        for wid in limit_changes(limits, have, set(actions)):
            actions[wid] = Action.LIMITS  # e.g. after `ws update --cpu-percent`
        for wid, action in actions.items():
            if wid in busy:
                if action in _UNPLUGS and busy[wid] in (Action.STOP, Action.REBOOT):
                    self._pull_plug(wid)
                continue
            if action in NEEDS_NETWORK and self._network_broken(desired.get(wid), broken):
                continue
            if action in NEEDS_NETWORK and self._held(wid, held):
                continue
            if action is Action.RESUME and self._io_wait(wid):
                continue
            note = self._repair_note(wid, action, wants.get(wid))
            if self._retries(action).waiting(wid):
                continue
            if action in BOOTS and self._trust_refused(wid, wants[wid]):
                continue
            with self._lock:
                if wid in self._busy:
                    continue  # busy since the pass began (a trust re-check): next pass
                self._busy[wid] = action
            self.pool.submit(self._run_for, wid, action, desired.get(wid), note)
        self._note_unisolated(held, actual, busy)
        with self._lock:
            self._refused = {w: r for w, r in self._refused.items() if w in desired}
            self._last_want = wants
            self._last_actual = actual

    def _sync_network(self, desired: Mapping[str, Order]) -> Mapping[str, str]:
        """``Networking.sync``; the networks it could not make ready (name → why). When
        it fails as a whole (the packet filter could not be applied) every network in use
        is taken as not ready: what needs one waits, the rest of the pass goes on."""
        try:
            broken = self.net.sync(list(desired.values()))
        except Exception as exc:
            why = exc.message if isinstance(exc, WorkspaceError) else f"{exc}"
            if why != self._net_failure:
                log.error("the node's networking could not be set up: %s", why, exc_info=True)
            self._net_failure = why
            return {n.network: why for o in desired.values() for n in o.nics}
        if self._net_failure:
            log.info("the node's networking is set up again")
            self._net_failure = ""
        return broken

    def _reattach(self, desired: Mapping[str, Order], actual: Mapping[str, DomainState]) -> None:
        """``Networking.reattach`` for the desired workspaces whose domain runs (or is
        paused: its taps exist) with no operation under way (a start attaches its own)."""
        with self._lock:
            busy = set(self._busy)
        live = (DomainState.RUNNING, DomainState.PAUSED)
        running = [
            order
            for wid, order in desired.items()
            if order.nics and actual.get(wid) in live and wid not in busy
        ]
        try:
            self.net.reattach(running)
        except Exception:
            log.exception("the taps of the running workspaces could not be checked")

    def _clear_stale_failures(self, idle: set[str]) -> None:
        """A desired workspace with nothing to do (not busy, no action planned, its
        domain running, paused or shut off) that still shows FAILED: what failed is no
        longer needed (a start that failed, then the owner stopped it; a network that
        held a start, then a stop). It shows its domain as it is again, and the
        failure's backoff is forgotten."""
        for wid in sorted(idle):
            with self._lock:
                if wid in self._busy:
                    continue
            if self.status.clear_failed(wid):
                self._failures.forget(wid)
                self._note(logging.INFO, wid, "what had failed is no longer asked; cleared")
                self.pool.submit(self.report, [wid])

    def _io_wait(self, wid: str) -> bool:
        """For a guest the hypervisor paused after a failed disk write (QEMU's default on
        a full filesystem): True while its next resume must wait. Each resume tries the
        write again and, while the disk stays full, is paused again at once: resumed at
        every pass (one follows each operation), it looped as fast as the node could go,
        a log line each time, and the workspace never said why. Now the resumes follow
        the failures' backoff, and the workspace says why it is paused."""
        with self._lock:
            if wid not in self._io_noted:
                return False  # not paused by a failed write (``_io_resumed``)
        self.status.note(wid, self._io_note())  # again each time: a new ask drops notes
        if self._io_paused.waiting(wid):
            return True
        count, _ = self._io_paused.failed(wid)
        if count == 1:
            log.error("workspace %s: %s", self.who(wid), self._io_note(), extra=about(wid))
            self.pool.submit(self.report, [wid])
        return False

    def _io_note(self) -> str:
        return IO_PAUSED.format(every=f"{self._io_paused.backoff.max_s:.0f}")

    def _io_resumed(self, paused: set[str]) -> None:
        """Keep which guests the hypervisor paused after a failed disk write (``paused``,
        from this pass's domains); those that are not so any more had their write
        succeed (or were stopped): their resumes' backoff and note are dropped."""
        with self._lock:
            gone, self._io_noted = self._io_noted - paused, set(paused)
        for wid in sorted(gone):
            self._io_paused.forget(wid)
            if self.status.drop_note_if(wid, self._io_note()):
                self._note(logging.INFO, wid, "no longer paused by a failed disk write")
                self.pool.submit(self.report, [wid])

    def _check_conditions(self) -> None:
        """Keep the node's conditions from this pass; a change is reported at once."""
        found = tuple(self.net.conditions())
        with self._lock:
            changed, self._conditions = found != self._conditions, found
        if changed:
            self.conditions_changed()

    def _held(self, wid: str, held: Mapping[str, str]) -> bool:
        """True (and the workspace reported FAILED, saying why) if the node cannot
        enforce its connectivity policy now; it is tried again on the next pass."""
        why = held.get(wid, "")
        if not why:
            return False
        if self.status.get(wid) != (Observed.FAILED, why):
            self.status.set(wid, Observed.FAILED, why)
            self.pool.submit(self.report, [wid])
        return True

    def _note_unisolated(
        self,
        held: Mapping[str, str],
        actual: Mapping[str, DomainState],
        busy: Mapping[str, Action | str],
    ) -> None:
        """Running workspaces whose policy stopped holding (br_netfilter gone under
        them) say so on themselves, until it holds again."""
        for wid in sorted((set(held) & set(actual)) - set(busy)):
            self.status.note(wid, held[wid])  # again each pass: a new ask drops notes
            if wid not in self._unisolated:
                self._unisolated.add(wid)
                self.pool.submit(self.report, [wid])
        for wid in sorted(self._unisolated - set(held)):
            self._unisolated.discard(wid)
            self.status.drop_note(wid)
            self.pool.submit(self.report, [wid])

    def _pull_plug(self, wid: str) -> None:
        """A forced stop (or the workspace's removal) asked while a stop or reboot still
        waits for the guest: power the domain off now (once), which ends that wait."""
        with self._lock:
            if wid in self._unplugged:
                return
            self._unplugged.add(wid)
        self._note(logging.INFO, wid, "forced stop while the guest was waited for; powering off")
        try:
            self.driver.destroy(wid)
        except DriverError as exc:
            self._note(logging.WARNING, wid, "forced power-off failed: %s", exc.message)

    def _network_broken(self, order: Order | None, broken: Mapping[str, str]) -> bool:
        """True (and the workspace reported FAILED, saying why) if ``order`` has a NIC on
        a network the node could not make ready; it is tried again on the next pass."""
        if order is None or not broken:
            return False
        why = next(
            (
                f"network {n.network}: {broken[n.network]}"
                for n in order.nics
                if n.network in broken
            ),
            "",
        )
        if not why:
            return False
        if self.status.get(order.workspace_id) != (Observed.FAILED, why):
            self.status.set(order.workspace_id, Observed.FAILED, why)
            self.pool.submit(self.report, [order.workspace_id])
        return True

    def _forget_failed(self, desired: Mapping[str, Order], present: set[str]) -> None:
        """A create that failed before anything reached the host (refused by the trust
        policy, a blob that would not fetch) leaves only its FAILED status: once the
        workspace is no longer desired, report it ABSENT so the service can let it go."""
        gone = self.status.release_failed(set(desired) | present)
        for wid in gone:
            self._failures.forget(wid)
            self._removals.forget(wid)
        if gone:
            self.pool.submit(self._report_gone, gone)

    def _report_gone(self, gone: list[str]) -> None:
        """Report ``gone`` ABSENT, then forget them: a full report that no longer names
        them says the same to the service (a workspace it ends that is missing from a
        full report is gone), and the node does not carry them for ever."""
        try:
            self.report(gone)
        finally:
            self.status.drop_absent(gone)

    def _trust_refused(self, wid: str, want: Want) -> bool:
        """True if the trust policy refused to boot ``wid`` under the policy version held
        now, for what is still wanted: not tried again (a new policy, or a new ask, is)."""
        with self._lock:
            refused = self._refused.get(wid)
            if refused is None:
                return False
            if refused == (self.gate.version, want):
                return True
            del self._refused[wid]
        self._failures.forget(wid)  # a new verdict may come: try at once
        return False

    def _repair_note(self, wid: str, action: Action, want: Want | None) -> str:
        """What to say on the workspace (and log now) when the host drifted from a desired
        state it had reached ("": it did not). The note is shown once the repair worked
        (``_run``): until then the reports show the domain as it is."""
        if want is None or self._last_want.get(wid) != want:
            return ""
        before = self._last_actual.get(wid)
        when = time.strftime("%H:%M:%S")
        if action is Action.START and before in (DomainState.RUNNING, DomainState.PAUSED):
            found, done = f"domain was found shut off at {when} (not by us)", "started again"
        elif action is Action.CREATE and before is not None:
            found, done = f"domain had disappeared at {when} (not by us)", "recreated"
        else:
            return ""
        self._note(logging.WARNING, wid, "%s; repairing", found)
        return f"{found}; {done}"

    # -- operations --------------------------------------------------------------------

    def _run_for(self, wid: str, action: Action, order: Order | None, note: str) -> None:
        """``_run`` with the workspace's id in every log line of the operation (the driver's,
        the trust gate's: JSON logs carry it)."""
        with callctx.bound(workspace=wid):
            self._run(wid, action, order, note)

    def _run(self, wid: str, action: Action, order: Order | None, note: str = "") -> None:
        """Carry out ``action``; ``note``: what the workspace shows once it worked (a
        repair's, ``_repair_note``)."""
        who = self.who(wid)
        try:
            log.info("workspace %s: %s", who, action.value, extra={"workspace": wid})
            self._execute(wid, action, order)
            self._failures.forget(wid)
            self._removals.forget(wid)
            if note:
                self.status.note(wid, note)
            self.status.clear(wid)
            self._count(action, "ok")
        except Exception as exc:
            self._count(action, "error")
            reason = exc.message if isinstance(exc, WorkspaceError) else f"{exc}"
            count, delay = self._retries(action).failed(wid)
            log.error(
                "workspace %s: %s failed (attempt %d, retry in %.0f s): %s",
                who,
                action.value,
                count,
                delay,
                reason,
                extra={"workspace": wid},
            )
            if action is Action.LIMITS:
                # The VM itself is fine: say so on it, retry with the backoff.
                self.status.note(wid, f"its new limits could not be applied: {reason}")
            elif action in BOOTS and isinstance(exc, Refused) and order is not None:
                want = Want(order.desired, order.reboot_count, order.force_stop)
                with self._lock:
                    self._refused[wid] = (self.gate.version, want)
                self.status.set(
                    wid,
                    Observed.FAILED,
                    f"{action.value} failed: {reason} (not tried again until the trust "
                    "policy changes)",
                )
            else:
                self.status.set(wid, Observed.FAILED, f"{action.value} failed: {reason}")
            if not isinstance(exc, WorkspaceError):
                log.debug("traceback", exc_info=True)
        finally:
            with self._lock:
                self._busy.pop(wid, None)
                self._unplugged.discard(wid)
            self.report([wid])
            self.wake.set()

    def _retries(self, action: Action) -> Retries:
        """The backoff ``action`` waits out after it failed: its own for a removal."""
        return self._removals if action is Action.REMOVE else self._failures

    def _count(self, action: Action, result: str) -> None:
        with self._lock:
            key = (action.value, result)
            self.operations[key] = self.operations.get(key, 0) + 1

    def _set_status(self, wid: str, state: Observed) -> None:
        self.status.set(wid, state)
        self.report([wid])

    def _execute(self, wid: str, action: Action, order: Order | None) -> None:
        d = self.driver
        if action is Action.CREATE:
            assert order is not None
            # Destroyed while it waited for a worker, nothing of it exists and the service
            # gave its address back: said PROPAGATING, then made only if still asked.
            self.status.set(wid, Observed.PROPAGATING)
            latest = self.orders().get(wid)
            if latest is None:
                log.info("workspace %s: no longer asked for; not created", self.who(wid))
                return
            self.create(latest)
        elif action is Action.START:
            if order is not None:  # signatures only: the disks exist already
                self._booted_under(wid, self.gate.check(order, "start"))
                # The service resizes only stopped workspaces: the size takes effect here.
                if d.set_size(wid, order.cpus, order.memory_mib):
                    log.info(
                        "workspace %s: %d vCPU(s) and %d MiB from this start on",
                        self.who(wid),
                        order.cpus,
                        order.memory_mib,
                    )
            self._set_status(wid, Observed.STARTING)
            d.start(wid)
            if order is not None:  # a fresh boot carries out the reboots asked before it
                self.files.update_state(wid, **{REBOOTS_KEY: order.reboot_count})
        elif action is Action.STOP:
            assert order is not None
            self._set_status(wid, Observed.STOPPING)
            timeout_s = order.stop_timeout_s or DEFAULT_STOP_TIMEOUT_S
            if not d.shutdown(wid, float(timeout_s)):
                log.info(
                    "workspace %s did not power off within %d s; forcing", self.who(wid), timeout_s
                )
                d.destroy(wid)
                # Said on the workspace (its reason, its state event) until it is asked
                # something new: an owner waiting 60 s should learn why.
                self.status.note(
                    wid, f"did not power off within {timeout_s} s of the shutdown request: "
                    "powered off"
                )  # fmt: skip
        elif action is Action.FORCE_STOP:
            self._set_status(wid, Observed.STOPPING)
            d.destroy(wid)
        elif action is Action.PAUSE:
            d.suspend(wid)
        elif action is Action.RESUME:
            d.resume(wid)
        elif action is Action.REBOOT:
            assert order is not None
            timeout_s = order.stop_timeout_s or DEFAULT_STOP_TIMEOUT_S
            if not d.reboot(wid, float(timeout_s)):
                log.info(
                    "workspace %s did not reboot within %d s; resetting", self.who(wid), timeout_s
                )
                d.reset(wid)
            # Reported by _run, once the reboot is done.
            self.files.update_state(wid, **{REBOOTS_KEY: order.reboot_count})
        elif action is Action.LIMITS:
            assert order is not None
            d.set_limits(wid, order.limits)
            self.status.drop_note(wid)  # a failure's note, if an earlier try failed
            log.info("workspace %s: limits now %s", self.who(wid), order.limits.as_dict())
        elif action is Action.REMOVE:
            self._set_status(wid, Observed.STOPPING)
            d.undefine(wid)
            self.files.remove(wid)
            self.staging.release(wid)
            self.status.set(wid, Observed.ABSENT)
            self.report([wid])

    def create(self, order: Order) -> None:
        """Check, stage, prepare disks, define and (unless desired STOPPED) start ``order``.

        Raises what stopped it (PermissionDenied when the trust policy refuses it)."""
        wid = order.workspace_id
        self._set_status(wid, Observed.PROPAGATING)
        word = self.gate.check(order, "boot")
        paths = self.staging.ensure(order)
        # Its disks were made before when its state was saved (below): its domain went
        # away behind the agent's back, or a create failed after its disks. They are
        # kept, and what its owner wrote with them (they were made anew, empty).
        made = REBOOTS_KEY in self.files.load_state(wid)
        if made:
            log.info("workspace %s: its disks were made before; kept", self.who(wid))
        disks = self.files.prepare(order, paths, keep=made)
        spec = domain_spec(order, disks, paths, self.files.make_console_log(wid))
        # A fresh boot carries out every reboot asked for so far.
        self.files.save_state(wid, {REBOOTS_KEY: order.reboot_count, TRUST_KEY: word})
        self._set_status(wid, Observed.STARTING)
        self.driver.define(spec)
        if order.desired in (Desired.RUNNING, Desired.PAUSED):
            self.driver.start(wid)
        log.info(
            "workspace %s (%s) defined%s",
            wid,
            order.name,
            "" if order.desired == Desired.STOPPED else " and started",
        )

    # -- trust: VMs running when a new policy arrives ----------------------------------

    def _booted_under(self, wid: str, word: str) -> None:
        """Keep the trust verdict ``wid`` runs under ("allow", "warn"; "": no policy)."""
        self.files.update_state(wid, **{TRUST_KEY: word})

    def recheck_running(self) -> None:
        """Check the running VMs again (in the pool): a new policy version arrived. The
        re-check stays due until one completes: one that could not (the hypervisor did
        not answer, a workspace failed or was busy) is tried again by the next pass."""
        with self._lock:
            self._recheck_due = self.gate.version
        self._start_recheck()

    def _start_recheck(self) -> None:
        with self._lock:
            if self._recheck_due is None or self._rechecking:
                return
            self._rechecking = True
        self.pool.submit(self._recheck_guarded)

    def _recheck_guarded(self) -> None:
        with self._lock:
            version = self._recheck_due
        done = False
        try:
            done = self._recheck_running()
        except Exception:
            log.exception("re-check of the running VMs under trust policy %s failed", version)
        finally:
            with self._lock:
                self._rechecking = False
                if done and self._recheck_due == version:
                    self._recheck_due = None
                newer = self._recheck_due not in (None, version)
            if not done:
                log.debug("re-check under trust policy version %s still due", version)
        if newer:
            self._start_recheck()  # a newer policy came while this one was checked

    def _recheck_running(self) -> bool:
        """Under a new policy, the VMs running an image no longer trusted are reported
        (a note on the workspace and an audit entry), not killed unless the site says so.
        True when every running VM was checked."""
        desired = self.orders()
        listed = self._list_domains()
        if listed is None:
            return False  # the hypervisor does not answer: the next pass tries again
        running = {
            d.workspace_id for d in listed if d.state in (DomainState.RUNNING, DomainState.PAUSED)
        }
        done = True
        for wid in sorted(running & set(desired)):
            with self._lock:
                if wid in self._busy:
                    done = False  # an operation runs (a removal, a reboot): next time
                    continue
                self._busy[wid] = RECHECK
            try:
                with callctx.bound(workspace=wid):
                    self._recheck_one(wid, desired[wid])
            except Exception as exc:
                done = False
                reason = exc.message if isinstance(exc, WorkspaceError) else f"{exc}"
                log.error(
                    "workspace %s: re-check under the new trust policy failed (tried again): %s",
                    wid,
                    reason,
                    extra={"workspace": wid},
                )
            finally:
                with self._lock:
                    self._busy.pop(wid, None)
        return done

    def _recheck_one(self, wid: str, order: Order) -> None:
        verdict = self.gate.verdict(order)
        if verdict is None:
            return
        was = self.files.load_state(wid).get(TRUST_KEY)
        # Booted trusted, under the rules of its day: an old-format signature alone
        # stops nothing. Booted "warn", it was never admitted for that signature.
        verdict, word = recheck(order.image, verdict, was)
        stop = self.gate.stop_running_on_revoke and not verdict.allowed
        # Nothing new: the verdict it booted (or was last checked) under. An agent
        # restarting gets the policy as new, and the VMs it finds running have not
        # lost any trust they had.
        if verdict.trusted or (word == was and not stop):
            self._booted_under(wid, word)
            return
        self.gate.record("running", order, verdict)
        note = running_note(order.image, verdict, stop, word == KEPT_OLD_FORMAT)
        log.warning("workspace %s: %s", self.who(wid), note)
        if stop:
            # It stays off: starting it again needs a verdict that allows it.
            self.driver.destroy(wid)
        self.status.note(wid, note)
        # Kept once it was said (and done): a re-check that failed before says it again.
        self._booted_under(wid, word)
        self.report([wid])
