"""Logging set-up: stdlib logging, one line per record, ids stamped by callers.

``text``: ``time name[pid] LEVEL logger: message``. ``json``: one JSON object per line
with time, level, logger, message, and the workspace, node and request ids when known —
from the record (``log.info(..., extra={"workspace": wid})``) or else from the call
context the RPC wrapper sets (workspace/callctx.py).
"""

from __future__ import annotations

import json
import logging
import re
import sys
import threading
import time
import types
from collections.abc import Callable, Hashable
from datetime import UTC, datetime
from typing import Any

from workspace import callctx

# Record attributes (given through ``extra=``) copied into JSON lines.
IDS = ("workspace", "node", "request_id")


def about(workspace: str, node: str = "") -> dict[str, str]:
    """``extra=`` of a line about a workspace (and the node it names): its JSON line
    carries the ids whichever call or loop writes it."""
    return {"workspace": workspace, "node": node} if node else {"workspace": workspace}


def named(workspace: str, name: str = "", node: str = "") -> str:
    """How a log line names a workspace in its words: "ID (NAME) on node N", its name and
    node when it has them. The text log (the default) shows no fields, so what ``about``
    gives a JSON line must be in the message too: an admin reading service.log learns
    which node a stop is for."""
    label = f"{workspace} ({name})" if name and name != workspace else workspace
    return f"{label} on node {node}" if node else label


def about_node(node: str) -> dict[str, str]:
    """``extra=`` of a line about a node alone (DOWN, drained, its streams): its JSON line
    carries the node whichever call or loop writes it (an admin's call names none)."""
    return {"node": node}


class JsonFormatter(logging.Formatter):
    """``defaults``: ids every line of the process carries unless a record or the call
    context names another (an agent's ``node``)."""

    def __init__(self, process_name: str, defaults: dict[str, str] | None = None) -> None:
        super().__init__()
        self.process_name = process_name
        self.defaults = dict(defaults or {})

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
            "process": self.process_name,
            "pid": record.process,
        }
        ctx = callctx.current()
        for key in IDS:
            value = getattr(record, key, "") or getattr(ctx, key, "") or self.defaults.get(key)
            if value:
                out[key] = str(value)
        if ctx.method:
            out["method"] = ctx.method
        if ctx.who != callctx.SYSTEM:
            out["caller"] = ctx.who
        if record.exc_info:
            out["exception"] = self.formatException(record.exc_info)
        if record.stack_info:
            out["stack"] = self.formatStack(record.stack_info)
        return json.dumps(out, ensure_ascii=False)


# Every control character but tab: C0 (newline too), DEL, C1.
_CONTROLS = re.compile("[\x00-\x08\x0a-\x1f\x7f-\x9f]")


class TextFormatter(logging.Formatter):
    """``text`` lines: one per record, whatever its message says. Messages carry what
    callers sent (a node's reason for a failure, the node a request names): a newline in
    one forged lines of the log (``... ERROR workspace.ops: node n1 ...`` of another
    node), and an escape sequence acted on the terminal of an admin reading it. Each
    control character of the message is written out (``\\x0a``, ``\\x1b``); a
    traceback still follows on its own lines."""

    def formatMessage(self, record: logging.LogRecord) -> str:
        line = super().formatMessage(record)
        return _CONTROLS.sub(lambda m: f"\\x{ord(m.group()):02x}", line)


class Throttle:
    """At most one line per key and ``interval_s`` for messages that would otherwise repeat
    at every call (a warning each create of an unsigned image). ``due(key)`` is None while
    the key is muted, else how many were muted since its last line (0 the first time), for
    the line to say so."""

    def __init__(
        self, interval_s: float, clock: Callable[[], float] = time.monotonic, size: int = 4096
    ) -> None:
        self.interval_s = interval_s
        self.clock = clock
        self.size = size  # keys remembered at most (the oldest are forgotten first)
        self._lock = threading.Lock()
        self._keys: dict[Hashable, list[float]] = {}  # key -> [last line's time, muted]

    def due(self, key: Hashable) -> int | None:
        now = self.clock()
        with self._lock:
            seen = self._keys.get(key)
            if seen is not None and now - seen[0] < self.interval_s:
                seen[1] += 1
                return None
            muted = int(seen[1]) if seen is not None else 0
            self._keys.pop(key, None)
            if len(self._keys) >= self.size:
                del self._keys[next(iter(self._keys))]
            self._keys[key] = [now, 0]
            return muted


class Outage:
    """A connection a loop keeps trying while it fails (one of a replica's own database
    connections during a PostgreSQL outage), said in few lines instead of one per try:
    the first failure (what fails, why, that it is tried again), then a reminder at most
    every ``remind_s`` while it lasts (for how long, how many tries), and one line when
    it works again. ``again``: what the lines say of the next try, when not "trying again
    every ``retry_s`` s". ``answered`` means the loop's whole step worked, not only its
    connection: said after a step that fails later each time, it would flap."""

    def __init__(
        self,
        logger: logging.Logger,
        what: str,
        retry_s: float,
        remind_s: float = 60.0,
        clock: Callable[[], float] = time.monotonic,
        again: str = "",
    ) -> None:
        self.log = logger
        self.what = what
        self.retry_s = retry_s
        self.clock = clock
        self.again = again or f"trying again every {retry_s:g} s"
        self._lock = threading.Lock()  # a loop's threads may share one (an agent's link)
        self._throttle = Throttle(remind_s, clock, size=2)
        self._since: float | None = None  # when the failures began (None: it works)
        self._tries = 0

    @property
    def failing(self) -> bool:
        return self._since is not None

    def failed(self, reason: str, first: str = "") -> None:
        """One more failed try, for ``reason`` (one line); ``first``: the first line's
        words when the caller has more to say than what failed (what it stops doing)."""
        with self._lock:
            now = self.clock()
            if self._since is None:
                self._since, self._tries = now, 0
            self._tries += 1
            since, tries = self._since, self._tries
        if self._throttle.due(since) is None:
            return  # said less than remind_s ago
        if tries == 1:
            self.log.warning("%s; %s", first or f"{self.what} failed: {reason}", self.again)
            return
        self.log.warning(
            "%s still fails after %.0f s (%d tries): %s; %s",
            self.what,
            now - since,
            tries,
            reason,
            self.again,
        )

    def answered(self) -> None:
        """The try worked: a line if it had failed."""
        with self._lock:
            since, self._since = self._since, None
            tries = self._tries
        if since is None:
            return
        self.log.warning(
            "%s works again after %.0f s (%d failed tries)",
            self.what,
            self.clock() - since,
            tries,
        )


def setup(level: str = "INFO", name: str = "workspace", fmt: str = "text", **ids: str) -> None:
    """Log to stderr at ``level``, as ``fmt`` ("text" or "json"); ``ids`` (e.g. an agent's
    ``node``) go into every JSON line."""
    handler = logging.StreamHandler(sys.stderr)
    if fmt == "json":
        handler.setFormatter(JsonFormatter(name, ids))
    else:
        handler.setFormatter(
            TextFormatter(f"%(asctime)s {name}[%(process)d] %(levelname)s %(name)s: %(message)s")
        )
    logging.basicConfig(level=level.upper(), handlers=[handler], force=True)
    if fmt == "json":
        # What Python itself writes to stderr goes through the handler too, so that every
        # line is JSON: warnings (DeprecationWarning of a library, ...) and the tracebacks
        # of exceptions no one caught, in a thread or in the main one.
        logging.captureWarnings(True)
        sys.excepthook = _uncaught
        threading.excepthook = _uncaught_in_thread


_crash = logging.getLogger("workspace.uncaught")


def _uncaught(
    kind: type[BaseException], exc: BaseException, tb: types.TracebackType | None
) -> None:
    if issubclass(kind, KeyboardInterrupt):
        sys.__excepthook__(kind, exc, tb)
        return
    _crash.critical("uncaught exception: %s: %s", kind.__name__, exc, exc_info=(kind, exc, tb))


def _uncaught_in_thread(args: threading.ExceptHookArgs) -> None:
    if issubclass(args.exc_type, SystemExit):
        return  # as threading's own hook: a thread's SystemExit is its quiet end
    name = args.thread.name if args.thread is not None else "?"
    _crash.error(
        "uncaught exception in thread %s: %s: %s",
        name,
        args.exc_type.__name__,
        args.exc_value,
        exc_info=args.exc_value or (None, None, None),
    )
