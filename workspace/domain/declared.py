"""What a node may declare of itself: the bounds the service holds a Register to, and
the agent its config to."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

# What a node may declare (in agent.toml, sent at Register): labels (a key as Kubernetes
# allows one) and networks (a network's name is at most 64 characters). Every node is in
# each `ws-admin node list` answer and each placement reads them all: one node that
# declared 16 MB of labels brought that answer over gRPC's message limit.
MAX_LABELS, MAX_LABEL_KEY, MAX_LABEL_VALUE = 64, 63, 255
MAX_NETWORKS, MAX_NETWORK_NAME = 1024, 64
# The largest size a node may register with: more CPUs than any host has (Linux's own
# limit is 8192), and what the nodes table's INTEGER columns and the Register message's
# int32 fields hold (32 bits).
MAX_NODE_CPUS = 65536
MAX_NODE_SIZE = 2**31 - 1


def most_of(key: str) -> int:
    """The largest value of size ``key`` a node may register with."""
    return MAX_NODE_CPUS if key == "cpus" else MAX_NODE_SIZE


def size_problem(sizes: Mapping[str, int]) -> str:
    """What is wrong with the sizes a node's config declares (``cpus``, ``memory_mib``,
    ``disk_gib``, ``disk_mbps``, ``net_mbps``; 0: detected, or none) ("": nothing):
    beyond them every Register of the node is refused, or cannot even be sent."""
    for key, value in sizes.items():
        most = most_of(key)
        if value > most:
            return f"{key}: must be at most {most}, got {value} (more than a node may register)"
    return ""


def declared_problem(labels: Mapping[str, str], networks: Sequence[str]) -> str:
    """What is wrong with a node's declared ``labels`` and ``networks`` ("": nothing):
    the service refuses such a Register, and the agent refuses such a config at start
    rather than be refused at every try."""
    if len(labels) > MAX_LABELS:
        return f"at most {MAX_LABELS} labels, got {len(labels)}"
    for key, value in labels.items():
        if not 0 < len(key) <= MAX_LABEL_KEY or len(value) > MAX_LABEL_VALUE:
            return (
                f"a label's key must be 1 to {MAX_LABEL_KEY} characters and its value at "
                f"most {MAX_LABEL_VALUE} (label {key[:MAX_LABEL_KEY]!r})"
            )
    if len(networks) > MAX_NETWORKS:
        return f"at most {MAX_NETWORKS} networks, got {len(networks)}"
    if any(len(n) > MAX_NETWORK_NAME for n in networks):
        return f"a network's name is at most {MAX_NETWORK_NAME} characters"
    return ""
