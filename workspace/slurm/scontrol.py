"""The few scontrol calls ws-slurm makes, each optional: without scontrol (or when it
fails) ws-slurm goes on with what it knows and says so in its log.

* ``scontrol show hostnames EXPR``: the controller's own expansion of a hostlist;
* ``scontrol show node -o NODES``: the nodes' features (``AvailableFeatures``);
* ``scontrol update NodeName=X,Y NodeAddr=IPX,IPY NodeHostname=X,Y``: where new nodes are
  (a group's nodes of one name prefix and width in one call, in their numbers' order,
  which slurmctld pairs the lists in: ``address_batches``);
* ``scontrol update NodeName=NODES State=DOWN Reason=...``: a node that cannot run (its
  resume was refused, or it failed): the admin sees why in ``sinfo -R``, and its job is
  requeued at once;
* ``scontrol update NodeName=NODES State=POWER_DOWN``: a DOWN node whose resume was
  refused stops POWERING_UP now (else Slurm waits for ResumeTimeout and overwrites the
  reason with "ResumeTimeout reached");
* ``scontrol update NodeName=NODES State=POWER_DOWN_FORCE``: the other nodes of that job
  (not DOWN, not at fault). Plain POWER_DOWN only marks a node to be powered down once it
  is idle, and a POWERING_UP node is not idle: it stayed POWERING_UP until ResumeTimeout
  (seen with Slurm 22.05). POWER_DOWN_FORCE powers it down now; its job was requeued
  already by the DOWN node, so there is nothing left on it to cancel;
* ``scontrol show node -o NODES``: which nodes Slurm has powered down (``State=...
  +POWERED_DOWN``): a workspace left on such a node (a suspend that failed) is destroyed;
* ``scontrol show config`` and ``scontrol show partition -o`` (``check`` only): each
  node's ResumeTimeout, which ``replace_wait_s`` must stay below, and SlurmUser, who
  must be able to open ``lock_file``.

Each call is given ``TIMEOUT_S``, an update is tried up to three times, and one run spends
at most ``RUN_BUDGET_S`` in scontrol calls that failed (timed out, not run, exit non-zero) and
the pauses between tries (then it runs no more): slurmctld kills its power programs after
the longest ResumeTimeout or SuspendTimeout (from 23.02), and a slurmctld that does not
answer would otherwise cost every node of a big job a minute. Calls that are answered do
not count: a resume of many jobs (an update each) is told every address however long
slurmctld, busy starting them, takes to answer each.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import subprocess
import time
from collections.abc import Collection, Iterable, Mapping, Sequence

from workspace.slurm.hostlist import compress, expand_all

log = logging.getLogger("ws-slurm")
TIMEOUT_S = 20.0
RUN_BUDGET_S = 60.0  # one run's time in failed scontrol calls, retries' pauses included
RETRY_PAUSE_S = 1.0
ADDRESS_CHUNK = 200  # nodes per NodeAddr update (one argument of ~20 characters each)
REASON_PREFIX = "ws: "
# ws-slurm's own limit, in characters: Slurm sets none (scontrol passes Reason= whole),
# but a reason is for people reading ``sinfo -R`` and ``scontrol show node``.
MAX_REASON = 200
CUT_MARK = " ..."  # where a reason over MAX_REASON was cut (``fit_reason``)
MAX_LOGGED_ARG = 120
NOT_FOUND = re.compile(r"^Node (\S+) not found")  # scontrol show node of an unknown node
# Where a bare ``scontrol`` is looked for when the environment has no PATH: slurmctld runs
# its programs with SLURM_CONF (and SLURM_JOB_ID, SLURM_RESUME_FILE) alone, and Python
# would then look in /bin:/usr/bin only, missing a Slurm installed under /usr/local (its
# own default prefix). The default PATH of Debian's login shells.
NO_PATH_SEARCH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


def search_path() -> str:
    """The directories a bare command is looked up in: $PATH, or ``NO_PATH_SEARCH``
    when there is none (under slurmctld)."""
    path = os.environ.get("PATH")
    return NO_PATH_SEARCH if path is None else path


def find(command: str, path: str | None = None) -> str | None:
    """The file ``command`` runs (a name with a ``/`` as it is), or None."""
    return shutil.which(command, path=search_path() if path is None else path)


def reason_text(text: str) -> str:
    """A node reason as ws-slurm sets it: ``ws: ...``, one line, at most 200 characters
    (``sinfo -R`` shows the first 20, ``scontrol show node`` all of it): ``fit_reason``."""
    return REASON_PREFIX + fit_reason(" ".join(text.split()), MAX_REASON - len(REASON_PREFIX))


def fit_reason(text: str, limit: int) -> str:
    """``text`` in ``limit`` characters: whole if it fits, else cut at a boundary: after
    its last clause (``; ``: one cause of several, a replica's) in the second half of
    what fits, else after its last word (within one only when it is longer than half of
    that), `` ...`` marking the cut. Reasons say their cause first (``reasons``): what
    is cut is detail (an address, a hint), which the log has whole. (Until session 44 a
    reason was cut at character 197 whatever it was: ``... 127.0.0.1:2: Faile...``.)"""
    if len(text) <= limit:
        return text
    room = limit - len(CUT_MARK)
    head = text[: room + 1]
    at = head.rfind("; ")
    if at < room // 2:
        at = head.rfind(" ")
    kept = text[:at] if at >= room // 2 else text[:room]  # else a word longer than half
    return kept.rstrip(" ,;:") + CUT_MARK


# A node name as Slurm's hostlist reads it: a prefix, then a numeric suffix (up to 9
# digits here: longer ones are not taken apart the same way by every version).
_NUMBERED = re.compile(r"(.*\D|)(\d{1,9})")


def address_batches(nodes: Iterable[str]) -> list[list[str]]:
    """The nodes in groups that one ``NodeName=a,b NodeAddr=x,y`` update may name, each in
    the order slurmctld pairs the lists in. Slurm 22.05.0 to 22.05.7 sort the NodeName
    list (and drop duplicates) before pairing it with NodeAddr's, which they keep as
    given (SchedMD bug 15731, fixed in 22.05.8): ``NodeName=gpu1,cpu1 NodeAddr=x,y``
    gave cpu1 the address x. A group holds nodes of one prefix and one suffix width,
    in their number's order: the order every version keeps; a name without a numeric
    suffix is a group of its own."""
    groups: dict[tuple[str, int], list[tuple[int, str]]] = {}
    alone: list[list[str]] = []
    for node in dict.fromkeys(nodes):
        m = _NUMBERED.fullmatch(node)
        if m is None:
            alone.append([node])
        else:
            groups.setdefault((m[1], len(m[2])), []).append((int(m[2]), node))
    return [[n for _, n in sorted(g)] for g in groups.values()] + alone


class Scontrol:
    def __init__(self, command: str = "scontrol", budget_s: float = RUN_BUDGET_S) -> None:
        self.command = command
        self.budget_s = budget_s
        self.spent_s = 0.0  # in failed scontrol calls (and between tries) so far
        self._said_missing = False
        self._said_spent = False
        self._said: set[str] = set()  # the lines of an answer that are no answer, logged
        self._config: list[str | None] = []  # ``show config``'s answer, once asked

    def left_s(self) -> float:
        """What this run may still spend in scontrol calls that fail."""
        return self.budget_s - self.spent_s

    @property
    def available(self) -> bool:
        return find(self.command) is not None

    def missing(self) -> str:
        """Why scontrol cannot be run (for the log): where it was looked for."""
        if "/" in self.command:
            return f"{self.command} is not an executable file"
        where = os.environ.get("PATH")
        return (
            f"{self.command} is not on PATH ({where})"
            if where is not None
            else f"{self.command} is not in {NO_PATH_SEARCH} (no PATH: as slurmctld runs "
            'ws-slurm); set scontrol = "/full/path/scontrol" in the ws-slurm config'
        )

    def _run(self, *args: str, partial: str = "", asked: Collection[str] = ()) -> str | None:
        """scontrol's stdout, or None when it failed. ``partial``: a failed run whose
        stdout still has lines starting so is an answer for those (``show node`` of a
        list with a node slurmctld does not know prints the others, then exits 1), and
        one whose stdout is only ``Node X not found`` lines, each of a node ``asked``, is
        an answer too: slurmctld knows none of them (not "scontrol could not be asked")."""
        command = find(self.command)
        if command is None:
            if not self._said_missing:  # once a run: its hostnames, features, updates
                log.warning("scontrol %s: %s", _shown(args), self.missing())
                self._said_missing = True
            return None
        if self.left_s() <= 0:
            if not self._said_spent:  # once a run
                log.warning(
                    "scontrol %s: not run: this run has spent its %g s for scontrol in "
                    "calls that failed (slurmctld away or too slow); no more scontrol "
                    "calls in it",
                    _shown(args),
                    self.budget_s,
                )
                self._said_spent = True
            return None
        start = time.monotonic()
        try:
            proc = subprocess.run(
                [command, *args],
                capture_output=True,
                text=True,
                timeout=min(TIMEOUT_S, self.left_s()),
                check=False,
            )
        except (OSError, subprocess.TimeoutExpired) as exc:
            self.spent_s += time.monotonic() - start
            log.warning("scontrol %s: %s", _shown(args), exc)
            return None
        if proc.returncode != 0 and partial and _answered(proc.stdout, partial, asked):
            # ``Node c2 not found`` once a run, not for each look at the nodes (check
            # looks at their states, features and ResumeTimeout).
            rest = [line for line in _not_partial(proc.stdout, partial) if line not in self._said]
            self._said.update(rest)
            if rest:
                said = _cut("; ".join(rest), 4 * MAX_LOGGED_ARG)
                log.warning("scontrol %s: %s", _shown(args), said)
            return proc.stdout
        if proc.returncode != 0:
            self.spent_s += time.monotonic() - start
            log.warning(
                "scontrol %s failed (exit %d): %s",
                _shown(args),
                proc.returncode,
                _cut((proc.stderr or proc.stdout).strip(), 4 * MAX_LOGGED_ARG),
            )
            return None
        return proc.stdout

    def hostnames(self, exprs: Sequence[str]) -> list[str]:
        """Every node of the hostlist arguments: scontrol's reading, else ours. One that
        is not a hostlist is a HostlistError (exit 2) whatever scontrol makes of it:
        Debian's 22.05 scontrol reads ``c[1-3`` as the node ``c]``, exit 0, so a typo
        by hand was a suspend of nothing that succeeded."""
        ours = expand_all(exprs)
        out = self._run("show", "hostnames", ",".join(exprs)) if exprs else None
        if out is not None:
            names = [line.strip() for line in out.splitlines() if line.strip()]
            if names:
                return list(dict.fromkeys(names))
        return ours

    def _show(self, names: Sequence[str]) -> dict[str, dict[str, str]] | None:
        """``scontrol show node -o``: each named node's fields (None: scontrol failed)."""
        # A node slurmctld does not know (gone from slurm.conf) is left out, not a
        # failure that would hide every other node's state.
        out = (
            self._run("show", "node", "-o", compress(names), partial="NodeName=", asked=names)
            if names
            else None
        )
        if out is None:
            return None
        found: dict[str, dict[str, str]] = {}
        for line in out.splitlines():
            fields = _node_fields(line)
            node = fields.get("NodeName", "")
            if node in names:
                found[node] = fields
        return found

    def features(self, nodes: Iterable[str]) -> dict[str, frozenset[str]]:
        """Each node's AvailableFeatures (empty when scontrol cannot tell)."""
        names = list(nodes)
        found: dict[str, frozenset[str]] = {n: frozenset() for n in names}
        for node, fields in (self._show(names) or {}).items():
            raw = fields.get("AvailableFeatures", "")
            if raw and raw != "(null)":
                found[node] = frozenset(f for f in raw.split(",") if f)
        return found

    def not_shown(self, nodes: Iterable[str]) -> list[str]:
        """Those of ``nodes`` scontrol answers ``Node X not found`` for: not in slurm.conf,
        or powered-down cloud nodes hidden (slurm.conf without ``PrivateData=cloud``: then
        every run's cleanup of leftovers cannot see them). Empty when scontrol cannot
        tell (no scontrol, slurmctld away)."""
        names = list(nodes)
        out = self._run("show", "node", "-o", compress(names), partial="Node") if names else None
        missing = {m.group(1) for line in (out or "").splitlines() if (m := NOT_FOUND.match(line))}
        return [n for n in names if n in missing]

    def states(self, nodes: Iterable[str]) -> dict[str, str] | None:
        """Each node's ``State=`` (``IDLE+CLOUD+POWERED_DOWN``); None when scontrol
        cannot tell."""
        shown = self._show(list(nodes))
        if shown is None:
            return None
        return {n: fields.get("State", "") for n, fields in shown.items()}

    def not_cloud(self, nodes: Iterable[str]) -> dict[str, str]:
        """Those of ``nodes`` that are no State=CLOUD nodes, with their ``State=`` (empty
        when scontrol cannot tell): the site's own machines, not ws-slurm's to make."""
        states = self.states(nodes) or {}
        return {n: s for n, s in states.items() if s and "CLOUD" not in s.upper().split("+")}

    def powered_off(self, nodes: Iterable[str]) -> set[str] | None:
        """Those of ``nodes`` Slurm has powered down (``POWERED_DOWN``, not powering up
        again): None when scontrol cannot tell."""
        states = self.states(nodes)
        if states is None:
            return None
        return {n for n, state in states.items() if is_powered_down(state)}

    def already_down(self, nodes: Iterable[str]) -> set[str]:
        """Those of ``nodes`` that are DOWN already (empty when scontrol cannot tell)."""
        states = self.states(nodes) or {}
        return {n for n, state in states.items() if "DOWN" in state.upper().split("+")}

    def resume_timeouts(self, nodes: Iterable[str]) -> dict[str, tuple[int, str]] | None:
        """Each node's ResumeTimeout in seconds and where it is set (``partition p1``,
        ``slurm.conf``); None when scontrol cannot tell. As slurm.conf(5) says: the
        highest of the node's partitions that set one, else the cluster's. A node whose
        timeout is INFINITE (or that scontrol does not show) is left out."""
        shown = self._show(list(nodes))
        config = self.config()
        parts = self._run("show", "partition", "-o")
        if shown is None or config is None or parts is None:
            return None
        cluster: int | None = None
        for line in config.splitlines():
            key, eq, value = line.partition("=")
            if eq and key.strip() == "ResumeTimeout":
                cluster = _seconds(value.split()[0] if value.split() else "")
        own: dict[str, int | None] = {}
        for line in parts.splitlines():
            fields = _node_fields(line)
            raw = fields.get("ResumeTimeout", "GLOBAL")
            if "PartitionName" in fields and raw.upper() != "GLOBAL":
                own[fields["PartitionName"]] = _seconds(raw)
        found: dict[str, tuple[int, str]] = {}
        for node, fields in shown.items():
            mine = [p for p in fields.get("Partitions", "").split(",") if p in own]
            if any(own[p] is None for p in mine):
                continue  # INFINITE: never given up
            if mine:
                part = max(mine, key=lambda p: own[p] or 0)
                found[node] = (own[part] or 0, f"partition {part}")
            elif cluster is not None:
                found[node] = (cluster, "slurm.conf")
        return found

    def config(self) -> str | None:
        """``scontrol show config`` (None: scontrol failed), asked once a run: slurm.conf
        does not change under a run, and ``check`` reads four of its values (a failed
        call is not made again either)."""
        if not self._config:
            self._config.append(self._run("show", "config"))
        return self._config[0]

    def config_value(self, key: str) -> str | None:
        """One of ``scontrol show config``'s values (``AuthType = auth/none``): None when
        scontrol cannot tell or does not show it."""
        for line in (self.config() or "").splitlines():
            name, eq, value = line.partition("=")
            if eq and name.strip() == key:
                return value.strip()
        return None

    def slurm_user(self) -> tuple[str, int | None] | None:
        """SlurmUser (``scontrol show config``: ``SlurmUser = slurm(64030)``), the user
        slurmctld runs ws-slurm as: its name and uid (None when not shown); None when
        scontrol cannot tell."""
        m = re.fullmatch(r"([^\s(]+)(?:\((\d+)\))?", self.config_value("SlurmUser") or "")
        return (m[1], int(m[2]) if m[2] else None) if m else None

    def set_address(self, node: str, address: str, tries: int = 3) -> bool:
        """Tell slurmctld where ``node`` is; False if that could not be done."""
        return not self.set_addresses({node: address}, tries)

    def set_addresses(self, addresses: Mapping[str, str], tries: int = 3) -> list[str]:
        """Tell slurmctld where the nodes are (node -> address), up to ``ADDRESS_CHUNK``
        nodes an update (``address_batches``: lists slurmctld pairs in order whatever its
        version); the nodes that could not be told."""
        failed: list[str] = []
        for batch in address_batches(addresses):
            for i in range(0, len(batch), ADDRESS_CHUNK):
                chunk = batch[i : i + ADDRESS_CHUNK]
                names = ",".join(chunk)
                where = ",".join(addresses[n] for n in chunk)
                args = ("update", f"NodeName={names}", f"NodeAddr={where}",
                        f"NodeHostname={names}")  # fmt: skip
                if not self._update(args, tries):
                    failed.extend(chunk)
        return failed

    def set_down(self, nodes: Sequence[str], reason: str, tries: int = 3) -> bool:
        """Mark ``nodes`` DOWN with ``reason`` (``reason_text``): their jobs are requeued,
        and the nodes stay DOWN until an admin returns them (``State=RESUME``)."""
        args = ("update", f"NodeName={compress(nodes)}", "State=DOWN",
                f"Reason={reason_text(reason)}")  # fmt: skip
        return self._update(args, tries)

    def power_down(self, nodes: Sequence[str], tries: int = 3, *, force: bool = False) -> bool:
        """Power ``nodes`` down now (slurmctld runs SuspendProgram for them); a DOWN node
        keeps its state and reason. ``force`` (POWER_DOWN_FORCE): for nodes that are not
        DOWN, which plain POWER_DOWN leaves POWERING_UP until ResumeTimeout."""
        state = "State=POWER_DOWN_FORCE" if force else "State=POWER_DOWN"
        return self._update(("update", f"NodeName={compress(nodes)}", state), tries)

    def _update(self, args: Sequence[str], tries: int) -> bool:
        """``scontrol update ARGS``, tried again when it fails: a busy slurmctld can time
        an update out (seen while it was trying to resolve the names of other
        powered-down nodes). Without scontrol at all: False at once, no retries."""
        if not self.available:
            log.warning("scontrol %s: %s", _shown(args), self.missing())
            return False
        for attempt in range(tries):
            if self._run(*args) is not None:
                return True
            if attempt + 1 < tries and self.left_s() > RETRY_PAUSE_S:
                time.sleep(RETRY_PAUSE_S)
                self.spent_s += RETRY_PAUSE_S
        return False


def is_powered_down(state: str) -> bool:
    """A node's ``State=`` (``IDLE+CLOUD+POWERED_DOWN``): powered down and staying so."""
    flags = set(state.upper().split("+"))
    return "POWERED_DOWN" in flags and "POWERING_UP" not in flags


def _seconds(raw: str) -> int | None:
    """A ResumeTimeout as scontrol shows it (``600``, ``INFINITE``): None when unbounded
    (or unreadable)."""
    return int(raw) if raw.isdigit() else None


def _has(out: str, partial: str) -> bool:
    return any(line.startswith(partial) for line in out.splitlines())


def _answered(out: str, partial: str, asked: Collection[str]) -> bool:
    """Whether a failed run's stdout is slurmctld's answer: lines starting with
    ``partial``, or nothing but ``Node X not found`` of nodes ``asked`` (``show node`` of
    unknown nodes; one of a node not asked says nothing of those that were)."""
    found = [NOT_FOUND.match(line) for line in out.splitlines() if line.strip()]
    return _has(out, partial) or (bool(found) and all(m and m[1] in asked for m in found))


def _not_partial(out: str, partial: str) -> list[str]:
    """The lines of ``out`` that are not answers (``Node c9 not found``)."""
    return [line for line in out.splitlines() if line and not line.startswith(partial)]


def _cut(text: str, limit: int) -> str:
    return text if len(text) <= limit else f"{text[:limit]}... ({len(text)} characters)"


def _shown(args: Sequence[str]) -> str:
    """A command line for the log: a long argument (a node list) cut short."""
    return " ".join(_cut(a, MAX_LOGGED_ARG) for a in args)


def _node_fields(line: str) -> dict[str, str]:
    """The KEY=VALUE fields of one ``scontrol show node -o`` line. ``Reason=`` is free
    text with spaces (an admin's, or a workspace's failure reason ws-slurm set), so it
    is cut off first and kept whole, and a field's first value wins: a reason that says
    "was State=IDLE+POWERED_DOWN" never stands for the node's State."""
    head, cut, reason = line.partition(" Reason=")
    fields: dict[str, str] = {}
    for word in head.split():
        key, eq, value = word.partition("=")
        if eq and key:
            fields.setdefault(key, value)
    if cut:
        fields["Reason"] = reason.strip()
    return fields
