"""Which Slurm node names can be workspace names: ws-slurm names a lone node's workspace
after it, and every node's guest takes it as its hostname (``context``), in a job's
cluster too.

The service's rules (ops/create.py): one DNS label of lowercase letters, digits and '-',
and, from session 43, not all digits (nor ``0x`` and hex digits), which resolvers read as
an address (``123`` is 0.0.0.123). ws-slurm refuses such a node whichever way it would be
made (a lone node's create was refused by the service, a job's cluster member was made
with that hostname) and ``check`` says so first.
"""

from __future__ import annotations

import re

# Workspace names (ops/create.py NAME_RE, at most 63 characters).
WORKSPACE_NAME_RE = re.compile(r"[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?")
# A name resolvers read as an address (ops/create.py NUMBER_RE).
NUMBER_RE = re.compile(r"[0-9]+|0x[0-9a-f]+")


def name_problem(node: str) -> str:
    """Why ``node`` cannot be a workspace name (a guest's hostname); "" if it can."""
    if not WORKSPACE_NAME_RE.fullmatch(node):
        return "lowercase letters, digits and '-', at most 63"
    if NUMBER_RE.fullmatch(node):
        return "all digits (or 0x and hex digits), which resolvers read as an IP address"
    return ""
