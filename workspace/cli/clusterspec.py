"""Cluster specs for `ws cluster create`: a TOML file, a JSON file, or command-line flags.

TOML (docs/clusters.md has a full example)::

    name = "mpi"                  # required unless NAME is given on the command line
    affinity = "soft-anti"        # none | soft-anti | hard-anti | soft | hard (default none)
    on_failure = "teardown"       # keep | teardown (default keep)
    wait_for_capacity_s = 0       # seconds to wait in the queue (default 0: fail at once)

    [[members]]                   # one table per role, at least one
    role = "head"                 # required; members are named <name>-<role>-<i>
    image = "appliance"           # required
    count = 1                     # default 1
    cpus = 1                      # default: the service's
    memory_mib = 256              # default: the service's
    networks = ["default"]        # default: the service's
    requirements = { gpu = "1" }  # node labels ("hypervisor" = the node's type)
    blank = ["scratch:10GiB:ext4"]  # blank disks per member, NAME:SIZE[:ext4] (as --blank)
    user_data = "text"            # context for the guest, or
    user_data_file = "ctx.sh"     # ... read from a file (relative to the spec)

A ``.json`` file is a CreateClusterRequest in the protobuf JSON mapping (``user_data``
base64); ``affinity`` and ``on_failure`` may also be given by their short names there.

Flags: ``--member ROLE=IMAGE[,count=N][,cpus=N][,memory-mib=M][,blank=NAME:SIZE[:ext4]]...``
(a missing field takes the default; ``blank`` may be given several times) and
``--require KEY=VALUE``.

Errors are ``SpecError`` (InvalidArgument: exit code 1) naming the file, the line where
it can be found and the field, e.g. ``mpi.toml:12: members[1].cpus: must be a whole
number of at least 1, got "two"``.
"""

from __future__ import annotations

import argparse
import json
import tomllib
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

from google.protobuf import json_format

from workspace import errors
from workspace.cli import common
from workspace.client import (
    AFFINITIES,
    FAILURE_POLICIES,
    affinity_value,
    failure_policy_value,
    parse_blank,
)
from workspace.v1 import clusters_pb2

MEMBER_FORMAT = "ROLE=IMAGE[,count=N][,cpus=N][,memory-mib=M][,blank=NAME:SIZE[:ext4]]"
TOP_KEYS = (
    "name",
    "affinity",
    "on_failure",
    "wait_for_capacity_s",
    "connectivity",
    "allow",
    "limits",
    "members",
)
# Every member's limits: limits = { cpu_percent = 25, net_mbps = 50 } (0: the default).
LIMIT_KEYS = ("cpu_percent", "cpu_weight", "disk_mbps", "disk_iops", "net_mbps")
MEMBER_KEYS = (
    "role",
    "image",
    "count",
    "cpus",
    "memory_mib",
    "networks",
    "requirements",
    "user_data",
    "user_data_file",
    "blank",
)


class SpecError(errors.InvalidArgument):
    """A cluster spec is wrong; the message names the file, line and field."""


# -- command-line pieces -----------------------------------------------------------------


def member_arg(text: str) -> clusters_pb2.ClusterMember:
    """``--member ROLE=IMAGE[,count=N][,cpus=N][,memory-mib=M][,blank=...]`` (an argparse
    type).

    Image names may hold ':' (NAME:VERSION), so the fields are named, not positional.
    Left out: count 1, cpus and memory the service's defaults. ``blank=NAME:SIZE[:ext4]``
    (repeatable) gives every member of the role a blank disk, as ``ws create --blank``.
    """
    role, sep, rest = text.partition("=")
    role = role.strip()
    fields = [f.strip() for f in rest.split(",")]
    image = fields[0] if fields else ""
    if not sep:
        raise argparse.ArgumentTypeError(f"must be {MEMBER_FORMAT}, got {text!r}")
    if not role:
        raise argparse.ArgumentTypeError(f"no ROLE in {text!r} ({MEMBER_FORMAT})")
    if not image or "=" in image:
        raise argparse.ArgumentTypeError(f"no IMAGE in {text!r} ({MEMBER_FORMAT})")
    values = {"count": 0, "cpus": 0, "memory-mib": 0}
    blanks = []
    for field in fields[1:]:
        key, eq, raw = field.partition("=")
        key = key.strip().replace("_", "-")
        if eq and key == "blank":
            try:
                blanks.append(parse_blank(raw.strip()))
            except ValueError as exc:
                raise argparse.ArgumentTypeError(f"blank= in {text!r}: {exc}") from None
            continue
        if not eq or key not in values:
            raise argparse.ArgumentTypeError(
                f"unknown field {field!r} in {text!r}: use count=, cpus=, memory-mib=, blank="
            )
        try:
            value = int(raw.strip())
        except ValueError:
            value = 0
        if not 1 <= value <= common.MAX_NUMBER:
            raise argparse.ArgumentTypeError(
                f"{key} must be a whole number from 1 to {common.MAX_NUMBER}, got "
                f"{raw.strip()!r} in {text!r}"
            )
        values[key] = value
    return clusters_pb2.ClusterMember(
        role=role,
        image=image,
        count=values["count"] or 1,
        cpus=values["cpus"],
        memory_mib=values["memory-mib"],
        extra_partitions=blanks,
    )


def requirement_arg(text: str) -> tuple[str, str]:
    """``--require KEY=VALUE`` (an argparse type)."""
    key, sep, value = text.partition("=")
    key, value = key.strip(), value.strip()
    if not sep or not key or not value:
        raise argparse.ArgumentTypeError(f"must be KEY=VALUE (e.g. gpu=1), got {text!r}")
    return key, value


def requirements(pairs: Iterable[tuple[str, str]] | None) -> dict[str, str]:
    """Repeated --require pairs as a dict; a key given twice with two values is an error
    (ValueError)."""
    out: dict[str, str] = {}
    for key, value in pairs or ():
        if out.get(key, value) != value:
            raise ValueError(f"--require {key} is given twice ({out[key]!r} and {value!r})")
        out[key] = value
    return out


def affinity_arg(text: str) -> int:
    try:
        return affinity_value(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def failure_policy_arg(text: str) -> int:
    try:
        return failure_policy_value(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


# -- checks shared by every source -------------------------------------------------------


def check(req: clusters_pb2.CreateClusterRequest, where: str = "") -> None:
    """What the client can see is wrong with a request before sending it: no name, no
    members, a member without role or image, a role given twice, negative numbers."""
    at = f"{where}: " if where else ""
    if not req.name:
        raise SpecError(f"{at}name: the cluster needs a name (name = ... in the spec, or NAME)")
    if not req.members:
        raise SpecError(f"{at}members: the cluster needs at least one member")
    if req.wait_for_capacity_s < 0:
        raise SpecError(f"{at}wait_for_capacity_s: must be 0 or more")
    seen: dict[str, int] = {}
    for i, m in enumerate(req.members):
        field = f"members[{i}]"
        if not m.role:
            raise SpecError(f"{at}{field}.role: every member needs a role")
        if not m.image:
            raise SpecError(f"{at}{field}.image: member {m.role!r} needs an image")
        if m.role in seen:
            raise SpecError(
                f"{at}{field}.role: role {m.role!r} is already used by members[{seen[m.role]}]"
            )
        seen[m.role] = i
        for name in ("count", "cpus", "memory_mib"):
            if getattr(m, name) < 0:
                raise SpecError(f"{at}{field}.{name}: must not be negative")


# -- files -------------------------------------------------------------------------------


def load(path: str | Path, name: str = "") -> clusters_pb2.CreateClusterRequest:
    """A spec file as a request (TOML, or JSON for a ``.json`` file); SpecError if wrong.

    ``name`` (NAME on the command line) replaces the spec's name.
    """
    p = Path(path)
    data = p.read_bytes()  # OSError: the caller reports "<path>: No such file ..."
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise SpecError(f"{p}: not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    if p.suffix.lower() == ".json":
        return parse_json(text, str(p), name)
    return parse_toml(text, str(p), name, base=p.parent)


def parse_json(
    text: str, where: str = "<json>", name: str = ""
) -> clusters_pb2.CreateClusterRequest:
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise SpecError(f"{where}:{exc.lineno}: not valid JSON ({exc.msg})") from None
    if not isinstance(data, dict):
        raise SpecError(f"{where}: must hold a JSON object (a CreateClusterRequest)")
    for key, convert, prefix in (
        ("affinity", affinity_value, "AFFINITY_"),
        ("on_failure", failure_policy_value, "FAILURE_POLICY_"),
        ("onFailure", failure_policy_value, "FAILURE_POLICY_"),
    ):
        value = data.get(key)
        if isinstance(value, str) and not value.startswith(prefix):
            try:
                data[key] = convert(value)
            except ValueError as exc:
                raise SpecError(f"{where}: {key}: {exc}") from None
    req = clusters_pb2.CreateClusterRequest()
    try:
        json_format.ParseDict(data, req)
    except json_format.ParseError as exc:
        # protobuf's message lists every field of the message on lines of its own
        first = str(exc).splitlines()[0] if str(exc) else "not a CreateClusterRequest"
        raise SpecError(f"{where}: {first}") from None
    if name:
        req.name = name
    check(req, where)
    return req


def parse_toml(
    text: str, where: str = "<toml>", name: str = "", base: Path | None = None
) -> clusters_pb2.CreateClusterRequest:
    """A TOML spec as a request; ``base`` is where user_data_file paths start."""
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        # tomllib's message ends in "(at line N, column M)".
        raise SpecError(f"{where}: not valid TOML: {exc}") from None
    req = _Builder(where, _KeyLines(text), base or Path(".")).request(data)
    if name:
        req.name = name
    check(req, where)
    return req


class _KeyLines:
    """Where keys are in a TOML text, for error messages (tomllib does not say).

    A key's line is the first line by which tomllib, reading the text's beginning up to
    there, holds the key (for a value spanning lines: its last line). A member's key
    that is not there is shown at the member's ``[[members]]`` line. Only an error
    asks, so the few parses this takes are spent once per failed spec.
    """

    def __init__(self, text: str) -> None:
        self._lines = text.splitlines(keepends=True)

    def _first(self, holds: Callable[[dict[str, Any]], bool]) -> int | None:
        for n in range(1, len(self._lines) + 1):
            try:
                data = tomllib.loads("".join(self._lines[:n]))
            except tomllib.TOMLDecodeError:
                continue  # a value not finished yet
            if holds(data):
                return n
        return None

    def of(self, field: str, index: int | None = None) -> int | None:
        if index is None:
            return self._first(lambda data: field in data)

        def member(data: dict[str, Any]) -> dict[str, Any] | None:
            members = data.get("members")
            if isinstance(members, list) and index < len(members):
                found = members[index]
                return found if isinstance(found, dict) else None
            return None

        return self._first(lambda data: field in (member(data) or {})) or self._first(
            lambda data: member(data) is not None
        )


class _Builder:
    def __init__(self, where: str, lines: _KeyLines, base: Path) -> None:
        self.where = where
        self.lines = lines
        self.base = base

    def fail(self, field: str, problem: str, index: int | None = None) -> SpecError:
        key = field.rpartition(".")[2].partition("[")[0] if index is not None else field
        line = self.lines.of(key, index)
        at = f"{self.where}:{line}" if line else self.where
        name = f"members[{index}].{field}" if index is not None else field
        return SpecError(f"{at}: {name}: {problem}")

    def _str(self, value: Any, field: str, index: int | None = None) -> str:
        if not isinstance(value, str):
            raise self.fail(field, f"must be a string, got {_show(value)}", index)
        return value

    def _int(self, value: Any, field: str, minimum: int, index: int | None = None) -> int:
        if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
            raise self.fail(
                field, f"must be a whole number of at least {minimum}, got {_show(value)}", index
            )
        if value > common.MAX_NUMBER:
            raise self.fail(field, f"must be at most {common.MAX_NUMBER}, got {value}", index)
        return value

    def _unknown(self, data: Mapping[str, Any], known: tuple[str, ...], index: int | None) -> None:
        for key in data:
            if key not in known:
                raise self.fail(key, f"unknown key (known: {', '.join(known)})", index)

    def request(self, data: dict[str, Any]) -> clusters_pb2.CreateClusterRequest:
        self._unknown(data, TOP_KEYS, None)
        req = clusters_pb2.CreateClusterRequest()
        if "name" in data:
            req.name = self._str(data["name"], "name")
        if "affinity" in data:
            text = self._str(data["affinity"], "affinity")
            if text not in AFFINITIES:
                raise self.fail("affinity", f"{text!r} is not one of {', '.join(AFFINITIES)}")
            req.affinity = affinity_value(text)  # type: ignore[assignment]
        if "on_failure" in data:
            text = self._str(data["on_failure"], "on_failure")
            if text not in FAILURE_POLICIES:
                raise self.fail(
                    "on_failure", f"{text!r} is not one of {', '.join(FAILURE_POLICIES)}"
                )
            req.on_failure = failure_policy_value(text)  # type: ignore[assignment]
        if "wait_for_capacity_s" in data:
            req.wait_for_capacity_s = self._int(
                data["wait_for_capacity_s"], "wait_for_capacity_s", 0
            )
        self.policy(data, req)
        members = data.get("members")
        if members is None:
            raise self.fail("members", "missing: add at least one [[members]] table")
        if not isinstance(members, list) or not all(isinstance(m, dict) for m in members):
            raise self.fail("members", "must be an array of tables ([[members]])")
        if not members:
            raise self.fail("members", "the cluster needs at least one member")
        roles: dict[str, int] = {}
        for i, m in enumerate(members):
            member = self.member(m, i)
            first = roles.setdefault(member.role, i)
            if first != i:
                raise self.fail("role", f"{member.role!r} is already used by members[{first}]", i)
            req.members.append(member)
        return req

    def policy(self, data: dict[str, Any], req: clusters_pb2.CreateClusterRequest) -> None:
        """connectivity, allow and limits: every member's (the service checks values)."""
        if "connectivity" in data:
            req.connectivity = self._str(data["connectivity"], "connectivity")
        if "allow" in data:
            rules = data["allow"]
            if not isinstance(rules, list) or not all(isinstance(r, str) for r in rules):
                raise self.fail("allow", 'must be a list of rules, e.g. ["tcp/22"]')
            req.allow.extend(rules)
        if "limits" in data:
            limits = data["limits"]
            if not isinstance(limits, dict):
                raise self.fail("limits", "must be a table, e.g. { net_mbps = 50 }")
            for key, value in limits.items():
                if key not in LIMIT_KEYS:
                    raise self.fail("limits", f"{key}: unknown (known: {', '.join(LIMIT_KEYS)})")
                setattr(req.limits, key, self._int(value, f"limits.{key}", 0))

    def member(self, data: dict[str, Any], i: int) -> clusters_pb2.ClusterMember:
        self._unknown(data, MEMBER_KEYS, i)
        m = clusters_pb2.ClusterMember()
        for key in ("role", "image"):
            if key not in data:
                raise self.fail(key, "missing", i)
            value = self._str(data[key], key, i).strip()
            if not value:
                raise self.fail(key, "must not be empty", i)
            setattr(m, key, value)
        m.count = self._int(data.get("count", 1), "count", 1, i)
        if "cpus" in data:
            m.cpus = self._int(data["cpus"], "cpus", 1, i)
        if "memory_mib" in data:
            m.memory_mib = self._int(data["memory_mib"], "memory_mib", 1, i)
        if "networks" in data:
            nets = data["networks"]
            if not isinstance(nets, list) or not all(isinstance(n, str) and n for n in nets):
                raise self.fail("networks", "must be a list of network names", i)
            m.networks.extend(nets)
        if "requirements" in data:
            reqs = data["requirements"]
            if not isinstance(reqs, dict):
                raise self.fail("requirements", 'must be a table, e.g. { gpu = "1" }', i)
            for key, value in reqs.items():
                if isinstance(value, bool):
                    value = "true" if value else "false"
                elif isinstance(value, int):
                    value = str(value)
                elif not isinstance(value, str) or not value:
                    raise self.fail(
                        "requirements",
                        f"{key}: must be a string or whole number, got {_show(value)}",
                        i,
                    )
                m.requirements[key] = value
        if "blank" in data:
            disks = data["blank"]
            if not isinstance(disks, list) or not all(isinstance(d, str) for d in disks):
                raise self.fail("blank", 'must be a list, e.g. ["scratch:10GiB:ext4"]', i)
            for disk in disks:
                try:
                    m.extra_partitions.append(parse_blank(disk))
                except ValueError as exc:
                    raise self.fail("blank", str(exc), i) from None
        if "user_data" in data and "user_data_file" in data:
            raise self.fail("user_data_file", "give user_data or user_data_file, not both", i)
        if "user_data" in data:
            m.user_data = self._str(data["user_data"], "user_data", i).encode()
        if "user_data_file" in data:
            path = self.base / self._str(data["user_data_file"], "user_data_file", i)
            try:
                m.user_data = path.read_bytes()
            except OSError as exc:
                raise self.fail("user_data_file", f"{path}: {exc.strerror or exc}", i) from None
        return m


def _show(value: Any) -> str:
    if isinstance(value, str):
        return json.dumps(value)
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, dict):
        return "a table"
    if isinstance(value, list):
        return "an array"
    return repr(value)
