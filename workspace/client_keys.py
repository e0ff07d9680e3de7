"""The SSH keys half of the Python client (``Client`` inherits it): the caller's public
keys, which go into every new workspace of theirs."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

from workspace import errors
from workspace.domain import sshkeys
from workspace.v1 import access_pb2, access_pb2_grpc

T = TypeVar("T")


class KeysClientMixin:
    """Needs ``_call`` and ``_keys`` from the Client."""

    _keys: access_pb2_grpc.KeysStub

    def _call(self, method: Callable[..., T], request: Any, timeout_s: float | None = None) -> T:
        raise NotImplementedError

    def add_ssh_key(self, public_key: str) -> access_pb2.SshKey:
        """Store an SSH public key line (an ``id_ed25519.pub``'s content); adding the same
        key again returns the one stored. A private key is refused here
        (InvalidArgument), before anything is sent: it never leaves this machine."""
        if sshkeys.is_private(public_key):
            raise errors.InvalidArgument(f"{sshkeys.PRIVATE_REFUSED} (it was not sent)")
        req = access_pb2.AddSshKeyRequest(public_key=public_key)
        return self._call(self._keys.AddSshKey, req)

    def list_ssh_keys(self) -> list[access_pb2.SshKey]:
        return list(self._call(self._keys.ListSshKeys, access_pb2.ListSshKeysRequest()).keys)

    def remove_ssh_key(self, key: str) -> access_pb2.SshKey:
        """Remove a key by its fingerprint (SHA256:...) or a comment naming exactly one."""
        return self._call(self._keys.RemoveSshKey, access_pb2.RemoveSshKeyRequest(key=key))
