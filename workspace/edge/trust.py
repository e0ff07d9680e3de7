"""The Trust API: image signatures (publishers) and the site's trust policy (admins)."""

from __future__ import annotations

import grpc

from workspace.codec import node as codec_node
from workspace.codec import v1
from workspace.edge import auth
from workspace.edge.calls import unary
from workspace.errors import InvalidArgument
from workspace.identity import Identity
from workspace.ops import trust, trust_admin
from workspace.ops.unit import Env
from workspace.v1 import trust_pb2, trust_pb2_grpc


class TrustServicer(trust_pb2_grpc.TrustServicer):
    SERVICE = "workspace.v1.Trust"

    def __init__(self, env: Env) -> None:
        self.env = env
        self.auth = auth.for_config(env.cfg)

    @unary
    def AddSignature(
        self, request: trust_pb2.AddSignatureRequest, context: grpc.ServicerContext, who: Identity
    ) -> trust_pb2.ImageSignatures:
        status = trust.add_signature(self.env, who, request.image, request.envelope_json)
        return v1.signatures_to_proto(status)

    @unary
    def GetSignatures(
        self,
        request: trust_pb2.ImageSignaturesRequest,
        context: grpc.ServicerContext,
        who: Identity,
    ) -> trust_pb2.ImageSignatures:
        return v1.signatures_to_proto(trust.signatures(self.env, who, request.image))

    @unary
    def GetPolicy(
        self, request: trust_pb2.GetPolicyRequest, context: grpc.ServicerContext, who: Identity
    ) -> trust_pb2.TrustPolicy:
        return v1.trust_settings_to_proto(trust.get_policy(self.env))

    @unary
    def AddKey(
        self, request: trust_pb2.AddKeyRequest, context: grpc.ServicerContext, who: Identity
    ) -> trust_pb2.TrustPolicy:
        expires = (
            v1.epoch(request.expires_at, "expires_at") if request.HasField("expires_at") else 0.0
        )
        view = trust_admin.add_key(
            self.env,
            request.public_key_pem,
            list(request.image_patterns),
            expires,
            request.comment,
        )
        return v1.trust_settings_to_proto(view)

    @unary
    def RevokeKey(
        self, request: trust_pb2.RevokeKeyRequest, context: grpc.ServicerContext, who: Identity
    ) -> trust_pb2.TrustPolicy:
        return v1.trust_settings_to_proto(trust_admin.revoke_key(self.env, request.key_id))

    @unary
    def RevokeDigest(
        self, request: trust_pb2.RevokeDigestRequest, context: grpc.ServicerContext, who: Identity
    ) -> trust_pb2.TrustPolicy:
        return v1.trust_settings_to_proto(trust_admin.revoke_digest(self.env, request.digest))

    @unary
    def SetMode(
        self, request: trust_pb2.SetModeRequest, context: grpc.ServicerContext, who: Identity
    ) -> trust_pb2.TrustPolicy:
        if request.mode not in (trust_pb2.TRUST_MODE_WARN, trust_pb2.TRUST_MODE_ENFORCE):
            raise InvalidArgument("give the mode: WARN or ENFORCE")
        view = trust_admin.set_mode(
            self.env, request.mode == trust_pb2.TRUST_MODE_ENFORCE, request.stop_running_on_revoke
        )
        return v1.trust_settings_to_proto(view)

    @unary
    def ListAudit(
        self, request: trust_pb2.ListAuditRequest, context: grpc.ServicerContext, who: Identity
    ) -> trust_pb2.ListAuditResponse:
        entries = trust.list_audit(self.env, request.limit, request.image)
        return trust_pb2.ListAuditResponse(entries=[codec_node.audit_to_proto(e) for e in entries])
