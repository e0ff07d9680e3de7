"""The agent's own check of an order against the site's trust policy.

The service verifies signatures at push and at create, but the agent does not trust
it to have done so: before it boots anything it rebuilds the signed manifest from the
order (``Order.spec()``) and verifies the order's envelopes against the policy it holds
(the latest one its link decoded from the service's stream).

Which disks the manifest covers: a workspace's disks are the image's partitions (cow
ones perhaps grown: only ``virtual_size_bytes`` changes, which the manifest does not
cover) followed by blank partitions added at create time. The agent cannot tell an
added blank partition from one of the image's own blank partitions by looking at the
order, so it takes the list from what was signed: for each envelope, the manifest
holds the order's disks whose names the signed statement lists, in the order's
order (``ImageSpec.only``). A disk the statement does not list must be a blank
partition without content (no digest); anything else (an extra cow or readonly disk)
refuses the order. Dropping or changing a signed partition changes the manifest, so
the signature fails.

How the image is contextualized: a statement of format v2 also covers the image's
``context`` and ``login_user``, which the order does not carry as such. The service
builds a cloud-init seed exactly for a workspace of an image whose context is not
"none", so the agent checks the signed context against the order's seed: a seed on an
order whose statement says "none" (or none where it says "nocloud") refuses that
envelope (``context_problem``). The login user it cannot check (a workspace's
user-data may rename it); the service checks it at every create, start and placement.

Bound orders: every digest the agent would use (disks, kernel, initrd) must be one the
service says it verified (``verified_digests``); otherwise the order is refused whatever
the mode, since it is not about trust in a publisher but about the order itself (a
swapped blob, or a mix of two image versions).
"""

from __future__ import annotations

import base64
import json
from collections.abc import Sequence
from typing import Any

from images import signing
from images.model import Mode
from workspace.domain.model import AuditRecord, Order


def unverified_digests(order: Order) -> list[str]:
    """Digests the order uses that the service did not say it verified."""
    verified = set(order.verified_digests)
    return [d for d in order.digests() if d not in verified]


def _signed_statement(envelope: str) -> Any:
    """The statement a DSSE envelope carries, unchecked (None: unreadable)."""
    try:
        env = json.loads(envelope)
        return json.loads(base64.b64decode(env["payload"], validate=True))
    except (ValueError, KeyError, TypeError, RecursionError):
        return None


def signed_partition_names(envelope: str) -> list[str] | None:
    """The partition names a DSSE envelope's statement lists (None: unreadable)."""
    try:
        return [str(p["name"]) for p in _signed_statement(envelope)["predicate"]["partitions"]]
    except (KeyError, TypeError):
        return None


def context_problem(order: Order, envelope: str) -> str:
    """Why the order's seed contradicts the context a v2 statement signed ('' if it
    does not, or the statement is not v2 or unreadable: ``signing.verify`` says what is
    wrong with those). The service builds a seed for an image whose context is not
    "none", and for no other."""
    stmt = _signed_statement(envelope)
    if not isinstance(stmt, dict) or stmt.get("predicateType") != signing.PREDICATE_TYPE:
        return ""
    pred = stmt.get("predicate")
    signed = pred.get("context") if isinstance(pred, dict) else None
    if not isinstance(signed, str) or (signed == "none") == (order.seed is None):
        return ""
    has = "carries a cloud-init seed" if order.seed is not None else "has no cloud-init seed"
    return f"the signed statement says context {signed!r}, but the order {has}"


def extra_disk_problem(order: Order, names: Sequence[str]) -> str:
    """Why the order's disks outside ``names`` (the signed ones) refuse it ('' if not)."""
    signed = set(names)
    for disk in order.disks:
        p = disk.partition
        if p.name in signed:
            continue
        if p.digest or p.mode is not Mode.BLANK:
            return (
                f"the order adds disk {p.name!r} with content ({p.mode.value.lower()}, "
                f"{p.digest or 'no digest'}) that the image's signed manifest does not list"
            )
    return ""


def check_order(order: Order, policy: signing.Policy, now: float) -> signing.Verdict:
    """The policy's verdict on booting ``order``: bound-order check, then signatures."""

    def deny(reason: str) -> signing.Verdict:
        return signing.Verdict(False, False, reason, "", policy.version)

    missing = unverified_digests(order)
    if missing:
        return deny(f"order names digest {missing[0]} the service did not verify")
    spec = order.spec()
    if not order.envelopes:
        # No envelope: the manifest is the whole order; verify() says "not signed".
        return signing.verify(policy, spec, [], now)
    verdicts: list[signing.Verdict] = []
    for env in order.envelopes:
        names = signed_partition_names(env)
        if names is not None:
            extra = extra_disk_problem(order, names) or context_problem(order, env)
            if extra:
                verdicts.append(
                    signing.Verdict(False, not policy.enforce, extra, "", policy.version)
                )
                continue
        v = signing.verify(policy, spec if names is None else spec.only(names), [env], now)
        if v.trusted:
            return v
        verdicts.append(v)
    if len(verdicts) == 1:
        return verdicts[0]
    reason = "; ".join(dict.fromkeys(v.reason for v in verdicts))
    old = any(v.old_format for v in verdicts)
    return signing.Verdict(False, not policy.enforce, reason, "", policy.version, old)


# The verdict word a running VM's agent.json keeps once it was let run under an
# old-format signature (``recheck``): it booted trusted, and is let run so again.
KEPT_OLD_FORMAT = "allow-old-format"


def recheck(image: str, verdict: signing.Verdict, was: object) -> tuple[signing.Verdict, str]:
    """The verdict on a running VM of ``image`` checked again under a new policy, and
    the word its agent.json keeps. ``was``: the word it booted (or was last checked)
    under. One that booted trusted ("allow"), or was let run so before, is not stopped
    for an old-format signature alone: it was admitted under the rules of its day
    (``signing.Verdict.running``). One that booted untrusted (a "warn" of WARN mode), or
    of which nothing is known, was not admitted for that signature: the verdict as is."""
    if was in ("allow", KEPT_OLD_FORMAT) and verdict.old_format and not verdict.trusted:
        return verdict.running(image), KEPT_OLD_FORMAT
    return verdict, verdict.word


def running_note(image: str, verdict: signing.Verdict, stop: bool, kept: bool = False) -> str:
    """What a VM running ``image`` is told when the re-check under a new policy finds it
    not trusted (``verdict`` as ``recheck`` made it; ``kept``: let run for an old-format
    signature, whatever the site says)."""
    if kept:
        return f"{verdict.reason}; the VM keeps running"
    return (
        f"image {image} is no longer trusted under policy version "
        f"{verdict.policy_version} ({verdict.reason}); "
        + ("powered off (the site stops VMs on revocation)" if stop else "the VM keeps running")
    )


def audit_record(
    node: str,
    action: str,
    order: Order,
    verdict: signing.Verdict,
    now: float,
    digest: str = "",
) -> AuditRecord:
    return AuditRecord(
        at=now,
        where=f"node:{node}",
        action=action,
        image=order.image,
        digest=digest,
        key_id=verdict.key_id,
        policy_version=verdict.policy_version,
        verdict=verdict.word,
        reason=verdict.reason,
        workspace_id=order.workspace_id,
    )
