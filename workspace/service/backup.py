"""Back up a service's state and put it back: ``workspace-service backup|restore DIR``.

What a site needs to rebuild its control plane is the store (every workspace, node,
network, image, project, key and event), the image blobs (``<data_dir>/blobs``) and,
under mutual TLS, the service's own identity (the CA certificate, its certificate and
key, the CRL: the files its ``[tls]`` names; never the CA's private key, which the
service does not hold). Agents rebuild the rest from their orders.

* ``backup DIR`` runs beside a running service. The SQLite store is copied with SQLite's
  online backup API in one step, so the copy is one consistent snapshot however busy the
  service is; the copy must pass ``PRAGMA integrity_check``. Blobs are content-addressed
  and never change, so each is copied once (a later backup into the same DIR copies only
  new ones) and hashed on the way: a blob that no longer matches its digest is named and
  left out, and the backup exits 1.
* ``restore DIR`` needs the service stopped: it takes the store's lock (workspace/sole.py),
  so it refuses while a service runs. It checks the copy (integrity, a revision this
  release knows), puts it in place (the old store's WAL files removed first: they belong
  to the old file) and copies back the blobs the service lacks or holds damaged (one
  changed since it was hashed is hashed again; a mismatch is moved to ``blobs/bad/``),
  checking each copy. A copy from an older release is migrated forward when the service
  starts. TLS files are put back only where the config names one that is missing: a
  certificate renewed since the backup is never replaced by the older one.

A PostgreSQL store is backed up with PostgreSQL's own tools (``pg_dump``); both commands
say so and change nothing.
"""

from __future__ import annotations

import os
import shutil
import sqlite3
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from images import digest as digests
from workspace import rpc, sole
from workspace.config import ServiceConfig
from workspace.errors import ConfigError, FailedPrecondition
from workspace.files import write_private
from workspace.store import engines, migrations
from workspace.store.blobs import BlobRepository

STORE_FILE = "service.db"
TLS_DIR = "tls"
CHUNK_BYTES = 1024 * 1024


@dataclass
class Copied:
    """What one backup or restore copied."""

    revision: str
    workspaces: int
    blobs: int = 0  # copied now
    blob_bytes: int = 0
    kept: int = 0  # already there
    replaced: int = 0  # there but damaged: moved aside and copied again
    bad: tuple[str, ...] = ()  # digests that did not match their content: left out
    tls: list[str] = field(default_factory=list)  # TLS files copied (by their backup name)
    tls_kept: int = 0  # TLS files a restore found in place (left as they are)


def _sqlite_file(cfg: ServiceConfig) -> Path:
    path = engines.sqlite_file(cfg.db_url)
    if path is None:
        raise ConfigError(
            "the store is PostgreSQL: back it up with pg_dump (and restore with pg_restore), "
            f"and copy {cfg.blob_dir} beside it"
        )
    return path


def backup(cfg: ServiceConfig, dest: Path) -> Copied:
    """A consistent copy of the store and every good blob in ``dest`` (made 0700)."""
    src = _sqlite_file(cfg)
    if not src.exists():
        raise FailedPrecondition(f"there is no store at {src}: nothing to back up")
    if dest.exists() and not dest.is_dir():
        raise FailedPrecondition(f"{dest} is not a directory: give a directory to back up into")
    dest.mkdir(parents=True, exist_ok=True, mode=0o700)
    os.chmod(dest, 0o700)
    fd, tmp = tempfile.mkstemp(dir=dest, prefix=".store-")
    os.close(fd)
    try:
        source = sqlite3.connect(src)
        copy = sqlite3.connect(tmp)
        try:
            source.backup(copy)  # all pages in one step: one snapshot
            # A plain file, readable alone (a WAL-mode file wants its -shm beside it); the
            # service switches it back to WAL when it opens it.
            copy.execute("PRAGMA journal_mode=DELETE")
        except sqlite3.Error as exc:  # a full disk, an I/O error: SQLite's, not an OSError
            raise FailedPrecondition(f"the store could not be copied into {dest}: {exc}") from None
        finally:
            source.close()
            copy.close()
        os.chmod(tmp, 0o600)
        done = _check_store(Path(tmp))
        os.replace(tmp, dest / STORE_FILE)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    _copy_blobs(cfg.blob_dir / "sha256", BlobRepository(dest / "blobs"), done)
    tls_dir = dest / TLS_DIR
    for name, path in _tls_paths(cfg).items():
        if path.is_file():
            tls_dir.mkdir(mode=0o700, exist_ok=True)
            write_private(tls_dir / name, path.read_bytes(), sync=True)
            done.tls.append(name)
    return done


def restore(cfg: ServiceConfig, source: Path) -> Copied:
    """Put the backup in ``source`` in place of the store, and the blobs it lacks back;
    FailedPrecondition while a service runs on the store (nothing is changed then)."""
    target = _sqlite_file(cfg)
    copy = source / STORE_FILE
    if not copy.exists():
        raise FailedPrecondition(f"{source} holds no backup ({STORE_FILE} is missing)")
    done = _check_store(copy)
    target.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    try:
        held = sole.hold_store(target)
    except ConfigError as exc:
        raise FailedPrecondition(f"stop the service first: {exc.message}") from None
    try:
        fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=".restore-")
        os.close(fd)
        try:
            shutil.copyfile(copy, tmp)
            os.chmod(tmp, 0o600)
            for suffix in ("-wal", "-shm", "-journal"):  # the old file's, not this one's
                Path(f"{target}{suffix}").unlink(missing_ok=True)
            os.replace(tmp, target)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        _copy_blobs(source / "blobs" / "sha256", BlobRepository(cfg.blob_dir), done)
        for name, path in _tls_paths(cfg).items():
            saved = source / TLS_DIR / name
            if not saved.is_file():
                continue
            if path.exists():
                done.tls_kept += 1
                continue
            path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            write_private(path, saved.read_bytes(), sync=True)
            done.tls.append(name)
    finally:
        held.release()
    return done


def _tls_paths(cfg: ServiceConfig) -> dict[str, Path]:
    """The TLS files the service's config names, by their name in a backup."""
    if not cfg.tls.enabled:
        return {}
    ca, cert, key = rpc.named_tls_files(cfg.tls)
    named = {"ca.pem": ca, "cert.pem": cert, "key.pem": key, "crl.pem": cfg.tls.crl_file}
    return {name: Path(p).expanduser() for name, p in named.items() if p}


def _check_store(path: Path) -> Copied:
    """The revision and live workspaces of the store copy at ``path``, or
    FailedPrecondition if it is damaged or newer than this release."""
    con = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        verdict = con.execute("PRAGMA integrity_check").fetchone()[0]
        if verdict != "ok":
            raise FailedPrecondition(f"the store copy {path} is damaged: {verdict}")
        (revision,) = con.execute("SELECT version_num FROM alembic_version").fetchone()
        (live,) = con.execute(
            "SELECT count(*) FROM workspaces WHERE state != 'TERMINATED'"
        ).fetchone()
    except sqlite3.DatabaseError as exc:
        raise FailedPrecondition(f"{path} is not a store of this service: {exc}") from None
    finally:
        con.close()
    if int(revision) > int(migrations.head()):
        raise FailedPrecondition(
            f"the store copy is at revision {revision}, made by a newer release than this "
            f"one (at {migrations.head()})"
        )
    return Copied(revision=revision, workspaces=live)


def _copy_blobs(src: Path, dst: BlobRepository, done: Copied) -> None:
    """Each blob in the folder ``src`` that ``dst`` lacks or holds damaged, through the
    repository's own receive and commit (hashed on the way, 0600, renamed into place); one
    that does not hash to its name is left out and named in ``done.bad``."""
    if not src.is_dir():
        return
    bad: list[str] = []
    for blob in sorted(src.iterdir()):
        try:
            digest = digests.from_hex(blob.name)
        except digests.DigestError:
            continue  # not a blob
        size = blob.stat().st_size
        if dst.has(digest) and dst.size(digest) == size:
            try:
                dst.check(digest)  # one stat, unless it changed since it was hashed
                done.kept += 1
                continue
            except FailedPrecondition:
                done.replaced += 1  # moved to the repository's bad/; the copy takes its place
        with open(blob, "rb") as f:
            tmp, got, copied = dst.receive(iter(lambda: f.read(CHUNK_BYTES), b""), size)
        if got != digest:
            tmp.unlink()
            bad.append(digest)
            continue
        try:
            dst.commit(tmp, digest)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        done.blobs += 1
        done.blob_bytes += copied
    done.bad = tuple(bad)


def summary(command: str, where: Path, done: Copied, started: float) -> str:
    """One line saying what ``command`` (backup or restore) did."""
    verb, direction = ("backed up", "to") if command == "backup" else ("restored", "from")
    return (
        f"{verb} the store (revision {done.revision}, {done.workspaces} live workspaces) and "
        f"{done.blobs} blobs ({done.blob_bytes / 2**20:.1f} MiB; {done.kept} already there"
        + (f", {done.replaced} damaged there and replaced" if done.replaced else "")
        + f") {direction} {where}{_tls_summary(command, done)} in "
        f"{time.monotonic() - started:.1f} s"
    )


def _tls_summary(command: str, done: Copied) -> str:
    if command == "backup":
        return f", with the TLS files {', '.join(done.tls)}" if done.tls else ""
    if not done.tls and not done.tls_kept:
        return ""
    back = f"put back the TLS files {', '.join(done.tls)}" if done.tls else "put back no TLS file"
    return f"; {back} ({done.tls_kept} already there, left as they are)"
