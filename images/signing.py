"""Image signatures: an in-toto Statement of the manifest in a DSSE envelope, Ed25519.

The statement names every partition's digest, size, format and mode and the
kernel/initrd/cmdline, so changing any byte of any of them (or of the manifest)
invalidates the signature. Anyone can check an envelope with standard DSSE tools:
the signature is Ed25519 over PAE(payloadType, payload) as the DSSE spec defines, and
the key id is the hex sha256 of the raw 32-byte public key.

This module is pure (no service, no agent): the service verifies at signing and
at every create, and each agent verifies again on its own node.
"""

from __future__ import annotations

import base64
import binascii
import fnmatch
import hashlib
import json
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import (
    Ed25519PrivateKey,
    Ed25519PublicKey,
)

from images import digest
from images.model import ImageSpec

STATEMENT_TYPE = "https://in-toto.io/Statement/v1"
PREDICATE_TYPE = "urn:workspace-service:image-manifest:v1"
PAYLOAD_TYPE = "application/vnd.in-toto+json"


class SignatureError(ValueError):
    """An envelope, key or statement is malformed."""


# -- keys ----------------------------------------------------------------------------------


def generate_key() -> tuple[bytes, bytes]:
    """A new publisher key: (private key PEM, public key PEM)."""
    key = Ed25519PrivateKey.generate()
    private = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    public = key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return private, public


def load_private_key(pem: bytes) -> Ed25519PrivateKey:
    try:
        key = serialization.load_pem_private_key(pem, password=None)
    except (ValueError, TypeError) as exc:
        raise SignatureError(f"not a PEM private key: {exc}") from exc
    if not isinstance(key, Ed25519PrivateKey):
        raise SignatureError("the private key is not an Ed25519 key")
    return key


def load_public_key(pem: bytes | str) -> Ed25519PublicKey:
    data = pem.encode() if isinstance(pem, str) else pem
    try:
        key = serialization.load_pem_public_key(data)
    except (ValueError, TypeError) as exc:
        raise SignatureError(f"not a PEM public key: {exc}") from exc
    if not isinstance(key, Ed25519PublicKey):
        raise SignatureError("the public key is not an Ed25519 key")
    return key


def key_id(public: Ed25519PublicKey | bytes | str) -> str:
    """Hex sha256 of the raw 32-byte public key."""
    key = public if isinstance(public, Ed25519PublicKey) else load_public_key(public)
    raw = key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return hashlib.sha256(raw).hexdigest()


def public_pem(private: Ed25519PrivateKey) -> str:
    return (
        private.public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        .decode()
    )


# -- the statement -------------------------------------------------------------------------


def predicate(spec: ImageSpec) -> dict[str, Any]:
    """What a signature covers: the image's name, every partition's name, digest, size,
    format and mode, and the kernel, initrd and cmdline."""
    return {
        "image": spec.image,
        "partitions": [
            {
                "name": p.name,
                "digest": p.digest,
                "size_bytes": p.size_bytes,
                "format": p.format,
                "mode": p.mode.value,
            }
            for p in spec.partitions
        ],
        "kernel": spec.kernel_digest,
        "initrd": spec.initrd_digest,
        "cmdline": spec.cmdline,
    }


def _hex(d: str) -> str:
    try:
        return digest.hex_of(d)
    except digest.DigestError as exc:
        raise SignatureError(f"{d!r} is not a sha256 digest") from exc


def statement(manifest: ImageSpec) -> dict[str, Any]:
    subjects = [
        {"name": f"{manifest.image}/partition/{p.name}", "digest": {"sha256": _hex(p.digest)}}
        for p in manifest.partitions
        if p.digest
    ]
    for what, d in (("kernel", manifest.kernel_digest), ("initrd", manifest.initrd_digest)):
        if d:
            subjects.append({"name": f"{manifest.image}/{what}", "digest": {"sha256": _hex(d)}})
    return {
        "_type": STATEMENT_TYPE,
        "subject": subjects,
        "predicateType": PREDICATE_TYPE,
        "predicate": predicate(manifest),
    }


def canonical(obj: Any) -> bytes:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def pae(payload_type: str, payload: bytes) -> bytes:
    """DSSE pre-authentication encoding."""
    t = payload_type.encode()
    return b"DSSEv1 %d %s %d %s" % (len(t), t, len(payload), payload)


def sign(manifest: ImageSpec, private: Ed25519PrivateKey) -> str:
    """A DSSE envelope (JSON text) carrying the signed statement of ``manifest``."""
    payload = canonical(statement(manifest))
    sig = private.sign(pae(PAYLOAD_TYPE, payload))
    envelope = {
        "payloadType": PAYLOAD_TYPE,
        "payload": base64.b64encode(payload).decode(),
        "signatures": [
            {"keyid": key_id(private.public_key()), "sig": base64.b64encode(sig).decode()}
        ],
    }
    return json.dumps(envelope, sort_keys=True)


# -- the policy and its verdicts -----------------------------------------------------------


@dataclass(frozen=True)
class Key:
    key_id: str
    public_key_pem: str
    image_patterns: tuple[str, ...] = ("*",)
    expires_at: float = 0.0  # epoch seconds; 0 = never
    revoked: bool = False


@dataclass(frozen=True)
class Policy:
    version: int = 0
    enforce: bool = False
    keys: tuple[Key, ...] = ()
    revoked_digests: frozenset[str] = field(default_factory=frozenset)

    def key(self, kid: str) -> Key | None:
        return next((k for k in self.keys if k.key_id == kid), None)


@dataclass(frozen=True)
class Verdict:
    trusted: bool
    allowed: bool  # trusted, or not trusted but the policy only warns
    reason: str
    key_id: str = ""
    policy_version: int = 0

    @property
    def word(self) -> str:
        return "allow" if self.trusted else ("warn" if self.allowed else "deny")


def decode_envelope(text: str) -> tuple[bytes, list[tuple[str, bytes]]]:
    """(payload, [(key id, signature)]) of a DSSE envelope of ours; SignatureError saying
    what is wrong with one that is not (each signature a key id and a base64 ``sig``,
    both strings, at least one of them)."""
    try:
        env = json.loads(text)
        if env.get("payloadType") != PAYLOAD_TYPE:
            raise SignatureError(f"payload type {env.get('payloadType')!r} is not in-toto")
        payload = base64.b64decode(env["payload"], validate=True)
        sigs = [(s["keyid"], base64.b64decode(s["sig"], validate=True)) for s in env["signatures"]]
        if not isinstance(env["signatures"], list) or not sigs:
            raise SignatureError("malformed DSSE envelope: no signature in it")
        if not all(isinstance(s["keyid"], str) and s["keyid"] for s in env["signatures"]):
            raise SignatureError("malformed DSSE envelope: a keyid that is not a string")
    except RecursionError:  # JSON nested thousands deep
        raise SignatureError("malformed DSSE envelope: nested too deep") from None
    except (ValueError, KeyError, TypeError, AttributeError, binascii.Error) as exc:
        if isinstance(exc, SignatureError):
            raise
        raise SignatureError(f"malformed DSSE envelope: {exc}") from exc
    return payload, sigs


def signers(envelopes: Iterable[str]) -> list[str]:
    """The key ids named in these envelopes, once each (malformed ones are skipped)."""
    out: list[str] = []
    for text in envelopes:
        try:
            out += [kid for kid, _ in decode_envelope(text)[1]]
        except SignatureError:
            continue
    return list(dict.fromkeys(out))


def _check_statement(payload: bytes, manifest: ImageSpec) -> str:
    """'' if the signed statement covers exactly this manifest, else what differs."""
    try:
        signed = json.loads(payload)
    except (ValueError, RecursionError):
        return "the signed payload is not JSON"
    if signed.get("_type") != STATEMENT_TYPE or signed.get("predicateType") != PREDICATE_TYPE:
        return "the signed payload is not an image-manifest statement"
    expected = statement(manifest)
    if signed.get("predicate") != expected["predicate"]:
        got = signed.get("predicate") or {}
        for key in ("image", "kernel", "initrd", "cmdline"):
            if got.get(key) != expected["predicate"][key]:
                return f"the manifest's {key} differs from what was signed"
        return "the manifest's partitions differ from what was signed"
    if signed.get("subject") != expected["subject"]:
        return "the statement's subjects differ from the manifest"
    return ""


def utc_text(epoch_s: float) -> str:
    """A moment as ISO 8601 in UTC, to the second (2026-12-04T23:59:59Z)."""
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(epoch_s))


def verify(
    policy: Policy,
    manifest: ImageSpec,
    envelopes: Sequence[str],
    now: float,
) -> Verdict:
    """The policy's verdict on launching ``manifest`` with these signatures."""

    def verdict(trusted: bool, reason: str, kid: str = "") -> Verdict:
        return Verdict(trusted, trusted or not policy.enforce, reason, kid, policy.version)

    revoked = [d for d in manifest.digests() if d in policy.revoked_digests]
    if revoked:
        return verdict(False, f"digest {revoked[0]} is revoked")
    if not envelopes:
        return verdict(False, f"image {manifest.image} is not signed")
    problems: list[str] = []
    for text in envelopes:
        try:
            payload, sigs = decode_envelope(text)
        except SignatureError as exc:
            problems.append(str(exc))
            continue
        for kid, sig in sigs:
            key = policy.key(kid)
            if key is None:
                problems.append(f"signer {kid[:16]} is not a trusted key")
                continue
            if key.revoked:
                problems.append(f"key {kid[:16]} is revoked")
                continue
            if key.expires_at and now > key.expires_at:
                problems.append(f"key {kid[:16]} expired at {utc_text(key.expires_at)}")
                continue
            if not any(fnmatch.fnmatchcase(manifest.image, p) for p in key.image_patterns):
                problems.append(f"key {kid[:16]} may not sign images named {manifest.image}")
                continue
            try:
                load_public_key(key.public_key_pem).verify(sig, pae(PAYLOAD_TYPE, payload))
            except (InvalidSignature, SignatureError):
                problems.append(f"the signature by key {kid[:16]} does not verify")
                continue
            differs = _check_statement(payload, manifest)
            if differs:
                problems.append(differs)
                continue
            return verdict(True, f"signed by trusted key {kid[:16]}", kid)
    return verdict(False, "; ".join(dict.fromkeys(problems)) or "no usable signature")
