"""The agent checks what it boots itself: signatures against the policy it holds and
bound orders (cached blobs are checked at every use: tests/functional/test_integrity.py).
Real service + fake-driver agent over gRPC."""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from pathlib import Path

import grpc
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from agent.audit import AuditSpool
from images import signing
from tests.functional.harness import WS, Site, wait_for
from workspace.codec import node as node_codec
from workspace.domain.model import AuditRecord, Disk
from workspace.domain.states import TRUST_STOPPED
from workspace.errors import PermissionDenied
from workspace.store import Image
from workspace.store.mapping import image_spec as manifest_of
from workspace.v1 import common_pb2, images_pb2, trust_pb2, trust_pb2_grpc

IMAGE = "app:1"


def _trust(site: Site) -> trust_pb2_grpc.TrustStub:
    return trust_pb2_grpc.TrustStub(site.stubs.channel)


def _sign(site: Site, key: Ed25519PrivateKey, image: str = IMAGE) -> None:
    assert site.service is not None
    with site.service.store.read() as s:
        row = s.get(Image, image)
        assert row is not None
        envelope = signing.sign(manifest_of(row), key)
    _trust(site).AddSignature(trust_pb2.AddSignatureRequest(image=image, envelope_json=envelope))


def _add_key(site: Site, key: Ed25519PrivateKey) -> None:
    _trust(site).AddKey(
        trust_pb2.AddKeyRequest(public_key_pem=signing.public_pem(key), image_patterns=["*"])
    )


def _enforce(site: Site) -> None:
    _trust(site).SetMode(trust_pb2.SetModeRequest(mode=trust_pb2.TRUST_MODE_ENFORCE))


def _node_audit(site: Site, action: str = "") -> list[trust_pb2.AuditEntry]:
    entries = _trust(site).ListAudit(trust_pb2.ListAuditRequest(image=IMAGE)).entries
    return [e for e in entries if e.where == "node:node1" and (not action or e.action == action)]


@pytest.fixture
def key() -> Ed25519PrivateKey:
    return Ed25519PrivateKey.generate()


@pytest.fixture
def signed_site(site: Site, key: Ed25519PrivateKey) -> Site:
    """Enforce mode, one trusted key, image app:1 signed by it, one node."""
    site.stubs.network()
    site.stubs.import_image(IMAGE, bytes(range(256)) * 256)
    _add_key(site, key)
    _sign(site, key)
    _enforce(site)
    site.add_agent("node1")
    return site


def _digest(site: Site) -> str:
    img = site.stubs.images.GetImage(images_pb2.GetImageRequest(name=IMAGE))
    return str(img.partitions[0].digest)


def test_signed_image_boots_and_the_node_audits_it(signed_site: Site) -> None:
    site = signed_site
    ws = site.stubs.create(name="w1", image=IMAGE)
    site.stubs.wait_state(ws.id, WS.WORKSPACE_STATE_RUNNING)
    boot = wait_for(lambda: _node_audit(site, "boot"), what="the node's boot audit")[0]
    assert (boot.verdict, boot.workspace_id) == ("allow", ws.id)
    assert boot.policy_version >= 1 and boot.key_id


def test_order_with_a_swapped_or_unverified_digest_is_refused(signed_site: Site) -> None:
    site = signed_site
    ag = site.agents["node1"]
    w1 = site.stubs.create(name="w1", image=IMAGE)
    site.stubs.wait_state(w1.id, WS.WORKSPACE_STATE_RUNNING)
    other = site.stubs.upload(b"another blob" * 100)
    order = wait_for(lambda: ag.executor.orders().get(w1.id), what="the order")
    first = order.disks[0]
    swapped = Disk(dataclasses.replace(first.partition, digest=other), first.sources)
    # a swapped blob (or a mix of two versions)
    order = dataclasses.replace(order, workspace_id="forged", disks=(swapped, *order.disks[1:]))
    with pytest.raises(PermissionDenied, match=f"order names digest {other} the service did not"):
        ag.executor.create(order)
    # even if the order claims it was verified
    order = dataclasses.replace(order, verified_digests=(*order.verified_digests, other))
    with pytest.raises(PermissionDenied, match=r"image app:1 refused.*differ"):
        ag.executor.create(order)
    assert "forged" not in {d.workspace_id for d in ag.driver.list_domains()}
    assert not ag.cache.has(other)  # refused before anything was fetched


def _node_revokes(site: Site, key: Ed25519PrivateKey, monkeypatch: pytest.MonkeyPatch) -> str:
    """The agent holds a policy in which ``key`` is revoked; the service still trusts it
    (a new policy version is made, so that the node reads one). Returns the key's id."""
    kid = signing.key_id(key.public_key())
    real: Callable[[trust_pb2.TrustPolicy], signing.Policy] = node_codec.policy_from_proto

    def revoked(p: trust_pb2.TrustPolicy) -> signing.Policy:
        pol = real(p)
        keys = tuple(dataclasses.replace(k, revoked=k.key_id == kid) for k in pol.keys)
        return dataclasses.replace(pol, keys=keys)

    monkeypatch.setattr(node_codec, "policy_from_proto", revoked)
    _add_key(site, Ed25519PrivateKey.generate())
    return kid


def test_agent_refuses_what_the_service_let_through_and_keeps_running_vms(
    signed_site: Site, key: Ed25519PrivateKey, monkeypatch: pytest.MonkeyPatch
) -> None:
    site = signed_site
    ag = site.agents["node1"]
    w1 = site.stubs.create(name="w1", image=IMAGE)
    site.stubs.wait_state(w1.id, WS.WORKSPACE_STATE_RUNNING)
    kid = _node_revokes(site, key, monkeypatch)
    running = wait_for(
        lambda: "no longer trusted" in (w := site.stubs.get(w1.id)).reason and w,
        what="the running VM to be reported",
    )
    assert running.state == WS.WORKSPACE_STATE_RUNNING and "revoked" in running.reason
    assert w1.id in {d.workspace_id for d in ag.driver.list_domains()}  # not killed

    w2 = site.stubs.create(name="w2", image=IMAGE)  # the service still lets it through
    failed = site.stubs.wait_state(w2.id, WS.WORKSPACE_STATE_FAILED)
    assert "image app:1 refused on this node" in failed.reason
    assert f"key {kid[:16]} is revoked" in failed.reason
    assert w2.id not in {d.workspace_id for d in ag.driver.list_domains()}
    deny = wait_for(
        lambda: [e for e in _node_audit(site, "boot") if e.workspace_id == w2.id],
        what="the node's deny audit",
    )[0]
    assert deny.verdict == "deny" and "revoked" in deny.reason
    assert any(e.action == "running" and e.workspace_id == w1.id for e in _node_audit(site))
    # A refused create left nothing on the node: destroying it ends it.
    site.stubs.ws.DestroyWorkspace(site.stubs.ref(w2.id))
    site.stubs.wait_state(w2.id, WS.WORKSPACE_STATE_TERMINATED)


def test_unsigned_image_under_warn_boots_and_the_node_audits_why(site: Site) -> None:
    site.stubs.network()
    site.stubs.import_image(IMAGE)
    _add_key(site, Ed25519PrivateKey.generate())  # a policy exists; mode stays WARN
    site.add_agent("node1")
    ws = site.stubs.create(name="w1", image=IMAGE)
    site.stubs.wait_state(ws.id, WS.WORKSPACE_STATE_RUNNING)
    boot = wait_for(lambda: _node_audit(site, "boot"), what="the node's audit")[0]
    assert boot.verdict == "warn" and boot.reason == f"image {IMAGE} is not signed"


def _stop_on_revoke(site: Site) -> None:
    _trust(site).SetMode(
        trust_pb2.SetModeRequest(mode=trust_pb2.TRUST_MODE_ENFORCE, stop_running_on_revoke=True)
    )


def _boot_denials(site: Site, wid: str) -> list[trust_pb2.AuditEntry]:
    return [
        e
        for e in _node_audit(site)
        if e.workspace_id == wid and e.action in ("boot", "start") and e.verdict == "deny"
    ]


def test_a_vm_stopped_for_a_revocation_stays_stopped_until_started(
    signed_site: Site, key: Ed25519PrivateKey
) -> None:
    """The VM is powered off and the workspace becomes STOPPED, desired STOPPED, saying
    why: not FAILED with desired RUNNING, retried by its node in a loop (a deny in the
    audit per try) and booted by itself once the site went back to warn."""
    site = signed_site
    _stop_on_revoke(site)
    ws = site.stubs.create(name="w1", image=IMAGE)
    site.stubs.wait_state(ws.id, WS.WORKSPACE_STATE_RUNNING)
    kid = signing.key_id(key.public_key())
    policy = _trust(site).RevokeKey(trust_pb2.RevokeKeyRequest(key_id=kid))
    assert f"key {kid} revoked" in policy.change and "stopped 1 workspace(s): w1" in policy.change
    got = site.stubs.wait_state(ws.id, WS.WORKSPACE_STATE_STOPPED)
    assert got.desired_state == common_pb2.DESIRED_STATE_STOPPED
    assert "trust policy" in got.reason or "no longer trusted" in got.reason, got.reason
    assert "is revoked" in got.reason
    dom = site.agents["node1"].driver.get(ws.id)
    assert dom is not None and dom.state.value == "shutoff"  # powered off, kept for inspection
    time.sleep(2.5)  # heartbeats and reconcile passes: nothing tries to boot it
    assert site.stubs.get(ws.id).state == WS.WORKSPACE_STATE_STOPPED
    assert _boot_denials(site, ws.id) == []
    # A start goes through the trust check: refused under enforce, it stays STOPPED.
    with pytest.raises(grpc.RpcError) as err:
        site.stubs.ws.StartWorkspace(site.stubs.ref(ws.id))
    assert err.value.code() == grpc.StatusCode.PERMISSION_DENIED
    _trust(site).SetMode(trust_pb2.SetModeRequest(mode=trust_pb2.TRUST_MODE_WARN))
    time.sleep(1.5)
    assert site.stubs.get(ws.id).state == WS.WORKSPACE_STATE_STOPPED  # not booted by itself
    dom = site.agents["node1"].driver.get(ws.id)
    assert dom is not None and dom.state.value == "shutoff"
    site.stubs.ws.StartWorkspace(site.stubs.ref(ws.id))  # asked for: warn lets it boot
    site.stubs.wait_state(ws.id, WS.WORKSPACE_STATE_RUNNING)


def test_a_revocation_stops_the_workspaces_of_a_node_that_was_offline(
    signed_site: Site,
) -> None:
    """Decided by the service when the policy changes, not learnt from the node: the
    workspace of an agent that was down is STOPPED desired at once, and the agent powers
    it off when it comes back."""
    site = signed_site
    _stop_on_revoke(site)
    ws = site.stubs.create(name="w1", image=IMAGE)
    site.stubs.wait_state(ws.id, WS.WORKSPACE_STATE_RUNNING)
    site.stop_agent("node1")
    _trust(site).RevokeDigest(trust_pb2.RevokeDigestRequest(digest=_digest(site)))
    got = site.stubs.get(ws.id)
    assert got.desired_state == common_pb2.DESIRED_STATE_STOPPED
    assert (
        got.reason.startswith(TRUST_STOPPED) and f"digest {_digest(site)} is revoked" in got.reason
    )
    again = site.add_agent("node1")
    site.stubs.wait_state(ws.id, WS.WORKSPACE_STATE_STOPPED)
    dom = again.driver.get(ws.id)
    assert dom is not None and dom.state.value == "shutoff"
    assert _boot_denials(site, ws.id) == []


def test_a_boot_the_node_refuses_is_not_retried_in_a_loop(
    signed_site: Site, key: Ed25519PrivateKey, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The node refuses what the service let through (their policies differ): one deny,
    not one per retry, until the policy changes."""
    site = signed_site
    _node_revokes(site, key, monkeypatch)
    ws = site.stubs.create(name="w2", image=IMAGE)
    failed = site.stubs.wait_state(ws.id, WS.WORKSPACE_STATE_FAILED)
    assert "not tried again until the trust policy changes" in failed.reason
    wait_for(lambda: _boot_denials(site, ws.id), what="the node's deny")
    time.sleep(8)  # the backoff would have retried three times by now
    assert len(_boot_denials(site, ws.id)) == 1


def test_audit_records_spooled_before_a_crash_reach_the_service_once_after_restart(
    signed_site: Site,
) -> None:
    site = signed_site
    ws = site.stubs.create(name="w1", image=IMAGE)
    site.stubs.wait_state(ws.id, WS.WORKSPACE_STATE_RUNNING)
    wait_for(lambda: _node_audit(site, "boot"), what="the node's boot audit")
    state_dir = Path(site.agents["node1"].cfg.state_dir)
    site.stop_agent("node1")
    # The agent died after spooling two decisions and before any report carried them.
    spool = AuditSpool(state_dir)
    assert spool.pending() == []  # what the service acknowledged is not kept
    unsent = [
        AuditRecord(
            at=1_700_000_000.0 + n,
            where="node:node1",
            action="cache-hit",
            image=IMAGE,
            digest=_digest(site),
            policy_version=1,
            verdict="allow",
            reason=f"unsent before the crash #{n}",
            workspace_id=ws.id,
        )
        for n in (1, 2)
    ]
    for record in unsent:
        spool.add(record)

    site.add_agent("node1")
    wait_for(
        lambda: {e.reason for e in _node_audit(site, "cache-hit")} >= {r.reason for r in unsent},
        what="the spooled records at the service",
    )
    time.sleep(2.5)  # a few more heartbeats (1 s here): nothing is sent twice
    reasons = [e.reason for e in _node_audit(site) if e.reason.startswith("unsent before")]
    assert sorted(reasons) == ["unsent before the crash #1", "unsent before the crash #2"]
    assert len(_node_audit(site, "boot")) == 1
    assert site.agents["node1"].audit.pending() == []  # acknowledged: gone from the spool


def test_an_agent_restart_reports_no_loss_of_trust_that_did_not_happen(site: Site) -> None:
    """Warn mode, an unsigned image: the VM booted with a warning. A restarted agent
    gets the same policy as if new; it once noted every such VM "no longer trusted".
    A real change after the restart is still reported."""
    site.stubs.network()
    site.stubs.import_image(IMAGE, bytes(range(256)) * 256)
    site.add_agent("node1")
    w1 = site.stubs.create(name="w1", image=IMAGE)
    site.stubs.wait_state(w1.id, WS.WORKSPACE_STATE_RUNNING)
    site.stop_agent("node1")
    again = site.add_agent("node1")
    wait_for(
        lambda: w1.id in {d.workspace_id for d in again.driver.list_domains()},
        what="the running VM found again",
    )
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        w = site.stubs.get(w1.id)
        assert w.state == WS.WORKSPACE_STATE_RUNNING and "trusted" not in w.reason, w.reason
        time.sleep(0.2)
    _enforce(site)  # now it would not boot: that is news
    noted = wait_for(
        lambda: "no longer trusted" in (w := site.stubs.get(w1.id)).reason and w,
        what="the running VM to be reported",
    )
    assert "the VM keeps running" in noted.reason
