"""The net_mbps policers' table kept as written (agent/virt/netshape.py ``Shaper``), with
nft replaced by a recorder; the real table is in tests/host/test_nft_restore.py."""

from __future__ import annotations

import pytest

from agent.virt import netshape


class FakeNft:
    def __init__(self) -> None:
        self.writes: list[dict[str, int]] = []
        self.table: str | None = None  # `nft list table bridge ws_shape`

    def apply(self, taps: dict[str, int]) -> None:
        self.writes.append(dict(taps))
        self.table = netshape.ruleset(taps) if taps else None

    def list(self, family: str, name: str, netns: str | None = None) -> str | None:
        assert (family, name, netns) == ("bridge", "ws_shape", None)
        return self.table


@pytest.fixture
def nft(monkeypatch: pytest.MonkeyPatch) -> FakeNft:
    fake = FakeNft()
    monkeypatch.setattr(netshape, "apply", fake.apply)
    return fake


def test_written_once_then_only_when_the_taps_change(nft: FakeNft) -> None:
    shaper = netshape.Shaper(nft.list)
    shaper.apply({"wsta": 20, "wstb": 0})
    shaper.apply({"wsta": 20})
    assert nft.writes == [{"wsta": 20}]
    shaper.apply({"wsta": 30})
    assert nft.writes[-1] == {"wsta": 30}


def test_a_table_removed_or_flushed_is_written_again(
    nft: FakeNft, caplog: pytest.LogCaptureFixture
) -> None:
    shaper = netshape.Shaper(nft.list)
    shaper.apply({"wsta": 20})
    nft.table = None  # nft delete table bridge ws_shape
    shaper.apply({"wsta": 20})  # the next reconcile pass
    assert nft.writes == [{"wsta": 20}] * 2 and nft.table is not None
    assert "bridge ws_shape missing or changed behind the agent's back" in caplog.text
    nft.table = "table bridge ws_shape {\n}\n"  # flushed by hand
    shaper.apply({"wsta": 20})
    assert len(nft.writes) == 3


def test_a_restarted_agent_writes_it_whatever_it_finds(nft: FakeNft) -> None:
    netshape.Shaper(nft.list).apply({"wsta": 20})
    nft.table = None  # removed while no agent ran
    netshape.Shaper(nft.list).apply({"wsta": 20})  # the new agent's first pass
    assert nft.writes == [{"wsta": 20}] * 2


def test_no_limits_and_no_table_writes_nothing_again(nft: FakeNft) -> None:
    shaper = netshape.Shaper(nft.list)
    for _ in range(3):
        shaper.apply({})
    assert nft.writes == [{}]  # the first pass (apply({}) itself only lists then)
