"""The version of this installation (the package's metadata): what ``--version`` prints,
what each daemon logs when it starts, and what an agent reports when it registers."""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from functools import cache
from importlib import metadata
from typing import Any

DISTRIBUTION = "workspace-service"


@cache
def version() -> str:
    """The installed distribution's version ("0+unknown" when run from a source tree that
    was never installed)."""
    try:
        return metadata.version(DISTRIBUTION)
    except metadata.PackageNotFoundError:
        return "0+unknown"


class _Version(argparse.Action):
    """``--version``: prints "PROG VERSION" on stdout and exits (the version is read only
    then)."""

    def __init__(self, option_strings: Sequence[str], dest: str, **kw: Any) -> None:
        super().__init__(option_strings, dest, nargs=0, default=argparse.SUPPRESS, **kw)

    def __call__(self, parser: argparse.ArgumentParser, *_: Any) -> None:
        print(f"{parser.prog} {version()}")
        parser.exit()


def add_option(parser: argparse.ArgumentParser) -> None:
    """Give ``parser`` a ``--version`` option."""
    parser.add_argument("--version", action=_Version, help="print the version and exit")
