"""Admins' changes to the trust policy (`ws-admin trust add|revoke|mode`): which key a
revoke names (the full id, or a long enough prefix of exactly one key, taken literally),
what a change says it did, the site event each is (with who and old -> new), and a
key's expiry (a day or a moment; never in the past).
Through the CLIs' main functions."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from images import signing
from tests.functional.harness import Site
from tests.functional.test_admin_events import events, ok, said
from tests.functional.test_projects_cli import run
from workspace.cli import admin


def _pub(tmp_path: Path, name: str) -> tuple[Path, str]:
    _private, public = signing.generate_key()
    path = tmp_path / f"{name}.pub"
    path.write_bytes(public)
    return path, signing.key_id(public)


@pytest.mark.parametrize("given", ["e", "_", "%", "%%%%%%%%", "________", "0a1b2c3", "sha256:x"])
def test_revoke_takes_no_wildcard_nor_short_prefix(
    ready_site: Site, capsys: pytest.CaptureFixture[str], tmp_path: Path, given: str
) -> None:
    site = ready_site
    pub, _kid = _pub(tmp_path, "bob")
    ok(site, capsys, "trust", "add", str(pub), "--images", "app*")
    code, _out, err = run(admin, site, capsys, "trust", "revoke", given)
    assert code != 0
    assert "not a key id" in err or "too short" in err, err
    code, out, _err = run(admin, site, capsys, "-o", "json", "trust", "list")
    assert code == 0 and '"revoked": true' not in out  # the key is still trusted


def test_revoke_by_full_id_or_unique_prefix_says_which_key(
    ready_site: Site, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    site = ready_site
    pub, kid = _pub(tmp_path, "bob")
    ok(site, capsys, "trust", "add", str(pub), "--images", "app*")
    other = "f" * 8 if not kid.startswith("f" * 8) else "0" * 8
    code, _out, err = run(admin, site, capsys, "trust", "revoke", other)
    assert code != 0 and "no trusted key" in err
    out = ok(site, capsys, "trust", "revoke", kid[:8].upper())
    assert out.splitlines()[0].startswith(f"key {kid} revoked (policy v")
    out = ok(site, capsys, "trust", "revoke", kid)  # again: nothing changes
    assert out.splitlines()[0] == f"key {kid} was revoked already"


def test_revoke_digest_needs_a_full_digest(
    ready_site: Site, capsys: pytest.CaptureFixture[str]
) -> None:
    site = ready_site
    for bad in ("sha256:abc", "a" * 64, "sha256:" + "g" * 64, "%"):
        code, _out, err = run(admin, site, capsys, "trust", "revoke", "--digest", bad)
        assert code != 0 and "is not a digest" in err, (bad, err)
    out = ok(site, capsys, "trust", "revoke", "--digest", "sha256:" + "a" * 64)
    assert out.startswith(f"digest sha256:{'a' * 64} revoked (policy v")


def test_adding_a_trusted_key_again_says_what_changed_and_keeps_its_comment(
    ready_site: Site, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    site = ready_site
    pub, kid = _pub(tmp_path, "bob")
    out = ok(site, capsys, "trust", "add", str(pub), "--images", "app*", "--comment", "bob")
    assert out.startswith(f"key {kid[:16]} trusted for app*, expires never, comment 'bob'")
    out = ok(site, capsys, "trust", "add", str(pub), "--images", "other*")
    assert out.startswith(f"key {kid[:16]}: patterns app* -> other* (policy v")
    assert "bob" in out.splitlines()[-1]  # the key's row still says whose it is
    out = ok(site, capsys, "trust", "add", str(pub), "--images", "other*")
    assert out.startswith(f"key {kid[:16]}: already trusted so")
    out = ok(site, capsys, "trust", "add", str(pub), "--images", "other*", "--comment", "Bob B")
    assert out.startswith(f"key {kid[:16]}: comment 'bob' -> 'Bob B'")


def test_images_given_twice_trusts_the_key_for_both(
    ready_site: Site, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    """`--images 'app*' --images 'sci-*'` trusted the key for sci-* alone: argparse kept the
    last --images, and the key's app signatures counted for nothing."""
    pub, kid = _pub(tmp_path, "bob")
    out = ok(ready_site, capsys, "trust", "add", str(pub), "--images", "app*", "--images", "sci-*")
    assert out.startswith(f"key {kid[:16]} trusted for app*,sci-*, expires never")


def test_trust_changes_are_site_events_with_who_and_what(
    ready_site: Site, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    site = ready_site
    pub, kid = _pub(tmp_path, "bob")
    ok(site, capsys, "trust", "add", str(pub), "--images", "app*", "--comment", "bob")
    ok(site, capsys, "trust", "add", str(pub), "--images", "other*")
    ok(site, capsys, "trust", "add", str(pub), "--images", "other*")  # no change, no event
    ok(site, capsys, "trust", "mode", "enforce", "--stop-running-on-revoke")
    ok(site, capsys, "trust", "mode", "enforce", "--stop-running-on-revoke")  # already
    ok(site, capsys, "trust", "revoke", "--digest", "sha256:" + "b" * 64)
    ok(site, capsys, "trust", "revoke", kid)
    evs = [e for e in events(site, capsys, "trust") if e["kind"] != "trust.decision"]
    assert {e["who"] for e in evs} == {"user:local"}
    assert said(evs) == [
        ("trust.key_added", kid, f"key {kid[:16]} trusted for app*, expires never, "
         "comment 'bob' (policy v1)"),
        ("trust.key_updated", kid, f"key {kid[:16]}: patterns app* -> other* (policy v2)"),
        ("trust.mode_set", "policy", "mode warn -> enforce, running VMs stopped on revoke "
         "(policy v3)"),
        ("trust.digest_revoked", "sha256:" + "b" * 64,
         f"digest sha256:{'b' * 64} revoked (policy v4)"),
        ("trust.key_revoked", kid, f"key {kid} revoked (policy v5)"),
    ]  # fmt: skip


def test_expires_takes_a_day_or_a_moment_and_refuses_the_past_saying_when(
    ready_site: Site, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    site = ready_site
    pub, kid = _pub(tmp_path, "exp")
    add = ("trust", "add", str(pub), "--images", "exp:*", "--expires")
    code, _out, err = run(admin, site, capsys, *add, "2020-01-01")  # the end of that day
    assert code == 1
    assert f"key {kid[:16]}: its expiry 2020-01-01T23:59:59Z is in the past (now 20" in err
    code, _out, err = run(admin, site, capsys, *add, "2020-01-01T10:00:00+02:00")
    assert code == 1 and "its expiry 2020-01-01T08:00:00Z is in the past" in err
    code, _out, err = run(admin, site, capsys, *add, "2030-01-01T10:00")
    assert code == 2 and "'2030-01-01T10:00' has no time zone: end it with Z" in err
    code, _out, err = run(admin, site, capsys, *add, "tomorrow")
    assert code == 2 and "expected YYYY-MM-DD or an ISO 8601 date-time with its zone" in err

    soon = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() + 60))
    out = ok(site, capsys, *add, soon)  # a key that expires in a minute
    assert out.startswith(f"key {kid[:16]} trusted for exp:*, expires {soon} (policy v")
    out = ok(site, capsys, *add, "2099-12-31")
    assert out.startswith(f"key {kid[:16]}: expires {soon} -> 2099-12-31 (policy v")
    code, out, _err = run(admin, site, capsys, "trust", "list")
    assert code == 0 and "2099-12-31T23:59:59Z" in out


@pytest.mark.parametrize("pattern", ["team/*", "app *", "sci-*/1", "app:1,app:2"])
def test_a_pattern_no_image_name_can_match_is_refused(
    ready_site: Site, capsys: pytest.CaptureFixture[str], tmp_path: Path, pattern: str
) -> None:
    """An image is NAME:VERSION of letters, digits, '.', '_', '-': a pattern with another
    character trusts the key for nothing, and every launch it was meant for is refused
    under ENFORCE ("may not sign images named …"). The refusal of a key without patterns
    itself suggested 'team/*'."""
    site = ready_site
    pub, kid = _pub(tmp_path, "bob")
    code, _out, err = run(admin, site, capsys, "trust", "add", str(pub), "--images", pattern)
    assert code != 0 and f"pattern {pattern!r} can match no image" in err, err
    code, out, _err = run(admin, site, capsys, "-o", "json", "trust", "list")
    assert code == 0 and kid not in out  # nothing was trusted
    code, _out, err = run(admin, site, capsys, "trust", "add", str(pub), "--images", " ")
    assert code != 0 and "team/" not in err and "'app:*'" in err, err
    ok(site, capsys, "trust", "add", str(pub), "--images", "app:*", "sci-[0-9]*", "x?:v1.*")
