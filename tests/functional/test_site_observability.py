"""`ws-admin site up` turns metrics on for the service and the agent (loopback, free
ports); `site status` names them; `ws-admin events` prints the site's events."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from datetime import UTC, datetime
from pathlib import Path

from tests.functional.test_cli import ROOT, cli_env, ok, run, wait_gone
from tests.functional.test_metrics import promtool_check, value
from workspace.site import local


def scrape(url: str) -> str:
    with urllib.request.urlopen(url, timeout=10) as r:
        return str(r.read().decode())


def test_site_up_serves_metrics_and_events(tmp_path: Path) -> None:
    d = tmp_path / "site"
    ok(d, "admin", "site", "up", "--driver", "fake", "--dir", str(d))
    try:
        rec = local.read_record(d)
        assert rec is not None
        assert rec.service_metrics.startswith("http://127.0.0.1:")
        assert rec.agents[0].metrics.startswith("http://127.0.0.1:")
        assert rec.service_metrics != rec.agents[0].metrics
        text = ok(d, "admin", "site", "status", "--dir", str(d)).out
        lines = [x.strip() for x in text.splitlines() if x.strip().startswith("metrics: ")]
        assert lines == [
            f"metrics: {rec.service_metrics}  (service)",
            f"metrics: {rec.agents[0].metrics}  (agent local)",
        ], text
        # and the logs, which the README sends the admin to `site status` for
        logs = [x.strip() for x in text.splitlines() if x.strip().startswith("log: ")]
        assert logs == [
            f"log: {d / 'service.log'}  (service)",
            f"log: {rec.agents[0].log}  (agent local)",
        ], text
        st = json.loads(ok(d, "admin", "-o", "json", "site", "status").out)
        assert st["service"]["metrics"] == rec.service_metrics
        svc = scrape(rec.service_metrics)
        promtool_check(svc)
        assert value(svc, "workspace_nodes", state="READY") == 1
        promtool_check(scrape(rec.agents[0].metrics))

        # a second `site up` keeps the ports
        ok(d, "admin", "site", "up", "--dir", str(d))
        again = local.read_record(d)
        assert again is not None and again.service_metrics == rec.service_metrics

        # the site's events: the node registered, the network `site up` made is not one
        out = ok(d, "admin", "events", "--since", "1h").out
        assert "node.registered" in out and "node local" in out, out
        evs = [json.loads(x) for x in ok(d, "admin", "events", "-o", "json").out.splitlines()]
        reg = next(e for e in evs if e["kind"] == "node.registered")
        assert reg["node"] == "local" and reg["time"].endswith("Z") and reg["who"]
        future = ok(d, "admin", "events", "--since", "2999-01-01T00:00:00Z").out
        assert future == ""

        # --follow: new events as they happen (the process is ours: stopped by its pid)
        now = datetime.now(UTC).isoformat(timespec="seconds")
        follow = subprocess.Popen(
            [sys.executable, "-m", "workspace.cli.admin", "events", "-f", "--since", now],
            stdout=subprocess.PIPE,
            text=True,
            env=cli_env(d),
            cwd=ROOT,
        )
        try:
            time.sleep(1.0)
            ok(d, "admin", "node", "drain", "local")
            assert follow.stdout is not None
            line = follow.stdout.readline()
            assert "node.state" in line and "READY -> DRAINING" in line, line
        finally:
            follow.terminate()
            follow.wait(10)
        # A drained node keeps its drain across the site's restart, and `site up` starts
        # (it waited for READY, gave up and stopped everything).
        old_pid = local.read_record(d).service_pid  # type: ignore[union-attr]
        ok(d, "admin", "site", "down", "--dir", str(d))
        wait_gone(old_pid, 10.0)
        ok(d, "admin", "site", "up", "--dir", str(d), "--timeout", "60")
        nodes = json.loads(ok(d, "admin", "-o", "json", "node", "list").out)
        assert [(n["name"], n["state"]) for n in nodes] == [("local", "DRAINING")], nodes
        ok(d, "admin", "node", "enable", "local")
    finally:
        record = local.read_record(d)
        run(d, "admin", "site", "down", "--dir", str(d))
        if record is not None:
            for pid in (record.service_pid, record.agent_pid):
                if not wait_gone(pid, 1.0):
                    os.kill(pid, signal.SIGKILL)
