"""A new agent's first full report says the number of the orders it had taken.

The service does not release a workspace ordered after the set a full report was built
with (ops/sent_orders.py); a report that says no number is taken as one of an agent
older than numbers, for which nothing is kept. The link used to ask for its first full
report as the first set arrived, before handing the set to the agent, so a freshly
started agent's first full report could say none: for that report the race the numbers
close was open again, and what the service kept for the set just sent was dropped.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

import pytest

from agent.agent import Agent
from tests.functional.harness import Site, wait_for
from workspace.domain.model import NodeReport
from workspace.ops import reports


def test_a_new_agents_first_full_report_says_the_orders_it_took(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    said: list[int] = []
    real_report = reports.report

    def report(env: Any, r: NodeReport, cert_serial: int = 0) -> None:
        if r.full:
            said.append(r.orders_sequence)
        real_report(env, r, cert_serial)

    monkeypatch.setattr(reports, "report", report)
    # Taking orders takes a while (an executor busy with a pass): a report asked for as
    # the first set arrived is built before the set is taken.
    real_take = Agent.take_orders
    taking = threading.Event()

    def slow_take(self: Agent, *args: Any) -> None:
        taking.set()
        time.sleep(0.5)
        real_take(self, *args)

    monkeypatch.setattr(Agent, "take_orders", slow_take)
    site = Site(tmp_path)
    try:
        site.stubs.network()
        site.add_agent("node1")
        wait_for(lambda: said, what="a full report")
        assert taking.is_set()
        assert said[0] != 0, said
    finally:
        site.close()
