"""Explainable placement: replay a saved scheduler input and show every verdict.

For each request, in the order the scheduler places them, every node gets a verdict: every
filter that rejects it and why (the placement itself stops at the first; explain runs them
all, off the hot path), or its total weight and each weigher's part. The
decision itself comes from the same code as a live placement (``engine.choose``), on the
same consumed snapshot, so the explanation is of what the service would do.

    python -m workspace.scheduler.explain FILE [--output json]

(``ws-admin schedule explain FILE``). Exit status: 0 placed (on free capacity, or for a
normal request by preempting preemptible workspaces, as a live create would), 1 does not
fit, 2 bad input.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from workspace.config import SchedulerConfig
from workspace.errors import InvalidArgument, WorkspaceError
from workspace.scheduler.engine import choose, group_context, member_context, placement_order
from workspace.scheduler.filters import FILTERS
from workspace.scheduler.model import (
    Affinity,
    GroupPlacement,
    MemberPlacement,
    NodeView,
    Request,
    member_label,
)
from workspace.scheduler.preempt import Plan, Victim, plan, victims_from
from workspace.scheduler.replay import from_dict_input, held_from, preemptible_from
from workspace.scheduler.snapshot import Context, HostState, Snapshot
from workspace.scheduler.weighers import scores, weighers_for

FORMAT_VERSION = 1


@dataclass(frozen=True)
class NodeVerdict:
    node: str
    passed: bool
    chosen: bool = False
    filter: str = ""  # the first filter that rejected the node (the placement's reason)
    reason: str = ""
    score: float | None = None  # total weight (None: rejected, or no weigher was active)
    weights: tuple[tuple[str, float], ...] = ()  # (weigher, multiplier x weight)
    # Every (filter, reason) that rejects the node, in the filters' order (the first is
    # ``filter``/``reason``): the placement stops at the first, an admin wants them all.
    rejections: tuple[tuple[str, str], ...] = ()

    def to_dict(self) -> dict[str, Any]:
        verdict = "chosen" if self.chosen else "passed" if self.passed else "rejected"
        out: dict[str, Any] = {"node": self.node, "verdict": verdict}
        if self.passed:
            out["score"] = self.score
            out["weights"] = dict(self.weights)
        else:
            out["filter"] = self.filter
            out["reason"] = self.reason
            out["rejections"] = [{"filter": f, "reason": r} for f, r in self.rejections]
        return out

    def rejected_text(self) -> str:
        """``filter: reason; filter: reason ...`` for every rejection."""
        return "; ".join(f"{f}: {r}" for f, r in self.rejections)


@dataclass(frozen=True)
class MemberExplanation:
    step: int  # 1-based position in the placement order
    index: int  # position in the caller's order
    member: str
    cpus: int
    memory_mib: int
    claimed_memory_mib: int
    node: str | None
    verdicts: tuple[NodeVerdict, ...]

    def to_dict(self) -> dict[str, Any]:
        return {
            "step": self.step,
            "index": self.index,
            "member": self.member,
            "cpus": self.cpus,
            "memory_mib": self.memory_mib,
            "claimed_memory_mib": self.claimed_memory_mib,
            "node": self.node,
            "verdicts": [v.to_dict() for v in self.verdicts],
        }


@dataclass(frozen=True)
class Explanation:
    policy: str
    affinity: Affinity
    node_count: int
    labels: tuple[str, ...]  # member labels in the caller's order
    placement: GroupPlacement
    steps: tuple[MemberExplanation, ...]  # placement order; ends at the member that failed
    not_tried: tuple[str, ...]  # members left after a failure
    # With victims in the input and no placement on free capacity: what preemption would
    # do (None: it could not place it either); unset: no victims given.
    preemption: Plan | None = None
    victims_given: bool = False
    # Nodes a normal request may not use, with why (the capacity queue's holders; left
    # out of the placement as a live create leaves them out), and those held only
    # against preemptible requests (a preemptible request at the head holds them).
    held: Mapping[str, str] = field(default_factory=dict)
    held_preemptible: Mapping[str, str] = field(default_factory=dict)
    # Workspaces preempted earlier and still stopping: they hold their claims until gone
    # (their nodes look full); a normal request may be placed there and wait for them.
    pending: tuple[Victim, ...] = ()
    # The request is of the preemptible class: every held node is left out, and it
    # preempts nobody (preemption.md, "Who may preempt whom").
    preemptible: bool = False

    @property
    def fits(self) -> bool:
        """The request would be placed: on free capacity, or (a normal one) by preemption."""
        if self.placement.placements is not None:
            return True
        return self.preemption is not None and self.preemption.placement.placements is not None

    def preemption_text(self) -> str:
        if self.preemptible and self.placement.placements is None:
            return "a preemptible request preempts nobody: it is refused, or waits for capacity"
        if not self.victims_given or self.placement.placements is not None:
            return ""
        if self.preemption is None:
            return "a normal request would not fit by preemption either"
        where = self.preemption.placement.placements or []
        parts = [f"{v.id} on {v.node}" for v in self.preemption.victims]
        nodes = ", ".join(sorted({m.node for m in where}))
        waits = ", ".join(sorted(self.preemption.pending_nodes))
        wait = (
            f", and would wait there for the workspace(s) preempted earlier on {waits} to stop"
            if waits
            else ""
        )
        if not parts:
            return (
                f"a normal request would be placed on {nodes} without preempting more: "
                f"the workspace(s) preempted earlier on {waits} leave room once they stop"
            )
        return (
            f"a normal request would be placed on {nodes} by preempting "
            f"{len(parts)} preemptible workspace(s): {', '.join(parts)}{wait}"
        )

    def headline(self) -> str:
        setting = f"policy {self.policy}, affinity {self.affinity.name}, {self.node_count} node(s)"
        if self.preemptible:
            setting += ", preemptible"
        if self.fits and self.placement.placements is None:
            assert self.preemption is not None
            how = (
                f"by preempting {len(self.preemption.victims)} preemptible workspace(s)"
                if self.preemption.victims
                else "once workspaces preempted earlier have stopped"
            )
            return (
                f"placed only {how} ({setting}); a preemptible request does not fit: "
                f"{self.placement.reason()}"
            )
        if self.placement.placements is None:
            return (
                f"does not fit ({setting}): member {self.placement.failed_member} does not fit: "
                f"{self.placement.reason()}"
            )
        return f"placed all {len(self.labels)} request(s) ({setting})"

    def render_text(self) -> str:
        lines = [f"Placement: {self.headline()}"]
        if self.placement.placements is not None:
            width = max((len(label) for label in self.labels), default=0)
            for label, p in zip(self.labels, self.placement.placements, strict=True):
                lines.append(
                    f"  {label:<{width}}  -> {p.node}  "
                    f"({p.claimed_cpus} vCPU(s), {p.claimed_memory_mib} MiB claimed)"
                )
        width = max((len(v.node) for s in self.steps for v in s.verdicts), default=0)
        for s in self.steps:
            overhead = s.claimed_memory_mib - s.memory_mib
            lines.append("")
            lines.append(
                f"[{s.step}] {s.member}: {s.cpus} vCPU(s), {s.memory_mib} MiB "
                f"(+{overhead} MiB overhead) -> {s.node or 'DOES NOT FIT'}"
            )
            for v in s.verdicts:
                if not v.passed:
                    lines.append(f"    {v.node:<{width}}  rejected  {v.rejected_text()}")
                    continue
                what = "chosen  " if v.chosen else "passed  "
                if v.score is None:
                    lines.append(f"    {v.node:<{width}}  {what}  (no weigher active: name order)")
                    continue
                parts = ", ".join(f"{name} {value:.6f}" for name, value in v.weights)
                lines.append(f"    {v.node:<{width}}  {what}  score {v.score:.6f}  ({parts})")
        if self.not_tried:
            lines.append("")
            lines.append(f"Not tried (an earlier member did not fit): {', '.join(self.not_tried)}")
        lines.extend(self._capacity_queue_text())
        if self.preemption_text():
            lines.append("")
            lines.append(f"Preemption: {self.preemption_text()}")
        return "\n".join(lines) + "\n"

    def _capacity_queue_text(self) -> list[str]:
        """What keeps capacity the node views show from a new request: held nodes, and
        preempted workspaces still stopping."""
        lines = []
        if self.held:
            lines.append("")
            lines.append("Held (a new request may not use them):")
            lines += [f"  {node}: {why}" for node, why in sorted(self.held.items())]
        if self.held_preemptible:
            lines.append("")
            lines.append("Held against preemptible requests only (a normal one may use them):")
            lines += [f"  {node}: {why}" for node, why in sorted(self.held_preemptible.items())]
        if self.pending:
            lines.append("")
            lines.append("Preempted earlier, still stopping (their claims count until they end):")
            for node, (n, cpus, mib) in sorted(_pending_by_node(self.pending).items()):
                lines.append(f"  {node}: {n} workspace(s), {cpus} vCPU(s), {mib} MiB")
        return lines

    def to_dict(self) -> dict[str, Any]:
        p = self.placement
        return {
            "version": FORMAT_VERSION,
            "policy": self.policy,
            "affinity": self.affinity.name,
            "nodes": self.node_count,
            "placed": p.placements is not None,
            "fits": self.fits,
            "failed_member": p.failed_member,
            "reason": p.reason(),
            "placements": None
            if p.placements is None
            else [
                {
                    "member": label,
                    "node": m.node,
                    "claimed_cpus": m.claimed_cpus,
                    "claimed_memory_mib": m.claimed_memory_mib,
                }
                for label, m in zip(self.labels, p.placements, strict=True)
            ],
            "steps": [s.to_dict() for s in self.steps],
            "not_tried": list(self.not_tried),
            "held": dict(sorted(self.held.items())),
            "held_preemptible": dict(sorted(self.held_preemptible.items())),
            "preemptible": self.preemptible,
            "pending": [
                {"node": node, "workspaces": n, "cpus": cpus, "memory_mib": mib}
                for node, (n, cpus, mib) in sorted(_pending_by_node(self.pending).items())
            ],
        } | self._preemption_dict()

    def _preemption_dict(self) -> dict[str, Any]:
        if not self.victims_given or self.placement.placements is not None:
            return {}
        pre = self.preemption
        if pre is None or pre.placement.placements is None:
            return {"preemption": None}
        return {
            "preemption": {
                "placements": [
                    {"member": label, "node": m.node}
                    for label, m in zip(self.labels, pre.placement.placements, strict=True)
                ],
                "victims": [{"id": v.id, "node": v.node} for v in pre.victims],
                "text": self.preemption_text(),
            }
        }


def _pending_by_node(pending: Sequence[Victim]) -> dict[str, tuple[int, int, int]]:
    """Per node: how many preempted workspaces are still stopping, their vCPUs and MiB."""
    out: dict[str, tuple[int, int, int]] = {}
    for v in pending:
        n, cpus, mib = out.get(v.node, (0, 0, 0))
        out[v.node] = (n + 1, cpus + v.cpus, mib + v.memory_mib)
    return out


def _every_rejection(h: HostState, req: Request, ctx: Context) -> tuple[tuple[str, str], ...]:
    """The complete mode: every filter on ``h``, each with all its reasons (a filter that
    is not active for the request passes every node: running it changes nothing)."""
    return tuple((f.name, why) for f in FILTERS for why in f.every_reason(h, req, ctx))


def _verdicts(
    snapshot: Snapshot,
    req: Request,
    ctx: Context,
    chosen: HostState | None,
    held: Sequence[tuple[HostState, str]] = (),
) -> tuple[NodeVerdict, ...]:
    """Every node's verdict; ``held``: nodes left out of the placement (the queue holds
    them), each rejected for that and for whatever else rejects it."""
    weighers = weighers_for(snapshot.cfg)
    rejected: dict[str, tuple[tuple[str, str], ...]] = {}
    for h, why in held:
        rejected[h.name] = (("capacity-queue", why), *_every_rejection(h, req, ctx))
    passing: list[HostState] = []
    for h in snapshot.hosts:
        found = _every_rejection(h, req, ctx)
        if found:
            rejected[h.name] = found
        else:
            passing.append(h)
    total = scores(passing, req, ctx, weighers) if passing else None
    parts = [
        (w.name, [w.multiplier * v for v in w.weigh_all(passing, req, ctx)])
        for w in weighers
        if passing and w.active(req, ctx)
    ]
    by_host: dict[str, NodeVerdict] = {}
    for k, h in enumerate(passing):
        by_host[h.name] = NodeVerdict(
            h.name,
            passed=True,
            chosen=h is chosen,
            score=None if total is None else total[k],
            weights=tuple((name, values[k]) for name, values in parts),
        )
    out = []
    for h in sorted([*snapshot.hosts, *(h for h, _ in held)], key=lambda h: h.name):
        if h.name in by_host:
            out.append(by_host[h.name])
        else:
            found = rejected[h.name]
            f_name, why = found[0]
            out.append(
                NodeVerdict(h.name, passed=False, filter=f_name, reason=why, rejections=found)
            )
    return tuple(out)


def explain(
    nodes: Sequence[NodeView],
    requests: Sequence[Request],
    cfg: SchedulerConfig,
    affinity: Affinity = Affinity.NONE,
    victims: Sequence[Victim] | None = None,
    held: Mapping[str, str] | None = None,
    held_preemptible: Mapping[str, str] | None = None,
    pending: Sequence[Victim] = (),
    preemptible: bool = False,
) -> Explanation:
    """The placement of ``requests`` on ``nodes`` and every node's verdict for each request;
    with ``victims`` (preemptible workspaces), what preemption would do if it does not fit.
    ``held``: nodes a new request may not use (left out, as a live create leaves them);
    ``held_preemptible``: shown only; ``pending``: workspaces preempted earlier, still
    stopping (their capacity counts as free for preemption, as live). ``preemptible``:
    the requests are of the preemptible class, placed as a live preemptible create is:
    ``held_preemptible`` is left out too, and nothing is preempted for them (``pending``
    is only listed)."""
    held = dict(held or {})
    if preemptible:
        held |= {k: v for k, v in (held_preemptible or {}).items() if k not in held}
        held_preemptible, victims = {}, None
    usable = [n for n in nodes if n.name not in held]
    snapshot = Snapshot(usable, cfg)
    # Held nodes are judged apart (nothing is placed there, so nothing is consumed).
    held_hosts = Snapshot([n for n in nodes if n.name in held], cfg).hosts
    kept_out = [(h, held[h.name]) for h in held_hosts]
    weighers = weighers_for(cfg)
    group = group_context(snapshot, requests, affinity)
    labels = tuple(member_label(r, i) for i, r in enumerate(requests))
    order = placement_order(requests, snapshot, affinity)
    steps: list[MemberExplanation] = []
    results: dict[int, MemberPlacement] = {}
    failure: GroupPlacement | None = None
    for placed, i in enumerate(order):
        req = requests[i]
        ctx = member_context(snapshot, req, affinity, placed, group)
        host, rejected = choose(snapshot, req, ctx, weighers)
        steps.append(
            MemberExplanation(
                step=placed + 1,
                index=i,
                member=labels[i],
                cpus=req.cpus,
                memory_mib=req.memory_mib,
                claimed_memory_mib=ctx.memory_claim_mib,
                node=None if host is None else host.name,
                verdicts=_verdicts(snapshot, req, ctx, host, kept_out),
            )
        )
        if host is None:
            counts = Counter(rejected)
            counts.update(why for _, why in kept_out)  # as a live refusal counts them
            failure = GroupPlacement(None, labels[i], i, dict(counts))
            break
        snapshot.consume(host, req.cpus, ctx.memory_claim_mib, req.disk_mbps, req.net_mbps)
        results[i] = MemberPlacement(host.name, req.cpus, ctx.memory_claim_mib)
    placement = failure or GroupPlacement([results[i] for i in range(len(requests))])
    not_tried = tuple(labels[i] for i in order[len(steps) :]) if failure else ()
    given = bool(victims or pending) and not preemptible
    names = {n.name for n in usable}
    victims = [v for v in victims or () if v.node in names]
    going = [v for v in pending if v.node in names]
    found = (
        plan(usable, victims, requests, cfg, affinity, going)
        if (victims or going) and failure and not preemptible
        else None
    )
    return Explanation(
        policy=cfg.policy,
        affinity=affinity,
        node_count=len(nodes),
        labels=labels,
        placement=placement,
        steps=tuple(steps),
        not_tried=not_tried,
        preemption=found,
        victims_given=given,
        held=held,
        held_preemptible=dict(held_preemptible or {}),
        pending=tuple(pending),
        preemptible=preemptible,
    )


def explain_file(path: str | Path, preemptible: bool = False) -> Explanation:
    """Replay a file written by ``to_json`` ("-" reads stdin); ``preemptible``: as a
    preemptible request, whatever the file says. Raises InvalidArgument, OSError."""
    text = sys.stdin.read() if str(path) == "-" else Path(path).read_text()
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise InvalidArgument(f"not valid JSON: {exc}") from exc
    nodes, requests, cfg, affinity = from_dict_input(data)
    return explain(
        nodes,
        requests,
        cfg,
        affinity,
        victims_from(data),
        held_from(data, "held"),
        held_from(data, "held_preemptible"),
        victims_from(data, "pending"),
        preemptible or preemptible_from(data),
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m workspace.scheduler.explain",
        description="Replay a saved scheduler input; print the placement and every node's "
        "verdict per request. Exit status: 0 placed (by preemption, for a normal request, "
        "if need be), 1 does not fit, 2 bad input.",
    )
    parser.add_argument("file", metavar="FILE", help='scheduler input JSON ("-" for stdin)')
    parser.add_argument("--output", choices=("text", "json"), default="text")
    parser.add_argument(
        "--preemptible",
        action="store_true",
        help="place the request as a preemptible one (every held node left out; it "
        "preempts nobody), whatever the file says",
    )
    args = parser.parse_args(argv)
    try:
        result = explain_file(args.file, args.preemptible)
    except WorkspaceError as exc:
        print(f"{parser.prog}: {args.file}: {exc.message}", file=sys.stderr)
        return 2
    except OSError as exc:
        print(f"{parser.prog}: {args.file}: {exc.strerror or exc}", file=sys.stderr)
        return 2
    if args.output == "json":
        sys.stdout.write(json.dumps(result.to_dict(), indent=2) + "\n")
    else:
        sys.stdout.write(result.render_text())
    return 0 if result.fits else 1


if __name__ == "__main__":
    sys.exit(main())
