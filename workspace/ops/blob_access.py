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
holding them, and the repository still keeps one copy. A saved workspace's disks come
from its node (Nodes.PutBlob), not from the caller: the save vouches for them itself,
for the blobs that node sent (recorded as their holder, ``node:NAME``) and no other.
"""

from __future__ import annotations

from collections.abc import Iterable

from sqlalchemy import select
from sqlalchemy.orm import Session

from workspace.identity import Identity
from workspace.ops.image_refs import may_use
from workspace.ops.projects import scope
from workspace.store import BlobHolder, Image
from workspace.store.mapping import image_spec


def usable(s: Session, who: Identity, digests: Iterable[str]) -> set[str]:
    """Of ``digests``, those ``who`` may build on (whether the repository holds them or
    not is the caller's to check)."""
    wanted = set(digests)
    if who.admin or not wanted:
        return wanted
    held = s.execute(
        select(BlobHolder.digest).where(
            BlobHolder.holder == who.principal, BlobHolder.digest.in_(wanted)
        )
    ).scalars()
    ok = set(held)
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


def held(s: Session, holder: str, among: Iterable[str] | None = None) -> set[str]:
    """The blobs ``holder`` sent (those still in the repository); of ``among`` only, if
    given."""
    q = select(BlobHolder.digest).where(BlobHolder.holder == holder)
    if among is not None:
        q = q.where(BlobHolder.digest.in_(set(among)))
    return set(s.execute(q).scalars())


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
