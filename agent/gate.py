"""The trust policy the node holds, and the decisions it takes under it.

The policy arrives with the orders (decoded by the link); None means the service sent
none and nothing is checked. Every decision is an audit record, spooled for the service
(``agent.audit``). The rules themselves are in ``agent.trust``.
"""

from __future__ import annotations

import logging
import threading
import time

from agent import trust
from agent.audit import AuditSpool
from images import signing
from workspace.domain.model import Order
from workspace.errors import PermissionDenied
from workspace.log import about, named

log = logging.getLogger("agent")


class Refused(PermissionDenied):
    """The policy held denies booting the order (the same policy will again)."""


class TrustGate:
    def __init__(self, node: str, audit: AuditSpool) -> None:
        self.node = node
        self.audit = audit
        self._lock = threading.Lock()
        self._policy: signing.Policy | None = None
        self._stop_running_on_revoke = False

    @property
    def stop_running_on_revoke(self) -> bool:
        with self._lock:
            return self._stop_running_on_revoke

    @property
    def version(self) -> int:
        """The version of the policy held (0: none)."""
        with self._lock:
            return self._policy.version if self._policy is not None else 0

    def update(self, policy: signing.Policy | None, stop_running_on_revoke: bool) -> bool:
        """Take the policy of new orders (None: none sent, keep ours). True when its
        version changed, so the VMs running already must be checked again."""
        if policy is None:
            return False
        with self._lock:
            old = self._policy
            self._policy = policy
            self._stop_running_on_revoke = stop_running_on_revoke
        if old is None or old.version != policy.version:
            log.info("trust policy version %d", policy.version)
            return True
        return False

    def verdict(self, order: Order) -> signing.Verdict | None:
        """The policy's verdict on ``order``; None when there is no policy."""
        with self._lock:
            policy = self._policy
        if policy is None:
            return None
        return trust.check_order(order, policy, time.time())

    def record(self, action: str, order: Order, verdict: signing.Verdict, digest: str = "") -> None:
        self.audit.add(trust.audit_record(self.node, action, order, verdict, time.time(), digest))

    def check(self, order: Order, action: str) -> str:
        """Verify ``order`` against the policy held; raise (nothing boots) when it denies.
        Returns the verdict's word ("allow" or "warn"; "" without a policy)."""
        verdict = self.verdict(order)
        if verdict is None:
            return ""
        self.record(action, order, verdict)
        if verdict.trusted:
            return verdict.word
        if not verdict.allowed:
            raise Refused(f"image {order.image or '?'} refused on this node: {verdict.reason}")
        log.warning(
            "workspace %s: image %s is not trusted (%s); booting it anyway: the policy only warns",
            named(order.workspace_id, order.name),
            order.image,
            verdict.reason,
            extra=about(order.workspace_id),
        )
        return verdict.word

    def audit_blob(self, order: Order, digest: str, intact: bool, reason: str) -> None:
        """Audit the check of a cached blob before ``order`` uses it ("cache-hit"):
        allow when a re-hash found it intact, deny when it no longer matches its digest
        (with or without a policy: a corrupted blob is never booted)."""
        with self._lock:
            version = self._policy.version if self._policy is not None else 0
        verdict = signing.Verdict(intact, intact, reason, "", version)
        self.record("cache-hit", order, verdict, digest)
