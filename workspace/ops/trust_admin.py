"""Changes to the site's trust policy (`ws-admin trust add|revoke|mode`).

Each change bumps the policy version (ops/trust.py ``bump``), is a site event with who
made it and what changed, old -> new (``trust.key_added``, ``trust.key_updated``,
``trust.key_revoked``, ``trust.digest_revoked``, ``trust.mode_set``), and answers the
policy with ``change`` saying what it did.

A site in ENFORCE with ``stop_running_on_revoke`` stops the workspaces the new policy
denies in the transaction of the change itself (``_stop_denied``): their desired state
becomes STOPPED (forced: powered off at once), the reason says the policy stopped them,
and a `ws start` goes through the trust check like any other. The agents power such VMs
off too when the policy reaches them (agent/executor.py ``_recheck_running``), but the
desired state is the service's to keep: decided here, it holds whichever replica took
the change, and an agent that was offline finds it in its orders when it comes back.
"""

from __future__ import annotations

import logging
import string
import time
from collections.abc import Sequence
from dataclasses import replace

from sqlalchemy import select

from images import signing
from workspace.domain.events import Kind
from workspace.domain.model import TrustSettingsView
from workspace.domain.states import TRUST_STOPPED, Desired, Op, State
from workspace.errors import FailedPrecondition, InvalidArgument, NotFound
from workspace.log import about, named
from workspace.ops import admin_events, trust
from workspace.ops.operate import act
from workspace.ops.unit import Env, UnitOfWork, write
from workspace.store.blobs import check_digest
from workspace.store.models import Image, RevokedDigest, TrustKey, TrustSettings, Workspace

log = logging.getLogger("workspace.ops.trust")

# The shortest key id prefix `ws-admin trust revoke` takes (hex digits): shorter ones
# would too easily name a key by accident.
MIN_KEY_PREFIX = 8
KEY_ID_LEN = 64
_HEX = frozenset("0123456789abcdef")
# What an image pattern may hold: the characters of NAME:VERSION (images/manifest.py),
# and fnmatch's. A pattern with any other matches no image: it trusts the key for nothing.
_PATTERN_CHARS = frozenset(string.ascii_letters + string.digits + "._-:" + "*?[]!")


def _short(kid: str) -> str:
    return kid[:16]


def _patterns(ps: Sequence[str]) -> str:
    return ",".join(ps)


def _expiry(at: float) -> str:
    """An expiry as the CLI takes it: YYYY-MM-DD for the end of a day (UTC), else the
    moment (ISO 8601, UTC); or never."""
    if not at:
        return "never"
    if time.gmtime(at)[3:6] == (23, 59, 59) and at == int(at):
        return time.strftime("%Y-%m-%d", time.gmtime(at))
    return signing.utc_text(at)


def _mode(enforce: str, stop: bool) -> str:
    return enforce.lower() + (", running VMs stopped on revoke" if stop else "")


def _stop_denied(env: Env, u: UnitOfWork, version: int) -> tuple[list[str], list[str]]:
    """Under ENFORCE with stop_running_on_revoke: every workspace meant to run whose image
    the policy now denies is stopped (desired STOPPED, forced), saying why. One whose
    image is denied only for an old-format signature, launched while that signature was
    trusted, was admitted under the rules of its day and keeps running
    (``trust.running_verdict``); one launched untrusted under WARN is stopped. Returns
    the names of those stopped and of those kept so. Each verdict is audited (action
    "running")."""
    st = trust.settings(u.s)
    if st.mode != "ENFORCE" or not st.stop_running_on_revoke:
        return [], []
    u.s.flush()
    rows = u.s.execute(
        select(Workspace)
        .where(
            Workspace.desired_state.in_((Desired.RUNNING.value, Desired.PAUSED.value)),
            Workspace.state != State.TERMINATED.value,
            Workspace.node != "",
        )
        .order_by(Workspace.id)
    ).scalars()
    stopped: list[str] = []
    kept: list[str] = []
    for ws in list(rows):
        img = u.s.get(Image, ws.image)
        if img is None:
            continue
        v = trust.running_verdict(env, u.s, img, ws.id)
        if v.allowed and v.old_format and not v.trusted:  # kept; audited: a site event too
            kept.append(ws.name)
            log.warning(
                "workspace %s: %s; it keeps running",
                named(ws.id, ws.name, ws.node),
                v.reason,
                extra=about(ws.id, ws.node),
            )
        if v.allowed:
            continue
        why = (
            f"{TRUST_STOPPED}image {ws.image} is no longer trusted under policy version "
            f"{version} ({v.reason}); `ws start` checks it again"
        )
        if act(env, u, ws, Op.STOP, force=True, reason=why):
            stopped.append(ws.name)
            log.warning(
                "workspace %s: %s", named(ws.id, ws.name, ws.node), why, extra=about(ws.id, ws.node)
            )
    return stopped, kept


def _finish(
    env: Env, u: UnitOfWork, kind: Kind, subject: str, what: str, st: TrustSettings | None = None
) -> TrustSettingsView:
    """Bump the version (unless the caller did: ``st``), stop what the new policy denies,
    record the event; the policy as it now is, saying what changed."""
    st = st or trust.bump(u)
    u.s.flush()
    stopped, kept = _stop_denied(env, u, st.version)
    change = f"{what} (policy v{st.version})"
    if stopped:
        change += f"; stopped {len(stopped)} workspace(s): {', '.join(stopped)}"
    if kept:
        change += (
            f"; kept running {len(kept)} workspace(s) {signing.ADMITTED_OLD_FORMAT}: "
            + ", ".join(kept)
        )
    admin_events.record(env, u.s, kind, subject, change)
    log.info("trust: %s", change)
    return _with(trust.settings_view(u.s), change)


def _with(view: TrustSettingsView, change: str) -> TrustSettingsView:
    return replace(view, change=change)


def add_key(
    env: Env, public_key_pem: str, image_patterns: Sequence[str], expires_at: float, comment: str
) -> TrustSettingsView:
    """Trust a publisher key for images whose NAME:VERSION matches ``image_patterns``
    (fnmatch). A key trusted already takes the new patterns and expiry, and the new
    comment if one is given; the answer says what changed."""
    try:
        kid = signing.key_id(public_key_pem)
    except signing.SignatureError as exc:
        raise InvalidArgument(f"the public key is not usable: {exc}") from exc
    patterns = [p.strip() for p in image_patterns if p.strip()]
    if not patterns:
        raise InvalidArgument(
            f"key {_short(kid)}: give the image name patterns it may sign (e.g. 'app:*', 'sci-*')"
        )
    for p in patterns:
        odd = sorted(set(p) - _PATTERN_CHARS)
        if odd:
            raise InvalidArgument(
                f"key {_short(kid)}: pattern {p!r} can match no image: it has "
                f"{', '.join(map(repr, odd))}, and an image is NAME:VERSION of letters, "
                "digits, '.', '_' and '-' (patterns: '*', '?', '[...]'; e.g. 'app:*', "
                "'sci-*'; give several patterns as several arguments)"
            )
    now = env.clock()
    if expires_at and expires_at <= now:
        raise InvalidArgument(
            f"key {_short(kid)}: its expiry {signing.utc_text(expires_at)} is in the past "
            f"(now {signing.utc_text(now)})"
        )
    pem = public_key_pem.strip() + "\n"
    with write(env) as u:
        s = u.s
        row = s.get(TrustKey, kid)
        if row is not None and row.revoked:
            raise FailedPrecondition(
                f"key {_short(kid)} was revoked; a revoked key cannot be trusted again "
                "(make a new key)"
            )
        if row is None:
            s.add(
                TrustKey(
                    key_id=kid,
                    added_at=now,
                    revoked=False,
                    public_key_pem=pem,
                    image_patterns=patterns,
                    expires_at=expires_at,
                    comment=comment,
                )
            )
            what = (
                f"key {_short(kid)} trusted for {_patterns(patterns)}, expires "
                f"{_expiry(expires_at)}" + (f", comment {comment!r}" if comment else "")
            )
            return _finish(env, u, Kind.TRUST_KEY_ADDED, kid, what)
        changes = []
        old_patterns = list(row.image_patterns or ())
        if old_patterns != patterns:
            changes.append(f"patterns {_patterns(old_patterns)} -> {_patterns(patterns)}")
        old_expiry = float(row.expires_at or 0.0)
        if old_expiry != expires_at:
            changes.append(f"expires {_expiry(old_expiry)} -> {_expiry(expires_at)}")
        if comment and comment != row.comment:
            changes.append(f"comment {row.comment!r} -> {comment!r}")
        if not changes:
            # Already so: no new policy version for every agent.
            return _with(trust.settings_view(s), f"key {_short(kid)}: already trusted so")
        row.image_patterns = patterns
        row.expires_at = expires_at
        if comment:
            row.comment = comment
        what = f"key {_short(kid)}: " + "; ".join(changes)
        return _finish(env, u, Kind.TRUST_KEY_UPDATED, kid, what)


def find_key(key_ids: Sequence[str], given: str) -> str:
    """The one key id of ``key_ids`` that ``given`` names: the full id, or a prefix of at
    least MIN_KEY_PREFIX hex digits (matched literally) that exactly one key has."""
    want = given.strip().lower()
    if not want:
        raise InvalidArgument("give the key id to revoke (`ws-admin trust list` shows them)")
    if not set(want) <= _HEX or len(want) > KEY_ID_LEN:
        raise InvalidArgument(
            f"{given!r} is not a key id (hex digits, as `ws-admin trust list` shows them)"
        )
    if len(want) < MIN_KEY_PREFIX:
        raise InvalidArgument(
            f"key id {given!r} is too short: give the full key id, or at least "
            f"{MIN_KEY_PREFIX} of its hex digits"
        )
    found = [k for k in key_ids if k.startswith(want)]
    if not found:
        raise NotFound(f"no trusted key {want!r}; `ws-admin trust list` shows them")
    if len(found) > 1:
        raise InvalidArgument(
            f"key id prefix {want!r} matches {len(found)} keys ({', '.join(found)}); "
            "give more of it"
        )
    return found[0]


def revoke_key(env: Env, key_id: str) -> TrustSettingsView:
    """Revoke the key ``key_id`` names (``find_key``): it never signs again here."""
    with write(env) as u:
        s = u.s
        kid = find_key(list(s.execute(select(TrustKey.key_id)).scalars()), key_id)
        row = s.get(TrustKey, kid)
        assert row is not None
        if row.revoked:
            return _with(trust.settings_view(s), f"key {kid} was revoked already")
        row.revoked = True
        return _finish(env, u, Kind.TRUST_KEY_REVOKED, kid, f"key {kid} revoked")


def revoke_digest(env: Env, digest: str) -> TrustSettingsView:
    """Revoke a blob digest (the full ``sha256:<64 hex>``): nothing using it boots."""
    digest = check_digest(digest.strip())
    with write(env) as u:
        s = u.s
        if s.get(RevokedDigest, digest) is not None:
            return _with(trust.settings_view(s), f"digest {digest} was revoked already")
        s.add(RevokedDigest(digest=digest, revoked_at=env.clock()))
        return _finish(env, u, Kind.TRUST_DIGEST_REVOKED, digest, f"digest {digest} revoked")


def set_mode(env: Env, enforce: bool, stop_on_revoke: bool) -> TrustSettingsView:
    mode = "ENFORCE" if enforce else "WARN"
    with write(env) as u:
        s = u.s
        now = trust.settings(s)
        old = _mode(now.mode, now.stop_running_on_revoke)
        new = _mode(mode, stop_on_revoke)
        if (now.mode, now.stop_running_on_revoke) == (mode, stop_on_revoke):
            # Already so: no new policy version for the agents.
            return _with(trust.settings_view(s), f"mode {new} already")
        st = trust.bump(u)
        st.mode = mode
        st.stop_running_on_revoke = stop_on_revoke
        return _finish(env, u, Kind.TRUST_MODE_SET, "policy", f"mode {old} -> {new}", st)
