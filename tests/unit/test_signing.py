"""images/signing.py: DSSE envelopes over in-toto statements, and the policy's verdicts on
every kind of tampering."""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import json

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from images import signing
from images.model import ImageSpec as Manifest
from images.model import Mode, Partition
from images.signing import Key, Policy

NOW = 1_700_000_000.0
D1 = "sha256:" + "1" * 64
D2 = "sha256:" + "2" * 64
DK = "sha256:" + "3" * 64


def _manifest(**kw: object) -> Manifest:
    base = Manifest(
        "team/web:1",
        (
            Partition("root", Mode.COW, D1, 1024, "qcow2"),
            Partition("data", Mode.READONLY, D2, 512, "raw"),
            Partition("scratch", Mode.BLANK, "", 4096, "raw"),
        ),
        kernel_digest=DK,
        cmdline="console=ttyS0",
    )
    return dataclasses.replace(base, **kw)  # type: ignore[arg-type]


@pytest.fixture(scope="module")
def keypair() -> tuple[signing.Ed25519PrivateKey, str]:
    private, public = signing.generate_key()
    return signing.load_private_key(private), public.decode()


def _policy(public: str, enforce: bool = True, **kw: object) -> Policy:
    key = Key(signing.key_id(public), public, **kw)  # type: ignore[arg-type]
    return Policy(version=7, enforce=enforce, keys=(key,))


def _part(m: Manifest, i: int, **kw: object) -> Manifest:
    parts = list(m.partitions)
    parts[i] = dataclasses.replace(parts[i], **kw)  # type: ignore[arg-type]
    return dataclasses.replace(m, partitions=tuple(parts))


def test_sign_and_verify(keypair: tuple[signing.Ed25519PrivateKey, str]) -> None:
    private, public = keypair
    m = _manifest()
    v = signing.verify(_policy(public), m, [signing.sign(m, private)], NOW)
    assert v.trusted and v.allowed and v.word == "allow"
    assert v.key_id == signing.key_id(public) and v.policy_version == 7


@pytest.mark.parametrize(
    ("change", "words"),
    [
        (lambda m: _part(m, 0, digest="sha256:" + "9" * 64), "partitions differ"),
        (lambda m: _part(m, 0, size_bytes=2048), "partitions differ"),
        (lambda m: _part(m, 0, format="raw"), "partitions differ"),
        (lambda m: _part(m, 1, mode=Mode.COW), "partitions differ"),
        (lambda m: _part(m, 2, size_bytes=8192), "partitions differ"),
        (lambda m: _part(m, 0, name="boot"), "partitions differ"),
        (lambda m: dataclasses.replace(m, partitions=m.partitions[:2]), "partitions differ"),
        (lambda m: dataclasses.replace(m, kernel_digest=D2), "kernel differs"),
        (lambda m: dataclasses.replace(m, initrd_digest=D2), "initrd differs"),
        (lambda m: dataclasses.replace(m, cmdline="console=ttyS0 init=/bin/sh"), "cmdline"),
        (lambda m: dataclasses.replace(m, image="team/web:2"), "image differs"),
    ],
)
def test_every_tamper_is_refused(
    keypair: tuple[signing.Ed25519PrivateKey, str], change: object, words: str
) -> None:
    private, public = keypair
    envelope = signing.sign(_manifest(), private)
    tampered = change(_manifest())  # type: ignore[operator]
    v = signing.verify(_policy(public), tampered, [envelope], NOW)
    assert not v.trusted and not v.allowed and v.word == "deny"
    assert words in v.reason


def test_bad_signature_bytes(keypair: tuple[signing.Ed25519PrivateKey, str]) -> None:
    private, public = keypair
    env = json.loads(signing.sign(_manifest(), private))
    sig = bytearray(base64.b64decode(env["signatures"][0]["sig"]))
    sig[0] ^= 1
    env["signatures"][0]["sig"] = base64.b64encode(bytes(sig)).decode()
    v = signing.verify(_policy(public), _manifest(), [json.dumps(env)], NOW)
    assert not v.trusted and "does not verify" in v.reason


def test_modified_payload_does_not_verify(keypair: tuple[signing.Ed25519PrivateKey, str]) -> None:
    private, public = keypair
    env = json.loads(signing.sign(_manifest(), private))
    stmt = json.loads(base64.b64decode(env["payload"]))
    stmt["predicate"]["cmdline"] = "init=/bin/sh"
    env["payload"] = base64.b64encode(signing.canonical(stmt)).decode()
    m = _manifest(cmdline="init=/bin/sh")
    v = signing.verify(_policy(public), m, [json.dumps(env)], NOW)
    assert not v.trusted and "does not verify" in v.reason


def test_malformed_envelopes(keypair: tuple[signing.Ed25519PrivateKey, str]) -> None:
    _, public = keypair
    for text in ("", "{}", "not json", json.dumps({"payloadType": "x"})):
        v = signing.verify(_policy(public), _manifest(), [text], NOW)
        assert not v.trusted


def test_unknown_signer(keypair: tuple[signing.Ed25519PrivateKey, str]) -> None:
    _, public = keypair
    other = signing.load_private_key(signing.generate_key()[0])
    v = signing.verify(_policy(public), _manifest(), [signing.sign(_manifest(), other)], NOW)
    assert not v.trusted and "is not a trusted key" in v.reason


def test_expired_key(keypair: tuple[signing.Ed25519PrivateKey, str]) -> None:
    private, public = keypair
    env = signing.sign(_manifest(), private)
    assert signing.verify(_policy(public, expires_at=NOW + 1), _manifest(), [env], NOW).trusted
    v = signing.verify(_policy(public, expires_at=NOW - 1), _manifest(), [env], NOW)
    assert not v.trusted and "expired" in v.reason


def test_revoked_key(keypair: tuple[signing.Ed25519PrivateKey, str]) -> None:
    private, public = keypair
    env = signing.sign(_manifest(), private)
    v = signing.verify(_policy(public, revoked=True), _manifest(), [env], NOW)
    assert not v.trusted and "revoked" in v.reason


@pytest.mark.parametrize("digest", [D1, D2, DK])
def test_revoked_digest(keypair: tuple[signing.Ed25519PrivateKey, str], digest: str) -> None:
    private, public = keypair
    policy = dataclasses.replace(_policy(public), revoked_digests=frozenset({digest}))
    v = signing.verify(policy, _manifest(), [signing.sign(_manifest(), private)], NOW)
    assert not v.trusted and f"digest {digest} is revoked" in v.reason


def test_pattern_mismatch(keypair: tuple[signing.Ed25519PrivateKey, str]) -> None:
    private, public = keypair
    env = signing.sign(_manifest(), private)
    ok = _policy(public, image_patterns=("team/*",))
    assert signing.verify(ok, _manifest(), [env], NOW).trusted
    bad = _policy(public, image_patterns=("other/*", "team/db*"))
    v = signing.verify(bad, _manifest(), [env], NOW)
    assert not v.trusted and "may not sign images named team/web:1" in v.reason


def test_warn_allows_what_enforce_denies(keypair: tuple[signing.Ed25519PrivateKey, str]) -> None:
    _, public = keypair
    warn = signing.verify(_policy(public, enforce=False), _manifest(), [], NOW)
    assert not warn.trusted and warn.allowed and warn.word == "warn"
    assert "is not signed" in warn.reason
    deny = signing.verify(_policy(public), _manifest(), [], NOW)
    assert not deny.allowed and deny.word == "deny"


def test_one_good_signature_among_bad_ones(
    keypair: tuple[signing.Ed25519PrivateKey, str],
) -> None:
    private, public = keypair
    other = signing.load_private_key(signing.generate_key()[0])
    envs = ["{}", signing.sign(_manifest(), other), signing.sign(_manifest(), private)]
    assert signing.verify(_policy(public), _manifest(), envs, NOW).trusted


def _dsse_verify(envelope: str, public_pem: str) -> dict[str, object]:
    """A plain DSSE v1 verifier written from the spec, sharing no code with signing.py."""
    env = json.loads(envelope)
    payload = base64.b64decode(env["payload"])
    ptype = env["payloadType"].encode()
    pae = b" ".join(
        [b"DSSEv1", str(len(ptype)).encode(), ptype, str(len(payload)).encode(), payload]
    )
    key = serialization.load_pem_public_key(public_pem.encode())
    assert isinstance(key, Ed25519PublicKey)
    raw = key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    (sig,) = env["signatures"]
    assert sig["keyid"] == hashlib.sha256(raw).hexdigest()
    key.verify(base64.b64decode(sig["sig"]), pae)  # raises InvalidSignature
    statement: dict[str, object] = json.loads(payload)
    return statement


def test_envelope_verifies_with_a_plain_dsse_implementation(
    keypair: tuple[signing.Ed25519PrivateKey, str],
) -> None:
    private, public = keypair
    stmt = _dsse_verify(signing.sign(_manifest(), private), public)
    assert stmt["_type"] == "https://in-toto.io/Statement/v1"
    assert stmt["predicateType"] == signing.PREDICATE_TYPE
    subjects = {s["name"]: s["digest"]["sha256"] for s in stmt["subject"]}  # type: ignore[attr-defined]
    assert subjects == {
        "team/web:1/partition/root": "1" * 64,
        "team/web:1/partition/data": "2" * 64,
        "team/web:1/kernel": "3" * 64,
    }


def test_keys(keypair: tuple[signing.Ed25519PrivateKey, str]) -> None:
    private, public = keypair
    assert signing.public_pem(private).strip() == public.strip()
    assert len(signing.key_id(public)) == 64
    with pytest.raises(signing.SignatureError):
        signing.load_public_key(b"nope")
    with pytest.raises(signing.SignatureError):
        signing.load_private_key(b"nope")


def test_claims_are_frozen() -> None:
    p = Partition("root", Mode.COW, D1, 1, "raw")
    with pytest.raises(dataclasses.FrozenInstanceError):
        p.size_bytes = 2  # type: ignore[misc]
