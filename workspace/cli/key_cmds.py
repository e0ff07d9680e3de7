"""SSH keys on the command line: yours go into every new workspace of yours.

    ws key add FILE|-        store a public key (an id_ed25519.pub; - reads stdin)
    ws key list              your keys: fingerprint, type, comment, when added
    ws key remove KEY        by fingerprint (SHA256:...), a comment naming exactly one key,
                             or the .pub file it was added from

Output follows workspace/cli/render.py (--output json), exit codes workspace/cli/common.py.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from typing import Any

from workspace import errors
from workspace.cli import common, render
from workspace.domain import sshkeys


def key_type(k: Any) -> str:
    """The key's type, the first word of its line ("ssh-ed25519"; "" if none)."""
    return next(iter(k.public_key.split()), "")


def key_dict(k: Any) -> dict[str, Any]:
    """A key as JSON: its fields, and ``type`` as the TYPE column shows it."""
    return {**render.to_dict(k), "type": key_type(k)}


def key_rows(keys: Sequence[Any]) -> str:
    """`ws key list`."""
    return render.table(
        ["FINGERPRINT", "TYPE", "COMMENT", "ADDED"],
        [
            [
                k.fingerprint,
                key_type(k) or "-",
                k.comment or "-",
                render.fmt_time(k.added_at),
            ]
            for k in keys
        ],
    )


def key_text(k: Any) -> str:
    """One key: `ws key add|remove`."""
    return render.fields(
        [
            ("fingerprint", k.fingerprint),
            ("type", key_type(k)),
            ("comment", k.comment),
            ("added_at", render.fmt_time(k.added_at)),
        ]
    )


def _read(path: str) -> str:
    """FILE's text, or stdin's for -. A file it cannot read is an OSError, reported as
    every other local file that says no is ("PATH: No such file or directory", exit 1)."""
    if path == "-":
        return sys.stdin.read()
    with open(path, encoding="utf-8", errors="replace") as f:
        return f.read(65536)


def key_ref(key: str) -> str:
    """KEY as given, or the fingerprint of the public key in file KEY: the .pub file
    `ws key add` was given (`ws key remove ~/.ssh/id_ed25519.pub` was told "you have no
    SSH key", though the key it holds was there)."""
    if key.startswith("SHA256:") or not os.path.isfile(key):
        return key
    found = sshkeys.fingerprint(_read(key).lstrip("\ufeff"))
    return key if found == "?" else found


def register(
    subparsers: Any, parent: argparse.ArgumentParser, client_for: common.ClientFor
) -> None:
    """Add `key add|list|remove` to ws."""

    def add(args: argparse.Namespace) -> int:
        public_key = _read(args.file)  # before connecting: a file that says no is said first
        if sshkeys.is_private(public_key):
            # Said here, before connecting: the private key is never sent anywhere.
            pub = "the .pub file" if args.file == "-" else f"{args.file}.pub"
            raise errors.InvalidArgument(
                f"{'that' if args.file == '-' else args.file} is a private key, which "
                f"stays on this machine (it was not sent): give its public half, {pub}"
            )
        k = client_for(args).add_ssh_key(public_key)
        render.emit(args, key_dict(k), key_text(k))
        return common.EXIT_OK

    def list_(args: argparse.Namespace) -> int:
        keys = client_for(args).list_ssh_keys()
        render.emit_list(
            args, keys, key_rows, "you have no SSH keys; add one with `ws key add FILE`", key_dict
        )
        return common.EXIT_OK

    def remove(args: argparse.Namespace) -> int:
        k = client_for(args).remove_ssh_key(key_ref(args.key))
        render.emit(
            args, key_dict(k), f"removed SSH key {k.fingerprint} ({k.comment or 'no comment'})"
        )
        return common.EXIT_OK

    p = subparsers.add_parser(
        "key", parents=[parent], help="your SSH public keys (they go into new workspaces)"
    )
    sub = p.add_subparsers(dest="key_command", metavar="COMMAND", required=True)
    q = sub.add_parser("add", parents=[parent], help="store an SSH public key")
    q.add_argument(
        "file", metavar="FILE", help="the public key file (e.g. ~/.ssh/id_ed25519.pub), - for stdin"
    )
    q.set_defaults(func=add)
    q = sub.add_parser("list", parents=[parent], help="your SSH public keys")
    q.set_defaults(func=list_)
    q = sub.add_parser("remove", parents=[parent], help="remove one of your SSH keys")
    q.add_argument(
        "key", metavar="KEY", help="its fingerprint (SHA256:...), its comment, or its .pub file"
    )
    q.set_defaults(func=remove)
