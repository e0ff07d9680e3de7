"""What ws and ws-admin share: global options, output (text tables or JSON), errors.

Exit codes: 0 success, 1 the request failed (the service or a local file said no),
2 usage error (argparse), 3 the service cannot be reached (or none is configured),
130 interrupted.

JSON output is ``google.protobuf.json_format.MessageToDict`` with proto field names,
every field present, int64 as numbers and enum values shortened to their last part
("RUNNING" rather than "WORKSPACE_STATE_RUNNING"); text tables use the same names.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import sys
from collections.abc import Callable, Iterable, Sequence
from datetime import UTC, datetime
from typing import Any, TextIO

from google.protobuf import json_format
from google.protobuf.descriptor import EnumDescriptor
from google.protobuf.message import Message
from google.protobuf.timestamp_pb2 import Timestamp

from workspace import errors
from workspace.client import Client
from workspace.v1 import common_pb2, images_pb2

EXIT_OK = 0
EXIT_REQUEST = 1
EXIT_USAGE = 2
EXIT_UNREACHABLE = 3
EXIT_INTERRUPTED = 130

# Builds the client for a --service value (None: from the environment / local site).
Connect = Callable[[str | None], Client]


class ClientCommands:
    """Base of a CLI's command handlers: one lazily made client per invocation."""

    def __init__(self, connect: Connect) -> None:
        self._connect = connect
        self._client: Client | None = None

    def client(self, args: argparse.Namespace) -> Client:
        if self._client is None:
            self._client = self._connect(args.service)
        return self._client

    def close(self) -> None:
        if self._client is not None:
            self._client.close()


def cli_main(
    prog: str,
    commands: Callable[[Connect], ClientCommands],
    build_parser: Callable[[Any], argparse.ArgumentParser],
    argv: list[str] | None,
    connect: Connect | None,
) -> int:
    """One CLI invocation: parse, run the handler, close the client."""
    cmds = commands(connect or default_connect)
    args = build_parser(cmds).parse_args(argv)
    try:
        return run(prog, args.func, args)
    finally:
        with contextlib.suppress(errors.WorkspaceError):
            cmds.close()


Handler = Callable[[argparse.Namespace], int]


class UsageError(Exception):
    """A combination of arguments argparse cannot check by itself (exit code 2)."""


# -- options -----------------------------------------------------------------------------


def add_global_options(parser: argparse.ArgumentParser, *, sub: bool = False) -> None:
    """--service and --output; on subcommands they default to "not given" so the
    values given before the subcommand are kept."""
    parser.add_argument(
        "--service",
        metavar="ADDR",
        default=argparse.SUPPRESS if sub else None,
        help="service address, host:port or unix:/path (default: $WS_SERVICE, else the local site)",
    )
    parser.add_argument(
        "--output",
        "-o",
        choices=("text", "json"),
        default=argparse.SUPPRESS if sub else "text",
        help="output format (default: text)",
    )


def options_parent() -> argparse.ArgumentParser:
    """A parent parser giving every subcommand the global options too."""
    parent = argparse.ArgumentParser(add_help=False)
    add_global_options(parent, sub=True)
    return parent


def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def non_negative_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be 0 or more, got {value}")
    return value


def seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number of seconds: {text!r}") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be more than 0 seconds, got {text}")
    return value


# -- protobuf to plain data --------------------------------------------------------------


def _enum_prefix(enum: EnumDescriptor) -> str:
    return re.sub(r"(?<!^)(?=[A-Z])", "_", enum.name).upper() + "_"


def enum_name(enum: EnumDescriptor, number: int) -> str:
    """The short name of an enum value: NodeState 1 -> "READY"."""
    value = enum.values_by_number.get(number)
    if value is None:
        return str(number)
    return value.name.removeprefix(_enum_prefix(enum))


def _plain(desc: Any, data: dict[str, Any]) -> dict[str, Any]:
    """Enum values shortened, keys in field order, recursively."""
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
        elif sub is None or sub.full_name.startswith("google.protobuf."):
            pass
        elif sub.GetOptions().map_entry:
            value_type = sub.fields_by_name["value"].message_type
            if value_type is not None and isinstance(value, dict):
                value = {k: _plain(value_type, v) for k, v in value.items()}
        elif isinstance(value, list):
            value = [_plain(sub, v) if isinstance(v, dict) else v for v in value]
        elif isinstance(value, dict):
            value = _plain(sub, value)
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
    return _plain(msg.DESCRIPTOR, data)


def print_json(data: Any, stream: TextIO | None = None) -> None:
    print(json.dumps(data, indent=2, sort_keys=False), file=stream or sys.stdout)


def print_json_line(data: Any) -> None:
    print(json.dumps(data, separators=(",", ":")), flush=True)


# -- text --------------------------------------------------------------------------------


def table(headers: Sequence[str], rows: Iterable[Sequence[object]]) -> str:
    """Left-aligned columns separated by two spaces; the last column is not padded."""
    cells = [[str(h) for h in headers]] + [[str(c) for c in row] for row in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    lines = []
    for row in cells:
        parts = [c.ljust(w) for c, w in zip(row[:-1], widths[:-1], strict=True)]
        lines.append("  ".join([*parts, row[-1]]).rstrip())
    return "\n".join(lines)


def fields(pairs: Iterable[tuple[str, object]]) -> str:
    """A "key  value" block for one object (empty values are left out)."""
    items = [(k, str(v)) for k, v in pairs if v not in ("", None)]
    width = max((len(k) for k, _ in items), default=0)
    return "\n".join(f"{k.ljust(width)}  {v}" for k, v in items)


def fmt_time(ts: Timestamp) -> str:
    if ts.seconds == 0 and ts.nanos == 0:
        return ""
    when = datetime.fromtimestamp(ts.seconds, tz=UTC)
    return when.strftime("%Y-%m-%dT%H:%M:%SZ")


def fmt_bytes(n: int) -> str:
    size = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024 or unit == "GiB":
            return f"{int(size)} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{n} B"  # pragma: no cover


# -- images (shown by ws and ws-admin) ---------------------------------------------------


def image_rows(images: Sequence[images_pb2.Image]) -> str:
    rows = []
    for img in images:
        size = sum(p.size_bytes for p in img.partitions)
        boot = "direct" if img.kernel_digest else "disk"
        rows.append(
            [img.name, len(img.partitions), fmt_bytes(size), boot, fmt_time(img.created_at)]
        )
    return table(["NAME", "PARTITIONS", "SIZE", "BOOT", "CREATED"], rows)


def image_text(img: images_pb2.Image) -> str:
    head = fields(
        [
            ("name", img.name),
            ("owner", img.owner),
            ("created_at", fmt_time(img.created_at)),
            ("kernel", img.kernel_digest),
            ("initrd", img.initrd_digest),
            ("cmdline", img.cmdline),
        ]
    )
    parts = table(
        ["PARTITION", "MODE", "FORMAT", "SIZE", "DIGEST"],
        [
            [
                p.name,
                enum_name(common_pb2.PartitionMode.DESCRIPTOR, p.mode),
                p.format,
                fmt_bytes(p.size_bytes),
                p.digest,
            ]
            for p in img.partitions
        ],
    )
    return f"{head}\n\n{parts}"


# -- running a command -------------------------------------------------------------------


def error(prog: str, message: str) -> None:
    """One line saying what went wrong (any further lines are context, indented)."""
    first, _, rest = message.strip().partition("\n")
    print(f"{prog}: error: {first}", file=sys.stderr)
    if rest:
        print(rest, file=sys.stderr)


def exit_code(exc: errors.WorkspaceError) -> int:
    return EXIT_UNREACHABLE if isinstance(exc, errors.Unavailable) else EXIT_REQUEST


def run(prog: str, handler: Handler, args: argparse.Namespace) -> int:
    """Run one command, turning every expected failure into a message and an exit code."""
    try:
        return handler(args)
    except UsageError as exc:
        error(prog, str(exc))
        return EXIT_USAGE
    except errors.WorkspaceError as exc:
        error(prog, exc.message)
        return exit_code(exc)
    except OSError as exc:
        if isinstance(exc, BrokenPipeError):
            # The reader went away (`ws list | head`): no traceback, no second error.
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, sys.stdout.fileno())
            return EXIT_REQUEST
        where = f"{exc.filename}: " if exc.filename else ""
        error(prog, f"{where}{exc.strerror or exc}")
        return EXIT_REQUEST
    except KeyboardInterrupt:
        print(f"{prog}: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED


def default_connect(service: str | None) -> Client:
    return Client.from_env(service)
