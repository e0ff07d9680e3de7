"""Which blobs of the repository a caller may build on.

The repository stores each content once, by its sha256 digest, whoever sent it. A digest
is no secret: a signed statement lists the digests of the image it signs, a former member
of a project saw them, a file with little randomness in it can be guessed. So knowing a
digest grants nothing. A caller may make an image of a blob (ImportImage), and is told
the repository holds it (HasBlobs, so that a push skips sending it), only if

* they sent its bytes themselves (UploadBlob records them as a holder: ``BlobHolder``),
* or it is part of an image they may use (their own, their projects', a public one),
* or they are an admin.

Anyone else is told the blob is missing and sends it: sending the bytes is the proof of
holding them, and the repository still keeps one copy.

Having sent a blob counts for ``blob_grace_s`` after the sender's last upload (``since``
below; each upload of theirs renews their blobs sent within it: ``renew``), as long as
an unimported blob stays in the repository: after it, a blob no image of theirs is made
of is missing to them again, whether the repository kept it (another's image uses it,
another sent it since) or not. Else its sender, asking after the grace (HasBlobs, their
repository usage), learned whether someone else had the same file. A saved workspace's disks come
from its node (Nodes.PutBlob), not from the caller: the save vouches for them itself,
for the blobs that node sent (recorded as their holder, ``node:NAME``) and no other.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from workspace.identity import Identity
from workspace.ops.image_refs import may_use
from workspace.ops.projects import scope
from workspace.ops.unit import Env
from workspace.store import BlobHolder, Image
from workspace.store.mapping import image_spec


def usable(s: Session, who: Identity, digests: Iterable[str], since: float) -> set[str]:
    """Of ``digests``, those ``who`` may build on (whether the repository holds them or
    not is the caller's to check): sent by them at ``since`` or later, or of an image
    they may use."""
    wanted = set(digests)
    if who.admin or not wanted:
        return wanted
    ok = held(s, who.principal, wanted, since)
    rest = wanted - ok
    if rest:
        sc = scope(s, who)
        for img in s.execute(select(Image)).scalars():
            if may_use(sc, img):
                lent = rest.intersection(image_spec(img).digests())
                ok |= lent
                rest -= lent
                if not rest:
                    break
    return ok


def held(
    s: Session, holder: str, among: Iterable[str] | None = None, since: float | None = None
) -> set[str]:
    """The blobs ``holder`` sent (those still in the repository); of ``among`` only, if
    given; sent (or renewed) at ``since`` or later only, if given."""
    q = select(BlobHolder.digest).where(BlobHolder.holder == holder)
    if among is not None:
        q = q.where(BlobHolder.digest.in_(set(among)))
    if since is not None:
        q = q.where(BlobHolder.created_at >= since)
    return set(s.execute(q).scalars())


def renew(s: Session, holder: str, since: float, at: float) -> None:
    """``holder`` is sending (a push of several files, a file that takes long): the blobs
    they sent at ``since`` or later count as sent ``at``, so neither the collector nor
    the grace of their access takes the first files of a push before its import."""
    s.execute(
        update(BlobHolder)
        .where(BlobHolder.holder == holder, BlobHolder.created_at >= since)
        .values(created_at=at)
    )


def fresh_since(env: Env) -> float:
    """Blobs sent (or renewed) since then count as their sender's."""
    return env.clock() - env.cfg.blob_grace_s


def renewing(env: Env, chunks: Iterable[bytes], holder: str) -> Iterator[bytes]:
    """``chunks``, renewing what ``holder`` sent before every quarter of
    ``blob_grace_s`` while they come: a file that takes longer than the grace to send
    does not lose the push's first files to a collection meanwhile."""
    every = env.cfg.blob_grace_s / 4
    last = env.clock()
    for chunk in chunks:
        now = env.clock()
        if now - last >= every:
            with env.store.write() as s:
                renew(s, holder, now - env.cfg.blob_grace_s, now)
            last = now
        yield chunk


def recent(s: Session, digests: Iterable[str], since: float) -> set[str]:
    """Of ``digests``, those someone sent (or renewed) at ``since`` or later."""
    wanted, out = sorted(set(digests)), set()
    for i in range(0, len(wanted), 500):
        q = select(BlobHolder.digest).where(
            BlobHolder.digest.in_(wanted[i : i + 500]), BlobHolder.created_at >= since
        )
        out |= set(s.execute(q).scalars())
    return out


def record_holder(s: Session, digest: str, holder: str, at: float) -> None:
    """``holder`` sent ``digest``'s bytes (again: the time is kept up to date)."""
    row = s.get(BlobHolder, (digest, holder))
    if row is None:
        s.add(BlobHolder(digest=digest, holder=holder, created_at=at))
    else:
        row.created_at = at


def forget(s: Session, digests: Iterable[str]) -> None:
    """The blobs ``digests`` leave the repository: so do their holders."""
    gone = list(digests)
    if gone:
        for row in s.execute(select(BlobHolder).where(BlobHolder.digest.in_(gone))).scalars():
            s.delete(row)


def holders(s: Session, digest: str) -> set[str]:
    """Who sent ``digest``'s bytes."""
    rows = s.execute(select(BlobHolder.holder).where(BlobHolder.digest == digest))
    return set(rows.scalars())


def forget_holder(s: Session, digest: str, holder: str) -> None:
    """``holder`` no longer counts as having sent ``digest`` (an import refused it)."""
    row = s.get(BlobHolder, (digest, holder))
    if row is not None:
        s.delete(row)
