"""What a caller is told when an image they named does not exist (or is not theirs to see).

An image is ``NAME:VERSION`` and a plain ``NAME`` is an image of its own, not "the newest
version": a workspace made from ``sci-base`` would otherwise change under its owner's
script the day ``sci-base:1.3`` is pushed. So ``ws create --image sci-base`` when only
``sci-base:1.2`` exists is refused, and the refusal names the versions of ``sci-base``
the caller may use, newest first, instead of leaving them to guess.
"""

from __future__ import annotations

from collections.abc import Callable

from sqlalchemy import select
from sqlalchemy.orm import Session

from workspace.errors import NotFound
from workspace.store import Image

# Versions named in the refusal at most (the newest).
SHOWN = 5


def unknown_image(
    s: Session, name: str, visible: Callable[[Image], bool] | None = None
) -> NotFound:
    """NotFound for the image ``name``: the versions of its NAME that ``visible`` lets the
    caller see (None: every image, for an admin's call), if there are any."""
    base = name.split(":", 1)[0]
    found = s.execute(
        select(Image)
        .where(Image.name.startswith(base + ":", autoescape=True))
        .order_by(Image.created_at.desc(), Image.name)
    ).scalars()
    versions = [i.name for i in found if i.name != name and (visible is None or visible(i))]
    text = f"image {name!r} not found"
    if not versions:
        return NotFound(f"{text}; `ws image list` shows them")
    shown = ", ".join(versions[:SHOWN]) + (", ..." if len(versions) > SHOWN else "")
    return NotFound(f"{text} (an image is NAME:VERSION); versions of {base} you can use: {shown}")
