"""Image trust: publishers' signatures, the site's trust policy and the audit of decisions.

The policy (keys with the image-name patterns they may sign, expiry, revocations of keys
and digests, WARN or ENFORCE) lives in the store; its version grows with every change
and it goes to every agent with its orders. The service verifies at signing
(``add_signature``) and at every create (``check_launch``, from ops/create.py); every
decision is recorded in the audit, denials too (they are written after the refused
transaction rolls back). The manifest a signature covers is the image's ``ImageSpec``.
"""

from __future__ import annotations

import json
import logging
import threading
import weakref
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Integer, bindparam, cast, delete, select
from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session

from images import signing
from workspace.domain.model import (
    AuditRecord,
    SignatureStatus,
    TrustedKey,
    TrustSettingsView,
)
from workspace.errors import (
    InvalidArgument,
    PermissionDenied,
    ResourceExhausted,
)
from workspace.identity import Identity
from workspace.log import about
from workspace.ops.image_refs import visible_image
from workspace.ops.order_size import ENVELOPES_READ, check_signature_fits
from workspace.ops.projects import as_identity
from workspace.ops.unit import Env, UnitOfWork
from workspace.store.db import on_rollback
from workspace.store.mapping import flushed, image_spec, insert_audits
from workspace.store.models import (
    Audit,
    Image,
    ImageSignature,
    Node,
    RevokedDigest,
    TrustKey,
    TrustSettings,
)
from workspace.store.prepared import Prepared

log = logging.getLogger("workspace.ops.trust")

MAX_ENVELOPE_BYTES = 65536
DEFAULT_AUDIT_LIMIT = 100
MAX_AUDIT_LIMIT = 10000
# One trust decision as the audit stores it: a row's values by column, all but its id
# (at, source, action, image, digest, key_id, policy_version, verdict, reason,
# workspace_id, workspace_name). Decisions are written with Core (store/mapping.py
# ``insert_audits``): every create makes one, so no ORM object is built for it.
Decision = dict[str, Any]


def audit_record(row: Audit) -> AuditRecord:
    return AuditRecord(
        at=row.at,
        where=row.source,
        action=row.action,
        image=row.image,
        digest=row.digest,
        key_id=row.key_id,
        policy_version=row.policy_version,
        verdict=row.verdict,
        reason=row.reason,
        workspace_id=row.workspace_id,
        workspace_name=row.workspace_name,
    )


# -- the policy ------------------------------------------------------------------------------


# s.info keys: the settings row, or on a new site the defaults that stand in for it
# (looked up once per transaction: every create of a batch asks; ``bump`` forgets it);
# image → its envelopes as read in this transaction (a create batch reads each image's
# once; adding or deleting a signature forgets them).
_SETTINGS = "trust.settings"
_ENVELOPES = ENVELOPES_READ  # order-size bounds use them too (ops/order_size.py)


@dataclass(frozen=True)
class Settings:
    """The trust settings row as read (ops read it; only ``bump`` writes the row)."""

    version: int
    mode: str  # WARN | ENFORCE
    stop_running_on_revoke: bool


# A new site has no row: its defaults stand in (``bump`` adds the row).
_NEW_SITE = Settings(0, "WARN", False)
# Every transaction of creates reads it: built once, plain columns (no ORM row).
_READ_SETTINGS = Prepared(
    select(
        TrustSettings.version,
        TrustSettings.mode,
        cast(TrustSettings.stop_running_on_revoke, Integer),
    ).where(TrustSettings.id == 1)
)


def settings(s: Session) -> Settings:
    """The settings as ``s``'s transaction sees them, read once per transaction."""
    found: Settings | None = s.info.get(_SETTINGS)
    if found is None:
        row = _READ_SETTINGS.first(flushed(s))
        found = Settings(int(row[0]), str(row[1]), bool(row[2])) if row else _NEW_SITE
        s.info[_SETTINGS] = found
    return found


def _new_site_settings() -> TrustSettings:
    """A new site's trust settings: WARN, no keys, version 0."""
    return TrustSettings(id=1, version=0, mode="WARN", stop_running_on_revoke=False)


def bump(u: UnitOfWork) -> TrustSettings:
    """A new policy version; every agent gets it at once after the commit (it rides on
    the assignment stream). Every change to the policy calls it (ops/trust_admin.py)."""
    u.s.info.pop(_SETTINGS, None)
    row = u.s.get(TrustSettings, 1)
    if row is None:
        row = _new_site_settings()
        u.s.add(row)
    row.version += 1
    u.s.info[_BUMPED] = True  # this transaction's policy is not cached (``_policy``)
    u.nodes(*u.s.execute(select(Node.name)).scalars())
    return row


def _key_rows(s: Session) -> list[TrustKey]:
    return list(
        s.execute(select(TrustKey).order_by(TrustKey.added_at, TrustKey.key_id)).scalars().all()
    )


def policy(s: Session) -> signing.Policy:
    """The policy as signing.verify and the agents use it."""
    return _policy(s, settings(s))


def node_policy(s: Session) -> tuple[signing.Policy, bool]:
    """What every node is sent: the policy, and whether to stop running workspaces whose
    image it no longer trusts."""
    st = settings(s)
    return _policy(s, st), bool(st.stop_running_on_revoke)


# The policy last read, per database (engine), with the version it was read at: every
# change to the keys, the revoked digests or the mode bumps the version (``bump``, in
# the same transaction; versions grow one by one under the write lock), so the policy of
# one committed version never changes and a create reads only the settings row.
# Another replica's change shows as a new version. A transaction that bumped the
# version neither reads nor fills the cache (it may still roll back).
_BUMPED = "trust.bumped"
_cache: weakref.WeakKeyDictionary[Engine, tuple[int, bool, signing.Policy]] = (
    weakref.WeakKeyDictionary()
)
_cache_lock = threading.Lock()


def _policy(s: Session, st: Settings) -> signing.Policy:
    bind = s.get_bind()
    engine = bind if isinstance(bind, Engine) else bind.engine
    version, enforce = int(st.version), st.mode == "ENFORCE"
    bumped = s.info.get(_BUMPED, False)
    if not bumped:
        with _cache_lock:
            hit = _cache.get(engine)
        if hit is not None and hit[0] == version and hit[1] == enforce:
            return hit[2]
    read = _read_policy(s, st)
    if not bumped:
        with _cache_lock:
            _cache[engine] = (version, enforce, read)
    return read


def _read_policy(s: Session, st: Settings) -> signing.Policy:
    keys = tuple(
        signing.Key(
            key_id=k.key_id,
            public_key_pem=k.public_key_pem,
            image_patterns=tuple(k.image_patterns or ()),
            expires_at=float(k.expires_at or 0.0),
            revoked=bool(k.revoked),
        )
        for k in _key_rows(s)
    )
    digests = frozenset(s.execute(select(RevokedDigest.digest)).scalars().all())
    return signing.Policy(
        version=int(st.version), enforce=st.mode == "ENFORCE", keys=keys, revoked_digests=digests
    )


def settings_view(s: Session) -> TrustSettingsView:
    st = settings(s)
    keys = tuple(
        TrustedKey(
            key_id=k.key_id,
            public_key_pem=k.public_key_pem,
            image_patterns=tuple(k.image_patterns or ()),
            expires_at=float(k.expires_at or 0.0),
            revoked=bool(k.revoked),
            comment=k.comment,
            added_at=float(k.added_at or 0.0),
        )
        for k in _key_rows(s)
    )
    digests = tuple(sorted(s.execute(select(RevokedDigest.digest)).scalars().all()))
    return TrustSettingsView(
        version=int(st.version),
        enforce=st.mode == "ENFORCE",
        keys=keys,
        revoked_digests=digests,
        stop_running_on_revoke=bool(st.stop_running_on_revoke),
    )


def get_policy(env: Env) -> TrustSettingsView:
    with env.store.read() as s:
        return settings_view(s)


# -- signatures ------------------------------------------------------------------------------


def envelopes(s: Session, image_name: str) -> list[str]:
    read: dict[str, list[str]] = s.info.setdefault(_ENVELOPES, {})
    if image_name not in read:
        read[image_name] = _read_envelopes(s, image_name)
    return list(read[image_name])


# Every create of a trust-checked site asks it: built once.
_IMAGE_ENVELOPES = Prepared(
    select(ImageSignature.envelope)
    .where(ImageSignature.image == bindparam("image"))
    .order_by(ImageSignature.id)
)


def _read_envelopes(s: Session, image_name: str) -> list[str]:
    return [r[0] for r in _IMAGE_ENVELOPES.rows(flushed(s), {"image": image_name})]


def delete_signatures(s: Session, image_name: str) -> None:
    s.info.pop(_ENVELOPES, None)
    s.execute(delete(ImageSignature).where(ImageSignature.image == image_name))


def boot_settings(img: Image) -> signing.Boot:
    """The image's settings a signature covers besides its files (signing.Boot)."""
    return signing.Boot(img.context or "none", img.login_user or "")


def _verdict(env: Env, s: Session, img: Image, envs: Sequence[str]) -> signing.Verdict:
    return signing.verify(policy(s), image_spec(img), envs, env.clock(), boot_settings(img))


def running_verdict(env: Env, s: Session, img: Image, workspace_id: str) -> signing.Verdict:
    """The policy's verdict on a workspace of ``img`` that runs (or is meant to) when the
    policy changes; recorded in the audit (action "running"), never raised. One whose
    image has an old-format signature alone, and that was trusted when it was last
    launched (``admitted_trusted``), was admitted under the rules of its day: allowed,
    saying to sign the image again (``signing.Verdict.running``). One launched untrusted
    (a "warn" of WARN mode) gets the verdict as it is: the old format was no admission."""
    envs = envelopes(s, img.name)
    v = _verdict(env, s, img, envs)
    if v.old_format and not v.trusted and admitted_trusted(s, img.name, workspace_id):
        v = v.running(img.name)
    _record_surviving(env, s, [_entry(env, img, v, "running", envs, workspace_id)])
    return v


# The audited decisions that launch a workspace: the service's create and start, its
# node's boot and start ("running", "place" and "sign" are not launches).
_LAUNCHES = ("create", "start", "boot")


def admitted_trusted(s: Session, image_name: str, workspace_id: str) -> bool:
    """Whether the last launch of ``workspace_id`` (of image ``image_name``) the audit
    records was trusted ("allow"): a VM booted under a signature the site then trusted.
    One launched untrusted (a WARN mode "warn"), or with no launch recorded, was not."""
    last = s.execute(
        select(Audit.verdict)
        .where(
            Audit.image == image_name,
            Audit.workspace_id == workspace_id,
            Audit.action.in_(_LAUNCHES),
        )
        .order_by(Audit.id.desc())
        .limit(1)
    ).scalar()
    return last == "allow"


def placement_problem(env: Env, s: Session, image_name: str, workspace_id: str) -> str:
    """Why a create waiting for capacity, of image ``image_name``, may no longer be
    placed under the policy now ("": it may). Its create was judged under the policy of
    its day; a key revoked, expired or narrowed, a digest revoked or the mode turned to
    ENFORCE while it waited would otherwise be found by the node's check at boot, after
    the capacity was held for it. Under WARN nothing is refused (the node audits the
    boot as it does every launch); a denial is audited (action "place")."""
    if settings(s).mode != "ENFORCE":
        return ""
    img = s.get(Image, image_name)
    if img is None:  # a live workspace's image cannot be deleted; should it be gone...
        return f"image {image_name} no longer exists"
    envs = envelopes(s, img.name)
    v = _verdict(env, s, img, envs)
    if v.allowed:
        return ""
    _record_surviving(env, s, [_entry(env, img, v, "place", envs, workspace_id)])
    return (
        f"image {img.name} is no longer trusted: {v.reason} (the site's trust policy "
        f"v{v.policy_version} enforces signatures; `ws image verify {img.name}`)"
    )


def _entry(
    env: Env,
    img: Image,
    verdict: signing.Verdict,
    action: str,
    envs: Sequence[str],
    workspace_id: str = "",
    workspace_name: str = "",
) -> Decision:
    kid = verdict.key_id or next(iter(signing.signers(envs)), "")
    return {
        "at": env.clock(),
        "source": "service",
        "action": action,
        "image": img.name,
        "digest": ",".join(image_spec(img).digests()),
        "key_id": kid,
        "policy_version": verdict.policy_version,
        "verdict": verdict.word,
        "reason": verdict.reason,
        "workspace_id": workspace_id,
        "workspace_name": workspace_name,
    }


# Session.info key: the audit rows (as values) added in the session's transaction, in
# order; a group commit puts a rolled-back create's rows back (``restore_audit``).
SURVIVING = "workspace.surviving_audit"


# Session.info key: the session's transaction has the listeners of ``_record_surviving``.
_LISTENING = "workspace.surviving_audit.listening"

# Session.info key: the ids of the workspaces whose create the session's transaction
# decided on (``check_launch`` with a name): should the create be undone, no workspace
# has that id.
_ASKED = "workspace.surviving_audit.asked"


def _unmade(s: Session, rows: Iterable[Decision]) -> list[Decision]:
    """``rows`` as recorded once their transaction (or SAVEPOINT) rolled back: the
    decision of a create that was undone names the workspace it asked for by its name,
    not by the id no workspace has (``workspace_name`` is set: ``_entry``)."""
    asked: set[str] = s.info.get(_ASKED, set())
    return [
        {**values, "workspace_id": ""} if values["workspace_id"] in asked else values
        for values in rows
    ]


def _record_surviving(env: Env, s: Session, rows: list[Decision]) -> None:
    """Insert ``rows`` in ``s``'s transaction (one Core statement: store/mapping.py
    ``insert_audits``); should it roll back (a refused create), write every decision
    it recorded again in a transaction of their own: every decision is recorded.

    A SAVEPOINT rolled back (one create of a group commit, ops/group_commit.py) is not
    the transaction's end: the batch puts that create's rows back into the transaction
    that goes on (``restore_audit``), and this writes them only if that one rolls back."""
    # The rows' values (as inserted: cut to their columns' sizes), readable whatever
    # happens to the transaction.
    s.info.setdefault(SURVIVING, []).extend(insert_audits(s, rows))
    if s.info.get(_LISTENING):
        return
    s.info[_LISTENING] = True

    def after_rollback(session: Session) -> None:
        try:
            with env.store.write() as w:
                for values in _unmade(session, session.info.get(SURVIVING, [])):
                    w.add(Audit(**values))
        except Exception:
            log.exception("cannot record the audit of a refused operation")

    on_rollback(s, after_rollback)


def audit_mark(s: Session) -> int:
    """How many audit rows the session's transaction has added so far."""
    return len(s.info.get(SURVIVING, ()))


def restore_audit(s: Session, mark: int) -> None:
    """After a SAVEPOINT rolled back: add again the audit rows recorded since ``mark``
    (the decisions of the create that was undone stay recorded with the batch, naming
    the workspace it asked for by its name: it was not made)."""
    for values in _unmade(s, s.info.get(SURVIVING, [])[mark:]):
        s.add(Audit(**values))


def _status(image_name: str, envs: Sequence[str], v: signing.Verdict) -> SignatureStatus:
    return SignatureStatus(
        image=image_name,
        envelopes=tuple(envs),
        trusted=v.trusted,
        reason=v.reason,
        key_id=v.key_id,
        policy_version=v.policy_version,
    )


def signatures(env: Env, who: Identity | str, image_name: str) -> SignatureStatus:
    with env.store.read() as s:
        img = visible_image(s, who, image_name)
        envs = envelopes(s, image_name)
        return _status(image_name, envs, _verdict(env, s, img, envs))


def _signed_key_ids(envelope: str, what: str) -> tuple[object, list[str]]:
    """(the signed statement, the key ids) of a DSSE envelope, or InvalidArgument: one
    that is malformed (a signature without its ``sig``, a ``sig`` not base64, a keyid
    not a string) was kept as a signature under warn."""
    try:
        payload, sigs = signing.decode_envelope(envelope)
        signed = json.loads(payload)
    except signing.SignatureError as exc:
        raise InvalidArgument(f"{what}: not a DSSE envelope: {exc}") from exc
    except ValueError as exc:
        raise InvalidArgument(f"{what}: not a DSSE envelope: its payload is not JSON") from exc
    except RecursionError:  # JSON nested thousands deep: it was an INTERNAL error
        raise InvalidArgument(f"{what}: not a DSSE envelope: nested too deep") from None
    return signed, [kid for kid, _ in sigs]


def add_signature(env: Env, who: Identity | str, image_name: str, envelope: str) -> SignatureStatus:
    """Attach ``envelope`` to the image after checking it against the image's manifest
    and the policy: refused if it is malformed, covers another manifest, or (under
    enforce) is not by a trusted key; under warn an untrusted one is kept and audited."""
    if len(envelope.encode()) > MAX_ENVELOPE_BYTES:
        raise InvalidArgument(f"the envelope is larger than {MAX_ENVELOPE_BYTES} bytes")
    ident = as_identity(who)
    owner = ident.name
    with env.store.write() as s:
        img = visible_image(s, ident, image_name)
        if img.owner != owner and not ident.admin:
            raise PermissionDenied(
                f"image {image_name} belongs to {img.owner}; only its owner or an admin can sign it"
            )
        what = f"signature for image {image_name}"
        signed, kids = _signed_key_ids(envelope, what)
        unknown = signing.fields_problem(signed, image_spec(img), boot_settings(img))
        if unknown:  # not "another manifest": one this version cannot read whole
            raise InvalidArgument(f"{what}: {unknown}")
        differs = signing.statement_problem(signed, image_spec(img), boot_settings(img))
        if differs:
            raise InvalidArgument(
                f"{what}: it covers another manifest than the image's ({differs}; was the "
                "image re-imported, or signed under another name?)"
            )
        have = envelopes(s, image_name)
        v = _verdict(env, s, img, [envelope])
        entry = _entry(env, img, v, "sign", [envelope])
        known = [k for k in map(policy(s).key, kids) if k is not None and not k.revoked]
        problem = "" if v.allowed else v.reason
        if known and "does not verify" in v.reason:
            # Signed in the name of a key the site trusts, but not by it: refused in any mode.
            problem = v.reason
        if problem:
            _record_surviving(env, s, [entry])
            raise PermissionDenied(f"{what} refused: {problem}")
        if envelope not in have:
            if len(have) >= env.cfg.limits.max_signatures_per_image:
                raise ResourceExhausted(
                    f"image {image_name} already has {len(have)} signatures, the most one "
                    "image may carry (limits.max_signatures_per_image)"
                )
            check_signature_fits(s, env.cfg.limits, image_name, envelope)
            s.add(
                ImageSignature(
                    image=image_name, envelope=envelope, key_id=kids[0], added_at=env.clock()
                )
            )
            s.info.pop(_ENVELOPES, None)  # read again below
        s.add(Audit(**entry))
        s.flush()
        envs = envelopes(s, image_name)
        total = _verdict(env, s, img, envs)
        log.info(
            "image %s: signature by %s added by %s (%s: %s)",
            image_name,
            kids[0][:16],
            owner,
            v.word,
            v.reason,
        )
        return _status(image_name, envs, total)


# -- launches and the audit ------------------------------------------------------------------


def check_launch(
    env: Env,
    s: Session,
    owner: str,
    image_row: Image,
    action: str = "create",
    workspace_id: str = "",
    name: str = "",
) -> signing.Verdict:
    """The policy's verdict on launching ``image_row``; recorded in the audit. Under
    enforce an untrusted image raises PermissionDenied (naming image and reason).
    ``name``: the workspace is asked for by that name, not made yet (a create); its
    decision names it, and only by it should the create be undone (``_unmade``)."""
    if name:
        s.info.setdefault(_ASKED, set()).add(workspace_id)
    envs = envelopes(s, image_row.name)
    v = _verdict(env, s, image_row, envs)
    entry = _entry(env, image_row, v, action, envs, workspace_id, name)
    _record_surviving(env, s, [entry])
    # The workspace the decision is for (the id its audit record and event carry).
    ids = about(workspace_id) if workspace_id else {}
    if not v.allowed:
        log.warning(
            "%s by %s refused: image %s is not trusted: %s (policy v%d)",
            action,
            owner,
            image_row.name,
            v.reason,
            v.policy_version,
            extra=ids,
        )
        raise PermissionDenied(
            f"image {image_row.name} is not trusted: {v.reason} (the site's trust policy "
            f"v{v.policy_version} enforces signatures; `ws image verify {image_row.name}`)"
        )
    if not v.trusted:
        # One line per caller, image and reason every five minutes, not one per create:
        # each decision is in the audit regardless.
        muted = env.warned.due((action, owner, image_row.name, v.reason))
        if muted is not None:
            log.warning(
                "%s by %s of untrusted image %s allowed (warn mode): %s%s",
                action,
                owner,
                image_row.name,
                v.reason,
                f" ({muted} more since this was last logged; every one is in the audit)"
                if muted
                else "",
                extra=ids,
            )
    return v


def record_audit(env: Env, s: Session, records: Iterable[AuditRecord]) -> None:
    """Record decisions (e.g. an agent's, reported with its status) in ``s``."""
    rows: list[Decision] = [
        {
            "at": r.at or env.clock(),
            "source": r.where or "service",
            "action": r.action,
            "image": r.image,
            "digest": r.digest,
            "key_id": r.key_id,
            "policy_version": r.policy_version,
            "verdict": r.verdict,
            "reason": r.reason[:2048],
            "workspace_id": r.workspace_id,
            "workspace_name": "",  # a create's alone (``check_launch``)
        }
        for r in records
    ]
    if rows:
        _record_surviving(env, s, rows)


def list_audit(env: Env, limit: int = 0, image: str = "") -> list[AuditRecord]:
    if limit < 0:
        raise InvalidArgument("limit must not be negative")
    limit = min(limit or DEFAULT_AUDIT_LIMIT, MAX_AUDIT_LIMIT)
    with env.store.read() as s:
        q = select(Audit).order_by(Audit.id.desc()).limit(limit)
        if image:
            q = q.where(Audit.image == image)
        return [audit_record(r) for r in s.execute(q).scalars().all()]
