"""The Keys API: the caller's own SSH public keys (workspace/ops/keys.py)."""

from __future__ import annotations

import grpc

from workspace.codec import keys as codec
from workspace.edge import auth
from workspace.edge.calls import unary
from workspace.identity import Identity
from workspace.ops import keys, seeds
from workspace.ops.unit import Env
from workspace.v1 import access_pb2, access_pb2_grpc


class KeysServicer(access_pb2_grpc.KeysServicer):
    SERVICE = "workspace.v1.Keys"

    def __init__(self, env: Env) -> None:
        self.env = env
        self.auth = auth.for_config(env.cfg)
        # A vendor-data file that cannot be read or checked stops the start, not a create.
        seeds.vendor_data(env.cfg)

    @unary
    def AddSshKey(
        self, request: access_pb2.AddSshKeyRequest, context: grpc.ServicerContext, who: Identity
    ) -> access_pb2.SshKey:
        return codec.key_to_proto(keys.add(self.env, who, request.public_key))

    @unary
    def ListSshKeys(
        self, request: access_pb2.ListSshKeysRequest, context: grpc.ServicerContext, who: Identity
    ) -> access_pb2.ListSshKeysResponse:
        listed = [codec.key_to_proto(k) for k in keys.list_keys(self.env, who)]
        return access_pb2.ListSshKeysResponse(keys=listed)

    @unary
    def RemoveSshKey(
        self, request: access_pb2.RemoveSshKeyRequest, context: grpc.ServicerContext, who: Identity
    ) -> access_pb2.SshKey:
        return codec.key_to_proto(keys.remove(self.env, who, request.key))
