"""The few scontrol calls ws-slurm makes, each optional: without scontrol (or when it
fails) ws-slurm goes on with what it knows and says so in its log.

* ``scontrol show hostnames EXPR``: the controller's own expansion of a hostlist;
* ``scontrol show node -o NODES``: the nodes' features (``AvailableFeatures``);
* ``scontrol update NodeName=X NodeAddr=IP NodeHostname=X``: where a new node is;
* ``scontrol update NodeName=NODES State=DOWN Reason=...``: a node that cannot run (its
  resume was refused, or it failed): the admin sees why in ``sinfo -R``, and its job is
  requeued at once;
* ``scontrol update NodeName=NODES State=POWER_DOWN``: a node whose resume was refused
  stops POWERING_UP now (else Slurm waits for ResumeTimeout and overwrites the reason
  with "ResumeTimeout reached").
"""

from __future__ import annotations

import logging
import shutil
import subprocess
import time
from collections.abc import Iterable, Sequence

from workspace.slurm.hostlist import compress, expand_all

log = logging.getLogger("ws-slurm")
TIMEOUT_S = 20.0
REASON_PREFIX = "ws: "
MAX_REASON = 200


def reason_text(text: str) -> str:
    """A node reason as ws-slurm sets it: ``ws: ...``, one line, at most 200 characters
    (``sinfo -R`` shows the first 20, ``scontrol show node`` all of it)."""
    one = " ".join(text.split())
    if len(one) > MAX_REASON - len(REASON_PREFIX):
        one = one[: MAX_REASON - len(REASON_PREFIX) - 3] + "..."
    return REASON_PREFIX + one


class Scontrol:
    def __init__(self, command: str = "scontrol") -> None:
        self.command = command

    @property
    def available(self) -> bool:
        return shutil.which(self.command) is not None

    def _run(self, *args: str) -> str | None:
        if not self.available:
            return None
        try:
            proc = subprocess.run(
                [self.command, *args],
                capture_output=True,
                text=True,
                timeout=TIMEOUT_S,
                check=False,
            )
        except (OSError, subprocess.TimeoutExpired) as exc:
            log.warning("scontrol %s: %s", " ".join(args), exc)
            return None
        if proc.returncode != 0:
            log.warning(
                "scontrol %s failed (exit %d): %s",
                " ".join(args),
                proc.returncode,
                (proc.stderr or proc.stdout).strip(),
            )
            return None
        return proc.stdout

    def hostnames(self, exprs: Sequence[str]) -> list[str]:
        """Every node of the hostlist arguments: scontrol's reading, else ours."""
        out = self._run("show", "hostnames", ",".join(exprs)) if exprs else None
        if out is not None:
            names = [line.strip() for line in out.splitlines() if line.strip()]
            if names:
                return list(dict.fromkeys(names))
        return expand_all(exprs)

    def features(self, nodes: Iterable[str]) -> dict[str, frozenset[str]]:
        """Each node's AvailableFeatures (empty when scontrol cannot tell)."""
        names = list(nodes)
        found: dict[str, frozenset[str]] = {n: frozenset() for n in names}
        out = self._run("show", "node", "-o", ",".join(names)) if names else None
        for line in (out or "").splitlines():
            fields = dict(
                word.split("=", 1) for word in line.split() if "=" in word and word[0] != "="
            )
            node = fields.get("NodeName", "")
            if node in found:
                raw = fields.get("AvailableFeatures", "")
                if raw and raw != "(null)":
                    found[node] = frozenset(f for f in raw.split(",") if f)
        return found

    def set_address(self, node: str, address: str, tries: int = 3) -> bool:
        """Tell slurmctld where ``node`` is; False if that could not be done."""
        args = ("update", f"NodeName={node}", f"NodeAddr={address}", f"NodeHostname={node}")
        return self._update(args, tries)

    def set_down(self, nodes: Sequence[str], reason: str, tries: int = 3) -> bool:
        """Mark ``nodes`` DOWN with ``reason`` (``reason_text``): their jobs are requeued,
        and the nodes stay DOWN until an admin returns them (``State=RESUME``)."""
        args = ("update", f"NodeName={compress(nodes)}", "State=DOWN",
                f"Reason={reason_text(reason)}")  # fmt: skip
        return self._update(args, tries)

    def power_down(self, nodes: Sequence[str], tries: int = 3) -> bool:
        """Power ``nodes`` down now (slurmctld runs SuspendProgram for them); a DOWN node
        keeps its state and reason."""
        return self._update(("update", f"NodeName={compress(nodes)}", "State=POWER_DOWN"), tries)

    def _update(self, args: Sequence[str], tries: int) -> bool:
        """``scontrol update ARGS``, tried again when it fails: a busy slurmctld can time
        an update out (seen while it was trying to resolve the names of other
        powered-down nodes). Without scontrol at all: False at once, no retries."""
        if not self.available:
            log.warning("scontrol %s: %s is not on PATH", " ".join(args), self.command)
            return False
        for attempt in range(tries):
            if self._run(*args) is not None:
                return True
            if attempt + 1 < tries:
                time.sleep(1.0)
        return False
