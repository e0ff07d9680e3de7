"""One agent per node name, across hosts (ops/reports.py ``check_one_agent``): a second
agent registering a node whose agent reports is refused, saying which agent has it. It
used to be taken: both agents ran the node's VMs (on two hosts, twice with the same
addresses and MACs), took each other's order streams every few seconds and reported
each other's VMs. The same agent restarting, an agent older than the key, and an agent
taking over a node whose agent went silent are let in. (A real SQLite store and the
servicers' plain methods; no gRPC.)"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from sqlalchemy import select

from agent import agent as agent_mod
from agent.agent import AGENT_ID_FILE, agent_key
from tests.unit.test_request_validation import Site, build_site
from workspace.domain.model import NodeInfo
from workspace.errors import FailedPrecondition, PermissionDenied
from workspace.node.v1 import nodes_pb2
from workspace.ops import nodes, reports
from workspace.ops.events import Notifier
from workspace.ops.unit import Env
from workspace.store.site_events import EventRow

A = "host-a:/var/lib/workspace/agent (0a1b2c3d4e5f)"
B = "host-b:/var/lib/workspace/agent (6789abcdef01)"


@pytest.fixture
def site(tmp_path: Path) -> Site:
    return build_site(tmp_path, register=False)


def register(site: Site, key: str, serial: int = 0) -> None:
    site.nodes.register(
        nodes_pb2.RegisterRequest(
            node="n1",
            hypervisor="fake",
            cpus=4,
            memory_mib=8192,
            networks=["default"],
            agent_key=key,
        ),
        serial,
    )


def refusals(site: Site) -> list[EventRow]:
    with site.store.read() as s:
        q = select(EventRow).where(EventRow.kind == "node.refused").order_by(EventRow.id)
        return list(s.execute(q).scalars())


def conditions(site: Site) -> dict[str, str]:
    (n1,) = nodes.list_nodes(site.core.env)
    return {c.label: c.message for c in n1.conditions}


def test_a_second_agent_of_a_node_that_reports_is_refused_naming_the_first(site: Site) -> None:
    register(site, A)
    with pytest.raises(FailedPrecondition) as refused:
        register(site, B)
    said = refused.value.message
    assert f"node n1 is served by another agent, {A}, which reported 0 s ago" in said
    assert "give this one a node name of its own" in said
    register(site, A)  # the first one goes on: its restart (same key) is let in
    site.clock.now += 10  # a report a while ago, still within 3 heartbeat intervals
    with pytest.raises(FailedPrecondition, match="which reported 10 s ago"):
        register(site, B)


def test_a_node_whose_agent_went_silent_is_taken_over(site: Site) -> None:
    register(site, A)
    site.clock.now += 3 * 5  # three heartbeat intervals without a word from A
    register(site, B)  # the node moved to another host
    with pytest.raises(FailedPrecondition) as refused:
        register(site, A)  # now A is the other one
    assert f"served by another agent, {B}" in refused.value.message


def test_an_agent_that_does_not_say_its_key_is_let_in(site: Site) -> None:
    register(site, A)
    register(site, "")  # an agent older than the key: as before
    with pytest.raises(FailedPrecondition, match="served by another agent"):
        register(site, B)  # the key of the node's agent is kept


def test_an_agent_upgraded_to_the_key_takes_its_node_over_at_once(site: Site) -> None:
    """README's upgrade: the service first, then each agent. The agent of the release
    before says no key and keeps reporting; its successor, started right after it stops,
    registers with one and is not made to wait out a "duplicate" agent's silence."""
    register(site, "")
    site.clock.now += 1  # the old agent's last report, a second before
    register(site, A)
    with pytest.raises(FailedPrecondition) as refused:
        register(site, B)
    assert f"served by another agent, {A}" in refused.value.message  # the node's, now


def test_an_agent_keeps_its_key_across_restarts(tmp_path: Path) -> None:
    first = agent_key(str(tmp_path))
    assert agent_key(str(tmp_path)) == first  # the id is kept in its state directory
    assert (tmp_path / AGENT_ID_FILE).read_text().strip() in first
    other = tmp_path / "other"
    other.mkdir()
    assert agent_key(str(other)) != first  # another directory: another agent


def test_an_agent_with_a_long_key_is_itself_at_a_restart(site: Site) -> None:
    """The node's row keeps 512 characters of the key; a key longer (a deep state
    directory) was compared whole with what was kept, so the same agent restarting was
    refused its own node, as another agent of it."""
    deep = "host-a:/" + "d" * 600 + " (0a1b2c3d4e5f)"
    register(site, deep)
    register(site, deep)  # its restart: the same agent
    with pytest.raises(FailedPrecondition, match="served by another agent"):
        register(site, B)


def test_the_agent_id_is_its_owners_alone(tmp_path: Path) -> None:
    old = os.umask(0)
    try:
        agent_key(str(tmp_path))
    finally:
        os.umask(old)
    assert (tmp_path / AGENT_ID_FILE).stat().st_mode & 0o777 == 0o600


def test_a_host_cloned_whole_is_another_agent(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A host cloned whole has the original's name, state directory and agent-id: its
    agent said the original's key and was let in beside it (both ran the node's VMs).
    Its boot tells them apart; the same boot (a restart) is the same agent."""
    boot = tmp_path / "boot_id"
    monkeypatch.setattr(agent_mod, "BOOT_ID_FILE", str(boot))
    state = tmp_path / "state"
    state.mkdir()
    boot.write_text("aa905b5b-0e53-4351-904c-19f0dee30c87\n")
    original = agent_key(str(state))
    assert agent_key(str(state)) == original  # a restart
    boot.write_text("5d1c7a2e-9f4b-4c1a-8e3d-2b6f0a9c7e51\n")  # the clone, booted
    assert agent_key(str(state)) != original


def test_an_agent_refused_is_seen_by_the_admin_not_only_in_its_log(site: Site) -> None:
    """The second agent's refusal was only in its own log (and it tries again every few
    seconds) while the node, served by the first, looked fine. Now a `node.refused` site
    event says it, one per agent and five minutes however often it tries (the next one
    counting those between), and the node shows an `agent-refused` condition while the
    refusals go on (`ws-admin node list/show`)."""
    env = site.core.env
    env.warned.clock = site.clock  # the events' rate, on the test's clock
    register(site, A)
    assert conditions(site) == {}
    for _ in range(3):  # a looping agent
        with pytest.raises(FailedPrecondition):
            register(site, B)
    (event,) = refusals(site)
    assert (event.node, event.subject, event.state) == ("n1", B, "another-agent")
    assert event.reason.startswith(f"agent {B}: node n1 is served by another agent, {A}")
    said = conditions(site)["agent-refused"]
    assert f"another agent, {B}, asks for its name while {A} reports for it" in said, said
    site.clock.now += 301
    register(site, A)  # A still reports
    with pytest.raises(FailedPrecondition):
        register(site, B)
    assert refusals(site)[-1].reason.endswith("(2 more refusal(s) since the last such event)")
    assert len(refusals(site)) == 2
    site.clock.now += env.cfg.node_grace_s + 1  # B gave up
    assert conditions(site) == {}


def test_an_agent_refused_for_its_certificate_on_a_ready_node_is_seen(site: Site) -> None:
    """The same for an agent with another certificate than the one the node is bound
    to, while the node's agent reports (the node is not DOWN: no reason says it)."""
    register(site, A, 0xA1)
    with pytest.raises(PermissionDenied, match="another certificate"):
        register(site, B, 0xB2)
    (event,) = refusals(site)
    assert (event.subject, event.state) == (B, "certificate")
    assert "registered with another certificate (serial 0xa1)" in conditions(site)["agent-refused"]


def test_a_refusal_for_the_old_certificate_ends_when_the_new_one_registers_elsewhere(
    site: Site,
) -> None:
    """A node's certificate re-issued (docs/security.md, "Rotation and revocation"): its
    agent, with the new one, is refused while the old one is bound; once that is revoked
    the agent registers, here through another replica (the one that refused it ended its
    streams). The replica that refused it kept showing `agent-refused` ("registered with
    another certificate") for node_grace_s after the node was bound to the new one."""
    register(site, A, 0xA1)
    with pytest.raises(PermissionDenied, match="another certificate"):
        register(site, A, 0xB2)  # the same agent, its files replaced by the new ones
    assert "agent-refused" in conditions(site)
    other = Env.of(site.core.env.cfg, site.store, Notifier(), clock=site.clock)  # replica 2
    info = NodeInfo("n1", "fake", 4, 8192, networks=("default",), agent_key=A)
    reports.register(other, info, 0xB2, is_revoked=lambda serial: serial == 0xA1)
    assert conditions(site) == {}
    # The other refusal, another agent for the name, goes on as long as that agent tries.
    with pytest.raises(FailedPrecondition):
        register(site, B, 0xB2)
    assert "agent-refused" in conditions(site)
