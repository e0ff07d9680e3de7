"""SSH keys: proto (workspace.v1 Keys) ⇄ domain (``SshKeyView``)."""

from __future__ import annotations

from workspace.codec.v1 import ts
from workspace.domain.model import SshKeyView
from workspace.v1 import access_pb2


def key_to_proto(k: SshKeyView) -> access_pb2.SshKey:
    return access_pb2.SshKey(
        fingerprint=k.fingerprint,
        public_key=k.public_key,
        comment=k.comment,
        added_at=ts(k.added_at),
    )


def key_from_proto(m: access_pb2.SshKey) -> SshKeyView:
    return SshKeyView(
        fingerprint=m.fingerprint,
        public_key=m.public_key,
        comment=m.comment,
        added_at=m.added_at.ToNanoseconds() / 1e9,
    )
