"""A real PostgreSQL server for the tests: its own data directory and unix socket, no TCP.

``PgServer(root)`` runs ``initdb`` into ``root/data`` and ``postgres -D root/data -k
root/sock -c listen_addresses=''``; the server's pid is recorded and it is stopped by that
pid only (SIGINT: a fast shutdown; SIGQUIT: an immediate one, as a crash). PostgreSQL
refuses to run as root: run as root (CI), the directory is given to the ``postgres`` user
that Debian's package made and the server runs as that user. Debian's postinst may also
have made and started a cluster of its own (``main``, port 5432, /var/run/postgresql):
this server shares nothing with it (its own directory, socket directory and shared
memory; no TCP port).

``database(name)`` makes a database and returns its SQLAlchemy URL; ``template`` makes
it a copy of another database (a migrated one: each test gets a store at head in a few
milliseconds).

The pytest fixtures are in tests/conftest.py: ``pg_server`` (one per session, started
on first use) and ``pg_url`` (a database per test module).
"""

from __future__ import annotations

import glob
import os
import pwd
import re
import shutil
import signal
import stat
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

BIN_ENV = "WS_TEST_PG_BINDIR"
USER = "postgres"  # the database superuser initdb makes


def bindir() -> Path | None:
    """The newest installed server's bin directory (Debian: /usr/lib/postgresql/N/bin)."""
    if os.environ.get(BIN_ENV):
        return Path(os.environ[BIN_ENV])
    found = glob.glob("/usr/lib/postgresql/*/bin/postgres")
    if not found:
        on_path = shutil.which("postgres")
        return Path(on_path).parent if on_path else None

    def version(p: str) -> int:
        m = re.search(r"/postgresql/(\d+)/", p)
        return int(m.group(1)) if m else 0

    return Path(max(found, key=version)).parent


def _base_dir() -> str:
    """Where the server's directory goes: the temporary directory, if the ``postgres``
    user can reach it when we are root (TMPDIR may be under /root), else /tmp."""
    base = Path(tempfile.gettempdir()).resolve()
    if os.geteuid() != 0:
        return str(base)
    for d in (base, *base.parents):
        if not d.stat().st_mode & stat.S_IXOTH:
            return "/tmp"
    return str(base)


class PgServer:
    def __init__(
        self, root: Path | None = None, bin_dir: Path | None = None, durable: bool = False
    ) -> None:
        """``durable``: the server fsyncs its commits (benchmarks/: what a site runs); the
        tests' server does not."""
        self.durable = durable
        found = bin_dir or bindir()
        if found is None:
            raise FileNotFoundError("PostgreSQL's server binaries (initdb, postgres) not found")
        self.bin = found
        self.root = root or Path(tempfile.mkdtemp(prefix="ws-pg-", dir=_base_dir()))
        self.data = self.root / "data"
        self.sock = self.root / "sock"
        self.log = self.root / "postgres.log"
        self.pid: int | None = None
        self._proc: subprocess.Popen[bytes] | None = None
        # As root, the server's programs run as the ``postgres`` user: setpriv(1) changes
        # the ids after the fork, not subprocess's user/group arguments, which make Python
        # fork() rather than vfork(): a fork of a test process holding gRPC channels can
        # abort in gRPC's fork handlers before it runs anything (grpc#43055), and the
        # server then never starts (seen when a test restarted it).
        self._run_as: tuple[str, ...] = ()
        if os.geteuid() == 0:
            pw = pwd.getpwnam(USER)
            self._run_as = ("--reuid", str(pw.pw_uid), "--regid", str(pw.pw_gid))
            self._run_as += ("--clear-groups",)
            self.root.chmod(0o755)
            os.chown(self.root, pw.pw_uid, pw.pw_gid)
        self.sock.mkdir(exist_ok=True)
        if os.geteuid() == 0:
            os.chown(self.sock, pw.pw_uid, pw.pw_gid)
        self._initdb()

    def _initdb(self) -> None:
        subprocess.run(
            [
                *("setpriv", *self._run_as, "--"),
                str(self.bin / "initdb"),
                "-D",
                str(self.data),
                "-U",
                USER,
                "--auth=trust",
                "--no-locale",
                "--encoding=UTF8",
                "--no-sync",
                "--no-instructions",
            ],
            check=True,
            capture_output=True,
            cwd=self.root,
        )

    # -- the server ------------------------------------------------------------------------

    def start(self, timeout_s: float = 30.0) -> None:
        assert self._proc is None, "already running"
        with open(self.log, "ab") as log:
            self._proc = subprocess.Popen(
                [
                    # A fast shutdown if the test process dies (PR_SET_PDEATHSIG), so a
                    # killed test run leaves no server behind; by setpriv(1), not a
                    # preexec_fn, for the reason above.
                    *("setpriv", *self._run_as, "--pdeathsig", "INT", "--"),
                    str(self.bin / "postgres"),
                    "-D",
                    str(self.data),
                    "-k",
                    str(self.sock),
                    "-c",
                    "listen_addresses=",
                    "-c",
                    "max_connections=300",
                    "-c",
                    "shared_buffers=32MB",
                    # Tests restart the server, they do not crash the machine: commits
                    # stay durable across a server stop or kill without fsync.
                    *(() if self.durable else ("-c", "fsync=off", "-c", "full_page_writes=off")),
                ],
                stdout=log,
                stderr=log,
                cwd=self.root,
            )
        self.pid = self._proc.pid
        self.wait_ready(timeout_s)

    def wait_ready(self, timeout_s: float = 30.0) -> None:
        import psycopg

        deadline = time.monotonic() + timeout_s
        while True:
            assert self._proc is not None
            if self._proc.poll() is not None:
                raise RuntimeError(f"postgres exited: {self.log.read_text()[-2000:]}")
            try:
                psycopg.connect(**self._params("postgres"), connect_timeout=2).close()
                return
            except psycopg.OperationalError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)

    def stop(self, sig: int = signal.SIGINT, timeout_s: float = 30.0) -> None:
        """Stop the server by its pid (SIGINT fast shutdown, SIGQUIT immediate)."""
        if self._proc is None:
            return
        if self._proc.poll() is None:
            os.kill(self._proc.pid, sig)
        try:
            self._proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            os.kill(self._proc.pid, signal.SIGKILL)
            self._proc.wait(timeout_s)
        self._proc = None
        self.pid = None

    def restart(self, sig: int = signal.SIGINT) -> None:
        self.stop(sig)
        self.start()

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def close(self) -> None:
        """Stop the server and remove its directory."""
        self.stop()
        shutil.rmtree(self.root, ignore_errors=True)

    # -- databases -------------------------------------------------------------------------

    def _params(self, dbname: str) -> dict[str, Any]:
        return {"host": str(self.sock), "user": USER, "dbname": dbname}

    def url(self, dbname: str) -> str:
        """The SQLAlchemy URL of a database on this server (``postgresql://`` on purpose:
        the store turns it into the psycopg dialect)."""
        return f"postgresql://{USER}@/{dbname}?host={self.sock}"

    def sql(self, statement: str, dbname: str = "postgres") -> list[tuple[Any, ...]]:
        import psycopg

        with psycopg.connect(**self._params(dbname), autocommit=True) as conn:
            cur = conn.execute(statement.encode())
            return cur.fetchall() if cur.description else []

    def database(self, name: str, template: str = "") -> str:
        """A new (empty, or copied from ``template``) database; its URL."""
        assert re.fullmatch(r"[a-z_][a-z0-9_]*", name), name
        self.drop(name)
        extra = f" TEMPLATE {template}" if template else ""
        self.sql(f"CREATE DATABASE {name}{extra}")
        return self.url(name)

    def drop(self, name: str) -> None:
        self.sql(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


def running_server() -> Iterator[PgServer]:
    """A server of its own for the body of a pytest fixture (``yield from``): skips when
    PostgreSQL's server is not installed, stopped (by its pid) at the end."""
    if bindir() is None:
        import pytest

        pytest.skip("PostgreSQL's server is not installed (make deps installs it)")
    server = PgServer()
    try:
        server.start()
        yield server
    finally:
        server.close()
