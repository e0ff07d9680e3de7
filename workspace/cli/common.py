"""What ws and ws-admin share: the global options, argument types, running one command
and its exit code. What a command prints is rendered by workspace/cli/render.py.

Exit codes: 0 success, 1 the request failed (the service or a local file said no),
2 usage error (argparse), 3 the service cannot be reached (or none is configured),
130 interrupted.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import re
import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any, NoReturn

from workspace import errors, version
from workspace.cli import render, termfilter
from workspace.client import Client

EXIT_OK = 0
EXIT_REQUEST = 1
EXIT_USAGE = 2
EXIT_UNREACHABLE = 3
EXIT_INTERRUPTED = 130

# Builds the client for a --service value (None: from the environment / local site);
# called with a second argument, the --identity directory, when one was given.
Connect = Callable[..., Client]
# The connected client for a command's parsed arguments (ClientCommands.client).
ClientFor = Callable[[argparse.Namespace], Client]


class ClientCommands:
    """Base of a CLI's command handlers: one lazily made client per invocation."""

    def __init__(self, connect: Connect) -> None:
        self._connect = connect
        self._client: Client | None = None

    def client(self, args: argparse.Namespace) -> Client:
        if self._client is None:
            identity = getattr(args, "identity", None)
            if identity:
                self._client = self._connect(args.service, identity)
            else:
                self._client = self._connect(args.service)
        return self._client

    def close(self) -> None:
        if self._client is not None:
            self._client.close()


# An argument argparse takes for an option it does not know: ``-5h``, ``-1``.
_NEGATIVE = re.compile(r"-\.?\d")
# What argparse says when it did (the value missing, or left over).
_MISREAD = re.compile(
    r"^the following arguments are required|^unrecognized arguments|expected one argument"
)


class Parser(argparse.ArgumentParser):
    """An ArgumentParser whose usage errors are one line on stderr, exit 2, naming the
    command and where its usage is (``ws create: error: argument --cpus: invalid int
    value: 'abc' (ws create --help for usage)``): plain argparse prints the whole usage
    block first, a dozen lines that bury the one that says what is wrong. Subcommands
    report arguments they do not know themselves (``ws list: error: unrecognized
    arguments: --bogus``); plain argparse leaves them to the top-level parser, whose usage
    is of no help there. Subparsers are made of the parser's own class, so one at the top
    is enough (ws, ws-admin, ws-slurm).

    A negative value (``ws lease extend box -5h``) is read by argparse as an option it
    does not know, and the error it gave named something else ("the following arguments
    are required: duration"); it is named as refused instead, with ``negative`` (a
    subcommand's own words: "a lease cannot be shortened") if given."""

    def __init__(self, *args: Any, negative: str = "", **kw: Any) -> None:
        super().__init__(*args, **kw)
        self.negative = negative or "a negative value is not taken here"
        self.given: list[str] = []

    def error(self, message: str) -> NoReturn:
        negative = [a for a in self.given if _NEGATIVE.match(a)]
        if negative and _MISREAD.search(message):
            message = f"{negative[0]!r}: {self.negative}"
        print(f"{self.prog}: error: {message} ({self.prog} --help for usage)", file=sys.stderr)
        sys.exit(EXIT_USAGE)

    def parse_known_args(  # type: ignore[override]
        self, args: list[str] | None = None, namespace: argparse.Namespace | None = None
    ) -> tuple[argparse.Namespace, list[str]]:
        self.given = list(sys.argv[1:] if args is None else args)
        parsed, extras = super().parse_known_args(args, namespace)
        if extras:
            self.error(f"unrecognized arguments: {' '.join(extras)}")
        return parsed, extras


def cli_main(
    prog: str,
    commands: Callable[[Connect], ClientCommands],
    build_parser: Callable[[Any], argparse.ArgumentParser],
    argv: list[str] | None,
    connect: Connect | None,
) -> int:
    """One CLI invocation: parse, run the handler, close the client."""
    cmds = commands(connect or default_connect)
    parser = build_parser(cmds)
    args = parser.parse_args(argv)
    if getattr(args, "output", "text") == "csv" and not getattr(args, "csv", False):
        parser.error("--output csv is only for usage reports (`ws usage`, `ws-admin usage`)")
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
    """--service, --identity and --output; on subcommands they default to "not given" so the
    values given before the subcommand are kept."""
    parser.add_argument(
        "--service",
        metavar="ADDR",
        default=argparse.SUPPRESS if sub else None,
        help="service address, host:port or unix:/path; several replicas: comma-separated, "
        "tried in turn (default: $WS_SERVICE, else the local site)",
    )
    parser.add_argument(
        "--identity",
        metavar="DIR",
        default=argparse.SUPPRESS if sub else None,
        help="identity directory (ca.pem, cert.pem, key.pem from `ws-admin pki issue`) to "
        "call the service with (default: $WS_IDENTITY, else the local site's admin identity)",
    )
    parser.add_argument(
        "--output",
        "-o",
        choices=render.FORMATS,
        default=argparse.SUPPRESS if sub else "text",
        help="output format: text (default), json (every command), csv (usage reports)",
    )
    if not sub:
        version.add_option(parser)


def options_parent() -> argparse.ArgumentParser:
    """A parent parser giving every subcommand the global options too."""
    parent = argparse.ArgumentParser(add_help=False)
    add_global_options(parent, sub=True)
    return parent


# The largest number any numeric option takes (the API's 32-bit fields): a larger one is
# a usage error here, not a failure to build the request.
MAX_NUMBER = 2**31 - 1


def bounded_int(text: str, low: int) -> int:
    """``text`` as a whole number from ``low`` to MAX_NUMBER (ArgumentTypeError if not)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
    if value < low:
        raise argparse.ArgumentTypeError(
            f"must be at least 1, got {value}" if low == 1 else f"must be 0 or more, got {value}"
        )
    if value > MAX_NUMBER:
        raise argparse.ArgumentTypeError(f"must be at most {MAX_NUMBER}, got {value}")
    return value


def positive_int(text: str) -> int:
    return bounded_int(text, 1)


def non_negative_int(text: str) -> int:
    return bounded_int(text, 0)


def seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number of seconds: {text!r}") from None
    if not value > 0:  # (NaN too)
        raise argparse.ArgumentTypeError(f"must be more than 0 seconds, got {text}")
    if value > MAX_NUMBER:
        raise argparse.ArgumentTypeError(f"must be at most {MAX_NUMBER} seconds, got {text}")
    return value


def add_wait_timeout(p: argparse.ArgumentParser, default: str, *, old_name: bool = True) -> None:
    """How long ``--wait`` waits, the same on every command that has it: ``--wait-timeout
    S`` (``args.wait_timeout``; None: not given), and its older name ``--timeout S`` unless
    ``old_name`` is False (``ws stop``, where ``--timeout`` is the clean shutdown's).
    ``default``: what the help says it is when not given."""
    names = ["--wait-timeout", "--timeout"] if old_name else ["--wait-timeout"]
    p.add_argument(
        *names,
        dest="wait_timeout",
        type=seconds,
        metavar="S",
        help=f"with --wait: give up after S seconds (default {default})"
        + ("; --timeout is its older name" if old_name else ""),
    )


_DURATION_PART = re.compile(r"(\d+)([smhdw])")
_UNIT_S = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}
DURATION_FORMAT = "e.g. 8h, 90m, 1h30m, 7d (units s, m, h, d, w)"


def duration_s(text: str) -> int:
    """``8h``, ``1h30m``, ``7d``, ``45s`` (or plain seconds) as seconds, more than 0."""
    t = text.strip().lower()
    negative = t[1:] if t.startswith("-") else ""
    if negative and (negative.isdigit() or _DURATION_PART.sub("", negative) == ""):
        raise argparse.ArgumentTypeError(f"a duration must be more than 0, got {text!r}")
    if t.isdigit():
        value = int(t)
    elif t and _DURATION_PART.sub("", t) == "":
        value = sum(int(n) * _UNIT_S[u] for n, u in _DURATION_PART.findall(t))
    else:
        raise argparse.ArgumentTypeError(f"not a duration: {text!r}; {DURATION_FORMAT}")
    if value <= 0:
        raise argparse.ArgumentTypeError(f"a duration must be more than 0, got {text!r}")
    if value > MAX_NUMBER:
        raise argparse.ArgumentTypeError(
            f"a duration must be at most {MAX_NUMBER} s (68 years), got {text!r}"
        )
    return value


def lease_duration_s(text: str) -> int:
    """A lease's length (``--lease``, ``ws lease extend``, a project's lease): as
    duration_s, but a number needs its unit. A lease stops (or destroys) the workspace
    when it ends, and ``--lease 8`` meant as 8 hours would end it after 8 seconds."""
    t = text.strip()
    if t.isdigit() and int(t) > 0:
        raise argparse.ArgumentTypeError(
            f"{text!r} has no unit: {t}h, {t}m or {t}s? ({DURATION_FORMAT})"
        )
    return duration_s(text)


# What point_in_time takes, for --since/--until help.
TIME_FORMAT = (
    "an ISO 8601 date or time (2026-11-01 or 20261101, 2026-11-30T08:00:00Z; UTC unless "
    "it says), now, or a duration ago: 10m, 24h, 7d, 3600s"
)


def point_in_time(text: str, now: float | None = None) -> float:
    """An ISO 8601 date or time (``2026-11-01``, ``20261101``, ``2026-11-01T08:00``; UTC
    unless it says otherwise), ``now``, or a duration ago (``7d``, ``24h``, ``90s``), as
    epoch seconds. A bare number of 8 digits is a date (``--since 20261101`` was
    20261101 s ago); of 9 or more it is refused (an epoch time, or seconds ago?): a
    duration says its unit. So is one of 1970 to 2199 (``--since 2026`` was the
    last 34 minutes, not the year: ISO 8601's year alone)."""
    t = text.strip()
    now = time.time() if now is None else now
    if t.lower() == "now":
        return now
    if t.isdigit() and len(t) == 4 and 1970 <= int(t) < 2200:
        raise argparse.ArgumentTypeError(
            f"{text!r}: say whether it is a year or seconds ago: {t}-01-01 or {t}s"
        )
    if t.isdigit() and len(t) >= 8:
        if len(t) > 8:
            raise argparse.ArgumentTypeError(
                f"{text!r}: say whether it is seconds ago or a time: {t}s, or "
                "an ISO date or time (2026-11-01T08:00Z)"
            )
        try:
            return datetime.strptime(t, "%Y%m%d").replace(tzinfo=UTC).timestamp()
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"{text!r} is not a date (YYYYMMDD); for seconds ago write {t}s"
            ) from None
    try:
        return now - duration_s(t)
    except argparse.ArgumentTypeError:
        pass
    try:
        when = datetime.fromisoformat(t)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a time: {text!r}; give {TIME_FORMAT}") from None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return when.timestamp()


# -- running a command -------------------------------------------------------------------


def error(prog: str, message: str) -> None:
    """One line saying what went wrong (any further lines are context, indented). Control
    characters are written out (``termfilter.plain``): a refusal may quote what a user
    wrote (a key's comment, a name), escape sequences included."""
    first, _, rest = termfilter.plain(message.strip()).partition("\n")
    print(f"{prog}: error: {first}", file=sys.stderr)
    if rest:
        print(rest, file=sys.stderr)


def outage_notice(what: str) -> Callable[[str], None]:
    """An ``on_outage`` for a stream the client re-opens (``Client.watch``,
    ``Client.watch_events``): one line on stderr when it is lost, one when it is back;
    ``what`` names the command (``ws: watch``)."""

    def notice(why: str) -> None:
        if why:
            # One line, in the parentheses: an error naming each replica it tried has a
            # line for each (``a: …; b: …`` here).
            first, *rest = [line.strip() for line in why.splitlines() if line.strip()] or [""]
            why = " ".join([first, "; ".join(rest)]) if rest else first
            print(f"{what}: lost the service ({why}); retrying", file=sys.stderr)
        else:
            print(f"{what}: the service answers again", file=sys.stderr)

    return notice


def say_wait_interrupted(prog: str, line: str, request: str, show: str) -> None:
    """One line on stderr after Ctrl-C ended a wait (``--wait`` of an action, a scale):
    the object as last seen (its state ``line``), that the ``request`` made goes on (only
    the wait ended), and how to follow it. `run` then says "interrupted" (exit 130)."""
    print(
        f"{prog}: wait interrupted: {line} when last seen; the {request} goes on "
        f"(`{show}` follows it)",
        file=sys.stderr,
        flush=True,
    )


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
    except UnicodeDecodeError as exc:
        # A file given where text is read (a key, a manifest, a spec) is binary.
        error(prog, f"a file given is not UTF-8 text ({exc.reason} at byte {exc.start})")
        return EXIT_REQUEST
    except KeyboardInterrupt:
        print(f"{prog}: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED


def default_connect(service: str | None, identity: str | None = None) -> Client:
    return Client.from_env(service, identity=identity)
