"""Image signatures: an in-toto Statement of the manifest in a DSSE envelope, Ed25519.

The statement (predicate ``image-manifest:v2``) names every partition's digest, size,
format, mode and ext4 flag, the kernel/initrd/cmdline, and how the image is
contextualized (``context``, ``login_user``: ``Boot``), so changing any byte of any of
them (or of the manifest) invalidates the signature. Signatures of the first format
(``image-manifest:v1``) covered the files alone: they still verify the files, but vouch
only for an image whose boot settings are the defaults (``v1_problem``). Anyone can
check an envelope with standard DSSE tools: the signature is Ed25519 over
PAE(payloadType, payload) as the DSSE spec defines, and the key id is the hex sha256 of
the raw 32-byte public key.

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
from dataclasses import dataclass, field, replace
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
PREDICATE_TYPE = "urn:workspace-service:image-manifest:v2"
# The first format: the files alone, not the image's context, login_user, ext4 flags.
PREDICATE_TYPE_V1 = "urn:workspace-service:image-manifest:v1"
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


@dataclass(frozen=True)
class Boot:
    """What of an image record, besides its files, changes what runs at boot and who logs
    in: how it takes deploy-time information (``context``: "none" or "nocloud", a
    cloud-init seed the site builds) and the account `ws ssh` logs in as (``login_user``,
    "" = none). A signature of format v2 covers them."""

    context: str = "none"
    login_user: str = ""

    def __post_init__(self) -> None:
        object.__setattr__(self, "context", self.context or "none")

    def is_default(self) -> bool:
        return self.context == "none" and not self.login_user


def predicate_v1(spec: ImageSpec) -> dict[str, Any]:
    """What a signature of the first format covers: the image's name, every partition's
    name, digest, size, format and mode, and the kernel, initrd and cmdline."""
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


def predicate(spec: ImageSpec, boot: Boot) -> dict[str, Any]:
    """What a signature covers: the first format's, each partition's ext4 flag (a blank
    one made with a filesystem at deploy, or not) and the image's ``boot`` settings."""
    out = predicate_v1(spec)
    for part, p in zip(out["partitions"], spec.partitions, strict=True):
        part["ext4"] = p.ext4
    out["context"] = boot.context
    out["login_user"] = boot.login_user
    return out


def _hex(d: str) -> str:
    try:
        return digest.hex_of(d)
    except digest.DigestError as exc:
        raise SignatureError(f"{d!r} is not a sha256 digest") from exc


def _subjects(manifest: ImageSpec) -> list[dict[str, Any]]:
    subjects = [
        {"name": f"{manifest.image}/partition/{p.name}", "digest": {"sha256": _hex(p.digest)}}
        for p in manifest.partitions
        if p.digest
    ]
    for what, d in (("kernel", manifest.kernel_digest), ("initrd", manifest.initrd_digest)):
        if d:
            subjects.append({"name": f"{manifest.image}/{what}", "digest": {"sha256": _hex(d)}})
    return subjects


def statement(manifest: ImageSpec, boot: Boot | None = None) -> dict[str, Any]:
    """The statement a signature made now carries (format v2); ``boot`` None: the
    defaults (no contextualization, no login user)."""
    return {
        "_type": STATEMENT_TYPE,
        "subject": _subjects(manifest),
        "predicateType": PREDICATE_TYPE,
        "predicate": predicate(manifest, boot or Boot()),
    }


def statement_v1(manifest: ImageSpec) -> dict[str, Any]:
    """The statement of the first format (signatures made before v2; still verified)."""
    return {
        "_type": STATEMENT_TYPE,
        "subject": _subjects(manifest),
        "predicateType": PREDICATE_TYPE_V1,
        "predicate": predicate_v1(manifest),
    }


def canonical(obj: Any) -> bytes:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def pae(payload_type: str, payload: bytes) -> bytes:
    """DSSE pre-authentication encoding."""
    t = payload_type.encode()
    return b"DSSEv1 %d %s %d %s" % (len(t), t, len(payload), payload)


def sign(manifest: ImageSpec, private: Ed25519PrivateKey, boot: Boot | None = None) -> str:
    """A DSSE envelope (JSON text) carrying the signed statement (v2) of ``manifest`` and
    its ``boot`` settings (None: the defaults)."""
    return envelope(canonical(statement(manifest, boot)), private)


def envelope(payload: bytes, private: Ed25519PrivateKey) -> str:
    """A DSSE envelope (JSON text) of ``payload`` (a statement, ``canonical``) signed with
    ``private``: what ``sign`` makes of the current statement; also how an envelope of an
    earlier format (``statement_v1``) is made again, in tests of how it is checked."""
    sig = private.sign(pae(PAYLOAD_TYPE, payload))
    doc = {
        "payloadType": PAYLOAD_TYPE,
        "payload": base64.b64encode(payload).decode(),
        "signatures": [
            {"keyid": key_id(private.public_key()), "sig": base64.b64encode(sig).decode()}
        ],
    }
    return json.dumps(doc, sort_keys=True)


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


# What a running VM whose image has only an old-format signature is told (``running``).
ADMITTED_OLD_FORMAT = "admitted under the old signature format; re-sign the image"


@dataclass(frozen=True)
class Verdict:
    trusted: bool
    allowed: bool  # trusted, or not trusted but the policy only warns
    reason: str
    key_id: str = ""
    policy_version: int = 0
    # Not trusted for want of a signature of the current format alone: a trusted key's
    # signature of the first format (v1) verifies the image's files, and the image's
    # settings are what v1 never covered (``v1_problem``). Nothing was revoked.
    old_format: bool = False

    @property
    def word(self) -> str:
        return "allow" if self.trusted else ("warn" if self.allowed else "deny")

    def running(self, image: str) -> Verdict:
        """The verdict on a VM of ``image`` that runs already, when the policy is checked
        again (a new policy version, an agent restarting): one that is not trusted only
        because its signature is of the old format was admitted under the rules of its
        day, and nothing about it changed since: allowed ("warn"), saying so, never
        stopped for it. A new create, start or placement takes the verdict as it is."""
        if self.trusted or not self.old_format:
            return self
        why = f"image {image} was {ADMITTED_OLD_FORMAT} ({self.reason})"
        return replace(self, allowed=True, reason=why)


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


def _expected(
    signed: object, manifest: ImageSpec, boot: Boot | None
) -> tuple[str, dict[str, Any], dict[str, Any]] | str:
    """(predicate type, signed predicate, the statement expected of this manifest in
    that format), or why ``signed`` is no image-manifest statement at all."""
    if not isinstance(signed, dict) or signed.get("_type") != STATEMENT_TYPE:
        return "the signed payload is not an image-manifest statement"
    kind, got = signed.get("predicateType"), signed.get("predicate")
    got = got if isinstance(got, dict) else {}
    if kind == PREDICATE_TYPE_V1:
        return kind, got, statement_v1(manifest)
    if kind == PREDICATE_TYPE:
        if boot is None:
            boot = Boot(str(got.get("context") or ""), str(got.get("login_user") or ""))
        return kind, got, statement(manifest, boot)
    return "the signed payload is not an image-manifest statement"


def fields_problem(signed: object, manifest: ImageSpec, boot: Boot | None) -> str:
    """'' if the signed predicate (and each of its partitions) has exactly the fields of
    its format, else which it adds or lacks: a statement this version cannot check
    whole (made by a newer one, or by hand), not one whose files or settings differ."""
    found = _expected(signed, manifest, boot)
    if isinstance(found, str):
        return ""  # statement_problem says it
    kind, got, expected = found
    want: dict[str, Any] = expected["predicate"]
    problem = _fields("the signed predicate", got, want, kind)
    parts = got.get("partitions")
    if problem or not isinstance(parts, list) or len(parts) != len(want["partitions"]):
        return problem
    for g, w in zip(parts, want["partitions"], strict=True):
        if isinstance(g, dict) and (
            problem := _fields(f"signed partition {w['name']!r}", g, w, kind)
        ):
            return problem
    return ""


def _fields(what: str, got: dict[str, Any], want: dict[str, Any], kind: str) -> str:
    unknown = sorted(str(k) for k in set(got) - set(want))
    if unknown:
        return (
            f"{what} has field(s) {', '.join(unknown)} that {kind} does not have (made "
            "by a newer version, or by hand?): this site cannot check what they say"
        )
    missing = sorted(set(want) - set(got))
    return f"{what} lacks field(s) {', '.join(missing)}" if missing else ""


def statement_problem(signed: object, manifest: ImageSpec, boot: Boot | None) -> str:
    """'' if the signed statement covers exactly this manifest (and, in format v2, its
    ``boot`` settings), else what differs. ``boot`` None: the caller does not know the
    image's settings (an agent: its order carries the seed made from them, not them);
    a v2 statement is then checked for the files alone. A v1 statement is checked for
    the files it covers; what it does not cover is ``v1_problem``'s."""
    found = _expected(signed, manifest, boot)
    if isinstance(found, str):
        return found
    _, got, expected = found
    want: dict[str, Any] = expected["predicate"]
    if got != want:
        fields = fields_problem(signed, manifest, boot)
        if fields:
            return fields
        for key in ("image", "kernel", "initrd", "cmdline"):
            if got.get(key) != want[key]:
                return f"the manifest's {key} differs from what was signed"
        for key in ("context", "login_user"):
            if key in want and got.get(key) != want[key]:
                return f"the image's {key} is {want[key]!r}, not {got.get(key)!r} as signed"
        return "the manifest's partitions differ from what was signed"
    if isinstance(signed, dict) and signed.get("subject") != expected["subject"]:
        return "the statement's subjects differ from the manifest"
    return ""


def v1_problem(manifest: ImageSpec, boot: Boot | None) -> str:
    """Why a signature of the first format (it covers the files alone) does not vouch
    for this image ('' if it does): the image's context, login user or ext4 flags are
    not the defaults, and that format never covered them (an owner could have changed
    them after it was made, re-importing the same files). ``boot`` None: not known."""
    uncovered: list[str] = []
    if boot is not None and boot.context != "none":
        uncovered.append(f"context {boot.context}")
    if boot is not None and boot.login_user:
        uncovered.append(f"login_user {boot.login_user}")
    ext4 = [p.name for p in manifest.partitions if p.ext4]
    if ext4:
        uncovered.append("ext4 flag on partition " + ", ".join(ext4))
    if not uncovered:
        return ""
    return (
        "is of the old format (image-manifest v1), which does not "
        f"cover the image's {' and '.join(uncovered)}; sign the image again "
        f"(`ws image sign {manifest.image}`)"
    )


def _check_statement(
    payload: bytes, manifest: ImageSpec, boot: Boot | None, kid: str
) -> tuple[str, bool]:
    """('', False) if the signed payload vouches for this manifest and its ``boot``, else
    why not, and whether the one reason is its format (v1, over settings it never
    covered: the files it covers verified)."""
    try:
        signed = json.loads(payload)
    except (ValueError, RecursionError):
        return "the signed payload is not JSON", False
    differs = statement_problem(signed, manifest, boot)
    if differs:
        return differs, False
    if signed.get("predicateType") == PREDICATE_TYPE_V1:
        old = v1_problem(manifest, boot)
        if old:
            return f"the signature by key {kid[:16]} {old}", True
    return "", False


def utc_text(epoch_s: float) -> str:
    """A moment as ISO 8601 in UTC, to the second (2026-12-04T23:59:59Z)."""
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(epoch_s))


def verify(
    policy: Policy,
    manifest: ImageSpec,
    envelopes: Sequence[str],
    now: float,
    boot: Boot | None = None,
) -> Verdict:
    """The policy's verdict on launching ``manifest``, whose boot settings are ``boot``,
    with these signatures. ``boot`` None: not known to the caller (an agent; see
    ``statement_problem``); the service always says them."""

    def verdict(trusted: bool, reason: str, kid: str = "", old: bool = False) -> Verdict:
        return Verdict(trusted, trusted or not policy.enforce, reason, kid, policy.version, old)

    revoked = [d for d in manifest.digests() if d in policy.revoked_digests]
    if revoked:
        return verdict(False, f"digest {revoked[0]} is revoked")
    if not envelopes:
        return verdict(False, f"image {manifest.image} is not signed")
    problems: list[str] = []
    old_format = False  # a trusted key's v1 signature fails for its format alone
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
            differs, old = _check_statement(payload, manifest, boot, kid)
            if differs:
                problems.append(differs)
                old_format = old_format or old
                continue
            return verdict(True, f"signed by trusted key {kid[:16]}", kid)
    reason = "; ".join(dict.fromkeys(problems)) or "no usable signature"
    return verdict(False, reason, old=old_format)
