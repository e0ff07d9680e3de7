"""Everything ws and ws-admin print about a result: JSON or text, in one place.

Two output formats (``--output`` / ``-o``, default text):

* ``json``: ``google.protobuf.json_format.MessageToDict`` with proto field names,
  every field without presence printed (a message or ``optional`` field that is unset
  is absent), int64 as numbers and enum values shortened to their last part
  ("RUNNING" rather than "WORKSPACE_STATE_RUNNING"); a list command prints a JSON
  array, ``ws watch`` and the event commands one compact object per line.
* ``text``: a table for a list (``table``), a "key  value" block for one object
  (``fields``), one line for a state change; the same short enum names as JSON.

A command hands its result to ``emit(args, data, text)``; ``wants_json(args)`` is the
only place that reads the format. Some text views live beside this module and use its
helpers: workspace/cli/admin_text.py (nodes, networks, the queue, node caches),
usage_text.py, elastic_text.py. Progress and state-change lines go to stderr (in JSON
mode too), so stdout holds only the result. Every time is RFC 3339 UTC to the second
(``2026-11-30T08:00:00Z``: ``fmt_time``, and a Timestamp in ``to_dict``)."""

from __future__ import annotations

import argparse
import json
import re
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from datetime import UTC, datetime
from typing import Any, TextIO

from google.protobuf import json_format
from google.protobuf.descriptor import EnumDescriptor
from google.protobuf.message import Message
from google.protobuf.timestamp_pb2 import Timestamp

from images import signing
from workspace.cli import termfilter
from workspace.cli.elastic_text import autoscale_line
from workspace.client import cluster_state_name, rebooted, state_name
from workspace.client_waits import WAITING_PREFIX
from workspace.domain.sshkeys import fingerprint
from workspace.v1 import (
    clusters_pb2,
    common_pb2,
    images_pb2,
    trust_pb2,
    workspaces_pb2,
)

# csv: usage reports only (workspace/cli/common.py refuses it elsewhere).
FORMATS = ("text", "json", "csv")

_DESIRED = common_pb2.DesiredState.DESCRIPTOR
_AFFINITY = clusters_pb2.Affinity.DESCRIPTOR
_FAILURE_POLICY = clusters_pb2.FailurePolicy.DESCRIPTOR
_PARTITION_MODE = common_pb2.PartitionMode.DESCRIPTOR
_RUNNING = common_pb2.WorkspaceState.WORKSPACE_STATE_RUNNING

# What an empty image list says (ws and ws-admin).
NO_IMAGES = "no images; `ws image push NAME:VERSION DISK` adds one"


# -- the format --------------------------------------------------------------------------


def wants_json(args: argparse.Namespace) -> bool:
    """Whether this invocation prints JSON (``--output json``)."""
    return getattr(args, "output", "text") == "json"


def emit(args: argparse.Namespace, data: Any, text: str) -> None:
    """Print a command's result: ``data`` as JSON (messages, and lists of them, are
    converted with ``to_dict``), else ``text`` (nothing when it is empty) with every
    control character written out (``termfilter.plain``): text made of what users wrote
    (`ws key remove`'s "removed SSH key ... (COMMENT)") printed an escape sequence in a
    key's comment to the terminal as it was."""
    if wants_json(args):
        print_json(plain(data))
    elif text:
        print(termfilter.plain(text))


def emit_list(
    args: argparse.Namespace,
    items: Sequence[Any],
    rows: Callable[[Any], str],
    none: str,
    item_json: Callable[[Any], Any] = lambda item: item,
) -> None:
    """Print a list command's result: ``items`` as a JSON array (each made JSON by
    ``item_json``, then ``plain``), else the text ``rows`` makes of them. An empty list
    prints nothing on stdout (a script reading it sees no rows), and ``none`` on stderr:
    what is empty and how to fill it."""
    if items or wants_json(args):
        emit(args, [item_json(item) for item in items], rows(items) if items else "")
    else:
        print(none, file=sys.stderr)


# -- protobuf to plain data --------------------------------------------------------------


def _enum_prefix(enum: EnumDescriptor) -> str:
    return re.sub(r"(?<!^)(?=[A-Z])", "_", enum.name).upper() + "_"


def enum_name(enum: EnumDescriptor, number: int) -> str:
    """The short name of an enum value: NodeState 1 -> "READY"."""
    value = enum.values_by_number.get(number)
    if value is None:
        return str(number)
    return value.name.removeprefix(_enum_prefix(enum))


_TIMESTAMP = Timestamp.DESCRIPTOR.full_name
# The fraction MessageToDict gives a Timestamp with nanoseconds (0, 3, 6 or 9 digits).
_FRACTION = re.compile(r"\.\d+(?=Z$)")


def _whole_seconds(value: Any) -> Any:
    """A Timestamp's RFC 3339 text to the second, as every time the CLIs print
    (``2026-11-30T08:00:00Z``, what jq's ``fromdate`` reads; it refused
    ``2026-11-30T08:00:00.064617472Z``)."""
    if isinstance(value, list):
        return [_whole_seconds(v) for v in value]
    return _FRACTION.sub("", value) if isinstance(value, str) else value


def _shortened(desc: Any, data: dict[str, Any]) -> dict[str, Any]:
    """Enum values shortened, times to the second, keys in field order, recursively."""
    out: dict[str, Any] = {}
    for field in desc.fields:
        if field.name not in data:
            continue
        value = data[field.name]
        sub = field.message_type
        if field.enum_type is not None:
            prefix = _enum_prefix(field.enum_type)
            if isinstance(value, list):
                value = [str(v).removeprefix(prefix) for v in value]
            else:
                value = str(value).removeprefix(prefix)
        elif sub is not None and sub.full_name == _TIMESTAMP:
            value = _whole_seconds(value)
        elif sub is None or sub.full_name.startswith("google.protobuf."):
            pass
        elif sub.GetOptions().map_entry:
            value_type = sub.fields_by_name["value"].message_type
            if value_type is not None and isinstance(value, dict):
                value = {k: _shortened(value_type, v) for k, v in value.items()}
        elif isinstance(value, list):
            value = [_shortened(sub, v) if isinstance(v, dict) else v for v in value]
        elif isinstance(value, dict):
            value = _shortened(sub, value)
        out[field.name] = value
    return out


def to_dict(msg: Message) -> dict[str, Any]:
    """A message as JSON-ready data (see the module docstring)."""
    data = json_format.MessageToDict(
        msg,
        always_print_fields_with_no_presence=True,
        preserving_proto_field_name=True,
        unquote_int64_if_possible=True,
    )
    return _shortened(msg.DESCRIPTOR, data)


def plain(data: Any) -> Any:
    """``data`` with every message (also inside lists) made a dict by ``to_dict``."""
    if isinstance(data, Message):
        return to_dict(data)
    if isinstance(data, list | tuple):
        return [plain(item) for item in data]
    return data


def print_json(data: Any, stream: TextIO | None = None) -> None:
    print(json.dumps(data, indent=2, sort_keys=False), file=stream or sys.stdout)


def print_json_line(data: Any) -> None:
    print(json.dumps(data, separators=(",", ":")), flush=True)


# -- text --------------------------------------------------------------------------------


def table(headers: Sequence[str], rows: Iterable[Sequence[object]]) -> str:
    """Left-aligned columns separated by two spaces; the last column is not padded."""
    # A cell is one line: a newline in one (a comment) made a row of its own making.
    cells = [[str(h) for h in headers]] + [
        [termfilter.one_line(str(c)) for c in row] for row in rows
    ]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    lines = []
    for row in cells:
        parts = [c.ljust(w) for c, w in zip(row[:-1], widths[:-1], strict=True)]
        lines.append("  ".join([*parts, row[-1]]).rstrip())
    return "\n".join(lines)


def fields(pairs: Iterable[tuple[str, object]]) -> str:
    """A "key  value" block for one object (empty values are left out)."""
    items = [(k, termfilter.plain(str(v))) for k, v in pairs if v not in ("", None)]
    width = max((len(k) for k, _ in items), default=0)
    return "\n".join(f"{k.ljust(width)}  {v}" for k, v in items)


def fmt_time(ts: Timestamp) -> str:
    if ts.seconds == 0 and ts.nanos == 0:
        return ""
    return _iso(ts.seconds)


def fmt_epoch(epoch_s: float) -> str:
    """``2026-11-30T08:00:00Z``, as every time in the CLIs' output ("" for 0: unset)."""
    return _iso(int(epoch_s)) if epoch_s else ""


def _iso(seconds: int) -> str:
    return datetime.fromtimestamp(seconds, tz=UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def fmt_bytes(n: int) -> str:
    size = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024 or unit == "GiB":
            return f"{int(size)} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{n} B"  # pragma: no cover


def blank_text(p: common_pb2.Partition) -> str:
    """A blank partition as ``--blank`` takes it: ``scratch:10GiB:ext4``."""
    size = f"{p.size_bytes}B"
    for unit, factor in (("TiB", 2**40), ("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if p.size_bytes >= factor and p.size_bytes % factor == 0:
            size = f"{p.size_bytes // factor}{unit}"
            break
    return f"{p.name}:{size}{':ext4' if p.ext4 else ''}"


def _ips(nics: Iterable[common_pb2.Nic]) -> str:
    return ",".join(n.ip for n in nics if n.ip) or "-"


def _say(prog: str, line: str) -> None:
    print(f"{prog}: {line}", file=sys.stderr, flush=True)


# -- workspaces --------------------------------------------------------------------------


def _label(ws: common_pb2.Workspace) -> str:
    return f"{ws.name} ({ws.id})" if ws.name and ws.name != ws.id else ws.id


def _nic_text(nic: common_pb2.Nic) -> str:
    addr = f"{nic.ip}/{nic.prefix_len}" if nic.ip and nic.prefix_len else nic.ip or "-"
    gateway = f" gateway {nic.gateway}" if nic.gateway else ""
    return f"{nic.network} {addr} mac {nic.mac or '-'}{gateway}"


def workspace_text(ws: common_pb2.Workspace) -> str:
    pairs: list[tuple[str, object]] = [
        ("id", ws.id),
        ("name", ws.name),
        ("state", state_name(ws.state)),
        ("desired", enum_name(_DESIRED, ws.desired_state)),
        ("reason", termfilter.one_line(ws.reason)),  # a node's: no row of its making
        ("image", ws.image),
        ("cpus", ws.cpus),
        ("memory_mib", ws.memory_mib),
        ("node", ws.node),
        ("lease_ends", lease_end_text(ws)),
    ]
    pairs += [("nic", _nic_text(n)) for n in ws.nics]
    pairs += [("disk", disk_text(d)) for d in ws.disks]
    pairs += [
        ("cluster", ws.cluster),
        ("role", ws.role),
        ("owner", ws.owner),
        ("project", ws.project),
        ("class", "preemptible" if ws.preemptible else ""),
        ("reboot_count", reboots_text(ws)),
        ("login_user", ws.login_user),
        # connectivity, then the allow rules ("policy": no wider than the other keys)
        ("policy", netpolicy_text(ws.connectivity, list(ws.allow))),
        ("limits", limits_text(ws.limits)),
        ("saving", saving_text(ws)),
    ]
    pairs += [("host_key", f"{fingerprint(k)} ({k.split()[0]})") for k in ws.host_keys if k]
    if ws.login_user:  # a guest ws ssh logs in to: the keys it takes
        pairs += [("ssh_key", k) for k in ws.ssh_keys] or [("ssh_key", "none")]
    pairs += [
        ("request_id", ws.request_id),
        ("created_at", fmt_time(ws.created_at)),
        ("updated_at", fmt_time(ws.updated_at)),
    ]
    return fields(pairs)


def disk_text(p: common_pb2.Partition) -> str:
    """One disk of a workspace: ``scratch BLANK raw 8.0 MiB ext4`` (the size the guest sees)."""
    size = fmt_bytes(p.virtual_size_bytes or p.size_bytes)
    ext4 = " ext4" if p.ext4 else ""
    return f"{p.name} {enum_name(_PARTITION_MODE, p.mode)} {p.format or '-'} {size}{ext4}"


def saving_text(ws: common_pb2.Workspace) -> str:
    """``as image env:2: disk root, 1.0 MiB of 2.0 MiB sent`` ("": no save under way)."""
    if not ws.saving_as:
        return ""
    return f"as image {ws.saving_as}: {save_step(ws)}"


def save_step(ws: common_pb2.Workspace) -> str:
    """Where a save is: its node copying a disk (how far), or a disk being sent (how
    much of it)."""
    if not ws.saving_disk:
        return "its node copies its disks"
    if copying(ws):
        return f"disk {ws.saving_disk}, its node's copy {ws.saving_copied_percent:.0f} % made"
    sent = fmt_bytes(ws.saving_sent_bytes)
    if ws.saving_size_bytes:
        sent += f" of {fmt_bytes(ws.saving_size_bytes)}"
    return f"disk {ws.saving_disk}, {sent} sent"


def copying(ws: common_pb2.Workspace) -> bool:
    """Its node is still copying ``saving_disk``: the service has not begun to receive it
    (whose first message says its size)."""
    return not (ws.saving_size_bytes or ws.saving_sent_bytes)


def reboots_text(ws: common_pb2.Workspace) -> str:
    """``3 (2 carried out)``: the reboots asked for, and of those the ones the node
    carried out, when it says ("": none asked)."""
    if not ws.reboot_count:
        return ""
    if not ws.HasField("applied_reboot_count"):
        return f"{ws.reboot_count} (its node does not report them carried out)"
    return f"{ws.reboot_count} ({ws.applied_reboot_count} carried out)"


def limits_text(lim: common_pb2.Limits) -> str:
    """``cpu_percent=25 net_mbps=50`` (the set ones; "" for none)."""
    names = ("cpu_percent", "cpu_weight", "disk_mbps", "disk_iops", "net_mbps")
    return " ".join(f"{n}={getattr(lim, n)}" for n in names if getattr(lim, n))


def workspace_rows(items: Sequence[common_pb2.Workspace], whose: bool = False) -> str:
    """One row per workspace; with more than one owner among them (a project's), or
    ``whose`` (an admin's ``--all-users``, which asks whose each is), OWNER and PROJECT
    after NAME: two rows named ``c1`` are told apart."""
    shared = whose or len({ws.owner for ws in items}) > 1
    rows = [
        [
            ws.id,
            ws.name or "-",
            *((ws.owner, ws.project or "-") if shared else ()),
            state_name(ws.state),
            ws.image,
            ws.cpus,
            ws.memory_mib,
            ws.node or "-",
            _ips(ws.nics),
        ]
        for ws in items
    ]
    who = ("OWNER", "PROJECT") if shared else ()
    return table(["ID", "NAME", *who, "STATE", "IMAGE", "CPUS", "MEMORY_MIB", "NODE", "IP"], rows)


def lease_end_text(ws: common_pb2.Workspace) -> str:
    """When the lease ends ("" = no lease), "(ended)" once it has."""
    if not ws.HasField("lease_expires_at"):
        return ""
    ended = " (ended)" if ws.lease_expires_at.seconds <= time.time() else ""
    return fmt_time(ws.lease_expires_at) + ended


def lease_line(ws: common_pb2.Workspace) -> str:
    return f"{_label(ws)}: lease ends at {fmt_time(ws.lease_expires_at)}"


def state_line(ws: common_pb2.Workspace, asked: str = "") -> str:
    reason = f"  ({termfilter.one_line(ws.reason)})" if ws.reason else ""
    return f"{_label(ws)}: {state_name(ws.state)}{asked}{reason}"


def requested_line(ws: common_pb2.Workspace) -> str:
    """The state line of a workspace just asked to change: with what was asked while the
    node has not acted yet (`ws pause`: "RUNNING, PAUSED requested"; `ws reboot`:
    "RUNNING, reboot requested" until its node reports the reboot carried out)."""
    desired, state = enum_name(_DESIRED, ws.desired_state), state_name(ws.state)
    if state == "RUNNING" and desired == state and rebooted(ws, ws.reboot_count) is False:
        return state_line(ws, ", reboot requested")
    if desired in ("UNSPECIFIED", state) or state not in ("RUNNING", "PAUSED", "STOPPED"):
        return state_line(ws)  # (a state on its way, STOPPING, says so itself)
    return state_line(ws, f", {desired} requested")


def watch_event(args: argparse.Namespace, event: workspaces_pb2.WorkspaceEvent) -> None:
    """One `ws watch` event: a compact JSON object per line, or a timestamped state line."""
    if wants_json(args):
        print_json_line(to_dict(event))
    else:
        print(f"{time.strftime('%H:%M:%S')}  {state_line(event.workspace)}", flush=True)


def console_dict(ws: common_pb2.Workspace, data: bytes) -> dict[str, str]:
    """`ws console -o json`: the workspace's id and name (as `ws show` gives them) and
    its console log as text (invalid UTF-8 replaced)."""
    return {"id": ws.id, "name": ws.name, "data": data.decode("utf-8", errors="replace")}


def netpolicy_text(connectivity: str, allow: list[str]) -> str:
    """``outbound; allow tcp/22``; an open workspace's rules are kept for a later
    change of connectivity but open nothing now: said so."""
    if not allow:
        return connectivity
    text = f"{connectivity}; allow {','.join(allow)}"
    return text + " (unused while open)" if connectivity == "open" else text


def console(data: bytes) -> None:
    """`ws console`: the log's bytes as they are (ending in a newline); to a terminal,
    without the string escape sequences that would act on it (termfilter.py)."""
    if sys.stdout.isatty():
        f = termfilter.Filter()
        data = f.feed(data) + f.flush()
    sys.stdout.buffer.write(data)
    if data and not data.endswith(b"\n"):
        sys.stdout.buffer.write(b"\n")
    sys.stdout.flush()


def workspace_progress(prog: str) -> Callable[[common_pb2.Workspace], None]:
    """``on_change`` for Client.wait_for_state: a state line on stderr (in JSON mode too:
    stdout holds only the result)."""

    def on_change(ws: common_pb2.Workspace) -> None:
        _say(prog, state_line(ws))

    return on_change


def reboot_progress(prog: str, reboot_count: int) -> Callable[[common_pb2.Workspace], None]:
    """``on_change`` for Client.wait_for_reboot: a line on stderr whenever the state or
    the reboots carried out change ("RUNNING, reboot requested", "RUNNING, rebooted"; in
    JSON mode too)."""

    def on_change(ws: common_pb2.Workspace) -> None:
        done = rebooted(ws, reboot_count)
        _say(
            prog,
            state_line(ws, "" if done is None else ", rebooted" if done else ", reboot requested"),
        )

    return on_change


# -- clusters ----------------------------------------------------------------------------


def _cluster_label(c: clusters_pb2.Cluster) -> str:
    return f"{c.name} ({c.id})" if c.name and c.id and c.name != c.id else c.name or c.id


def _running(c: clusters_pb2.Cluster) -> str:
    """Members RUNNING of those the spec asks for (a member destroyed on its own is
    missing from them: 1/2), or of those listed if there is no spec."""
    up = sum(1 for m in c.members if m.state == _RUNNING)
    return f"{up}/{sum(m.count for m in c.spec) or len(c.members)}"


def cluster_rows(items: Sequence[clusters_pb2.Cluster], whose: bool = False) -> str:
    """One row per cluster; OWNER and PROJECT after NAME when more than one owner is
    among them, or ``whose`` (as ``workspace_rows``)."""
    shared = whose or len({c.owner for c in items}) > 1
    rows = [
        [
            c.id,
            c.name,
            *((c.owner, c.project or "-") if shared else ()),
            cluster_state_name(c.state),
            _running(c),
            enum_name(_AFFINITY, c.affinity),
            fmt_time(c.created_at) or "-",
        ]
        for c in items
    ]
    who = ("OWNER", "PROJECT") if shared else ()
    return table(["ID", "NAME", *who, "STATE", "RUNNING", "AFFINITY", "CREATED"], rows)


def _first_lease(c: clusters_pb2.Cluster) -> tuple[common_pb2.Workspace | None, bool]:
    """The member whose lease ends first (None: no member has one), and whether the
    members' ends differ (extended apart; they share the lease given at create)."""
    leased = [m for m in c.members if m.HasField("lease_expires_at")]
    if not leased:
        return None, False
    first = min(leased, key=lambda m: m.lease_expires_at.ToNanoseconds())
    return first, len({m.lease_expires_at.seconds for m in leased}) > 1


def cluster_lease_text(c: clusters_pb2.Cluster) -> str:
    """When the cluster's lease ends ("" = none): the first of its members'."""
    first, apart = _first_lease(c)
    if first is None:
        return ""
    return lease_end_text(first) + (f" (the first: {first.name}'s)" if apart else "")


def cluster_dict(c: clusters_pb2.Cluster) -> dict[str, Any]:
    """A cluster as JSON: its fields, and ``lease_expires_at`` as ``lease_ends`` shows it
    (the first of its members' ends; absent without a lease, as a workspace's is)."""
    data = to_dict(c)
    first, _ = _first_lease(c)
    if first is not None:
        data["lease_expires_at"] = to_dict(first)["lease_expires_at"]
    return data


def cluster_text(c: clusters_pb2.Cluster) -> str:
    head = fields(
        [
            ("id", c.id),
            ("name", c.name),
            ("state", cluster_state_name(c.state)),
            ("reason", termfilter.one_line(c.reason)),
            ("running", _running(c)),
            ("lease_ends", cluster_lease_text(c)),
            ("affinity", enum_name(_AFFINITY, c.affinity)),
            ("on_failure", enum_name(_FAILURE_POLICY, c.on_failure)),
            ("owner", c.owner),
            ("project", c.project),
            ("class", "preemptible" if c.preemptible else ""),
            ("request_id", c.request_id),
            ("created_at", fmt_time(c.created_at)),
            ("updated_at", fmt_time(c.updated_at)),
        ]
    )
    spec = table(
        ["ROLE", "IMAGE", "COUNT", "CPUS", "MEMORY_MIB", "NETWORKS", "REQUIREMENTS", "BLANK"],
        [
            [
                m.role,
                m.image,
                m.count,  # 0: scaled away (`ws cluster scale --count 0`), not 1
                m.cpus or "-",
                m.memory_mib or "-",
                ",".join(m.networks) or "-",
                ",".join(f"{k}={v}" for k, v in sorted(m.requirements.items())) or "-",
                ",".join(blank_text(x) for x in m.extra_partitions) or "-",
            ]
            for m in c.spec
        ],
    )
    members = table(
        ["NAME", "ROLE", "STATE", "NODE", "IP"],
        [
            [m.name, m.role or "-", state_name(m.state), m.node or "-", _ips(m.nics)]
            for m in c.members
        ],
    )
    parts = [head]
    if c.autoscale:
        parts.append("\n".join(autoscale_line(a) for a in c.autoscale))
    if c.spec:
        parts.append(spec)
    if c.members:
        parts.append(members)
    return "\n\n".join(parts)


def cluster_state_line(c: clusters_pb2.Cluster) -> str:
    reason = f"  ({c.reason})" if c.reason else ""
    members = f", {_running(c)} members RUNNING" if c.members else ""
    return f"cluster {_cluster_label(c)}: {cluster_state_name(c.state)}{members}{reason}"


def cluster_progress(prog: str) -> Callable[[clusters_pb2.Cluster], None]:
    """``on_change`` for Client.wait_for_cluster_state: a line on stderr when the
    cluster's state or reason (a waiting cluster's place in the queue) changes and one
    per member state change (in JSON mode too)."""
    last: list[tuple[int, str]] = []
    members: dict[str, int] = {}

    def on_change(c: clusters_pb2.Cluster) -> None:
        lines = []
        if last != [(c.state, c.reason)]:
            last[:] = [(c.state, c.reason)]
            lines.append(cluster_state_line(c))
        for m in c.members:
            if members.get(m.id) != m.state:
                members[m.id] = m.state
                lines.append(f"  {state_line(m)}")
        for line in lines:
            _say(prog, line)

    return on_change


def scale_progress(
    prog: str, added: Sequence[str]
) -> Callable[[clusters_pb2.Cluster], None] | None:
    """``on_change`` for a `ws cluster scale --wait` that adds members: a line on stderr
    when how many of them run, or why they still wait (their place in the capacity
    queue), changes (in JSON mode too; none for a scale that adds none: a shrink)."""
    if not added:
        return None
    new, last = set(added), [""]

    def on_change(c: clusters_pb2.Cluster) -> None:
        mine = [m for m in c.members if m.name in new]
        up = sum(1 for m in mine if m.state == _RUNNING)
        why = next((m.reason for m in mine if m.reason.startswith(WAITING_PREFIX)), "")
        line = f"cluster {_cluster_label(c)}: {up}/{len(new)} new members RUNNING"
        line += f"  ({termfilter.one_line(why)})" if why else ""
        if line != last[0]:
            last[0] = line
            _say(prog, line)

    return on_change


# -- images ------------------------------------------------------------------------------


def image_boot(img: images_pb2.Image) -> str:
    """How the image boots: "direct" (its own kernel) or "disk" (its disk's bootloader)."""
    return "direct" if img.kernel_digest else "disk"


def image_dict(img: images_pb2.Image) -> dict[str, Any]:
    """An image as JSON: its fields, and ``boot`` as the BOOT column shows it."""
    return {**to_dict(img), "boot": image_boot(img)}


def image_rows(images: Sequence[images_pb2.Image]) -> str:
    """`ws image list` and `ws-admin image list`."""
    rows = [
        [
            img.name,
            len(img.partitions),
            fmt_bytes(img.total_bytes),
            image_boot(img),
            img.owner,
            fmt_time(img.created_at),
        ]
        for img in images
    ]
    return table(["NAME", "PARTITIONS", "SIZE", "BOOT", "OWNER", "CREATED"], rows)


def image_text(img: images_pb2.Image) -> str:
    """`ws image show|push` and `ws-admin image import`."""
    head = fields(
        [
            ("name", img.name),
            ("owner", img.owner),
            ("project", img.project),
            ("public", "yes" if img.public else ""),
            ("created_at", fmt_time(img.created_at)),
            ("total", fmt_bytes(img.total_bytes)),
            ("kernel", img.kernel_digest),
            ("initrd", img.initrd_digest),
            ("cmdline", img.cmdline),
            ("context", img.context or "none"),
            ("login_user", img.login_user),
        ]
    )
    parts = table(
        ["PARTITION", "MODE", "FORMAT", "SIZE", "VIRTUAL", "DIGEST"],
        [
            [
                p.name,
                enum_name(_PARTITION_MODE, p.mode) + (" ext4" if p.ext4 else ""),
                p.format,
                fmt_bytes(p.size_bytes) if p.digest else "-",
                fmt_bytes(p.virtual_size_bytes or p.size_bytes),
                p.digest or "-",
            ]
            for p in img.partitions
        ],
    )
    return f"{head}\n\n{parts}"


def usage_text(u: images_pb2.RepositoryUsage) -> str:
    quota = fmt_bytes(u.quota_bytes) if u.quota_bytes else "none"
    free = fmt_bytes(max(0, u.quota_bytes - u.used_bytes)) if u.quota_bytes else ""
    return fields(
        [("owner", u.owner), ("used", fmt_bytes(u.used_bytes)), ("quota", quota), ("free", free)]
    )


# -- image trust -------------------------------------------------------------------------


def signatures_text(sigs: trust_pb2.ImageSignatures) -> str:
    verdict = "trusted" if sigs.trusted else "NOT trusted"
    signers = ", ".join(k[:16] for k in signing.signers(sigs.envelopes_json)) or "none"
    return fields(
        [
            ("image", sigs.image),
            ("signatures", f"{len(sigs.envelopes_json)} (by {signers})"),
            ("verdict", f"{verdict}: {sigs.reason}"),
            ("policy", f"v{sigs.policy_version}"),
        ]
    )


def policy_text(p: trust_pb2.TrustPolicy) -> str:
    mode = "enforce" if p.mode == trust_pb2.TRUST_MODE_ENFORCE else "warn"
    head = f"policy v{p.version}, mode {mode}" + (
        ", running VMs stopped on revoke" if p.stop_running_on_revoke else ""
    )
    rows = [
        [
            k.key_id[:16],
            ",".join(k.image_patterns),
            fmt_time(k.expires_at) if k.HasField("expires_at") else "never",
            "REVOKED" if k.revoked else "ok",
            k.comment,
        ]
        for k in p.keys
    ]
    out = (p.change + "\n" if p.change else "") + head
    if rows:
        out += "\n" + table(["KEY", "IMAGES", "EXPIRES", "STATE", "COMMENT"], rows)
    if p.revoked_digests:
        out += "\nrevoked digests:\n" + "\n".join(f"  {d}" for d in p.revoked_digests)
    return out


def _audited_workspace(e: trust_pb2.AuditEntry) -> str:
    """The WORKSPACE of an audit entry: its id; a create refused after its decision made
    none: the name it asked for, "(not made)"."""
    if e.workspace_id:
        return e.workspace_id
    return f"{e.workspace_name} (not made)" if e.workspace_name else "-"


def audit_text(entries: Sequence[trust_pb2.AuditEntry]) -> str:
    rows = [
        [
            fmt_time(e.at),
            e.where,
            e.action,
            e.image,
            e.verdict,
            e.key_id[:16] or "-",
            f"v{e.policy_version}",
            _audited_workspace(e),
            e.reason,
        ]
        for e in entries
    ]
    headers = ["AT", "WHERE", "ACTION", "IMAGE", "VERDICT", "KEY", "POLICY", "WORKSPACE", "WHY"]
    return table(headers, rows)


# -- upload progress (stderr) ------------------------------------------------------------
