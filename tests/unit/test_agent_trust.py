"""The agent's own check of an order: policy proto, manifest rebuild, bound orders.

Orders are built as the service's Assignment messages and decoded by the codec, the way
the agent's link receives them."""

from __future__ import annotations

from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from agent import trust
from images import signing
from images.model import ImageSpec
from workspace.codec.node import audit_to_proto, order_from_proto, policy_from_proto
from workspace.node.v1 import nodes_pb2
from workspace.v1 import common_pb2, trust_pb2

ROOT = "sha256:" + "1" * 64
DATA = "sha256:" + "2" * 64
KERNEL = "sha256:" + "3" * 64
OTHER = "sha256:" + "9" * 64
NOW = 1_700_000_000.0

IMAGE_PARTS: list[dict[str, Any]] = [
    {"name": "root", "digest": ROOT, "size_bytes": 4096, "format": "qcow2", "mode": "COW"},
    {"name": "data", "digest": DATA, "size_bytes": 8192, "format": "raw", "mode": "READONLY"},
    {"name": "scratch", "digest": "", "size_bytes": 1 << 20, "format": "raw", "mode": "BLANK"},
]


def _spec(parts: list[dict[str, Any]] | None = None, cmdline: str = "console=ttyS0") -> dict:
    return {
        "partitions": parts if parts is not None else [dict(p) for p in IMAGE_PARTS],
        "kernel_digest": KERNEL,
        "initrd_digest": "",
        "cmdline": cmdline,
    }


def _order(spec: dict[str, Any], envelopes: list[str], image: str = "team/app:1") -> Any:
    """An Assignment the way the service's Nodes.assignments builds it."""
    disks = [
        nodes_pb2.DiskAssignment(
            name=p["name"],
            digest=p.get("digest", ""),
            size_bytes=p.get("size_bytes", 0),
            format=p.get("format", "raw"),
            mode=common_pb2.PartitionMode.Value("PARTITION_MODE_" + p.get("mode", "COW")),
            virtual_size_bytes=p.get("virtual_size_bytes", 0),
        )
        for p in spec["partitions"]
    ]
    digests = [p["digest"] for p in spec["partitions"] if p.get("digest")]
    digests += [d for d in (spec["kernel_digest"], spec["initrd_digest"]) if d]
    return nodes_pb2.Assignment(
        workspace_id="w1",
        desired=common_pb2.DESIRED_STATE_RUNNING,
        image=image,
        disks=disks,
        kernel_digest=spec["kernel_digest"],
        initrd_digest=spec["initrd_digest"],
        cmdline=spec["cmdline"],
        envelopes_json=envelopes,
        verified_digests=digests,
    )


@pytest.fixture(scope="module")
def key() -> Ed25519PrivateKey:
    return Ed25519PrivateKey.generate()


def _policy(key: Ed25519PrivateKey, enforce: bool = True, **kw: Any) -> signing.Policy:
    k = signing.Key(signing.key_id(key.public_key()), signing.public_pem(key), ("team/*",), **kw)
    return signing.Policy(version=7, enforce=enforce, keys=(k,))


def _signed(key: Ed25519PrivateKey, image: str = "team/app:1") -> str:
    return signing.sign(ImageSpec.from_dict(_spec(), image), key)


def _check(a: nodes_pb2.Assignment, policy: signing.Policy) -> signing.Verdict:
    return trust.check_order(order_from_proto(a), policy, NOW)


def test_manifest_from_the_order_equals_the_services_manifest() -> None:
    a = _order(_spec(), [])
    assert order_from_proto(a).spec() == ImageSpec.from_dict(_spec(), "team/app:1")


def test_policy_from_proto() -> None:
    p = trust_pb2.TrustPolicy(
        version=4,
        mode=trust_pb2.TRUST_MODE_ENFORCE,
        keys=[trust_pb2.TrustedKey(key_id="ab", public_key_pem="pem", revoked=True)],
        revoked_digests=[OTHER],
    )
    p.keys[0].expires_at.FromSeconds(1234)
    got = policy_from_proto(p)
    assert got.version == 4 and got.enforce
    assert got.keys[0] == signing.Key("ab", "pem", ("*",), 1234.0, True)
    assert got.revoked_digests == {OTHER}
    assert not policy_from_proto(trust_pb2.TrustPolicy()).enforce


def test_signed_order_is_trusted(key: Ed25519PrivateKey) -> None:
    v = _check(_order(_spec(), [_signed(key)]), _policy(key))
    assert v.trusted and v.word == "allow" and v.policy_version == 7
    assert v.key_id == signing.key_id(key.public_key())


def test_grown_cow_and_added_blank_partitions_keep_the_signature(key: Ed25519PrivateKey) -> None:
    parts = [dict(p) for p in IMAGE_PARTS]
    parts[0]["virtual_size_bytes"] = 1 << 30  # grown at create
    parts.append({"name": "extra", "digest": "", "size_bytes": 512, "mode": "BLANK"})
    v = _check(_order(_spec(parts), [_signed(key)]), _policy(key))
    assert v.trusted, v.reason


def test_an_added_disk_with_content_is_refused(key: Ed25519PrivateKey) -> None:
    parts = [dict(p) for p in IMAGE_PARTS]
    parts.append({"name": "evil", "digest": OTHER, "size_bytes": 512, "mode": "COW"})
    v = _check(_order(_spec(parts), [_signed(key)]), _policy(key))
    assert not v.allowed and "'evil'" in v.reason


def test_a_dropped_partition_breaks_the_signature(key: Ed25519PrivateKey) -> None:
    parts = [dict(p) for p in IMAGE_PARTS[:2]]
    v = _check(_order(_spec(parts), [_signed(key)]), _policy(key))
    assert not v.allowed and "partitions differ" in v.reason


def test_an_order_naming_an_unverified_digest_is_refused_in_any_mode(
    key: Ed25519PrivateKey,
) -> None:
    a = _order(_spec(), [_signed(key)])
    a.disks[0].digest = OTHER  # a swapped blob
    for enforce in (True, False):
        v = _check(a, _policy(key, enforce=enforce))
        assert not v.allowed
        assert v.reason == f"order names digest {OTHER} the service did not verify"


def test_a_swapped_digest_the_service_claims_to_have_verified_breaks_the_signature(
    key: Ed25519PrivateKey,
) -> None:
    a = _order(_spec(), [_signed(key)])
    a.disks[1].digest = OTHER
    a.verified_digests.append(OTHER)
    v = _check(a, _policy(key))
    assert not v.allowed and "differ" in v.reason


def test_a_changed_cmdline_is_refused(key: Ed25519PrivateKey) -> None:
    a = _order(_spec(cmdline="console=ttyS0 init=/bin/sh"), [_signed(key)])
    v = _check(a, _policy(key))
    assert not v.allowed and "cmdline" in v.reason


@pytest.mark.parametrize(
    ("kw", "why"),
    [({"revoked": True}, "is revoked"), ({"expires_at": NOW - 1}, "expired")],
)
def test_revoked_or_expired_key_denies_under_enforce_and_warns_otherwise(
    key: Ed25519PrivateKey, kw: dict[str, Any], why: str
) -> None:
    a = _order(_spec(), [_signed(key)])
    v = _check(a, _policy(key, **kw))
    assert (v.trusted, v.allowed, v.word) == (False, False, "deny") and why in v.reason
    v = _check(a, _policy(key, enforce=False, **kw))
    assert (v.trusted, v.allowed, v.word) == (False, True, "warn")


def test_unknown_signer_and_unsigned(key: Ed25519PrivateKey) -> None:
    stranger = Ed25519PrivateKey.generate()
    v = _check(_order(_spec(), [_signed(stranger)]), _policy(key))
    assert not v.allowed and "not a trusted key" in v.reason
    v = _check(_order(_spec(), []), _policy(key))
    assert not v.allowed and v.reason == "image team/app:1 is not signed"


def test_revoked_digest(key: Ed25519PrivateKey) -> None:
    p = _policy(key)
    p = signing.Policy(p.version, p.enforce, p.keys, frozenset({DATA}))
    v = _check(_order(_spec(), [_signed(key)]), p)
    assert not v.allowed and v.reason == f"digest {DATA} is revoked"


def test_one_good_envelope_among_bad_ones_is_enough(key: Ed25519PrivateKey) -> None:
    stranger = Ed25519PrivateKey.generate()
    a = _order(_spec(), ["not json", _signed(stranger), _signed(key)])
    assert _check(a, _policy(key)).trusted


def test_audit_entry(key: Ed25519PrivateKey) -> None:
    a = _order(_spec(), [_signed(key)])
    v = _check(a, _policy(key, enforce=False, revoked=True))
    record = trust.audit_record("n1", "boot", order_from_proto(a), v, NOW, ROOT)
    e = audit_to_proto(record)
    assert (e.where, e.action, e.image, e.digest, e.verdict) == (
        "node:n1",
        "boot",
        "team/app:1",
        ROOT,
        "warn",
    )
    assert e.policy_version == 7 and "revoked" in e.reason and e.workspace_id == "w1"
    assert e.at.ToSeconds() == int(NOW)


def _with_seed(a: nodes_pb2.Assignment) -> nodes_pb2.Assignment:
    """The order of a workspace of a contextualized image: the service built its seed."""
    a.seed.CopyFrom(nodes_pb2.CloudSeed(meta_data=b"m", user_data=b"u", network_config=b"n"))
    return a


def test_the_signed_context_must_match_the_orders_seed(key: Ed25519PrivateKey) -> None:
    """A v2 statement says whether the image takes a cloud-init seed; the agent does not
    take the service's word for it: a seed on an order whose image was signed with
    context "none" (a seed its publisher never agreed to run at first boot) is refused,
    and so is a missing seed where it was signed "nocloud"."""
    spec = ImageSpec.from_dict(_spec(), "team/app:1")
    plain = signing.sign(spec, key)  # context none
    cloud = signing.sign(spec, key, signing.Boot("nocloud", "debian"))
    v = _check(_with_seed(_order(_spec(), [plain])), _policy(key))
    assert not v.trusted and not v.allowed
    assert "context 'none', but the order carries a cloud-init seed" in v.reason
    v = _check(_order(_spec(), [cloud]), _policy(key))
    assert not v.trusted and "context 'nocloud', but the order has no cloud-init seed" in v.reason
    # As the service sends them: trusted.
    assert _check(_with_seed(_order(_spec(), [cloud])), _policy(key)).trusted
    assert _check(_order(_spec(), [plain]), _policy(key)).trusted
    # Under warn it boots, saying why.
    v = _check(_with_seed(_order(_spec(), [plain])), _policy(key, enforce=False))
    assert not v.trusted and v.allowed and "cloud-init seed" in v.reason
