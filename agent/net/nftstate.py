"""What one of our nftables tables holds now, to tell whether it is still what the agent
applied: a ``flush ruleset`` (an ``nftables.service`` restart), ``nft delete table``, or
a rule edited by hand all change it behind the agent's back.

The kernel prints a table in its own normal form, which is not the text we load; so the
agent lists each table right after applying it and keeps a digest of that listing
(``TableWatch.record``). A later pass lists it again (``drifted``): a table missing, or
listed differently, is what the agent must apply again. The listing is stateless
(``nft -s``): the counters of the per-NIC conntrack bound (what it refused) are listed
without their values, and its ``ct count`` keeps its count out of the listing anyway; our
tables hold no quotas or dynamic sets, so their listing changes only when their rules
do. (A listing with counters' values changed with every packet refused: every pass
then applied the ruleset again, which starts every ``ct count`` again at zero.)
"""

from __future__ import annotations

import hashlib
import subprocess
from collections.abc import Callable, Sequence

# (family, name), e.g. ("inet", "ws_policy")
Table = tuple[str, str]
Lister = Callable[[str, str, "str | None"], "str | None"]


def list_table(family: str, name: str, netns: str | None = None) -> str | None:
    """``nft -s list table FAMILY NAME`` (in ``netns`` if given; stateless: no counter's
    values); None when the table is not there (or nft cannot be run: then applying will
    say why)."""
    argv = ["nft", "-s", "list", "table", family, name]
    if netns:
        argv = ["ip", "netns", "exec", netns, *argv]
    try:
        proc = subprocess.run(argv, capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return proc.stdout if proc.returncode == 0 else None


def digest(listing: str | None) -> str:
    return "" if listing is None else hashlib.sha256(listing.encode()).hexdigest()


class TableWatch:
    """The digests of ``tables`` as listed right after the agent applied them."""

    def __init__(self, tables: Sequence[Table], lister: Lister, netns: str | None = None):
        self.tables = tuple(tables)
        self.lister = lister
        self.netns = netns
        self.recorded: dict[Table, str] = {}

    def record(self) -> None:
        """The tables were just applied: what they hold now is what they should hold."""
        self.recorded = {t: digest(self.lister(t[0], t[1], self.netns)) for t in self.tables}

    def forget(self) -> None:
        self.recorded = {}

    def drifted(self) -> list[str]:
        """The tables ("family name") missing or changed since ``record`` (all of them
        when nothing was recorded)."""
        out = []
        for family, name in self.tables:
            want = self.recorded.get((family, name))
            if want is None or digest(self.lister(family, name, self.netns)) != want:
                out.append(f"{family} {name}")
        return out
