"""SSH keys: a user's public keys (``ws key``), and the key pairs the service makes for
guests (each workspace's host key, each cluster's own key).

A user's keys are per identity name; each new workspace of theirs takes a copy of them
at create (ops/create.py ``contextualize``): a key added later goes into later
workspaces only. Private keys made here go only into the store and the seed (never a
log line).
"""

from __future__ import annotations

import logging
import re

from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from workspace.domain import sshkeys
from workspace.domain.model import SshKeyView
from workspace.errors import InvalidArgument, NotFound, ResourceExhausted
from workspace.identity import Identity
from workspace.ops.projects import as_identity
from workspace.ops.unit import Env
from workspace.store import SshKey

log = logging.getLogger("workspace.ops.keys")

ACCEPTED = (
    "ssh-ed25519, ecdsa-sha2-nistp256/384/521, ssh-rsa of 2048 bits or more, "
    "or a security key's sk-ssh-ed25519@openssh.com or sk-ecdsa-sha2-nistp256@openssh.com"
)
ECDSA_TYPES = frozenset({"ecdsa-sha2-nistp256", "ecdsa-sha2-nistp384", "ecdsa-sha2-nistp521"})
# FIDO security key types (ssh-keygen -t ed25519-sk|ecdsa-sk, OpenSSH 8.2+): cryptography
# does not load them, so their blob is read here: the key, then the application string.
SK_ED25519 = "sk-ssh-ed25519@openssh.com"
SK_ECDSA = "sk-ecdsa-sha2-nistp256@openssh.com"
MIN_RSA_BITS = 2048
MAX_KEY_CHARS = 16384
# An authorized_keys line with options before the key (``no-pty,from="..." ssh-ed25519
# AAAA...``): options, then a key type and base64 that starts like a key blob.
_OPTIONS_THEN_KEY = re.compile(r"\s*(\S.*?)\s+(?:ssh-|ecdsa-|sk-)\S+\s+AAAA")
EXPECTED = f"expected one SSH public key line such as 'ssh-ed25519 AAAA... you@host' ({ACCEPTED})"


def parse(text: str) -> sshkeys.KeyLine:
    """A public key line checked: one of the ACCEPTED types, a key cryptography can load;
    else InvalidArgument saying what was expected (a private key is named as such)."""
    text = text.lstrip("\ufeff")  # a .pub file an editor saved as "UTF-8 with BOM"
    if sshkeys.is_private(text):
        raise InvalidArgument(sshkeys.PRIVATE_REFUSED)
    other = _other_format(text)
    if other:
        raise InvalidArgument(other)
    if len(text) > MAX_KEY_CHARS:
        raise InvalidArgument(f"the key is longer than {MAX_KEY_CHARS} characters; {EXPECTED}")
    lines = [x for x in text.splitlines() if x.strip() and not x.lstrip().startswith("#")]
    if len(lines) != 1:
        got = "nothing" if not lines else f"{len(lines)} lines"
        raise InvalidArgument(f"not an SSH public key (got {got}): {EXPECTED}")
    options = _OPTIONS_THEN_KEY.match(lines[0])
    if options is not None and not options[1].startswith(sshkeys.KEY_TYPE_PREFIXES):
        raise InvalidArgument(
            f"not an SSH public key (it starts with authorized_keys options "
            f"{options[1].strip()!r}: give the key without them): {EXPECTED}"
        )
    try:
        line = sshkeys.split(lines[0])
    except ValueError as exc:
        raise InvalidArgument(f"not an SSH public key ({exc}): {EXPECTED}") from None
    if line.type in (SK_ED25519, SK_ECDSA):
        try:
            _check_sk(line)
        except ValueError as exc:
            raise InvalidArgument(f"not a valid {line.type} key ({exc}): {EXPECTED}") from None
        return line
    if line.type not in ECDSA_TYPES | {"ssh-ed25519", "ssh-rsa"}:
        raise InvalidArgument(f"SSH key type {line.type!r} is not accepted: {ACCEPTED}")
    try:
        key = serialization.load_ssh_public_key(line.without_comment().encode())
    except (ValueError, UnsupportedAlgorithm) as exc:
        raise InvalidArgument(f"not a valid {line.type} key ({exc}): {EXPECTED}") from None
    if isinstance(key, rsa.RSAPublicKey) and key.key_size < MIN_RSA_BITS:
        raise InvalidArgument(
            f"an RSA key of {key.key_size} bits is too weak: use {MIN_RSA_BITS} bits or more, "
            "or better an ed25519 key (ssh-keygen -t ed25519)"
        )
    if not isinstance(key, rsa.RSAPublicKey | ec.EllipticCurvePublicKey | ed25519.Ed25519PublicKey):
        raise InvalidArgument(f"SSH key type {line.type!r} is not accepted: {ACCEPTED}")
    return line


# Public keys in other formats than OpenSSH's one line (what they are, and the ssh-keygen
# command that converts them): they were refused as "not an SSH public key (got 4 lines)",
# leaving a PuTTY user to guess what was wrong with the file PuTTYgen saved.
_OTHER_FORMATS = (
    (
        "---- BEGIN SSH2 PUBLIC KEY ----",
        "the SSH2 format (RFC 4716) PuTTYgen saves",
        "ssh-keygen -i -f FILE",
        ' (PuTTYgen shows it too, under "Public key for pasting into OpenSSH authorized_keys'
        ' file")',
    ),
    ("-----BEGIN PUBLIC KEY-----", "PEM (PKCS#8)", "ssh-keygen -i -m PKCS8 -f FILE", ""),
    ("-----BEGIN RSA PUBLIC KEY-----", "PEM (PKCS#1)", "ssh-keygen -i -m PEM -f FILE", ""),
)


def _other_format(text: str) -> str:
    """What to do about a public key in another format ("": it is not in one)."""
    for mark, what, command, also in _OTHER_FORMATS:
        if mark in text:
            return (
                f"that is a public key in {what}: give it as OpenSSH's one line, "
                f"which `{command}` prints{also}"
            )
    return ""


def _fields(blob: bytes) -> list[bytes]:
    """The SSH wire strings of a key blob (ValueError when it is not made of them)."""
    out, at = [], 0
    while at < len(blob):
        n = int.from_bytes(blob[at : at + 4], "big")
        if at + 4 + n > len(blob):
            raise ValueError("the key's data is cut short")
        out.append(blob[at + 4 : at + 4 + n])
        at += 4 + n
    return out


def _check_sk(line: sshkeys.KeyLine) -> None:
    """ValueError unless ``line`` is a security key OpenSSH reads: the type, the key
    (a valid ed25519 key, or a P-256 point), the application ("ssh:...")."""
    fields = _fields(line.blob)
    if line.type == SK_ED25519:
        if len(fields) != 3:
            raise ValueError("expected the key and its application")
        ed25519.Ed25519PublicKey.from_public_bytes(fields[1])
    else:
        if len(fields) != 4 or fields[1] != b"nistp256":
            raise ValueError("expected the curve nistp256, the key and its application")
        ec.EllipticCurvePublicKey.from_encoded_point(ec.SECP256R1(), fields[2])
    if not fields[-1]:
        raise ValueError("no application")


def new_key_pair() -> tuple[str, str]:
    """A fresh ed25519 key pair: (private key in OpenSSH PEM format, public key line)."""
    key = ed25519.Ed25519PrivateKey.generate()
    private = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.OpenSSH,
        serialization.NoEncryption(),
    ).decode()
    public = (
        key.public_key()
        .public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
        .decode()
    )
    return private, public


def _view(k: SshKey) -> SshKeyView:
    return SshKeyView(k.fingerprint, k.public_key, k.comment or "", k.added_at)


def owner_keys(s: Session, owner: str) -> list[str]:
    """The owner's public key lines, oldest first (what a new workspace of theirs gets)."""
    q = select(SshKey.public_key).where(SshKey.owner == owner).order_by(SshKey.id)
    return list(s.execute(q).scalars())


def add(env: Env, who: Identity | str, text: str) -> SshKeyView:
    """Store a public key of the caller (the same key again: the one stored, unchanged)."""
    line = parse(text)
    owner = as_identity(who).name
    limit = env.cfg.limits.max_ssh_keys_per_user
    with env.store.write() as s:
        found = s.execute(
            select(SshKey).where(SshKey.owner == owner, SshKey.fingerprint == line.fingerprint)
        ).scalar_one_or_none()
        if found is not None:
            return _view(found)
        count = s.execute(
            select(func.count()).select_from(SshKey).where(SshKey.owner == owner)
        ).scalar_one()
        if count >= limit:
            raise ResourceExhausted(
                f"{owner} has {count} SSH keys, the most one user may store "
                f"(limits.max_ssh_keys_per_user = {limit}); remove one first (`ws key remove`)"
            )
        row = SshKey(
            owner=owner,
            fingerprint=line.fingerprint,
            public_key=line.line(),
            comment=line.comment,
            added_at=env.clock(),
        )
        s.add(row)
        s.flush()
        shown = _view(row)
    log.info("SSH key %s (%s) added by %s", line.fingerprint, line.type, owner)
    return shown


def list_keys(env: Env, who: Identity | str) -> list[SshKeyView]:
    owner = as_identity(who).name
    with env.store.read() as s:
        q = select(SshKey).where(SshKey.owner == owner).order_by(SshKey.id)
        return [_view(k) for k in s.execute(q).scalars()]


def remove(env: Env, who: Identity | str, ref: str) -> SshKeyView:
    """Remove one of the caller's keys: by fingerprint ("SHA256:..." or without the
    prefix), or by a comment that names exactly one key. Workspaces made before keep it."""
    owner = as_identity(who).name
    ref = ref.strip()
    if not ref:
        raise InvalidArgument("name the key: its fingerprint (SHA256:...) or its comment")
    with env.store.write() as s:
        mine = list(s.execute(select(SshKey).where(SshKey.owner == owner)).scalars())
        fp = ref if ref.startswith("SHA256:") else f"SHA256:{ref}"
        hits = [k for k in mine if k.fingerprint == fp]
        if not hits:
            hits = [k for k in mine if k.comment and k.comment == ref]
        if not hits:
            raise NotFound(f"you have no SSH key {ref!r}; `ws key list` shows them")
        if len(hits) > 1:
            raise InvalidArgument(
                f"{len(hits)} of your keys have the comment {ref!r}; give the fingerprint "
                f"({', '.join(k.fingerprint for k in hits)})"
            )
        shown = _view(hits[0])
        s.delete(hits[0])
    log.info("SSH key %s removed by %s", shown.fingerprint, owner)
    return shown
