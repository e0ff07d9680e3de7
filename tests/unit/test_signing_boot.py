"""images/signing.py: what a signature covers besides the files (the image's context,
login user, ext4 flags: format v2), and what a signature of the first format (v1, the
files alone) still vouches for. Real Ed25519 signatures throughout."""

from __future__ import annotations

import base64
import dataclasses
import json

import pytest

from images import signing
from images.model import ImageSpec, Mode, Partition
from images.signing import Boot, Key, Policy

NOW = 1_700_000_000.0
D1 = "sha256:" + "1" * 64
NOCLOUD = Boot("nocloud", "debian")


def _manifest(ext4: bool = False) -> ImageSpec:
    return ImageSpec(
        "sci:1",
        (
            Partition("root", Mode.COW, D1, 1024, "qcow2"),
            Partition("scratch", Mode.BLANK, "", 4096, "raw", ext4=ext4),
        ),
    )


@pytest.fixture(scope="module")
def keypair() -> tuple[signing.Ed25519PrivateKey, str]:
    private, public = signing.generate_key()
    return signing.load_private_key(private), public.decode()


def _policy(public: str) -> Policy:
    return Policy(version=3, enforce=True, keys=(Key(signing.key_id(public), public),))


def _sign_v1(m: ImageSpec, private: signing.Ed25519PrivateKey) -> str:
    """An envelope as signing made it before format v2 (the files alone)."""
    return signing.envelope(signing.canonical(signing.statement_v1(m)), private)


def test_a_new_signature_covers_context_and_login_user(
    keypair: tuple[signing.Ed25519PrivateKey, str],
) -> None:
    private, public = keypair
    m = _manifest()
    envelope = signing.sign(m, private, NOCLOUD)
    stmt = json.loads(base64.b64decode(json.loads(envelope)["payload"]))
    assert stmt["predicateType"] == "urn:workspace-service:image-manifest:v2"
    assert stmt["predicate"]["context"] == "nocloud"
    assert stmt["predicate"]["login_user"] == "debian"
    # The image as signed: trusted.
    assert signing.verify(_policy(public), m, [envelope], NOW, NOCLOUD).trusted
    # The same files with another context or login user: not.
    for other, word in ((Boot("none", "debian"), "context"), (Boot("nocloud", "root"), "root")):
        v = signing.verify(_policy(public), m, [envelope], NOW, other)
        assert not v.trusted and not v.allowed
        assert word in v.reason and "as signed" in v.reason


def test_a_new_signature_covers_the_ext4_flag(
    keypair: tuple[signing.Ed25519PrivateKey, str],
) -> None:
    private, public = keypair
    envelope = signing.sign(_manifest(ext4=False), private)
    v = signing.verify(_policy(public), _manifest(ext4=True), [envelope], NOW, Boot())
    assert not v.trusted and "partitions differ" in v.reason


def test_an_agent_without_the_settings_checks_the_files(
    keypair: tuple[signing.Ed25519PrivateKey, str],
) -> None:
    """``boot`` None (an agent: its order has the seed, not the image's settings): a v2
    signature is checked for the files; the service checked the settings at create."""
    private, public = keypair
    m = _manifest()
    envelope = signing.sign(m, private, NOCLOUD)
    assert signing.verify(_policy(public), m, [envelope], NOW).trusted
    other = dataclasses.replace(m, cmdline="init=/bin/sh")
    assert not signing.verify(_policy(public), other, [envelope], NOW).trusted


def test_an_old_signature_vouches_only_for_default_settings(
    keypair: tuple[signing.Ed25519PrivateKey, str],
) -> None:
    private, public = keypair
    m = _manifest()
    old = _sign_v1(m, private)
    # It still verifies the files of an image with the default settings.
    v = signing.verify(_policy(public), m, [old], NOW, Boot())
    assert v.trusted, v.reason
    # Not for a context or login user it never covered: refused, saying why and what to do.
    v = signing.verify(_policy(public), m, [old], NOW, NOCLOUD)
    assert not v.trusted and not v.allowed
    assert "old format" in v.reason and "context nocloud" in v.reason
    assert "login_user debian" in v.reason and "ws image sign sci:1" in v.reason
    v = signing.verify(_policy(public), m, [old], NOW, Boot("none", "root"))
    assert not v.trusted and "login_user root" in v.reason
    # Nor for ext4 flags it never covered (an agent checks that too).
    ext4 = _manifest(ext4=True)
    v = signing.verify(_policy(public), ext4, [_sign_v1(ext4, private)], NOW)
    assert not v.trusted and "ext4 flag on partition scratch" in v.reason
    # A new signature beside the old one: trusted.
    v = signing.verify(_policy(public), m, [old, signing.sign(m, private, NOCLOUD)], NOW, NOCLOUD)
    assert v.trusted


def test_statement_problem_names_what_differs(
    keypair: tuple[signing.Ed25519PrivateKey, str],
) -> None:
    m = _manifest()
    signed = signing.statement(m, NOCLOUD)
    assert signing.statement_problem(signed, m, NOCLOUD) == ""
    assert "login_user is 'root'" in signing.statement_problem(signed, m, Boot("nocloud", "root"))
    assert signing.statement_problem(signing.statement_v1(m), m, NOCLOUD) == ""  # files only
    assert "not an image-manifest" in signing.statement_problem([], m, NOCLOUD)
    bad = {**signed, "predicateType": "urn:other"}
    assert "not an image-manifest" in signing.statement_problem(bad, m, NOCLOUD)


def test_a_statement_with_a_field_this_version_does_not_know_says_so(
    keypair: tuple[signing.Ed25519PrivateKey, str],
) -> None:
    """A v2 statement with one more field (a newer version's, or one added by hand)
    cannot be checked whole: the reason names the field, not "partitions differ"."""
    m = _manifest()
    signed = signing.statement(m, NOCLOUD)
    extra = {**signed, "predicate": {**signed["predicate"], "boot_script": "curl x | sh"}}
    why = signing.statement_problem(extra, m, NOCLOUD)
    assert "has field(s) boot_script" in why and "image-manifest:v2" in why
    assert "partitions" not in why
    assert signing.fields_problem(extra, m, NOCLOUD) == why
    part = json.loads(json.dumps(signed))
    part["predicate"]["partitions"][1]["fs_label"] = "x"
    assert "signed partition 'scratch' has field(s) fs_label" in signing.statement_problem(
        part, m, NOCLOUD
    )
    lacking = json.loads(json.dumps(signed))
    del lacking["predicate"]["login_user"]
    assert "lacks field(s) login_user" in signing.statement_problem(lacking, m, NOCLOUD)
    # What really differs is still named as before.
    other = json.loads(json.dumps(signed))
    other["predicate"]["partitions"][0]["size_bytes"] = 1
    assert signing.fields_problem(other, m, NOCLOUD) == ""
    assert "partitions differ" in signing.statement_problem(other, m, NOCLOUD)
    # And through verify, with a real signature over the extra field.
    private, public = keypair
    payload = signing.canonical(extra)
    env = json.dumps(
        {
            "payloadType": signing.PAYLOAD_TYPE,
            "payload": base64.b64encode(payload).decode(),
            "signatures": [
                {
                    "keyid": signing.key_id(public),
                    "sig": base64.b64encode(
                        private.sign(signing.pae(signing.PAYLOAD_TYPE, payload))
                    ).decode(),
                }
            ],
        }
    )
    v = signing.verify(_policy(public), m, [env], NOW, NOCLOUD)
    assert not v.trusted and "has field(s) boot_script" in v.reason


def test_a_running_vm_with_an_old_format_signature_alone_is_not_stopped(
    keypair: tuple[signing.Ed25519PrivateKey, str],
) -> None:
    """A new launch of an image whose one trusted signature is v1 over settings v1 never
    covered is refused under enforce; a VM of it that runs already was admitted under
    the old rules, and its re-check allows it, saying to sign the image again."""
    private, public = keypair
    m = _manifest()
    old = _sign_v1(m, private)
    launch = signing.verify(_policy(public), m, [old], NOW, NOCLOUD)
    assert not launch.allowed and launch.old_format and "old format" in launch.reason
    running = launch.running("sci:1")
    assert running.allowed and not running.trusted and running.word == "warn"
    assert running.reason.startswith(
        "image sci:1 was admitted under the old signature format; re-sign the image"
    )
    assert "ws image sign sci:1" in running.reason
    # The same for the ext4 flags an agent checks itself.
    ext4 = _manifest(ext4=True)
    v = signing.verify(_policy(public), ext4, [_sign_v1(ext4, private)], NOW)
    assert v.old_format and v.running("sci:1").allowed


def test_a_real_revocation_still_stops_a_vm_with_an_old_format_signature(
    keypair: tuple[signing.Ed25519PrivateKey, str],
) -> None:
    private, public = keypair
    m = _manifest()
    old = _sign_v1(m, private)
    kid = signing.key_id(public)
    revoked = Policy(3, True, (Key(kid, public, revoked=True),))
    narrowed = Policy(3, True, (Key(kid, public, ("other:*",)),))
    expired = Policy(3, True, (Key(kid, public, expires_at=NOW - 1),))
    digest = Policy(3, True, _policy(public).keys, frozenset({D1}))
    stranger = Policy(3, True, (Key("0" * 64, public),))
    for policy, why in (
        (revoked, "is revoked"),
        (narrowed, "may not sign"),
        (expired, "expired"),
        (digest, f"digest {D1} is revoked"),
        (stranger, "is not a trusted key"),
    ):
        v = signing.verify(policy, m, [old], NOW, NOCLOUD)
        assert not v.old_format and why in v.reason
        assert v.running("sci:1") == v and not v.running("sci:1").allowed
    # Files that differ from what the v1 signature covered: stopped too.
    other = dataclasses.replace(m, cmdline="init=/bin/sh")
    v = signing.verify(_policy(public), other, [old], NOW, NOCLOUD)
    assert not v.old_format and not v.running("sci:1").allowed
