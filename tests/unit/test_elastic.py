"""Elastic-cluster values: the signal grammar, the clamp and cool-down rule, the one-line
explanation; the roster files a running member is given; the fake guest's files."""

from __future__ import annotations

import calendar

import pytest

from agent.virt import fake_guest
from workspace import config
from workspace.config import ServiceConfig
from workspace.domain import elastic, seed
from workspace.domain.elastic import AutoscaleInfo, Decision
from workspace.errors import ConfigError
from workspace.ops.rosters import write_argv

T0 = calendar.timegm((2026, 11, 30, 10, 2, 11))


@pytest.mark.parametrize(
    ("text", "kind", "arg"),
    [
        ("slurm-queue", "slurm-queue", ""),
        ("slurm-queue:debug", "slurm-queue", "debug"),
        ("command:/usr/local/bin/want", "command", "/usr/local/bin/want"),
    ],
)
def test_signals_parse(text: str, kind: str, arg: str) -> None:
    sig = elastic.parse_signal(text)
    assert (sig.kind, sig.arg, sig.text) == (kind, arg, text)


@pytest.mark.parametrize(
    ("text", "match"),
    [
        ("load", "is not one of slurm-queue, slurm-queue:PARTITION, command:/PATH"),
        ("command:want", "absolute path"),
        ("slurm-queue:a b", "partition name"),
    ],
)
def test_bad_signals_say_why(text: str, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        elastic.parse_signal(text)


def auto(last_action_at: float = 0.0, cooldown_s: int = 60) -> AutoscaleInfo:
    return AutoscaleInfo("worker", 1, 4, "slurm-queue:debug", cooldown_s, last_action_at)


def test_decide_clamps_and_waits_for_the_cool_down() -> None:
    assert elastic.decide(auto(), 3, 2, T0) == (3, "grew", "signal wants 3, have 2 → grew to 3")
    assert elastic.decide(auto(), 9, 2, T0)[:2] == (4, "grew")
    assert "(clamped to 4)" in elastic.decide(auto(), 9, 2, T0)[2]
    assert elastic.decide(auto(), 0, 3, T0)[:2] == (1, "shrank")
    assert elastic.decide(auto(), 2, 2, T0)[1] == "steady"
    held = elastic.decide(auto(last_action_at=T0 - 10), 3, 2, T0)
    assert held == (2, "hold", "signal wants 3, have 2: hold, cool-down until 10:03:01")
    assert elastic.decide(auto(last_action_at=T0 - 60), 3, 2, T0)[1] == "grew"


def test_the_explanation_is_one_line() -> None:
    d = Decision(T0, 3, 2, "grew", "signal wants 3, have 2 → grew to 3")
    a = AutoscaleInfo("worker", 1, 4, "slurm-queue:debug", 60, T0, d)
    assert elastic.describe(a) == (
        "autoscale worker 1..4 on slurm-queue:debug, cool-down 60 s; "
        "last decision 10:02:11: signal wants 3, have 2 → grew to 3"
    )
    assert elastic.infos({"worker": a.to_dict()}) == (a,)
    assert elastic.describe(auto()).endswith("; no decision yet")


def test_roster_files_are_those_of_a_first_boot() -> None:
    roster = seed.Roster(
        "c",
        (
            seed.Member("c-w-0", "w", 0, ("10.0.0.2",), "ssh-ed25519 AAAA k0"),
            seed.Member("c-w-1", "w", 1, ("10.0.0.3",), ""),
        ),
    )
    files = dict(seed.roster_files(roster, "c-w-1"))
    assert files["/etc/hosts"].endswith("10.0.0.2 c-w-0 w-0\n10.0.0.3 c-w-1 w-1\n")
    assert '"name": "c-w-1"' in files["/etc/workspace/cluster.json"]
    assert files["/etc/ssh/ssh_known_hosts"] == "c-w-0,w-0,10.0.0.2 ssh-ed25519 AAAA\n"
    first_boot = seed.system_config("c-w-1", "id", (), ("", ""), "", roster)["write_files"]
    assert {f["path"]: f["content"] for f in first_boot} == files  # type: ignore[index]
    other = seed.roster_files(roster, "c-w-0")
    assert seed.roster_digest(other) != seed.roster_digest(list(files.items()))


def test_the_fake_guest_keeps_files_written_through_exec() -> None:
    files: dict[str, bytes] = {}
    out = fake_guest.run(write_argv("/etc/hosts"), b"1.2.3.4 a\n", 5, "g", files=files)
    assert out.exit_code == 0, out.stderr
    assert files == {"/etc/hosts": b"1.2.3.4 a\n"}
    assert fake_guest.run(["cat", "/etc/hosts"], b"", 5, "g", files=files).stdout == b"1.2.3.4 a\n"


@pytest.mark.parametrize(
    ("key", "value", "match"),
    [
        ("autoscale_interval_s", 0, "autoscale_interval_s: must be more than 0"),
        ("autoscale_command_timeout_s", -1, "autoscale_command_timeout_s: must be more than 0"),
        ("roster_push_interval_s", 0, "roster_push_interval_s: must be more than 0"),
        ("autoscale_cooldown_s", -5, "autoscale_cooldown_s: must be 0 or more"),
        ("squeue_command", "", "squeue_command: must not be empty"),
    ],
)
def test_bad_elastic_config_keys_are_named(key: str, value: object, match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        config.load(ServiceConfig, None, **{key: value})
