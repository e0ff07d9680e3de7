"""The agent's own check of an order against the site's trust policy.

The service verifies signatures at push and at create, but the agent does not trust
it to have done so: before it boots anything it rebuilds the signed manifest from the
order (the Assignment) and verifies the order's envelopes against the policy it holds
(the latest ``AssignmentSet.policy``).

Which disks the manifest covers: a workspace's disks are the image's partitions (cow
ones perhaps grown: only ``virtual_size_bytes`` changes, which the manifest does not
cover) followed by blank partitions added at create time. The agent cannot tell an
added blank partition from one of the image's own blank partitions by looking at the
order, so it takes the list from what was signed: for each envelope, the manifest
holds the order's disks whose names the signed statement lists, in the order's
order. A disk the statement does not list must be a blank partition without content
(no digest); anything else (an extra cow or readonly disk) refuses the order. Dropping
or changing a signed partition changes the manifest, so the signature fails.

Bound orders: every digest the agent would use (disks, kernel, initrd) must be one the
service says it verified (``verified_digests``); otherwise the order is refused whatever
the mode, since it is not about trust in a publisher but about the order itself (a
swapped blob, or a mix of two image versions).
"""

from __future__ import annotations

import base64
import json
from collections.abc import Sequence

from images import signing
from images.model import ImageSpec, Mode, Partition
from workspace.node.v1 import nodes_pb2
from workspace.v1 import common_pb2, trust_pb2


def policy_from_proto(p: trust_pb2.TrustPolicy) -> signing.Policy:
    return signing.Policy(
        version=p.version,
        enforce=p.mode == trust_pb2.TRUST_MODE_ENFORCE,
        keys=tuple(
            signing.Key(
                key_id=k.key_id,
                public_key_pem=k.public_key_pem,
                image_patterns=tuple(k.image_patterns) or ("*",),
                expires_at=(k.expires_at.ToNanoseconds() / 1e9)
                if k.HasField("expires_at")
                else 0.0,
                revoked=k.revoked,
            )
            for k in p.keys
        ),
        revoked_digests=frozenset(p.revoked_digests),
    )


def mode_name(value: common_pb2.PartitionMode.ValueType) -> str:
    return common_pb2.PartitionMode.Name(value).removeprefix("PARTITION_MODE_")


def used_digests(a: nodes_pb2.Assignment) -> list[str]:
    """Every blob digest the agent would use for ``a`` (disks, kernel, initrd)."""
    out = [d.digest for d in a.disks if d.digest]
    out += [d for d in (a.kernel_digest, a.initrd_digest) if d]
    return list(dict.fromkeys(out))


def unverified_digests(a: nodes_pb2.Assignment) -> list[str]:
    """Digests the order uses that the service did not say it verified."""
    verified = set(a.verified_digests)
    return [d for d in used_digests(a) if d not in verified]


def _signed_partition_names(envelope: str) -> list[str] | None:
    """The partition names a DSSE envelope's statement lists (None: unreadable)."""
    try:
        env = json.loads(envelope)
        payload = json.loads(base64.b64decode(env["payload"], validate=True))
        return [str(p["name"]) for p in payload["predicate"]["partitions"]]
    except (ValueError, KeyError, TypeError):
        return None


def manifest(a: nodes_pb2.Assignment, names: Sequence[str] | None = None) -> ImageSpec:
    """The manifest of the order: its disks (only ``names`` if given), kernel, initrd,
    cmdline — the same fields, defaults and order as the service's image manifest."""
    wanted = None if names is None else set(names)
    return ImageSpec(
        a.image,
        tuple(
            Partition(
                name=d.name,
                mode=Mode(mode_name(d.mode)),
                digest=d.digest,
                size_bytes=d.size_bytes,
                format=d.format or "raw",
            )
            for d in a.disks
            if wanted is None or d.name in wanted
        ),
        a.kernel_digest,
        a.initrd_digest,
        a.cmdline,
    )


def _extra_disk_problem(a: nodes_pb2.Assignment, names: Sequence[str]) -> str:
    signed = set(names)
    for d in a.disks:
        if d.name in signed:
            continue
        if d.digest or d.mode != common_pb2.PARTITION_MODE_BLANK:
            return (
                f"the order adds disk {d.name!r} with content ({mode_name(d.mode).lower()}, "
                f"{d.digest or 'no digest'}) that the image's signed manifest does not list"
            )
    return ""


def check_order(a: nodes_pb2.Assignment, policy: signing.Policy, now: float) -> signing.Verdict:
    """The policy's verdict on booting order ``a``: bound-order check, then signatures."""

    def deny(reason: str) -> signing.Verdict:
        return signing.Verdict(False, False, reason, "", policy.version)

    missing = unverified_digests(a)
    if missing:
        return deny(f"order names digest {missing[0]} the service did not verify")
    if not a.envelopes_json:
        # No envelope: the manifest is the whole order; verify() says "not signed".
        return signing.verify(policy, manifest(a), [], now)
    verdicts: list[signing.Verdict] = []
    for env in a.envelopes_json:
        names = _signed_partition_names(env)
        if names is not None:
            extra = _extra_disk_problem(a, names)
            if extra:
                verdicts.append(
                    signing.Verdict(False, not policy.enforce, extra, "", policy.version)
                )
                continue
        v = signing.verify(policy, manifest(a, names), [env], now)
        if v.trusted:
            return v
        verdicts.append(v)
    if len(verdicts) == 1:
        return verdicts[0]
    reason = "; ".join(dict.fromkeys(v.reason for v in verdicts))
    return signing.Verdict(False, not policy.enforce, reason, "", policy.version)


def audit_entry(
    node: str,
    action: str,
    a: nodes_pb2.Assignment,
    verdict: signing.Verdict,
    now: float,
    digest: str = "",
) -> trust_pb2.AuditEntry:
    e = trust_pb2.AuditEntry(
        where=f"node:{node}",
        action=action,
        image=a.image,
        digest=digest,
        key_id=verdict.key_id,
        policy_version=verdict.policy_version,
        verdict=verdict.word,
        reason=verdict.reason,
        workspace_id=a.workspace_id,
    )
    e.at.FromNanoseconds(int(now * 1e9))
    return e
