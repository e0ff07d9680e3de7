"""The words the Python client takes for the clusters' enums and usage groupings
(``"soft-anti"`` for ``AFFINITY_SOFT_ANTI``), shared with ``ws`` and ws-slurm."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from workspace.v1 import clusters_pb2

# Short names accepted for the cluster enums ("soft-anti", "SOFT_ANTI", "AFFINITY_SOFT_ANTI").
AFFINITIES = ("none", "soft-anti", "hard-anti", "soft", "hard")
FAILURE_POLICIES = ("keep", "teardown")
USAGE_GROUPINGS = ("workspace", "user", "project")


def _enum_value(enum: Any, prefix: str, choices: Sequence[str], value: int | str) -> int:
    if isinstance(value, int):
        return value
    text = value.strip().upper().replace("-", "_").removeprefix(prefix)
    if text.lower().replace("_", "-") not in choices:
        raise ValueError(f"{value!r} is not one of {', '.join(choices)}")
    return int(enum.Value(prefix + text))


def affinity_value(value: int | str) -> int:
    """``"soft-anti"`` (or ``SOFT_ANTI``, ``AFFINITY_SOFT_ANTI``) -> the Affinity number."""
    return _enum_value(clusters_pb2.Affinity, "AFFINITY_", AFFINITIES, value)


def failure_policy_value(value: int | str) -> int:
    """``"teardown"`` (or ``TEARDOWN``, ``FAILURE_POLICY_TEARDOWN``) -> the FailurePolicy number."""
    return _enum_value(clusters_pb2.FailurePolicy, "FAILURE_POLICY_", FAILURE_POLICIES, value)


def own_usage_by_project(by: str) -> str:
    """Why usage ``mine`` (only the caller's own) is refused grouped by project."""
    return (
        f"mine (only your own usage) needs by workspace or user, not {by!r}: a project's "
        "row adds up its members' use, your colleagues' too"
    )
