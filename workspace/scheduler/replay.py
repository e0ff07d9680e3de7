"""The scheduler's input as JSON, so a placement can be saved and replayed offline.

Format, version 1 (one object; unknown keys are errors; omitted optional keys take the
defaults shown)::

    {
      "version": 1,
      "config": {"policy": "pack", "cpu_overcommit": 4.0, ...},   # SchedulerConfig fields
      "affinity": "HARD_ANTI",           # NONE | SOFT_ANTI | HARD_ANTI | SOFT | HARD
      "nodes": [
        {"name": "node-1", "state": "READY", "cpus": 32, "memory_mib": 131072,
         "used_cpus": 0, "used_memory_mib": 0, "hypervisor": "kvm",
         "labels": {"gpu": "a100"}, "networks": ["default"],
         "cached_digests": ["sha256:..."], "conditions": ["no-isolation"]}
      ],
      "requests": [
        {"member": "worker-1", "cpus": 2, "memory_mib": 4096, "networks": ["default"],
         "digests": ["sha256:..."], "requirements": {"hypervisor": "kvm"},
         "isolated": true}
      ]
    }

Optional, written by ``ws-admin schedule dump`` (``explain`` reads them): ``victims``
(preemptible workspaces a normal request may preempt), ``pending`` (workspaces preempted
earlier, still stopping: same form), ``held`` and ``held_preemptible`` (``{node: why}``:
the nodes the capacity queue's holders keep from a new normal request, and those kept
only from preemptible ones); ``preemptible`` (``true``: the request is of the preemptible
class, ``ws-admin schedule dump --preemptible``: it may use no held node and preempts
nobody).

``requests`` are in the caller's order. A node's ``conditions`` (its agent's, by label:
``no-isolation``, ``network-not-ready:NET``) and a request's ``isolated`` (its CLUSTER or
OUTBOUND connectivity must be enforced) are written only when set. ``to_json`` writes
every field, with sorted digests and labels, so the same input always gives the same text.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Sequence
from typing import Any

from workspace.config import SchedulerConfig, from_dict
from workspace.errors import ConfigError, InvalidArgument
from workspace.scheduler.model import Affinity, NodeView, Request

VERSION = 1

ReplayInput = tuple[list[NodeView], list[Request], SchedulerConfig, Affinity]


# Bandwidth keys: written only when set (inputs from before them stay byte-identical).
_NODE_BANDWIDTH = ("disk_mbps", "net_mbps", "used_disk_mbps", "used_net_mbps")
_REQUEST_BANDWIDTH = ("disk_mbps", "net_mbps")


def _node_dict(n: NodeView) -> dict[str, Any]:
    return {
        "name": n.name,
        "state": n.state,
        "cpus": n.cpus,
        "memory_mib": n.memory_mib,
        "used_cpus": n.used_cpus,
        "used_memory_mib": n.used_memory_mib,
        "hypervisor": n.hypervisor,
        "labels": dict(sorted(n.labels.items())),
        "networks": list(n.networks),
        "cached_digests": sorted(n.cached_digests),
    } | (
        {k: getattr(n, k) for k in _NODE_BANDWIDTH if getattr(n, k)}
        | ({"conditions": sorted(n.conditions)} if n.conditions else {})
    )


def _request_dict(r: Request) -> dict[str, Any]:
    return {
        "member": r.member,
        "cpus": r.cpus,
        "memory_mib": r.memory_mib,
        "networks": list(r.networks),
        "digests": list(r.digests),
        "requirements": dict(sorted(r.requirements.items())),
    } | (
        {k: getattr(r, k) for k in _REQUEST_BANDWIDTH if getattr(r, k)}
        | ({"isolated": True} if r.isolated else {})
    )


def to_dict(
    nodes: Sequence[NodeView],
    requests: Sequence[Request],
    cfg: SchedulerConfig,
    affinity: Affinity = Affinity.NONE,
) -> dict[str, Any]:
    return {
        "version": VERSION,
        "config": dataclasses.asdict(cfg),
        "affinity": affinity.name,
        "nodes": [_node_dict(n) for n in nodes],
        "requests": [_request_dict(r) for r in requests],
    }


def to_json(
    nodes: Sequence[NodeView],
    requests: Sequence[Request],
    cfg: SchedulerConfig,
    affinity: Affinity = Affinity.NONE,
) -> str:
    """The scheduler's whole input as a versioned JSON document (see the module docstring)."""
    return json.dumps(to_dict(nodes, requests, cfg, affinity), indent=1) + "\n"


# -- reading ----------------------------------------------------------------------------


def _get(obj: dict[str, Any], key: str, kind: type | tuple[type, ...], where: str) -> Any:
    value = obj[key]
    if (isinstance(value, bool) and kind is not bool) or not isinstance(value, kind):
        name = kind.__name__ if isinstance(kind, type) else " or ".join(k.__name__ for k in kind)
        raise InvalidArgument(f"{where}.{key}: expected {name}, got {value!r}")
    return value


def _strings(obj: dict[str, Any], key: str, where: str) -> tuple[str, ...]:
    items = _get(obj, key, list, where)
    if not all(isinstance(s, str) for s in items):
        raise InvalidArgument(f"{where}.{key}: expected a list of strings")
    return tuple(items)


def _string_map(obj: dict[str, Any], key: str, where: str) -> dict[str, str]:
    table = _get(obj, key, dict, where)
    if not all(isinstance(v, str) for v in table.values()):
        raise InvalidArgument(f"{where}.{key}: expected string values")
    return dict(table)


def _check_keys(obj: Any, required: set[str], optional: set[str], where: str) -> None:
    if not isinstance(obj, dict):
        raise InvalidArgument(f"{where}: expected an object")
    missing = sorted(required - set(obj))
    if missing:
        raise InvalidArgument(f"{where}: missing key(s) {', '.join(missing)}")
    unknown = sorted(set(obj) - required - optional)
    if unknown:
        raise InvalidArgument(f"{where}: unknown key(s) {', '.join(unknown)}")


def _node(obj: Any, where: str) -> NodeView:
    optional = {"used_cpus", "used_memory_mib", "hypervisor", "labels", "networks"}
    optional |= {"cached_digests", "conditions", *_NODE_BANDWIDTH}
    _check_keys(obj, {"name", "state", "cpus", "memory_mib"}, optional, where)
    d = {"used_cpus": 0, "used_memory_mib": 0, "hypervisor": "", "labels": {}, "networks": []}
    d |= {"cached_digests": [], "conditions": []} | dict.fromkeys(_NODE_BANDWIDTH, 0) | obj
    return NodeView(
        name=_get(d, "name", str, where),
        state=_get(d, "state", str, where),
        cpus=_get(d, "cpus", int, where),
        memory_mib=_get(d, "memory_mib", int, where),
        used_cpus=_get(d, "used_cpus", int, where),
        used_memory_mib=_get(d, "used_memory_mib", int, where),
        hypervisor=_get(d, "hypervisor", str, where),
        labels=_string_map(d, "labels", where),
        networks=_strings(d, "networks", where),
        cached_digests=frozenset(_strings(d, "cached_digests", where)),
        disk_mbps=_get(d, "disk_mbps", int, where),
        net_mbps=_get(d, "net_mbps", int, where),
        used_disk_mbps=_get(d, "used_disk_mbps", int, where),
        used_net_mbps=_get(d, "used_net_mbps", int, where),
        conditions=frozenset(_strings(d, "conditions", where)),
    )


def _request(obj: Any, where: str) -> Request:
    optional = {"member", "networks", "digests", "requirements", "isolated", *_REQUEST_BANDWIDTH}
    _check_keys(obj, {"cpus", "memory_mib"}, optional, where)
    d: dict[str, Any] = {"member": "", "networks": [], "digests": [], "requirements": {}}
    d["isolated"] = False
    d |= dict.fromkeys(_REQUEST_BANDWIDTH, 0) | obj
    return Request(
        cpus=_get(d, "cpus", int, where),
        memory_mib=_get(d, "memory_mib", int, where),
        networks=_strings(d, "networks", where),
        digests=_strings(d, "digests", where),
        requirements=_string_map(d, "requirements", where),
        member=_get(d, "member", str, where),
        disk_mbps=_get(d, "disk_mbps", int, where),
        net_mbps=_get(d, "net_mbps", int, where),
        isolated=_get(d, "isolated", bool, where),
    )


# Optional keys read apart: "victims" and "pending" (preemptible workspaces, and those
# preempted earlier still stopping: workspace/scheduler/preempt.py ``victims_from``),
# "held" and "held_preemptible" (``held_from``), "preemptible" (``preemptible_from``).
_EXTRA = {"victims", "pending", "held", "held_preemptible", "preemptible"}


def preemptible_from(data: Any) -> bool:
    """Whether a replay input's request is of the preemptible class (False if absent;
    InvalidArgument if not a boolean)."""
    if not isinstance(data, dict) or "preemptible" not in data:
        return False
    return bool(_get(data, "preemptible", bool, "input"))


def held_from(data: Any, key: str) -> dict[str, str]:
    """``{node: why}`` under ``key`` of a replay input: nodes the capacity queue holds
    (``held``: against a new normal request; ``held_preemptible``: only against
    preemptible ones). None if absent; InvalidArgument if malformed."""
    if not isinstance(data, dict) or key not in data:
        return {}
    return _string_map(data, key, "input")


def from_dict_input(data: Any) -> ReplayInput:
    _check_keys(data, {"version", "nodes", "requests"}, {"config", "affinity", *_EXTRA}, "input")
    if data["version"] != VERSION:
        raise InvalidArgument(
            f"input: unsupported version {data['version']!r}; this scheduler reads {VERSION}"
        )
    try:
        cfg = from_dict(SchedulerConfig, data.get("config", {}))
    except ConfigError as exc:
        raise InvalidArgument(f"input.config: {exc.message}") from exc  # (a policy too)
    try:
        affinity = Affinity.parse(_get({"affinity": "NONE"} | data, "affinity", str, "input"))
    except ValueError as exc:
        raise InvalidArgument(f"input.affinity: {exc}") from exc
    nodes = [_node(n, f"nodes[{i}]") for i, n in enumerate(_get(data, "nodes", list, "input"))]
    names = [n.name for n in nodes]
    if len(set(names)) != len(names):
        dup = sorted({n for n in names if names.count(n) > 1})
        raise InvalidArgument(f"input.nodes: duplicate node name(s) {', '.join(dup)}")
    requests = [
        _request(r, f"requests[{i}]") for i, r in enumerate(_get(data, "requests", list, "input"))
    ]
    return nodes, requests, cfg, affinity


def from_json(text: str) -> ReplayInput:
    """``(nodes, requests, cfg, affinity)`` from a document written by :func:`to_json`."""
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise InvalidArgument(f"not valid JSON: {exc}") from exc
    return from_dict_input(data)
