"""Logging set-up: stdlib logging, one line per record, ids stamped by callers."""

from __future__ import annotations

import logging
import sys


def setup(level: str = "INFO", name: str = "workspace") -> None:
    fmt = f"%(asctime)s {name}[%(process)d] %(levelname)s %(name)s: %(message)s"
    logging.basicConfig(level=level.upper(), format=fmt, stream=sys.stderr, force=True)
