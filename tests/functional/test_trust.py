"""Image trust over real gRPC with fake-driver agents: signatures attached to images, the
site's policy (keys, patterns, revocations, warn/enforce), refusals at create, and the
audit of every decision."""

from __future__ import annotations

import dataclasses
import json
import os
import stat
import time
from pathlib import Path

import grpc
import pytest

from images import signing
from tests.functional.harness import WS, Site
from workspace.cli import admin as admin_cli
from workspace.cli import ws as ws_cli
from workspace.codec.v1 import image_spec_from_proto as manifest_from_proto
from workspace.v1 import common_pb2, images_pb2, trust_pb2, trust_pb2_grpc

ENFORCE = trust_pb2.TRUST_MODE_ENFORCE
WARN = trust_pb2.TRUST_MODE_WARN
STOPPED = common_pb2.DESIRED_STATE_STOPPED


@pytest.fixture
def trust(ready_site: Site) -> trust_pb2_grpc.TrustStub:
    return trust_pb2_grpc.TrustStub(ready_site.stubs.channel)


def _key() -> tuple[signing.Ed25519PrivateKey, str]:
    private_pem, public_pem = signing.generate_key()
    return signing.load_private_key(private_pem), public_pem.decode()


def _sign(site: Site, name: str, private: signing.Ed25519PrivateKey) -> str:
    img = site.stubs.images.GetImage(images_pb2.GetImageRequest(name=name))
    return signing.sign(manifest_from_proto(img), private)


def _add_key(trust: trust_pb2_grpc.TrustStub, public: str, *patterns: str) -> int:
    policy = trust.AddKey(
        trust_pb2.AddKeyRequest(public_key_pem=public, image_patterns=list(patterns) or ["*"])
    )
    return int(policy.version)


def _refused(site: Site, name: str, image: str = "img") -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as err:
        site.stubs.create(name=name, image=image)
    assert err.value.code() == grpc.StatusCode.PERMISSION_DENIED
    return err.value


def _last(trust: trust_pb2_grpc.TrustStub, action: str = "create") -> trust_pb2.AuditEntry:
    """The newest service decision of ``action`` on image img (agents audit boots too)."""
    entries = trust.ListAudit(trust_pb2.ListAuditRequest(image="img")).entries
    return next(e for e in entries if e.action == action and e.where == "service")


def _names(site: Site) -> set[str]:
    from workspace.v1 import workspaces_pb2

    rows = site.stubs.ws.ListWorkspaces(workspaces_pb2.ListWorkspacesRequest())
    return {w.name for w in rows.workspaces}


def test_new_site_warns_and_has_no_keys(ready_site: Site, trust: trust_pb2_grpc.TrustStub) -> None:
    policy = trust.GetPolicy(trust_pb2.GetPolicyRequest())
    assert policy.version == 0 and policy.mode == WARN and not policy.keys
    ws = ready_site.stubs.create(name="a")
    ready_site.stubs.wait_state(ws.id, WS.WORKSPACE_STATE_RUNNING)
    entry = _last(trust)
    assert entry.verdict == "warn"
    assert "not signed" in entry.reason
    assert entry.workspace_id == ws.id


def test_signed_image_launches_under_enforce(
    ready_site: Site, trust: trust_pb2_grpc.TrustStub
) -> None:
    private, public = _key()
    kid = signing.key_id(public)
    v1 = _add_key(trust, public, "img", "team-*")
    sigs = trust.AddSignature(
        trust_pb2.AddSignatureRequest(image="img", envelope_json=_sign(ready_site, "img", private))
    )
    assert sigs.trusted and sigs.key_id == kid and len(sigs.envelopes_json) == 1
    v2 = trust.SetMode(trust_pb2.SetModeRequest(mode=ENFORCE)).version
    assert v2 > v1
    ws = ready_site.stubs.create(name="ok")
    ready_site.stubs.wait_state(ws.id, WS.WORKSPACE_STATE_RUNNING)
    entry = _last(trust)
    assert entry.action == "create" and entry.verdict == "allow"
    assert entry.key_id == kid and entry.policy_version == v2
    img = ready_site.stubs.images.GetImage(images_pb2.GetImageRequest(name="img"))
    assert entry.digest == img.partitions[0].digest
    assert entry.where == "service" and entry.workspace_id == ws.id
    # The same signature twice is kept once.
    again = trust.AddSignature(
        trust_pb2.AddSignatureRequest(image="img", envelope_json=sigs.envelopes_json[0])
    )
    assert len(again.envelopes_json) == 1


def test_enforce_refuses_unsigned_and_creates_nothing(
    ready_site: Site, trust: trust_pb2_grpc.TrustStub
) -> None:
    trust.SetMode(trust_pb2.SetModeRequest(mode=ENFORCE))
    err = _refused(ready_site, "nope")
    assert "image img" in (err.details() or "")
    assert "not signed" in (err.details() or "")
    assert "nope" not in _names(ready_site)
    entry = _last(trust)
    assert entry.verdict == "deny" and "not signed" in entry.reason
    assert entry.policy_version == 1


def test_unknown_signer_refused_under_enforce(
    ready_site: Site, trust: trust_pb2_grpc.TrustStub
) -> None:
    private, _ = _key()
    envelope = _sign(ready_site, "img", private)
    # Kept under warn (audited), so a later enforce still knows who signed it.
    trust.AddSignature(trust_pb2.AddSignatureRequest(image="img", envelope_json=envelope))
    trust.SetMode(trust_pb2.SetModeRequest(mode=ENFORCE))
    err = _refused(ready_site, "x")
    assert "is not a trusted key" in (err.details() or "")
    # ... and a new one by an unknown key is refused at signing.
    other, _ = _key()
    with pytest.raises(grpc.RpcError) as e2:
        trust.AddSignature(
            trust_pb2.AddSignatureRequest(
                image="img", envelope_json=_sign(ready_site, "img", other)
            )
        )
    assert e2.value.code() == grpc.StatusCode.PERMISSION_DENIED


def test_signature_over_another_manifest_refused(
    ready_site: Site, trust: trust_pb2_grpc.TrustStub
) -> None:
    private, public = _key()
    _add_key(trust, public)
    img = ready_site.stubs.images.GetImage(images_pb2.GetImageRequest(name="img"))
    m = manifest_from_proto(img)
    tampered = dataclasses.replace(m, cmdline="init=/bin/sh")
    with pytest.raises(grpc.RpcError) as err:
        trust.AddSignature(
            trust_pb2.AddSignatureRequest(
                image="img", envelope_json=signing.sign(tampered, private)
            )
        )
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "another manifest" in (err.value.details() or "")
    with pytest.raises(grpc.RpcError) as err:
        trust.AddSignature(trust_pb2.AddSignatureRequest(image="img", envelope_json="{}"))
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT


@pytest.mark.parametrize("mode", [WARN, ENFORCE])
def test_a_malformed_envelope_is_refused_as_such_in_either_mode(
    ready_site: Site, trust: trust_pb2_grpc.TrustStub, mode: int
) -> None:
    """An envelope whose signature had no ``sig``, a ``sig`` that was not base64 or a
    keyid that was not a string was kept as a signature under warn (`ws image verify`
    counted it, naming the signer "{'a': 1}") and refused PERMISSION_DENIED under
    enforce; the docs say INVALID_ARGUMENT, in any mode, and nothing kept."""
    private, public = _key()
    _add_key(trust, public)
    trust.SetMode(trust_pb2.SetModeRequest(mode=mode))
    good = json.loads(_sign(ready_site, "img", private))
    (sig,) = good["signatures"]
    for broken, why in (
        ([{"keyid": sig["keyid"]}], "'sig'"),
        ([{"keyid": sig["keyid"], "sig": "!!"}], "base64"),
        ([{"keyid": {"a": 1}, "sig": sig["sig"]}], "keyid"),
        ([], "no signature"),
    ):
        envelope = json.dumps({**good, "signatures": broken})
        with pytest.raises(grpc.RpcError) as err:
            trust.AddSignature(trust_pb2.AddSignatureRequest(image="img", envelope_json=envelope))
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT, why
        assert "not a DSSE envelope" in (err.value.details() or "") and why in (
            err.value.details() or ""
        )
    sigs = trust.GetSignatures(trust_pb2.ImageSignaturesRequest(image="img"))
    assert list(sigs.envelopes_json) == []
    # The well-formed one is taken.
    trust.AddSignature(trust_pb2.AddSignatureRequest(image="img", envelope_json=json.dumps(good)))
    assert trust.GetSignatures(trust_pb2.ImageSignaturesRequest(image="img")).trusted


def test_warn_mode_creates_and_audits_why_not(
    ready_site: Site, trust: trust_pb2_grpc.TrustStub
) -> None:
    private, public = _key()
    _add_key(trust, public, "other-*")  # may not sign "img"
    trust.AddSignature(
        trust_pb2.AddSignatureRequest(image="img", envelope_json=_sign(ready_site, "img", private))
    )
    ws = ready_site.stubs.create(name="w")
    ready_site.stubs.wait_state(ws.id, WS.WORKSPACE_STATE_RUNNING)
    entry = _last(trust)
    assert entry.verdict == "warn"
    assert "may not sign images named img" in entry.reason
    assert entry.key_id == signing.key_id(public)


def test_revoke_key_stops_new_launches_not_running_ones(
    ready_site: Site, trust: trust_pb2_grpc.TrustStub
) -> None:
    private, public = _key()
    kid = signing.key_id(public)
    _add_key(trust, public)
    trust.AddSignature(
        trust_pb2.AddSignatureRequest(image="img", envelope_json=_sign(ready_site, "img", private))
    )
    before = trust.SetMode(trust_pb2.SetModeRequest(mode=ENFORCE)).version
    ws = ready_site.stubs.create(name="running")
    ready_site.stubs.wait_state(ws.id, WS.WORKSPACE_STATE_RUNNING)
    policy = trust.RevokeKey(trust_pb2.RevokeKeyRequest(key_id=kid[:12]))
    assert policy.version == before + 1
    assert [k.revoked for k in policy.keys] == [True]
    err = _refused(ready_site, "after")
    assert f"key {kid[:16]} is revoked" in (err.details() or "")
    assert ready_site.stubs.get(ws.id).state == WS.WORKSPACE_STATE_RUNNING
    sigs = trust.GetSignatures(trust_pb2.ImageSignaturesRequest(image="img"))
    assert not sigs.trusted and "revoked" in sigs.reason
    # A revoked key cannot be trusted again.
    with pytest.raises(grpc.RpcError) as e2:
        _add_key(trust, public)
    assert e2.value.code() == grpc.StatusCode.FAILED_PRECONDITION


def test_a_stopped_workspace_of_an_untrusted_image_is_not_started_under_enforce(
    ready_site: Site, trust: trust_pb2_grpc.TrustStub
) -> None:
    """The service decides at start as at create: refused at once, the workspace stays
    STOPPED (not FAILED by its node), and it does not boot by itself when the policy is
    relaxed later."""
    from workspace.v1 import workspaces_pb2

    site = ready_site
    ws = site.stubs.create(name="t1")  # warn mode: an unsigned image launches
    site.stubs.wait_state(ws.id, WS.WORKSPACE_STATE_RUNNING)
    site.stubs.ws.StopWorkspace(workspaces_pb2.StopWorkspaceRequest(id=ws.id))
    site.stubs.wait_state(ws.id, WS.WORKSPACE_STATE_STOPPED)
    trust.SetMode(trust_pb2.SetModeRequest(mode=ENFORCE))
    with pytest.raises(grpc.RpcError) as err:
        site.stubs.ws.StartWorkspace(workspaces_pb2.WorkspaceRef(id=ws.id))
    assert err.value.code() == grpc.StatusCode.PERMISSION_DENIED
    assert "image img is not trusted" in (err.value.details() or "")
    assert _last(trust, "start").verdict == "deny"
    got = site.stubs.get(ws.id)
    assert (got.state, got.desired_state) == (WS.WORKSPACE_STATE_STOPPED, STOPPED)
    trust.SetMode(trust_pb2.SetModeRequest(mode=WARN))
    assert site.stubs.get(ws.id).state == WS.WORKSPACE_STATE_STOPPED
    site.stubs.ws.StartWorkspace(workspaces_pb2.WorkspaceRef(id=ws.id))
    site.stubs.wait_state(ws.id, WS.WORKSPACE_STATE_RUNNING)
    assert _last(trust, "start").verdict == "warn"


def test_a_key_past_its_expiry_is_refused_saying_when_it_expired(
    ready_site: Site,
    trust: trust_pb2_grpc.TrustStub,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    svc = ["--service", ready_site.address]
    private, public = _key()
    kid = signing.key_id(public)
    (tmp_path / "soon.pub").write_text(public)
    at = int(time.time()) + 2
    when = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(at))
    add = ["trust", "add", str(tmp_path / "soon.pub"), "--images", "img", "--expires", when]
    assert admin_cli.main([*svc, *add]) == 0
    trust.AddSignature(
        trust_pb2.AddSignatureRequest(image="img", envelope_json=_sign(ready_site, "img", private))
    )
    trust.SetMode(trust_pb2.SetModeRequest(mode=ENFORCE))
    ws = ready_site.stubs.create(name="before")  # trusted until then
    ready_site.stubs.wait_state(ws.id, WS.WORKSPACE_STATE_RUNNING)

    time.sleep(max(0.0, at + 1.1 - time.time()))
    err = _refused(ready_site, "after")
    assert f"key {kid[:16]} expired at {when}" in (err.details() or "")
    entry = _last(trust)
    assert entry.verdict == "deny" and f"expired at {when}" in entry.reason
    capsys.readouterr()
    assert ws_cli.main([*svc, "image", "verify", "img"]) == 1
    assert f"expired at {when}" in capsys.readouterr().out


def test_revoke_digest(ready_site: Site, trust: trust_pb2_grpc.TrustStub) -> None:
    private, public = _key()
    _add_key(trust, public)
    trust.AddSignature(
        trust_pb2.AddSignatureRequest(image="img", envelope_json=_sign(ready_site, "img", private))
    )
    trust.SetMode(trust_pb2.SetModeRequest(mode=ENFORCE))
    digest = ready_site.stubs.images.GetImage(images_pb2.GetImageRequest(name="img")).partitions[0]
    policy = trust.RevokeDigest(trust_pb2.RevokeDigestRequest(digest=digest.digest))
    assert list(policy.revoked_digests) == [digest.digest]
    err = _refused(ready_site, "d")
    assert f"digest {digest.digest} is revoked" in (err.details() or "")
    with pytest.raises(grpc.RpcError) as e2:
        trust.RevokeDigest(trust_pb2.RevokeDigestRequest(digest="sha256:nothex"))
    assert e2.value.code() == grpc.StatusCode.INVALID_ARGUMENT


def test_policy_version_grows_and_audit_lists_decisions(
    ready_site: Site, trust: trust_pb2_grpc.TrustStub
) -> None:
    _private, public = _key()
    versions = [trust.GetPolicy(trust_pb2.GetPolicyRequest()).version]
    versions.append(_add_key(trust, public, "img"))
    versions.append(trust.SetMode(trust_pb2.SetModeRequest(mode=ENFORCE)).version)
    versions.append(trust.SetMode(trust_pb2.SetModeRequest(mode=WARN)).version)
    versions.append(
        trust.RevokeDigest(trust_pb2.RevokeDigestRequest(digest="sha256:" + "a" * 64)).version
    )
    versions.append(
        trust.RevokeKey(trust_pb2.RevokeKeyRequest(key_id=signing.key_id(public))).version
    )
    assert versions == sorted(set(versions)) and versions[0] == 0 and len(versions) == 6
    # the mode it already has: nothing changes, no new version for every agent
    assert trust.SetMode(trust_pb2.SetModeRequest(mode=WARN)).version == versions[-1]
    ready_site.stubs.create(name="one")
    trust.SetMode(trust_pb2.SetModeRequest(mode=ENFORCE))
    _refused(ready_site, "two")
    got = [
        e
        for e in trust.ListAudit(trust_pb2.ListAuditRequest(image="img")).entries
        if e.action == "create"
    ]
    assert [e.verdict for e in got[:2]] == ["deny", "warn"]
    assert all(e.image == "img" and e.digest.startswith("sha256:") for e in got)
    assert got[0].policy_version == got[1].policy_version + 1
    assert len(trust.ListAudit(trust_pb2.ListAuditRequest(limit=1)).entries) == 1
    assert not trust.ListAudit(trust_pb2.ListAuditRequest(image="nope")).entries


def test_delete_image_deletes_signatures(ready_site: Site, trust: trust_pb2_grpc.TrustStub) -> None:
    private, _ = _key()
    ready_site.stubs.import_image("gone", data=b"\1" * 65536)
    trust.AddSignature(
        trust_pb2.AddSignatureRequest(
            image="gone", envelope_json=_sign(ready_site, "gone", private)
        )
    )
    ready_site.stubs.images.DeleteImage(images_pb2.GetImageRequest(name="gone"))
    ready_site.stubs.import_image("gone", data=b"\1" * 65536)
    sigs = trust.GetSignatures(trust_pb2.ImageSignaturesRequest(image="gone"))
    assert not sigs.envelopes_json


def test_cli_keygen_sign_verify_trust_audit(
    ready_site: Site,
    trust: trust_pb2_grpc.TrustStub,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    svc = ["--service", ready_site.address]
    prefix = tmp_path / "pub"
    assert ws_cli.main([*svc, "image", "keygen", "--out", str(prefix)]) == 0
    assert stat.S_IMODE(os.stat(f"{prefix}.key").st_mode) == 0o600
    kid = signing.key_id(Path(f"{prefix}.pub").read_bytes())
    assert admin_cli.main([*svc, "trust", "add", f"{prefix}.pub", "--images", "img"]) == 0
    assert admin_cli.main([*svc, "trust", "mode", "enforce"]) == 0
    assert ws_cli.main([*svc, "image", "verify", "img"]) == 1
    assert "not signed" in capsys.readouterr().out
    assert ws_cli.main([*svc, "image", "sign", "img", "--key", f"{prefix}.key"]) == 0
    capsys.readouterr()
    assert ws_cli.main([*svc, "-o", "json", "image", "verify", "img"]) == 0
    assert json.loads(capsys.readouterr().out)["trusted"] is True
    ready_site.stubs.create(name="cli")
    capsys.readouterr()
    assert admin_cli.main([*svc, "-o", "json", "trust", "list"]) == 0
    policy = json.loads(capsys.readouterr().out)
    assert policy["keys"][0]["key_id"] == kid
    assert admin_cli.main([*svc, "trust", "revoke", kid[:20]]) == 0
    assert admin_cli.main([*svc, "trust", "revoke"]) == 2
    capsys.readouterr()
    assert ws_cli.main([*svc, "create", "--image", "img", "--name", "x"]) != 0
    assert "revoked" in capsys.readouterr().err
    assert admin_cli.main([*svc, "audit", "--image", "img", "--limit", "5"]) == 0
    out = capsys.readouterr().out
    assert "deny" in out and "allow" in out and kid[:16] in out
    # None for an image: nothing on stdout (not a bare header), why on stderr.
    assert admin_cli.main([*svc, "audit", "--image", "nope"]) == 0
    out, err = capsys.readouterr()
    assert out == "" and "no trust decisions" in err


def test_the_audit_of_a_refused_create_names_the_request_not_a_workspace(
    ready_site: Site, trust: trust_pb2_grpc.TrustStub, capsys: pytest.CaptureFixture[str]
) -> None:
    """A create refused after its trust decision made no workspace: its audit row keeps
    the name asked for and no workspace id (it named one that never existed), and
    `ws-admin audit` says the workspace was not made. A create of a batch (its SAVEPOINT
    rolled back) and a cluster refused whole (its transaction rolled back) alike."""
    from workspace.v1 import clusters_pb2, clusters_pb2_grpc

    made = ready_site.stubs.create(name="kept")
    with pytest.raises(grpc.RpcError):
        ready_site.stubs.create(name="huge", cpus=64, memory_mib=1024)
    member = clusters_pb2.ClusterMember(role="big", image="img", cpus=64, memory_mib=1024)
    with pytest.raises(grpc.RpcError) as whole:
        clusters_pb2_grpc.ClustersStub(ready_site.stubs.channel).CreateCluster(
            clusters_pb2.CreateClusterRequest(name="cl", members=[member])
        )
    assert whole.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    trust.SetMode(trust_pb2.SetModeRequest(mode=ENFORCE))
    _refused(ready_site, "unsigned")
    entries = trust.ListAudit(trust_pb2.ListAuditRequest(image="img")).entries
    creates = [
        (e.workspace_name, e.workspace_id, e.verdict)
        for e in reversed(entries)
        if e.action == "create" and e.where == "service"
    ]
    assert creates == [
        ("kept", made.id, "warn"),
        ("huge", "", "warn"),
        ("cl-big-0", "", "warn"),
        ("unsigned", "", "deny"),
    ]
    assert admin_cli.main(["--service", ready_site.address, "audit", "--image", "img"]) == 0
    out = capsys.readouterr().out
    assert "huge (not made)" in out and "unsigned (not made)" in out
    assert made.id in out and "kept (not made)" not in out
