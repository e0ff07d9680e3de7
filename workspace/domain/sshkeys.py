"""SSH public key lines as text: their parts and fingerprints, in pure Python.

A line is ``TYPE BASE64 [COMMENT]`` (one authorized_keys entry, without options). The
fingerprint is what ``ssh-keygen -l`` prints: ``SHA256:`` and the base64 (without
padding) of the sha256 of the decoded key blob. Checking that a line is a key worth
accepting (type, size, a real curve point) needs ``cryptography``: workspace/ops/keys.py.
The CLIs use this module to show fingerprints; it imports nothing of the service.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import itertools
import re
from dataclasses import dataclass


@dataclass(frozen=True)
class KeyLine:
    """An authorized_keys line taken apart."""

    type: str  # "ssh-ed25519", "ecdsa-sha2-nistp256", "ssh-rsa", ...
    blob: bytes  # the decoded key (wire format)
    comment: str = ""

    @property
    def fingerprint(self) -> str:
        return blob_fingerprint(self.blob)

    def line(self) -> str:
        """The line with a normalised layout: type, base64, comment."""
        text = f"{self.type} {base64.b64encode(self.blob).decode()}"
        return f"{text} {self.comment}" if self.comment else text

    def without_comment(self) -> str:
        return f"{self.type} {base64.b64encode(self.blob).decode()}"


def blob_fingerprint(blob: bytes) -> str:
    """``SHA256:...`` of a decoded key blob, as ssh-keygen -l prints it."""
    digest = hashlib.sha256(blob).digest()
    return "SHA256:" + base64.b64encode(digest).decode().rstrip("=")


def split(text: str) -> KeyLine:
    """The parts of a public key line; ValueError if it is not ``TYPE BASE64 [COMMENT]``
    with a blob whose first field names the same type."""
    parts = text.strip().split(None, 2)
    if len(parts) < 2:
        raise ValueError("expected one line: TYPE BASE64 [COMMENT]")
    try:
        blob = base64.b64decode(parts[1], validate=True)
    except (binascii.Error, ValueError):
        raise ValueError("the key's second field is not base64") from None
    if len(blob) < 4:
        raise ValueError("the key is too short")
    n = int.from_bytes(blob[:4], "big")
    if blob[4 : 4 + n].decode(errors="replace") != parts[0]:
        raise ValueError(f"the key's data does not match its type {parts[0]!r}")
    comment = parts[2].strip() if len(parts) > 2 else ""
    return KeyLine(parts[0], blob, comment)


# How a key type starts (ssh-ed25519, ssh-rsa, ecdsa-sha2-*, sk-*, their -cert-v01 forms).
KEY_TYPE_PREFIXES = ("ssh-", "ecdsa-", "sk-")


def key_of(line: str) -> str:
    """An authorized_keys ``line`` from its key on (``TYPE BASE64 [COMMENT]``), without
    the options before it (``from="...",no-pty``, ``cert-authority``); "" when no key
    type followed by a key blob is in it. What names the key in a record whose second
    field is taken for its blob (the seed's pruning of a saved disk's keys)."""
    fields = line.split()
    for i, (kind, blob) in enumerate(itertools.pairwise(fields)):
        if kind.startswith(KEY_TYPE_PREFIXES) and blob.startswith("AAAA"):
            return " ".join(fields[i:])
    return ""


# What a private key's text holds: a PEM armour line ("-----BEGIN OPENSSH PRIVATE
# KEY-----", RSA, EC, DSA, PKCS#8's plain and ENCRYPTED, or only its END line), ssh.com's
# "---- BEGIN SSH2 ENCRYPTED PRIVATE KEY ----", PGP's "PRIVATE KEY BLOCK"; PuTTY's .ppk
# header, or its "Private-Lines:" (a .ppk pasted without its first line). The armour, not
# the words alone: a public key line whose comment says "PRIVATE KEY" is no private key.
_PRIVATE = re.compile(
    r"\b(?:BEGIN|END) (?:[A-Z0-9]+ )*PRIVATE KEY\b"
    r"|^\s*PuTTY-User-Key-File|^\s*Private-Lines: *\d",
    re.MULTILINE,
)
PRIVATE_REFUSED = "that is a private key; give the .pub file"


def is_private(text: str) -> bool:
    """Whether ``text`` is (or holds) a private key, which is refused, before it is sent
    anywhere, where a public key is wanted."""
    return _PRIVATE.search(text.lstrip("\ufeff")) is not None


def fingerprint(text: str) -> str:
    """``SHA256:...`` of a public key line ("?" if it cannot be read)."""
    try:
        return split(text).fingerprint
    except ValueError:
        return "?"
