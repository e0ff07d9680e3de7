"""Logging set-up: stdlib logging, one line per record, ids stamped by callers.

``text``: ``time name[pid] LEVEL logger: message``. ``json``: one JSON object per line
with time, level, logger, message, and the workspace, node and request ids when known —
from the record (``log.info(..., extra={"workspace": wid})``) or else from the call
context the RPC wrapper sets (workspace/callctx.py).
"""

from __future__ import annotations

import json
import logging
import sys
from datetime import UTC, datetime
from typing import Any

from workspace import callctx

# Record attributes (given through ``extra=``) copied into JSON lines.
IDS = ("workspace", "node", "request_id")


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
        return json.dumps(out, ensure_ascii=False)


def setup(level: str = "INFO", name: str = "workspace", fmt: str = "text", **ids: str) -> None:
    """Log to stderr at ``level``, as ``fmt`` ("text" or "json"); ``ids`` (e.g. an agent's
    ``node``) go into every JSON line."""
    handler = logging.StreamHandler(sys.stderr)
    if fmt == "json":
        handler.setFormatter(JsonFormatter(name, ids))
    else:
        handler.setFormatter(
            logging.Formatter(
                f"%(asctime)s {name}[%(process)d] %(levelname)s %(name)s: %(message)s"
            )
        )
    logging.basicConfig(level=level.upper(), handlers=[handler], force=True)
