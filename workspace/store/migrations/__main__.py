"""Migrations of the store from the command line.

  python -m workspace.store.migrations revision -m "what changes" [--autogenerate]
  python -m workspace.store.migrations upgrade --url sqlite:////path/to/store.db [--sql]
  python -m workspace.store.migrations current --url ...
  python -m workspace.store.migrations history

``revision --autogenerate`` compares the models with a scratch SQLite database at head (or
``--url``) and writes ``versions/NNNN_<slug>.py`` numbered after the head: review it.
"""

from __future__ import annotations

import argparse
import logging
import os
import subprocess
import sys
import tempfile
import traceback
from pathlib import Path

from alembic import command
from sqlalchemy import create_engine

from workspace.store import engines, migrations


def next_revision_id() -> str:
    return f"{int(migrations.head()) + 1:04d}"


def revision(message: str, autogenerate: bool, url: str) -> None:
    rev_id = next_revision_id()
    if not autogenerate:
        written = command.revision(migrations.config(), message=message, rev_id=rev_id)
    else:
        with tempfile.TemporaryDirectory() as tmp:
            engine = create_engine(url or f"sqlite:///{Path(tmp) / 'head.db'}")
            try:
                migrations.upgrade(engine)
                with engine.connect() as conn, conn.begin():
                    written = command.revision(
                        migrations.config(conn),
                        message=message,
                        rev_id=rev_id,
                        autogenerate=True,
                    )
            finally:
                engine.dispose()
    scripts = written if isinstance(written, list) else [written]
    for script in scripts:
        if script is not None:
            # house style; a no-op where ruff is not installed
            subprocess.run(
                [sys.executable, "-m", "ruff", "format", "-q", script.path],
                check=False,
                stderr=subprocess.DEVNULL,
            )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m workspace.store.migrations")
    sub = parser.add_subparsers(dest="cmd", required=True)
    rev = sub.add_parser("revision", help="write a new revision after the head")
    rev.add_argument("-m", "--message", required=True)
    rev.add_argument("--autogenerate", action="store_true", help="diff the models and head")
    rev.add_argument("--url", default="", help="compare with this database (default: scratch)")
    up = sub.add_parser("upgrade", help="bring a database to head (as the service does)")
    src = up.add_mutually_exclusive_group(required=True)
    src.add_argument("--url")
    src.add_argument(
        "--url-from-env", action="store_true", help=f"the URL is in ${migrations.URL_ENV}"
    )
    up.add_argument("--sql", action="store_true", help="print the DDL instead (offline)")
    cur = sub.add_parser("current", help="the revision a database is at")
    cur.add_argument("--url", required=True)
    sub.add_parser("history", help="list the revisions")
    args = parser.parse_args(argv)
    if getattr(args, "url", None):
        args.url = engines.normalize_url(args.url)
    if args.cmd == "revision":
        revision(args.message, args.autogenerate, args.url)
    elif args.cmd == "upgrade" and args.sql:
        command.upgrade(migrations.config(url=args.url), "head", sql=True)
    elif args.cmd == "upgrade":
        logging.basicConfig(level=logging.INFO, format="%(message)s")
        url = os.environ[migrations.URL_ENV] if args.url_from_env else args.url
        url = engines.normalize_url(url)
        engine = create_engine(url, **engines.engine_options(url))
        try:
            migrations.upgrade(engine)
        except Exception as exc:
            traceback.print_exc()  # the service logs each line (at INFO)
            # Its last line: what the service's "cannot start" says.
            print(f"{migrations.FAILED}{migrations.failure(exc)}", file=sys.stderr)
            return 1
        finally:
            engine.dispose()
    elif args.cmd == "current":
        engine = create_engine(args.url)
        try:
            with engine.connect() as conn:
                print(migrations.current(conn) or "(none)")
        finally:
            engine.dispose()
    else:
        command.history(migrations.config())
    return 0


if __name__ == "__main__":
    sys.exit(main())
