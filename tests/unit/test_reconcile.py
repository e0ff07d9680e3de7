"""The agent's reconcile plan (agent/reconcile.py): desired vs actual → one action each."""

from __future__ import annotations

import pytest

from agent.reconcile import Action, Want, plan
from agent.virt.base import DomainState

DS = DomainState
A = Action

# (desired, domain state or None for "no domain") -> expected action (None: leave it alone)
TABLE: dict[tuple[str, DomainState | None], Action | None] = {
    ("RUNNING", None): A.CREATE,
    ("RUNNING", DS.RUNNING): None,
    ("RUNNING", DS.PAUSED): A.RESUME,
    ("RUNNING", DS.SHUTOFF): A.START,
    ("RUNNING", DS.OTHER): None,  # booting / shutting down: wait for it to settle
    ("PAUSED", None): A.CREATE,
    ("PAUSED", DS.RUNNING): A.PAUSE,
    ("PAUSED", DS.PAUSED): None,
    ("PAUSED", DS.SHUTOFF): A.START,  # start first; the next pass pauses it
    ("PAUSED", DS.OTHER): None,
    ("STOPPED", None): A.CREATE,  # prepared and defined, not started
    ("STOPPED", DS.RUNNING): A.STOP,
    ("STOPPED", DS.PAUSED): A.STOP,
    ("STOPPED", DS.SHUTOFF): None,
    ("STOPPED", DS.OTHER): A.STOP,
}


def test_table_covers_every_pair() -> None:
    expected = {(d, s) for d in ("RUNNING", "PAUSED", "STOPPED") for s in [None, *DomainState]}
    assert set(TABLE) == expected


@pytest.mark.parametrize(("key", "action"), list(TABLE.items()), ids=str)
def test_one_workspace(key: tuple[str, DomainState | None], action: Action | None) -> None:
    desired, state = key
    actual = {} if state is None else {"w1": state}
    result = plan({"w1": Want(desired)}, actual, set(), {})
    assert result == ({} if action is None else {"w1": action})


@pytest.mark.parametrize("state", [DS.RUNNING, DS.PAUSED, DS.OTHER])
def test_force_stop(state: DomainState) -> None:
    assert plan({"w1": Want("STOPPED", force_stop=True)}, {"w1": state}, set(), {}) == {
        "w1": A.FORCE_STOP
    }


def test_force_stop_of_stopped_domain_does_nothing() -> None:
    assert plan({"w1": Want("STOPPED", force_stop=True)}, {"w1": DS.SHUTOFF}, set(), {}) == {}


@pytest.mark.parametrize(
    ("reboot_count", "applied", "expected"),
    [
        (0, None, {}),
        (1, None, {"w1": A.REBOOT}),
        (1, 0, {"w1": A.REBOOT}),
        (1, 1, {}),
        (3, 2, {"w1": A.REBOOT}),
        (2, 5, {}),  # never reboot because a counter went backwards
    ],
)
def test_reboot_only_when_count_grew(
    reboot_count: int, applied: int | None, expected: dict[str, Action]
) -> None:
    applied_reboots = {} if applied is None else {"w1": applied}
    result = plan({"w1": Want("RUNNING", reboot_count)}, {"w1": DS.RUNNING}, set(), applied_reboots)
    assert result == expected


@pytest.mark.parametrize("state", [DS.PAUSED, DS.SHUTOFF, DS.OTHER])
def test_reboot_request_not_applied_to_a_domain_that_is_not_running(state: DomainState) -> None:
    result = plan({"w1": Want("RUNNING", reboot_count=1)}, {"w1": state}, set(), {})
    assert result.get("w1") is not A.REBOOT


def test_reboot_of_other_workspace_does_not_count() -> None:
    result = plan({"w1": Want("RUNNING", 1)}, {"w1": DS.RUNNING}, set(), {"w2": 1})
    assert result == {"w1": A.REBOOT}


def test_leftover_files_without_domain_and_not_desired_are_removed() -> None:
    assert plan({}, {}, {"old"}, {}) == {"old": A.REMOVE}


@pytest.mark.parametrize("state", list(DomainState))
def test_domain_not_desired_is_removed(state: DomainState) -> None:
    assert plan({}, {"old": state}, set(), {}) == {"old": A.REMOVE}
    assert plan({}, {"old": state}, {"old"}, {}) == {"old": A.REMOVE}


def test_desired_leftover_without_domain_is_created_not_removed() -> None:
    assert plan({"w1": Want("RUNNING")}, {}, {"w1"}, {}) == {"w1": A.CREATE}


def test_desired_leftover_with_domain_is_kept() -> None:
    assert plan({"w1": Want("RUNNING")}, {"w1": DS.RUNNING}, {"w1"}, {}) == {}


def test_mixed_node() -> None:
    desired = {
        "new": Want("RUNNING"),
        "ok": Want("RUNNING"),
        "stop": Want("STOPPED"),
        "kill": Want("STOPPED", force_stop=True),
        "pause": Want("PAUSED"),
        "boot": Want("RUNNING", reboot_count=2),
    }
    actual = {
        "ok": DS.RUNNING,
        "stop": DS.RUNNING,
        "kill": DS.RUNNING,
        "pause": DS.RUNNING,
        "boot": DS.RUNNING,
        "gone": DS.SHUTOFF,
    }
    leftovers = {"files-only", "ok"}
    assert plan(desired, actual, leftovers, {"boot": 1, "ok": 0}) == {
        "new": A.CREATE,
        "stop": A.STOP,
        "kill": A.FORCE_STOP,
        "pause": A.PAUSE,
        "boot": A.REBOOT,
        "gone": A.REMOVE,
        "files-only": A.REMOVE,
    }


def test_nothing_to_do_on_an_empty_node() -> None:
    assert plan({}, {}, set(), {}) == {}
