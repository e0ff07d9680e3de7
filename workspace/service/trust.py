"""Image trust: publishers' signatures, the site's trust policy and the audit of decisions.

The policy (keys with the image-name patterns they may sign, expiry, revocations of keys
and digests, WARN or ENFORCE) lives in the store; its version grows with every change
and it goes to every agent (``policy_proto``). The service verifies at signing
(AddSignature) and at every create (``check_launch``, called from Core.new_row); every
decision is recorded in the audit, denials too (they are written after the refused
transaction rolls back).
"""

from __future__ import annotations

import base64
import json
import logging
from collections.abc import Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from google.protobuf.timestamp_pb2 import Timestamp
from sqlalchemy import delete, event, select
from sqlalchemy.orm import Session

from images import signing
from images.model import ImageSpec, Partition
from workspace.codec import v1 as codec_v1
from workspace.errors import (
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    PermissionDenied,
    ResourceExhausted,
)
from workspace.service import convert
from workspace.service.blobs import check_digest
from workspace.store.models import (
    Audit,
    Image,
    ImageSignature,
    Node,
    RevokedDigest,
    TrustKey,
    TrustSettings,
)
from workspace.v1 import trust_pb2

if TYPE_CHECKING:
    from workspace.service.core import Core

log = logging.getLogger("workspace.service.trust")

# Signatures one image may carry.
MAX_SIGNATURES = 16
MAX_ENVELOPE_BYTES = 65536
DEFAULT_AUDIT_LIMIT = 100
MAX_AUDIT_LIMIT = 10000

AuditLike = trust_pb2.AuditEntry | Audit


def manifest_of(image: Image | Mapping[str, Any], name: str = "") -> ImageSpec:
    """The ImageSpec a signature over ``image`` must cover: from an Image row, or from a
    workspace's image_spec dict (then give the image's ``name``)."""
    if isinstance(image, Image):
        return ImageSpec(
            image.name,
            tuple(Partition.from_dict(p) for p in image.partitions),
            image.kernel_digest,
            image.initrd_digest,
            image.cmdline,
        )
    return ImageSpec.from_dict(image, name)


def manifest_from_proto(img: Any) -> ImageSpec:
    """The ImageSpec of an ``images_pb2.Image``; equal to ``manifest_of`` of the stored row."""
    return codec_v1.image_spec_from_proto(img)


def signers(envelopes: Iterable[str]) -> list[str]:
    """The key ids named in these envelopes (malformed ones are skipped)."""
    out: list[str] = []
    for text in envelopes:
        try:
            env = json.loads(text)
            out += [str(s["keyid"]) for s in env["signatures"]]
        except (ValueError, KeyError, TypeError):
            continue
    return list(dict.fromkeys(out))


def _ts(epoch_s: float) -> Timestamp | None:
    return convert.ts(epoch_s) if epoch_s else None


def _epoch(t: Timestamp, present: bool) -> float:
    return t.ToNanoseconds() / 1e9 if present else 0.0


def audit_proto(row: Audit) -> trust_pb2.AuditEntry:
    return trust_pb2.AuditEntry(
        at=convert.ts(row.at),
        where=row.source,
        action=row.action,
        image=row.image,
        digest=row.digest,
        key_id=row.key_id,
        policy_version=row.policy_version,
        verdict=row.verdict,
        reason=row.reason,
        workspace_id=row.workspace_id,
    )


class TrustStore:
    def __init__(self, core: Core) -> None:
        self.core = core
        self.store = core.store

    # -- the policy --------------------------------------------------------------------

    @staticmethod
    def _settings(s: Session) -> TrustSettings:
        row = s.get(TrustSettings, 1)
        if row is None:
            # A new site: WARN, no keys, version 0.
            row = TrustSettings(id=1, version=0, mode="WARN", stop_running_on_revoke=False)
        return row

    def _bump(self, s: Session) -> TrustSettings:
        row = s.get(TrustSettings, 1)
        if row is None:
            row = TrustSettings(id=1, version=0, mode="WARN", stop_running_on_revoke=False)
            s.add(row)
        row.version += 1
        # Every agent gets the new policy at once (it rides on the assignment stream).
        nodes = list(s.execute(select(Node.name)).scalars())
        notifier = self.core.notifier

        def push(_session: Session) -> None:
            notifier.node_changed(*nodes)

        event.listen(s, "after_commit", push, once=True)
        return row

    @staticmethod
    def _policy(s: Session) -> signing.Policy:
        st = TrustStore._settings(s)
        keys = tuple(
            signing.Key(
                key_id=k.key_id,
                public_key_pem=k.public_key_pem,
                image_patterns=tuple(k.image_patterns or ()),
                expires_at=float(k.expires_at or 0.0),
                revoked=bool(k.revoked),
            )
            for k in s.execute(select(TrustKey).order_by(TrustKey.added_at, TrustKey.key_id))
            .scalars()
            .all()
        )
        digests = frozenset(s.execute(select(RevokedDigest.digest)).scalars().all())
        return signing.Policy(
            version=int(st.version),
            enforce=st.mode == "ENFORCE",
            keys=keys,
            revoked_digests=digests,
        )

    def policy(self, s: Session | None = None) -> signing.Policy:
        if s is not None:
            return self._policy(s)
        with self.store.read() as r:
            return self._policy(r)

    @staticmethod
    def _policy_proto(s: Session) -> trust_pb2.TrustPolicy:
        st = TrustStore._settings(s)
        keys = [
            trust_pb2.TrustedKey(
                key_id=k.key_id,
                public_key_pem=k.public_key_pem,
                image_patterns=list(k.image_patterns or ()),
                expires_at=_ts(k.expires_at),
                revoked=k.revoked,
                comment=k.comment,
                added_at=_ts(k.added_at),
            )
            for k in s.execute(select(TrustKey).order_by(TrustKey.added_at, TrustKey.key_id))
            .scalars()
            .all()
        ]
        digests = sorted(s.execute(select(RevokedDigest.digest)).scalars().all())
        return trust_pb2.TrustPolicy(
            version=st.version,
            mode=trust_pb2.TRUST_MODE_ENFORCE
            if st.mode == "ENFORCE"
            else trust_pb2.TRUST_MODE_WARN,
            keys=keys,
            revoked_digests=digests,
            stop_running_on_revoke=st.stop_running_on_revoke,
        )

    def policy_proto(self, s: Session | None = None) -> trust_pb2.TrustPolicy:
        if s is not None:
            return self._policy_proto(s)
        with self.store.read() as r:
            return self._policy_proto(r)

    def add_key(self, req: trust_pb2.AddKeyRequest) -> trust_pb2.TrustPolicy:
        try:
            kid = signing.key_id(req.public_key_pem)
        except signing.SignatureError as exc:
            raise InvalidArgument(f"the public key is not usable: {exc}") from exc
        patterns = [p.strip() for p in req.image_patterns if p.strip()]
        if not patterns:
            raise InvalidArgument(
                f"key {kid[:16]}: give the image name patterns it may sign (e.g. 'team/*')"
            )
        now = self.core.clock()
        expires = _epoch(req.expires_at, req.HasField("expires_at"))
        if expires and expires <= now:
            raise InvalidArgument(f"key {kid[:16]}: its expiry is in the past")
        pem = req.public_key_pem.strip()
        with self.store.write() as s:
            row = s.get(TrustKey, kid)
            if row is not None and row.revoked:
                raise FailedPrecondition(
                    f"key {kid[:16]} was revoked; a revoked key cannot be trusted again "
                    "(make a new key)"
                )
            if row is None:
                row = TrustKey(key_id=kid, added_at=now, revoked=False)
                s.add(row)
            row.public_key_pem = pem + "\n"
            row.image_patterns = patterns
            row.expires_at = expires
            row.comment = req.comment
            st = self._bump(s)
            s.flush()
            log.info(
                "trust: key %s added for %s (policy v%d)", kid[:16], ", ".join(patterns), st.version
            )
            return self._policy_proto(s)

    def revoke_key(self, key_id: str) -> trust_pb2.TrustPolicy:
        key_id = key_id.strip().lower()
        if not key_id:
            raise InvalidArgument("give the key id to revoke (`ws-admin trust list` shows them)")
        with self.store.write() as s:
            rows = s.execute(select(TrustKey).where(TrustKey.key_id.startswith(key_id))).scalars()
            found = list(rows)
            if not found:
                raise NotFound(f"no trusted key {key_id!r}; `ws-admin trust list` shows them")
            if len(found) > 1:
                raise InvalidArgument(f"key id prefix {key_id!r} is ambiguous; give more of it")
            found[0].revoked = True
            st = self._bump(s)
            s.flush()
            log.info("trust: key %s revoked (policy v%d)", found[0].key_id[:16], st.version)
            return self._policy_proto(s)

    def revoke_digest(self, digest: str) -> trust_pb2.TrustPolicy:
        digest = check_digest(digest.strip())
        with self.store.write() as s:
            if s.get(RevokedDigest, digest) is None:
                s.add(RevokedDigest(digest=digest, revoked_at=self.core.clock()))
            st = self._bump(s)
            s.flush()
            log.info("trust: digest %s revoked (policy v%d)", digest, st.version)
            return self._policy_proto(s)

    def set_mode(self, req: trust_pb2.SetModeRequest) -> trust_pb2.TrustPolicy:
        if req.mode not in (trust_pb2.TRUST_MODE_WARN, trust_pb2.TRUST_MODE_ENFORCE):
            raise InvalidArgument("give the mode: WARN or ENFORCE")
        with self.store.write() as s:
            st = self._bump(s)
            st.mode = "ENFORCE" if req.mode == trust_pb2.TRUST_MODE_ENFORCE else "WARN"
            st.stop_running_on_revoke = req.stop_running_on_revoke
            s.flush()
            log.info("trust: mode %s (policy v%d)", st.mode, st.version)
            return self._policy_proto(s)

    # -- signatures --------------------------------------------------------------------

    @staticmethod
    def _envelopes(s: Session, image_name: str) -> list[str]:
        return list(
            s.execute(
                select(ImageSignature.envelope)
                .where(ImageSignature.image == image_name)
                .order_by(ImageSignature.id)
            )
            .scalars()
            .all()
        )

    def envelopes(self, image_name: str, s: Session | None = None) -> list[str]:
        if s is not None:
            return self._envelopes(s, image_name)
        with self.store.read() as r:
            return self._envelopes(r, image_name)

    @staticmethod
    def delete_signatures(s: Session, image_name: str) -> None:
        s.execute(delete(ImageSignature).where(ImageSignature.image == image_name))

    def _verdict(self, s: Session, img: Image, envelopes: Sequence[str]) -> signing.Verdict:
        return signing.verify(self._policy(s), manifest_of(img), envelopes, self.core.clock())

    def _entry(
        self,
        img: Image,
        verdict: signing.Verdict,
        action: str,
        envelopes: Sequence[str],
        workspace_id: str = "",
    ) -> Audit:
        kid = verdict.key_id or next(iter(signers(envelopes)), "")
        return Audit(
            at=self.core.clock(),
            source="service",
            action=action,
            image=img.name,
            digest=",".join(manifest_of(img).digests()),
            key_id=kid,
            policy_version=verdict.policy_version,
            verdict=verdict.word,
            reason=verdict.reason,
            workspace_id=workspace_id,
        )

    def _record_surviving(self, s: Session, rows: list[Audit]) -> None:
        """Add ``rows`` to ``s``; should its transaction roll back (a refused create),
        write them again in a transaction of their own: every decision is recorded."""
        for r in rows:
            s.add(r)
        done = [False]
        snapshot = [
            {c: getattr(r, c) for c in _AUDIT_FIELDS} for r in rows
        ]  # the rows' values, readable after the rollback expires them

        def after_rollback(_session: Session) -> None:
            if done[0]:
                return
            done[0] = True
            try:
                with self.store.write() as w:
                    for values in snapshot:
                        w.add(Audit(**values))
            except Exception:
                log.exception("cannot record the audit of a refused operation")

        def after_commit(_session: Session) -> None:
            done[0] = True

        event.listen(s, "after_rollback", after_rollback)
        event.listen(s, "after_commit", after_commit)

    def signatures(self, image_name: str) -> trust_pb2.ImageSignatures:
        with self.store.read() as s:
            img = s.get(Image, image_name)
            if img is None:
                raise NotFound(f"image {image_name!r} not found; `ws image list` shows them")
            envs = self._envelopes(s, image_name)
            v = self._verdict(s, img, envs)
            return trust_pb2.ImageSignatures(
                image=image_name,
                envelopes_json=envs,
                trusted=v.trusted,
                reason=v.reason,
                key_id=v.key_id,
                policy_version=v.policy_version,
            )

    def add_signature(
        self, owner: str, image_name: str, envelope: str
    ) -> trust_pb2.ImageSignatures:
        """Attach ``envelope`` to the image after checking it against the image's manifest
        and the policy: refused if it is malformed, covers another manifest, or (under
        enforce) is not by a trusted key; under warn an untrusted one is kept and audited."""
        if len(envelope.encode()) > MAX_ENVELOPE_BYTES:
            raise InvalidArgument(f"the envelope is larger than {MAX_ENVELOPE_BYTES} bytes")
        with self.store.write() as s:
            img = s.get(Image, image_name)
            if img is None:
                raise NotFound(f"image {image_name!r} not found; `ws image list` shows them")
            what = f"signature for image {image_name}"
            try:
                env = json.loads(envelope)
                if env.get("payloadType") != signing.PAYLOAD_TYPE:
                    raise InvalidArgument(
                        f"{what}: payload type {env.get('payloadType')!r} is not "
                        f"{signing.PAYLOAD_TYPE}"
                    )
                payload = base64.b64decode(env["payload"], validate=True)
                signed = json.loads(payload)
                kids = [str(x["keyid"]) for x in env["signatures"]]
            except (ValueError, KeyError, TypeError, AttributeError) as exc:
                if isinstance(exc, InvalidArgument):
                    raise
                raise InvalidArgument(f"{what}: not a DSSE envelope: {exc}") from exc
            if not kids:
                raise InvalidArgument(f"{what}: the envelope carries no signature")
            if signed != signing.statement(manifest_of(img)):
                raise InvalidArgument(
                    f"{what}: it covers another manifest than the image's (was the image "
                    "re-imported, or signed under another name?)"
                )
            have = self._envelopes(s, image_name)
            v = self._verdict(s, img, [envelope])
            entry = self._entry(img, v, "sign", [envelope])
            policy = self._policy(s)
            known = [k for k in map(policy.key, kids) if k is not None and not k.revoked]
            problem = "" if v.allowed else v.reason
            if known and "does not verify" in v.reason:
                # Signed in the name of a key the site trusts, but not by it: refused in
                # any mode.
                problem = v.reason
            if problem:
                self._record_surviving(s, [entry])
                raise PermissionDenied(f"{what} refused: {problem}")
            if envelope not in have:
                if len(have) >= MAX_SIGNATURES:
                    raise ResourceExhausted(
                        f"image {image_name} already has {len(have)} signatures"
                    )
                s.add(
                    ImageSignature(
                        image=image_name,
                        envelope=envelope,
                        key_id=kids[0],
                        added_at=self.core.clock(),
                    )
                )
            s.add(entry)
            s.flush()
            envs = self._envelopes(s, image_name)
            total = self._verdict(s, img, envs)
            log.info(
                "image %s: signature by %s added by %s (%s: %s)",
                image_name,
                kids[0][:16],
                owner,
                v.word,
                v.reason,
            )
            return trust_pb2.ImageSignatures(
                image=image_name,
                envelopes_json=envs,
                trusted=total.trusted,
                reason=total.reason,
                key_id=total.key_id,
                policy_version=total.policy_version,
            )

    # -- launches and the audit --------------------------------------------------------

    def check_launch(
        self,
        s: Session,
        owner: str,
        image_row: Image,
        action: str = "create",
        workspace_id: str = "",
    ) -> signing.Verdict:
        """The policy's verdict on launching ``image_row``; recorded in the audit. Under
        enforce an untrusted image raises PermissionDenied (naming image and reason)."""
        envs = self._envelopes(s, image_row.name)
        v = self._verdict(s, image_row, envs)
        self._record_surviving(s, [self._entry(image_row, v, action, envs, workspace_id)])
        if not v.allowed:
            log.warning(
                "%s by %s refused: image %s is not trusted: %s (policy v%d)",
                action,
                owner,
                image_row.name,
                v.reason,
                v.policy_version,
            )
            raise PermissionDenied(
                f"image {image_row.name} is not trusted: {v.reason} (the site's trust policy "
                f"v{v.policy_version} enforces signatures; `ws image verify {image_row.name}`)"
            )
        if not v.trusted:
            log.warning(
                "%s by %s of untrusted image %s allowed (warn mode): %s",
                action,
                owner,
                image_row.name,
                v.reason,
            )
        return v

    def audit(self, entries: AuditLike | Iterable[AuditLike], s: Session | None = None) -> None:
        """Record decisions (e.g. an agent's, reported with its status)."""
        items: list[AuditLike] = (
            [entries] if isinstance(entries, trust_pb2.AuditEntry | Audit) else list(entries)
        )
        rows: list[Audit] = []
        for e in items:
            if isinstance(e, Audit):
                rows.append(e)
                continue
            rows.append(
                Audit(
                    at=_epoch(e.at, e.HasField("at")) or self.core.clock(),
                    source=e.where or "service",
                    action=e.action,
                    image=e.image,
                    digest=e.digest,
                    key_id=e.key_id,
                    policy_version=e.policy_version,
                    verdict=e.verdict,
                    reason=e.reason[:2048],
                    workspace_id=e.workspace_id,
                )
            )
        if not rows:
            return
        if s is not None:
            self._record_surviving(s, rows)
            return
        with self.store.write() as w:
            w.add_all(rows)

    def list_audit(self, limit: int = 0, image: str = "") -> list[trust_pb2.AuditEntry]:
        if limit < 0:
            raise InvalidArgument("limit must not be negative")
        limit = min(limit or DEFAULT_AUDIT_LIMIT, MAX_AUDIT_LIMIT)
        with self.store.read() as s:
            q = select(Audit).order_by(Audit.id.desc()).limit(limit)
            if image:
                q = q.where(Audit.image == image)
            return [audit_proto(r) for r in s.execute(q).scalars().all()]


_AUDIT_FIELDS = (
    "at",
    "source",
    "action",
    "image",
    "digest",
    "key_id",
    "policy_version",
    "verdict",
    "reason",
    "workspace_id",
)
