"""Upgrading the agents of a site under ENFORCE with stop_running_on_revoke: a VM
booted under the old rules, whose image's one signature is of the first format (v1),
over an ext4 partition v1 never covered, keeps running when the upgraded agent checks
it again; a real revocation still powers it off (agent/executor.py ``_recheck_one``,
images/signing.py ``Verdict.running``). Real Ed25519 signatures."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from agent.virt.base import DomainState
from images import signing
from images.model import Mode, Partition
from tests.unit.test_executor import BLOB, DIGEST, Parts, wait_for
from workspace.domain.model import Disk, Observation, Order
from workspace.domain.states import Desired

ROOT = Partition("root", Mode.COW, DIGEST, len(BLOB), "raw")
SCRATCH = Partition("scratch", Mode.BLANK, "", 1 << 20, "raw", ext4=True)


@pytest.fixture
def parts(tmp_path: Path) -> Iterator[Parts]:
    p = Parts(tmp_path)
    try:
        yield p
    finally:
        p.close()


def _v1(order: Order, key: Ed25519PrivateKey) -> str:
    """The envelope `ws image sign` made before format v2: the files alone."""
    return signing.envelope(signing.canonical(signing.statement_v1(order.spec())), key)


def _order(key: Ed25519PrivateKey) -> Order:
    disks = (Disk(ROOT), Disk(SCRATCH))
    bare = Order("w1", "lab", "lab", Desired.RUNNING, 1, 512, "sci:1", disks, ())
    return replace(bare, envelopes=(_v1(bare, key),), verified_digests=(DIGEST,))


def _policy(version: int, key: Ed25519PrivateKey, revoked: bool = False) -> signing.Policy:
    public = signing.public_pem(key)
    k = signing.Key(signing.key_id(public), public, revoked=revoked)
    return signing.Policy(version=version, enforce=True, keys=(k,))


def test_an_upgraded_agent_keeps_a_vm_admitted_under_the_old_format_running(
    parts: Parts, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    ex, gate, driver = parts.executor, parts.gate, parts.driver
    said: list[Observation] = []
    ex.report = lambda ids: said.extend(ex.observe(ids))  # what the link would send
    key = Ed25519PrivateKey.generate()
    order = _order(key)
    # Before the upgrade, a v1 signature vouched for the files whatever the ext4 flags.
    with monkeypatch.context() as old_rules:
        old_rules.setattr(signing, "v1_problem", lambda *_: "")
        assert gate.update(_policy(1, key), True)
        ex.take([order])
        ex.reconcile_once()
        wait_for(lambda: (d := driver.get("w1")) is not None and d.state is DomainState.RUNNING)
        wait_for(ex.idle)
    assert [(r.action, r.verdict) for r in parts.audit.pending()] == [("boot", "allow")]

    # The upgraded agent starts again: the policy is new to it, it re-checks what runs.
    said.clear()
    assert gate.update(_policy(2, key), True)
    with caplog.at_level(logging.WARNING, logger="agent"):
        ex.recheck_running()
        wait_for(lambda: said)
        wait_for(ex.idle)
    assert driver.get("w1").state is DomainState.RUNNING  # type: ignore[union-attr]
    # Its note (the link may send another report of it too: a first that says nothing).
    (seen, *_) = [o for o in said if o.reason]
    assert "image sci:1 was admitted under the old signature format; re-sign the image" in (
        seen.reason
    )
    assert "ext4 flag on partition scratch" in seen.reason
    assert seen.reason.endswith("the VM keeps running")
    assert "workspace w1 (lab)" in caplog.text and "admitted under the old signature" in caplog.text
    running = [r for r in parts.audit.pending() if r.action == "running"]
    assert [(r.workspace_id, r.verdict) for r in running] == [("w1", "warn")]
    assert "admitted under the old signature format" in running[0].reason
    # A new boot of it is still refused: the old format does not admit new launches.
    assert not gate.verdict(order).allowed  # type: ignore[union-attr]

    # A real revocation still powers it off.
    assert gate.update(_policy(3, key, revoked=True), True)
    ex.recheck_running()
    wait_for(lambda: driver.get("w1").state is DomainState.SHUTOFF)  # type: ignore[union-attr]
    told = wait_for(lambda: [o.reason for o in said if "is revoked" in o.reason])
    assert "powered off (the site stops VMs on revocation)" in told[0]


def test_a_vm_booted_untrusted_under_warn_is_not_kept_for_an_old_format_signature(
    parts: Parts,
) -> None:
    """The exemption is for VMs admitted under the old rules (booted "allow"). One booted
    after the upgrade under WARN, its image's v1 signature already not enough ("warn"),
    was never admitted for that signature: when the site turns to ENFORCE and stops VMs
    on revocation, it is powered off like any untrusted VM."""
    ex, gate, driver = parts.executor, parts.gate, parts.driver
    said: list[Observation] = []
    ex.report = lambda ids: said.extend(ex.observe(ids))
    key = Ed25519PrivateKey.generate()
    order = _order(key)
    assert gate.update(replace(_policy(1, key), enforce=False), False)
    ex.take([order])
    ex.reconcile_once()
    wait_for(lambda: (d := driver.get("w1")) is not None and d.state is DomainState.RUNNING)
    wait_for(ex.idle)
    assert [(r.action, r.verdict) for r in parts.audit.pending()] == [("boot", "warn")]

    assert gate.update(_policy(2, key), True)
    ex.recheck_running()
    wait_for(lambda: driver.get("w1").state is DomainState.SHUTOFF)  # type: ignore[union-attr]
    told = wait_for(lambda: [o.reason for o in said if "powered off" in o.reason])
    assert "no longer trusted under policy version 2" in told[0]
    assert "old format" in told[0] and "keeps running" not in told[0]
    running = [r for r in parts.audit.pending() if r.action == "running"]
    assert [(r.workspace_id, r.verdict) for r in running] == [("w1", "deny")]
