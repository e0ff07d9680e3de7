"""`site up` waits for a heartbeat of this start, not the READY a node's row kept from
before; `site status` calls a READY node whose heartbeat is stale STALE, saying how old."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from workspace.cli import admin
from workspace.site import status
from workspace.site.record import AgentRecord, SiteError, SiteRecord, write_record
from workspace.v1 import admin_pb2

READY = admin_pb2.NodeState.NODE_STATE_READY


def at(when: float, state: int = READY, reason: str = "") -> admin_pb2.Node:
    n = admin_pb2.Node(name="local", state=state, reason=reason)  # type: ignore[arg-type]
    n.last_heartbeat.FromNanoseconds(int(when * 1e9))
    return n


class FakeClient:
    """What the service says of its nodes, one answer per call (the last one repeats)."""

    answers: list[list[admin_pb2.Node]] = []

    def __init__(self, *_args: Any, **_kw: Any) -> None:
        pass

    def __enter__(self) -> FakeClient:
        return self

    def __exit__(self, *_exc: object) -> None:
        pass

    def list_nodes(self) -> list[admin_pb2.Node]:
        return self.answers.pop(0) if len(self.answers) > 1 else self.answers[0]


def wait(since: float, timeout_s: float) -> None:
    status.wait_nodes_ready(
        "unix:/nowhere",
        ["local"],
        [],
        time.monotonic() + timeout_s,
        lambda _n: Path("/x"),
        since=since,
    )


def test_site_up_waits_for_a_heartbeat_of_this_start(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(status, "Client", FakeClient)
    start = time.time()
    FakeClient.answers = [[at(start - 300)]]  # READY in the database, from before
    with pytest.raises(SiteError, match=r"READY in the database, but no heartbeat since this"):
        wait(start, 0.5)
    FakeClient.answers = [[at(start - 300)], [at(start - 300)], [at(start + 1)]]
    wait(start, 5.0)  # the agent of this start reported: up
    assert FakeClient.answers == [[at(start + 1)]]


def test_site_up_says_why_a_node_is_down(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(status, "Client", FakeClient)
    down = admin_pb2.NodeState.NODE_STATE_DOWN
    FakeClient.answers = [[at(time.time(), down, "its agent is refused: registered with …")]]
    with pytest.raises(SiteError, match="DOWN: its agent is refused"):
        wait(time.time() - 10, 0.3)


def test_site_status_calls_a_silent_ready_node_stale() -> None:
    now = time.time()
    fresh = status.node_view(at(now - 2), 15.0)
    assert (fresh["state"], fresh["reason"]) == ("READY", "")
    stale = status.node_view(at(now - 130), 15.0)
    assert stale["state"] == "STALE" and stale["stored_state"] == "READY"
    assert stale["reason"].startswith("READY in the database, but its last heartbeat was 2m1")
    assert status.node_view(None, 15.0)["state"] == "UNKNOWN"
    assert status.age_text(7265) == "2h01m"


def test_the_stale_threshold_follows_the_sites_heartbeat(tmp_path: Path) -> None:
    assert status.heartbeat_interval(tmp_path) == 5.0  # no service.toml: the default
    (tmp_path / "service.toml").write_text("heartbeat_interval_s = 2\n")
    assert status.heartbeat_interval(tmp_path) == 2.0


def _daemon(module: str, config: Path) -> subprocess.Popen[bytes]:
    """A process our matchers take for the site's daemon (its command line names the
    module and the config), which only sleeps."""
    code = "import time; time.sleep(60)"
    argv = [sys.executable, "-c", code, "-m", module, "--config", str(config)]
    return subprocess.Popen(argv)


def test_site_status_shows_a_daemon_finishing_its_work_as_stopping(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """README, "Restarting one daemon": after `kill PID` a daemon finishes what it runs
    and says so in its lock file (workspace/sole.py). `site status` showed it running
    until it was gone; now STOPPING (JSON: ``"stopping": true``, not running), and the
    site degraded (exit 3)."""
    site = tmp_path / "site"
    (site / "service").mkdir(parents=True)
    (site / "agent").mkdir()
    svc = _daemon(status.SERVICE_MODULE, site / "service.toml")
    agent = _daemon(status.AGENT_MODULE, site / "agent.toml")
    try:
        rec = SiteRecord(
            dir=str(site),
            address=f"unix:{site}/service.sock",
            driver="fake",
            service_pid=svc.pid,
            agents=[AgentRecord("local", agent.pid, dir=str(site))],
        )
        write_record(site, rec)
        status.service_lock(site).write_text(f"{svc.pid}\n")  # running
        status.agent_lock(rec.agents[0]).write_text(f"{agent.pid} stopping\n")
        assert admin.main(["-o", "json", "site", "status", "--dir", str(site)]) == 3
        st = json.loads(capsys.readouterr().out)
        assert st["state"] == "degraded"
        assert (st["agents"][0]["running"], st["agents"][0]["stopping"]) == (False, True)
        assert (st["agent"]["running"], st["agent"]["stopping"]) == (False, True)
        assert st["service"]["stopping"] is False
        status.service_lock(site).write_text(f"{svc.pid} stopping\n")
        assert admin.main(["site", "status", "--dir", str(site)]) == 3
        out = capsys.readouterr().out
        assert f"service  pid {svc.pid} STOPPING" in out, out
        assert f"agent    pid {agent.pid} STOPPING" in out, out
        status.agent_lock(rec.agents[0]).write_text(f"{agent.pid + 1} stopping\n")  # not its
        assert status.report(rec, site, status.service_matcher(site / "service.toml"), site)[
            "agents"
        ][0]["running"]
    finally:
        for p in (svc, agent):
            p.kill()
            p.wait()


def test_a_stopped_or_absent_sites_hint_names_its_dir(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """`site status --dir D` of a site not in the default directory said "`ws-admin site
    up` starts it", which starts (or makes) the default site, not D's: it names --dir."""
    monkeypatch.delenv("WS_SITE_DIR", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    site = (tmp_path / "s").resolve()
    assert admin.main(["site", "status", "--dir", str(site)]) == 3
    assert capsys.readouterr().out == (
        f"no local site in {site} (`ws-admin site up --dir {site}` makes one)\n"
    )
    site.mkdir()
    (site / "setup.json").write_text("{}")  # made, and down
    assert admin.main(["site", "status", "--dir", str(site)]) == 3
    assert capsys.readouterr().out == (
        f"local site in {site}: stopped (`ws-admin site up --dir {site}` starts it)\n"
    )
    monkeypatch.setenv("WS_SITE_DIR", str(site))  # found without --dir
    assert admin.main(["site", "status"]) == 3
    assert (
        capsys.readouterr().out == f"local site in {site}: stopped (`ws-admin site up` starts it)\n"
    )


@pytest.mark.parametrize("given", ["flag", "env"])
def test_site_status_of_another_sites_admin_points_at_that_site(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], given: str
) -> None:
    """An admin of a multi-node site (README: `export WS_SERVICE=svc1:7070,svc2:7070`)
    asking `ws-admin site status` was told only "no local site … (`ws-admin site up`
    makes one)": the way to see their own site is named beside it."""
    monkeypatch.delenv("WS_SITE_DIR", raising=False)
    monkeypatch.delenv("WS_SERVICE", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    flag = ["--service", "svc1:7070,svc2:7070"] if given == "flag" else []
    if given == "env":
        monkeypatch.setenv("WS_SERVICE", "svc1:7070,svc2:7070")
    assert admin.main([*flag, "site", "status"]) == 3
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith("no local site in ")
    assert out[1] == (
        "the site at svc1:7070,svc2:7070 is no local site: `ws-admin replica list` shows "
        "its service replicas, `ws-admin node list` its nodes"
    )
