"""Image signing (`ws image keygen|sign|verify`) and the site's trust policy
(`ws-admin trust add|list|revoke|mode`, `ws-admin audit`).

    ws image keygen --out me              writes me.key (0600) and me.pub
    ws image sign sci-base:1.2 --key me.key
    ws image verify sci-base:1.2
    ws-admin trust add me.pub --images 'sci-*' [--expires 2026-12-31|2026-12-31T12:00Z]
                                          [--comment TEXT]
                                          (patterns match NAME:VERSION: 'app:*', 'app*')
    ws-admin trust list | revoke KEYID | revoke --digest sha256:... | mode enforce|warn
    ws-admin audit [--image NAME] [--limit N]

The envelope format is described in docs/design/trust.md.
"""

from __future__ import annotations

import argparse
import contextlib
import os
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from images import signing
from workspace import errors
from workspace.cli import common, render


def expiry_arg(text: str) -> float:
    """YYYY-MM-DD (the end of that day, UTC), or an ISO 8601 date-time with its zone
    (2026-12-04T15:30:00Z, 2026-12-04T16:30+01:00) -> epoch seconds."""
    with contextlib.suppress(ValueError):
        day = datetime.strptime(text, "%Y-%m-%d").replace(tzinfo=UTC)
        return day.timestamp() + 86399
    try:
        when = datetime.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected YYYY-MM-DD or an ISO 8601 date-time with its zone "
            f"(2026-12-04T15:30:00Z), got {text!r}"
        ) from None
    if when.tzinfo is None:
        raise argparse.ArgumentTypeError(
            f"{text!r} has no time zone: end it with Z (UTC) or an offset such as +01:00"
        )
    return when.timestamp()


# -- ws image keygen|sign|verify -----------------------------------------------------------


def _write_new(path: Path, data: bytes, mode: int) -> None:
    """``data`` into a new file ``path`` (what was there removed first, a symlink itself
    rather than what it points to): a private key never lands where a link sends it."""
    with contextlib.suppress(FileNotFoundError):
        path.unlink()
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, mode)
    with os.fdopen(fd, "wb") as f:
        f.write(data)


def keygen(args: argparse.Namespace) -> int:
    key_path, pub_path = Path(f"{args.out}.key"), Path(f"{args.out}.pub")
    # Either file there is a refusal (exit 1, as where any local file says no; the command
    # line is valid): a PREFIX.pub alone may be someone else's key. --force replaces both.
    for path in (key_path, pub_path):
        if os.path.lexists(path) and not args.force:  # a dangling symlink is there too
            raise errors.AlreadyExists(f"{path} exists; use --force to replace it")
    private, public = signing.generate_key()
    _write_new(key_path, private, 0o600)
    try:
        _write_new(pub_path, public, 0o644)
    except OSError:
        key_path.unlink()  # no private key without its public half
        raise
    kid = signing.key_id(public)
    render.emit(
        args,
        {"key_id": kid, "private_key": str(key_path), "public_key": str(pub_path)},
        f"key {kid}\nprivate key: {key_path} (keep it secret)\npublic key:  {pub_path}",
    )
    return 0


def private_key(path: str) -> bytes:
    """The PEM in ``path`` if it is a private key `ws image sign` can use; else a refusal
    (exit 1, as any local file that says no), one line naming the file."""
    pem = Path(path).read_bytes()
    try:
        signing.load_private_key(pem)
    except signing.SignatureError:
        if b"PUBLIC KEY-----" in pem:  # PREFIX.pub for PREFIX.key, the likely slip
            what = "a public key; sign with the private key "
            what += "(PREFIX.key of `ws image keygen --out PREFIX`)"
        else:
            what = "not a private key of `ws image keygen` (an unencrypted Ed25519 key in PEM)"
        raise errors.InvalidArgument(f"{path}: {what}") from None
    return pem


def register_image(sub: Any, parent: argparse.ArgumentParser, client_for: common.ClientFor) -> None:
    """Add `keygen`, `sign`, `verify` to ``sub``, the subparsers of `ws image`."""

    def sign(args: argparse.Namespace) -> int:
        pem = private_key(args.key)  # before connecting
        sigs = client_for(args).sign_image(args.name, pem)
        render.emit(args, sigs, render.signatures_text(sigs))
        if sigs.trusted:
            return common.EXIT_OK
        # Kept (the site only warns), but the site does not trust the image: a script
        # that signs and then launches learns it from the exit code, and why on stderr.
        common.error(
            "ws",
            f"the signature was attached, but image {sigs.image or args.name} is not "
            f"trusted: {sigs.reason}",
        )
        return common.EXIT_REQUEST

    def verify(args: argparse.Namespace) -> int:
        sigs = client_for(args).get_signatures(args.name)
        render.emit(args, sigs, render.signatures_text(sigs))
        if sigs.trusted:
            return common.EXIT_OK
        # The failure said on stderr too, as `ws-admin schedule explain` says a request
        # that does not fit: a script reading only the exit code learns why.
        common.error("ws", f"image {sigs.image or args.name} is not trusted: {sigs.reason}")
        return common.EXIT_REQUEST

    q = sub.add_parser("keygen", parents=[parent], help="make an Ed25519 publisher key")
    q.add_argument("--out", required=True, metavar="PREFIX", help="write PREFIX.key, PREFIX.pub")
    q.add_argument(
        "--force", action="store_true", help="replace an existing PREFIX.key and PREFIX.pub"
    )
    q.set_defaults(func=keygen)
    q = sub.add_parser(
        "sign",
        parents=[parent],
        help="sign an image and attach the signature",
        description="Sign the image as the site stores it (its files, kernel, cmdline, "
        "context and login user) and attach the signature. Exits 0 when the site then "
        "trusts the image, 1 when it does not (a site that only warns keeps the "
        "signature; the verdict says why, and one line on stderr).",
    )
    q.add_argument("name", help="image name")
    q.add_argument("--key", required=True, metavar="FILE", help="private key (ws image keygen)")
    q.set_defaults(func=sign)
    q = sub.add_parser(
        "verify",
        parents=[parent],
        help="an image's signatures and the site's verdict",
        description="Show an image's signatures and whether the site's trust policy trusts "
        "it. Exits 0 when it is trusted, 1 when it is not (the verdict says why, and one "
        "line on stderr).",
    )
    q.add_argument("name", help="image name")
    q.set_defaults(func=verify)


# -- ws-admin trust ..., ws-admin audit ----------------------------------------------------


def register_admin(
    subparsers: Any, parent: argparse.ArgumentParser, client_for: common.ClientFor
) -> None:
    """Add `trust add|list|revoke|mode` and `audit` to ws-admin."""

    def add(args: argparse.Namespace) -> int:
        try:
            pem = Path(args.pubfile).read_text()
        except UnicodeDecodeError:
            raise errors.InvalidArgument(f"{args.pubfile}: not a PEM public key (binary)") from None
        p = client_for(args).add_trust_key(pem, args.images, args.expires or 0.0, args.comment)
        render.emit(args, p, render.policy_text(p))
        return 0

    def show(args: argparse.Namespace) -> int:
        p = client_for(args).get_trust_policy()
        render.emit(args, p, render.policy_text(p))
        return 0

    def revoke(args: argparse.Namespace) -> int:
        if bool(args.key_id) == bool(args.digest):
            raise common.UsageError("give a KEYID or --digest DIGEST (one of them)")
        c = client_for(args)
        p = c.revoke_digest(args.digest) if args.digest else c.revoke_trust_key(args.key_id)
        render.emit(args, p, render.policy_text(p))
        return 0

    def mode(args: argparse.Namespace) -> int:
        p = client_for(args).set_trust_mode(args.mode == "enforce", args.stop_running_on_revoke)
        render.emit(args, p, render.policy_text(p))
        return 0

    def audit(args: argparse.Namespace) -> int:
        entries = client_for(args).list_audit(args.limit or 0, args.image or "")
        render.emit_list(args, entries, render.audit_text, "no trust decisions recorded")
        return 0

    p = subparsers.add_parser("trust", parents=[parent], help="the site's image trust policy")
    sub = p.add_subparsers(dest="trust_command", metavar="COMMAND", required=True)
    q = sub.add_parser(
        "add",
        parents=[parent],
        help="trust a publisher key for some images",
        description="Trust a publisher key for the images whose NAME:VERSION matches one "
        "of the patterns (fnmatch, case-sensitive): 'app:*' or 'app*' for every version "
        "of app ('app' alone matches none of them). Adding a key trusted already replaces "
        "its patterns and expiry (the answer says what changed) and keeps its comment "
        "unless --comment gives a new one.",
    )
    q.add_argument("pubfile", metavar="PUBFILE", help="public key (ws image keygen)")
    q.add_argument(
        "--images",
        nargs="+",
        action="extend",  # --images a* --images b*: both (the last alone was kept)
        required=True,
        metavar="PATTERN",
        help="patterns of the full NAME:VERSION, e.g. 'app:*', 'sci-*' (repeatable)",
    )
    q.add_argument(
        "--expires",
        type=expiry_arg,
        metavar="WHEN",
        help="when the key stops being trusted: YYYY-MM-DD (the end of that day, UTC) or "
        "an ISO 8601 date-time with its zone, e.g. 2026-12-04T15:30:00Z or "
        "2026-12-04T16:30+01:00 (a moment in the past is refused)",
    )
    q.add_argument("--comment", default="", help="who the key belongs to (kept if not given)")
    q.set_defaults(func=add)
    q = sub.add_parser("list", parents=[parent], help="the policy: keys, revocations, mode")
    q.set_defaults(func=show)
    q = sub.add_parser("revoke", parents=[parent], help="revoke a key or a digest at once")
    q.add_argument(
        "key_id",
        nargs="?",
        metavar="KEYID",
        help="the key id, or a prefix of at least 8 hex digits that only one key has",
    )
    q.add_argument(
        "--digest", metavar="DIGEST", help="revoke this blob digest instead (sha256:<64 hex>)"
    )
    q.set_defaults(func=revoke)
    q = sub.add_parser("mode", parents=[parent], help="enforce signatures, or only warn")
    q.add_argument("mode", choices=("enforce", "warn"))
    q.add_argument(
        "--stop-running-on-revoke",
        action="store_true",
        help="stop running VMs whose image becomes untrusted (default: report only)",
    )
    q.set_defaults(func=mode)

    p = subparsers.add_parser("audit", parents=[parent], help="image trust decisions")
    p.add_argument("--image", metavar="NAME", help="only this image")
    p.add_argument("--limit", type=common.positive_int, metavar="N", help="newest N (100)")
    p.set_defaults(func=audit)
