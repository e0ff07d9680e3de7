"""A signature covers an image's context and login user, not its files alone: over real
gRPC, with `ws image sign` making real Ed25519 signatures (docs/design/trust.md, "What
is signed")."""

from __future__ import annotations

import base64
import hashlib
import json
from pathlib import Path

import grpc
import pytest

from images import signing
from tests.functional.harness import WS, Site
from workspace.cli import ws as ws_cli
from workspace.v1 import common_pb2, images_pb2, trust_pb2, trust_pb2_grpc

ENFORCE = trust_pb2.TRUST_MODE_ENFORCE
DISK = b"\2" * 65536


@pytest.fixture
def trust(ready_site: Site) -> trust_pb2_grpc.TrustStub:
    return trust_pb2_grpc.TrustStub(ready_site.stubs.channel)


def _publisher(
    site: Site, trust: trust_pb2_grpc.TrustStub, tmp_path: Path
) -> tuple[Path, signing.Ed25519PrivateKey]:
    """A key pair made by `ws image keygen`, trusted by the site for every image."""
    prefix = tmp_path / "pub"
    assert ws_cli.main(["--service", site.address, "image", "keygen", "--out", str(prefix)]) == 0
    public = Path(f"{prefix}.pub").read_text()
    trust.AddKey(trust_pb2.AddKeyRequest(public_key_pem=public, image_patterns=["*"]))
    private = signing.load_private_key(Path(f"{prefix}.key").read_bytes())
    return Path(f"{prefix}.key"), private


def _import(site: Site, name: str, context: str, login_user: str) -> None:
    digest = site.stubs.upload(DISK)
    site.stubs.images.ImportImage(
        images_pb2.ImportImageRequest(
            name=name,
            context=context,
            login_user=login_user,
            partitions=[
                common_pb2.Partition(
                    name="root", digest=digest, format="raw", mode=common_pb2.PARTITION_MODE_COW
                )
            ],
        )
    )


def _verdict(trust: trust_pb2_grpc.TrustStub, name: str) -> trust_pb2.ImageSignatures:
    return trust.GetSignatures(trust_pb2.ImageSignaturesRequest(image=name))


@pytest.mark.parametrize("context, login_user", [("none", ""), ("nocloud", "root")])
def test_a_signature_does_not_follow_the_files_to_another_context(
    ready_site: Site,
    trust: trust_pb2_grpc.TrustStub,
    tmp_path: Path,
    context: str,
    login_user: str,
    capsys: pytest.CaptureFixture[str],
) -> None:
    key, _ = _publisher(ready_site, trust, tmp_path)
    _import(ready_site, "sci:1", "nocloud", "debian")
    svc = ["--service", ready_site.address]
    assert ws_cli.main([*svc, "image", "sign", "sci:1", "--key", str(key)]) == 0
    signed = _verdict(trust, "sci:1")
    assert signed.trusted, signed.reason
    envelope = signed.envelopes_json[0]
    # The owner pushes the same files again with another context or login user, and
    # attaches the signature they had: it is refused, naming what differs.
    ready_site.stubs.images.DeleteImage(images_pb2.GetImageRequest(name="sci:1"))
    _import(ready_site, "sci:1", context, login_user)
    with pytest.raises(grpc.RpcError) as err:
        trust.AddSignature(trust_pb2.AddSignatureRequest(image="sci:1", envelope_json=envelope))
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    details = err.value.details() or ""
    assert "another manifest" in details
    assert ("context" if context == "none" else "login_user") in details
    after = _verdict(trust, "sci:1")
    assert not after.trusted and not after.envelopes_json
    # Signing the image as it now is makes it trusted again.
    capsys.readouterr()
    assert ws_cli.main([*svc, "image", "sign", "sci:1", "--key", str(key)]) == 0
    assert _verdict(trust, "sci:1").trusted


def _sign_v1(site: Site, name: str, private: signing.Ed25519PrivateKey) -> str:
    """An envelope as `ws image sign` made it before its statement covered the
    context and login user (predicate image-manifest:v1: the files alone)."""
    img = site.stubs.images.GetImage(images_pb2.GetImageRequest(name=name))
    root = img.partitions[0]
    statement = {
        "_type": "https://in-toto.io/Statement/v1",
        "subject": [
            {"name": f"{name}/partition/root", "digest": {"sha256": root.digest[7:]}},
        ],
        "predicateType": "urn:workspace-service:image-manifest:v1",
        "predicate": {
            "image": name,
            "partitions": [
                {
                    "name": "root",
                    "digest": root.digest,
                    "size_bytes": root.size_bytes,
                    "format": "raw",
                    "mode": "COW",
                }
            ],
            "kernel": "",
            "initrd": "",
            "cmdline": "",
        },
    }
    payload = json.dumps(statement, sort_keys=True, separators=(",", ":")).encode()
    kind = b"application/vnd.in-toto+json"
    pae = b"DSSEv1 %d %s %d %s" % (len(kind), kind, len(payload), payload)
    raw = private.public_key().public_bytes_raw()
    return json.dumps(
        {
            "payloadType": kind.decode(),
            "payload": base64.b64encode(payload).decode(),
            "signatures": [
                {
                    "keyid": hashlib.sha256(raw).hexdigest(),
                    "sig": base64.b64encode(private.sign(pae)).decode(),
                }
            ],
        }
    )


def test_an_old_signature_vouches_only_for_an_image_without_context(
    ready_site: Site, trust: trust_pb2_grpc.TrustStub, tmp_path: Path
) -> None:
    _, private = _publisher(ready_site, trust, tmp_path)
    _import(ready_site, "plain:1", "none", "")
    _import(ready_site, "cloud:1", "nocloud", "debian")
    # Without context or login user, what it covered is all there is: trusted.
    plain = trust.AddSignature(
        trust_pb2.AddSignatureRequest(
            image="plain:1", envelope_json=_sign_v1(ready_site, "plain:1", private)
        )
    )
    assert plain.trusted, plain.reason
    # With them, the files verify but it never said what runs at boot: not trusted
    # (kept under warn, as any untrusted signature), saying why and what to do.
    cloud = trust.AddSignature(
        trust_pb2.AddSignatureRequest(
            image="cloud:1", envelope_json=_sign_v1(ready_site, "cloud:1", private)
        )
    )
    assert not cloud.trusted
    assert "old format" in cloud.reason and "context nocloud" in cloud.reason
    assert "ws image sign cloud:1" in cloud.reason
    trust.SetMode(trust_pb2.SetModeRequest(mode=ENFORCE))
    with pytest.raises(grpc.RpcError) as err:
        ready_site.stubs.create(name="c", image="cloud:1")
    assert err.value.code() == grpc.StatusCode.PERMISSION_DENIED
    assert "old format" in (err.value.details() or "")
    ready_site.stubs.create(name="p", image="plain:1")


def test_ws_image_sign_fails_when_the_site_does_not_trust_the_signature(
    ready_site: Site,
    trust: trust_pb2_grpc.TrustStub,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """A site that only warns keeps a signature by a key it does not trust: the command
    says so with its exit code and on stderr; its JSON keeps the verdict."""
    svc = ["--service", ready_site.address]
    prefix = tmp_path / "stranger"
    assert ws_cli.main([*svc, "image", "keygen", "--out", str(prefix)]) == 0
    capsys.readouterr()
    assert ws_cli.main([*svc, "-o", "json", "image", "sign", "img", "--key", f"{prefix}.key"]) == 1
    out, err = capsys.readouterr()
    shown = json.loads(out)
    assert shown["trusted"] is False and "is not a trusted key" in shown["reason"]
    assert "the signature was attached, but image img is not trusted" in err
    assert "is not a trusted key" in err
    assert len(_verdict(trust, "img").envelopes_json) == 1  # kept (warn)
    # Once the site trusts the key, signing again succeeds (exit 0).
    public = Path(f"{prefix}.pub").read_text()
    trust.AddKey(trust_pb2.AddKeyRequest(public_key_pem=public, image_patterns=["img"]))
    assert ws_cli.main([*svc, "image", "sign", "img", "--key", f"{prefix}.key"]) == 0
    assert "verdict" in capsys.readouterr().out


def test_a_signed_contextualized_image_boots_on_the_node_under_enforce(
    ready_site: Site, trust: trust_pb2_grpc.TrustStub, tmp_path: Path
) -> None:
    """The node checks the signed context against the order's seed (agent/trust.py): a
    workspace of a nocloud image signed by `ws image sign` gets its seed and boots."""
    key, _ = _publisher(ready_site, trust, tmp_path)
    _import(ready_site, "sci:2", "nocloud", "debian")
    svc = ["--service", ready_site.address]
    assert ws_cli.main([*svc, "image", "sign", "sci:2", "--key", str(key)]) == 0
    trust.SetMode(trust_pb2.SetModeRequest(mode=ENFORCE))
    ws = ready_site.stubs.create(name="cloudy", image="sci:2")
    running = ready_site.stubs.wait_state(ws.id, WS.WORKSPACE_STATE_RUNNING)
    assert "refused" not in running.reason, running.reason
