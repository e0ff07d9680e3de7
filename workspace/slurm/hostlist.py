"""Slurm's hostlist expressions: ``node[1-3,5],gpu01`` <-> ``node1 node2 node3 node5 gpu01``.

Slurm passes its programs the compressed form. ``expand`` is a parser of our own (tested;
no Slurm needed); ``ws-slurm`` prefers ``scontrol show hostnames`` when scontrol is there,
so the controller's own reading wins, and falls back to ``expand``.

Grammar (what Slurm writes): host names separated by commas (or whitespace); a name may
hold bracket groups ``[a-b,c,...]`` of numeric ranges, whose zero padding is kept
(``n[01-03]`` -> n01 n02 n03); several groups in one name expand as a product
(``r[1-2]n[1-2]`` -> r1n1 r1n2 r2n1 r2n2). Duplicates are dropped, order is kept.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

MAX_HOSTS = 100_000
_RANGE = re.compile(r"(\d+)(?:-(\d+))?")


class HostlistError(ValueError):
    """A hostlist expression that cannot be read; the message says where."""


def _split_top(text: str) -> list[str]:
    """Split at commas and whitespace outside brackets."""
    parts: list[str] = []
    depth = 0
    cur: list[str] = []
    for ch in text:
        if ch == "[":
            if depth:
                raise HostlistError(f"nested '[' in hostlist {text!r}")
            depth = 1
        elif ch == "]":
            if not depth:
                raise HostlistError(f"']' without '[' in hostlist {text!r}")
            depth = 0
        if depth == 0 and (ch == "," or ch.isspace()):
            if cur:
                parts.append("".join(cur))
            cur = []
            continue
        cur.append(ch)
    if depth:
        raise HostlistError(f"'[' without ']' in hostlist {text!r}")
    if cur:
        parts.append("".join(cur))
    return parts


def _ranges(body: str, whole: str) -> list[str]:
    out: list[str] = []
    for item in body.split(","):
        m = _RANGE.fullmatch(item.strip())
        if m is None:
            raise HostlistError(f"bad range {item!r} in hostlist {whole!r}")
        lo, hi = m[1], m[2]
        if hi is None:
            out.append(lo)
            continue
        a, b = int(lo), int(hi)
        if b < a:
            raise HostlistError(f"range {item!r} goes down in hostlist {whole!r}")
        if b - a >= MAX_HOSTS:
            raise HostlistError(f"range {item!r} is too large in hostlist {whole!r}")
        width = len(lo) if lo.startswith("0") and len(lo) > 1 else 0
        out.extend(str(n).zfill(width) for n in range(a, b + 1))
    return out


def _expand_one(name: str, whole: str) -> list[str]:
    pieces = re.split(r"(\[[^\]]*\])", name)
    results = [""]
    for piece in pieces:
        if piece.startswith("["):
            values = _ranges(piece[1:-1], whole)
            results = [r + v for r in results for v in values]
        else:
            results = [r + piece for r in results]
        if len(results) > MAX_HOSTS:
            raise HostlistError(f"hostlist {whole!r} names more than {MAX_HOSTS} hosts")
    return results


def expand(text: str) -> list[str]:
    """Every host name of a hostlist expression, in order, without duplicates."""
    seen: dict[str, None] = {}
    for part in _split_top(text.strip()):
        for host in _expand_one(part, text):
            if not host:
                raise HostlistError(f"empty host name in hostlist {text!r}")
            seen.setdefault(host, None)
            if len(seen) > MAX_HOSTS:
                raise HostlistError(f"hostlist {text!r} names more than {MAX_HOSTS} hosts")
    return list(seen)


def expand_all(texts: Iterable[str]) -> list[str]:
    """``expand`` of several arguments (Slurm passes one; a person may pass several)."""
    seen: dict[str, None] = {}
    for text in texts:
        for host in expand(text):
            seen.setdefault(host, None)
    return list(seen)


def compress(hosts: Iterable[str]) -> str:
    """A short hostlist of ``hosts`` for log lines and scontrol (``c[1-3],gpu01``): runs of
    consecutive numbers with the same prefix and padding are bracketed."""
    groups: dict[tuple[str, int], list[int]] = {}
    order: list[tuple[str, int] | str] = []
    for host in dict.fromkeys(hosts):
        m = re.fullmatch(r"(.*?)(\d+)", host)
        if m is None or "[" in host:
            order.append(host)
            continue
        digits = m[2]
        width = len(digits) if digits.startswith("0") and len(digits) > 1 else 0
        key = (m[1], width)
        if key not in groups:
            groups[key] = []
            order.append(key)
        groups[key].append(int(digits))
    out: list[str] = []
    for item in order:
        if isinstance(item, str):
            out.append(item)
            continue
        prefix, width = item
        nums = sorted(set(groups[item]))
        spans: list[str] = []
        start = prev = nums[0]
        for n in [*nums[1:], None]:
            if n is not None and n == prev + 1:
                prev = n
                continue
            a, b = str(start).zfill(width), str(prev).zfill(width)
            spans.append(a if start == prev else f"{a}-{b}")
            if n is not None:
                start = prev = n
        if len(nums) == 1:
            out.append(f"{prefix}{spans[0]}")
        else:
            out.append(f"{prefix}[{','.join(spans)}]")
    return ",".join(out)


def brief(hosts: Iterable[str], limit: int = 120) -> str:
    """``compress`` for a log line: a hostlist that is still long (scattered names) is
    cut after a few entries, with how many nodes were left out."""
    names = list(dict.fromkeys(hosts))
    whole = compress(names)
    if len(whole) <= limit:
        return whole
    shown: list[str] = []
    for n in names:
        if len(",".join([*shown, n])) > limit:
            break
        shown.append(n)
    return f"{compress(shown)} and {len(names) - len(shown)} more"
