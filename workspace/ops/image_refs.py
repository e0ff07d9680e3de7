"""What a caller is told when an image they named does not exist (or is not theirs to see).

An image is ``NAME:VERSION`` and a plain ``NAME`` is an image of its own, not "the newest
version": a workspace made from ``sci-base`` would otherwise change under its owner's
script the day ``sci-base:1.3`` is pushed. So ``ws create --image sci-base`` when only
``sci-base:1.2`` exists is refused, and the refusal names the versions of ``sci-base``
the caller may use, newest first, instead of leaving them to guess.
"""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.orm import Session

from images import manifest
from workspace.errors import AlreadyExists, InvalidArgument, NotFound
from workspace.identity import Identity
from workspace.ops.projects import Scope, scope
from workspace.store import Image

# Versions named in the refusal at most (the newest).
SHOWN = 5

# A NAME another project holds versions of: "already exists", as an exact NAME:VERSION is
# (whose it is and what it holds stay unsaid).
NAME_TAKEN = (
    "image {0!r} already exists: its NAME is another project's; pick another name "
    "(sites give each project a prefix by convention)"
)


def may_use(sc: Scope | None, image: Image) -> bool:
    """Whether the caller of scope ``sc`` (None: an admin's call) sees ``image``: a
    public one, their own, their projects'."""
    return (
        sc is None
        or image.public
        or sc.sees(image.owner, image.project)
        or (sc.acting is not None and may_use(sc.acting, image))
    )


def visible_image(s: Session, who: Identity | str, name: str) -> Image:
    """The image ``name`` if ``who`` sees it, else ``unknown_image``'s NotFound (the
    caller's scope is read only when the image is not public)."""
    img = s.get(Image, named(name))
    if img is not None and img.public:
        return img
    sc = scope(s, who)
    if img is None or not may_use(sc, img):
        raise unknown_image(s, name, sc)
    return img


def named(image: str) -> str:
    """``image``, the name a request gives; InvalidArgument if it gives none (that was
    NOT_FOUND, "image '' not found", as if one had been named)."""
    if not image:
        raise InvalidArgument("give an image name, NAME:VERSION (`ws image list` shows them)")
    return image


def unknown_image(s: Session, name: str, sc: Scope | None = None) -> NotFound:
    """NotFound for the image ``name``: the versions of its NAME the caller of scope
    ``sc`` sees (None: every image, for an admin's call), if there are any."""
    base = name.split(":", 1)[0]
    versions: list[str] = []
    # No image has a NAME that is not one (imports take only NAME:VERSION), and SQLite
    # refuses a LIKE pattern over 50,000 bytes: such a name is not looked up (one that
    # long was an INTERNAL error instead of NOT_FOUND).
    if manifest.NAME_RE.match(base):
        found = s.execute(
            select(Image)
            .where(Image.name.startswith(base + ":", autoescape=True))
            .order_by(Image.created_at.desc(), Image.name)
        ).scalars()
        versions = [
            i.name for i in found if _of(i.name, base) and i.name != name and may_use(sc, i)
        ]
    text = f"image {name!r} not found"
    if not versions:
        return NotFound(f"{text}; `ws image list` shows them")
    shown = ", ".join(versions[:SHOWN]) + (", ..." if len(versions) > SHOWN else "")
    return NotFound(f"{text} (an image is NAME:VERSION); versions of {base} you can use: {shown}")


def name_taken(s: Session, name: str, project: str, owner: str) -> bool:
    """Whether an image ``name`` (NAME:VERSION) would take a NAME another project uses:
    one of its versions (or the plain NAME) belongs to another project, or, outside any
    project, to another owner. A NAME stays with the project that holds any version of
    it, so a version deleted there is not taken by another project meanwhile."""
    base = name.split(":", 1)[0]
    found = s.execute(
        select(Image.name, Image.project, Image.owner).where(
            (Image.name == base) | Image.name.startswith(base + ":", autoescape=True)
        )
    ).all()
    return any(
        (n == base or _of(n, base)) and ((p or "") != project or (not project and o != owner))
        for n, p, o in found
    )


def refuse_taken(s: Session, who: Identity, name: str, project: str) -> None:
    """AlreadyExists if ``who`` cannot import an image ``name`` into ``project`` (already
    resolved) whatever it is made of: a NAME:VERSION that exists and they do not see, or
    a NAME another project holds (``name_taken``). One they see is left to the caller,
    which compares it with what it would push (the same image pushed again is no
    error)."""
    existing = s.get(Image, name)
    if existing is not None:
        if may_use(scope(s, who), existing):
            return
        raise AlreadyExists(f"image {name!r} already exists; pick a new version")
    if name_taken(s, name, project, who.name):
        raise AlreadyExists(NAME_TAKEN.format(name))


def _of(image: str, base: str) -> bool:
    """Whether ``image`` is a version of NAME ``base``, case and all: the SQL prefix
    match that found it ignores ASCII case on SQLite (its LIKE does), not on PostgreSQL,
    so ``App:1`` took the NAME ``app``, and was named among its versions, on SQLite only."""
    return image.startswith(base + ":")
