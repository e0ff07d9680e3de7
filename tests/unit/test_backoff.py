"""The agent's one backoff rule (agent/backoff.py) and its three uses."""

from __future__ import annotations

from agent.backoff import Backoff, Retries
from agent.executor import OP_RETRY
from agent.link import RECONNECT
from agent.staging import PREFETCH_RETRY


def test_doubles_from_the_base_up_to_the_ceiling() -> None:
    b = Backoff(0.5, 5.0)
    assert [b.delay_s(n) for n in range(7)] == [0.0, 0.5, 1.0, 2.0, 4.0, 5.0, 5.0]


def test_the_agents_three_backoffs() -> None:
    assert [RECONNECT.delay_s(n) for n in (1, 2, 5, 9)] == [0.5, 1.0, 5.0, 5.0]
    assert [OP_RETRY.delay_s(n) for n in (1, 2, 6, 9)] == [2.0, 4.0, 60.0, 60.0]
    assert [PREFETCH_RETRY.delay_s(n) for n in (1, 2, 7, 9)] == [4.0, 8.0, 256.0, 300.0]


def test_retries_wait_out_the_delay_then_forget() -> None:
    now = [100.0]
    r = Retries(Backoff(2.0, 60.0), clock=lambda: now[0])
    assert not r.waiting("w1")
    assert r.failed("w1") == (1, 2.0)
    assert r.waiting("w1") and not r.waiting("w2")
    now[0] += 2.0
    assert not r.waiting("w1")
    assert r.failed("w1") == (2, 4.0)
    r.forget("w1")
    assert not r.waiting("w1")
    assert r.failed("w1") == (1, 2.0)
