"""Formatting and parsing of the observability parts: JSON log lines, the call context,
`event_retention`, event lines of `ws-admin events`, refusal kinds, the journal, the
metrics address."""

from __future__ import annotations

import json
import logging
import os
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import cast

import pytest

from workspace import callctx
from workspace.cli import event_cmds
from workspace.config import ServiceConfig, load, parse_retention, parse_terminated_retention
from workspace.domain.events import Kind, Refusal, SiteEvent
from workspace.errors import (
    AlreadyExists,
    ConfigError,
    InvalidArgument,
    PermissionDenied,
    ResourceExhausted,
)
from workspace.log import JsonFormatter, Throttle
from workspace.metrics_http import split_address
from workspace.node.v1 import nodes_pb2
from workspace.ops.refusals import refusal_of
from workspace.ops.unit import Env
from workspace.service.metrics import ServiceMetrics
from workspace.store import EventRow, Node, Store, journal


def record(msg: str = "hello %s", *args: object, **extra: object) -> logging.LogRecord:
    r = logging.LogRecord("workspace.ops", logging.INFO, __file__, 1, msg, args or ("x",), None)
    for k, v in extra.items():
        setattr(r, k, v)
    return r


def test_a_json_line_has_time_level_logger_message() -> None:
    out = json.loads(JsonFormatter("workspace-service").format(record()))
    assert out["level"] == "INFO" and out["logger"] == "workspace.ops"
    assert out["message"] == "hello x" and out["time"].endswith("+00:00")
    assert "workspace" not in out and "caller" not in out


def test_ids_come_from_extra_or_the_call_context() -> None:
    f = JsonFormatter("s")
    assert json.loads(f.format(record(workspace="w1", node="n1")))["workspace"] == "w1"
    with callctx.bound(who="user:alice", method="CreateWorkspace", request_id="r1"):
        callctx.note(workspace="w2")
        out = json.loads(f.format(record()))
        assert out["workspace"] == "w2" and out["request_id"] == "r1"
        assert out["caller"] == "user:alice" and out["method"] == "CreateWorkspace"
        assert json.loads(f.format(record(workspace="w3")))["workspace"] == "w3"  # extra wins
    assert callctx.current() == callctx.CallContext()  # reset after the call
    callctx.note(workspace="w4")  # outside a call: not kept
    assert callctx.current().workspace == ""


def test_process_wide_ids() -> None:
    f = JsonFormatter("workspace-agent[n1]", {"node": "n1"})
    assert json.loads(f.format(record()))["node"] == "n1"
    assert json.loads(f.format(record(node="n2")))["node"] == "n2"


def test_an_exception_is_one_field_of_the_same_line() -> None:
    try:
        raise ValueError("boom")
    except ValueError:
        r = record()
        r.exc_info = sys.exc_info()
    line = JsonFormatter("s").format(r)
    assert "\n" not in line and "ValueError: boom" in json.loads(line)["exception"]


JSON_PROCESS = """
import logging, threading, urllib.error, urllib.request, warnings
from prometheus_client import CollectorRegistry
from workspace import log
from workspace.metrics_http import serve
log.setup("INFO", "workspace-agent", "json")
logging.getLogger("sqlalchemy.engine").warning("a library's line")
warnings.warn("an old call", DeprecationWarning, stacklevel=1)
class Broken:
    def describe(self):
        return []
    def collect(self):
        raise OSError("the cache directory is gone")
registry = CollectorRegistry()
registry.register(Broken())
metrics = serve(registry, "127.0.0.1:0", "workspace-agent")
try:
    urllib.request.urlopen(metrics.url, timeout=10)
except urllib.error.HTTPError as exc:
    assert exc.code == 500
metrics.close()
t = threading.Thread(target=lambda: 1 / 0, name="queue")
t.start()
t.join()
raise RuntimeError("the end")
"""


def test_with_json_logs_every_line_python_writes_is_json() -> None:
    """Warnings, uncaught tracebacks (a loop's thread that dies, the main one) and a
    failed scrape of /metrics (wsgiref's traceback) were written as Python writes them:
    lines of text among the JSON ones."""
    r = subprocess.run(
        [sys.executable, "-W", "always", "-c", JSON_PROCESS],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])},
    )
    assert r.returncode == 1
    lines = [json.loads(x) for x in r.stderr.splitlines()]  # each line is JSON
    assert [x["logger"] for x in lines] == [
        "sqlalchemy.engine",
        "py.warnings",
        "workspace.metrics",  # serving on ...
        "workspace.metrics",
        "workspace.uncaught",
        "workspace.uncaught",
    ]
    assert "an old call" in lines[1]["message"]
    assert lines[3]["level"] == "ERROR" and "the cache directory is gone" in lines[3]["message"]
    assert lines[4]["message"].startswith("uncaught exception in thread queue: ZeroDivisionError")
    assert "ZeroDivisionError" in lines[4]["exception"]
    assert lines[5]["level"] == "CRITICAL" and "RuntimeError: the end" in lines[5]["exception"]


def test_log_format_is_checked() -> None:
    with pytest.raises(ConfigError, match="log_format"):
        load(ServiceConfig, None, log_format="xml")


@pytest.mark.parametrize(
    ("text", "want"),
    [
        ("30d", (0, 30 * 86400.0)),
        ("12h", (0, 43200.0)),
        ("90m", (0, 5400.0)),
        ("1000", (1000, 0.0)),
    ],
)
def test_event_retention(text: str, want: tuple[int, float]) -> None:
    assert parse_retention(text) == want


@pytest.mark.parametrize("text", ["", "0", "d", "-5d", "3w", "1.5d"])
def test_a_bad_event_retention_is_refused(text: str) -> None:
    with pytest.raises(ConfigError, match="event_retention"):
        parse_retention(text)


@pytest.mark.parametrize(
    ("text", "want"), [("30d", 30 * 86400.0), ("12h", 43200.0), ("forever", 0.0)]
)
def test_terminated_retention(text: str, want: float) -> None:
    assert parse_terminated_retention(text) == want


@pytest.mark.parametrize("text", ["", "0", "1000", "d", "3w", "never"])
def test_a_bad_terminated_retention_is_refused(text: str) -> None:
    with pytest.raises(ConfigError, match="terminated_retention"):
        parse_terminated_retention(text)


def test_an_event_line_says_who_what_and_why() -> None:
    e = SiteEvent(
        at=0.0,
        kind="workspace.state",
        who="node:n1",
        workspace_id="abc",
        workspace_name="alpha",
        node="n1",
        state="RUNNING",
        previous="STARTING",
        reason="booted",
        id=7,
    )
    assert event_cmds.line(e) == (
        "1970-01-01T00:00:00Z  workspace.state  workspace alpha (abc)  node n1  "
        "STARTING -> RUNNING  by node:n1: booted"
    )
    d = event_cmds.as_dict(e)
    assert list(d)[:2] == ["id", "time"] and d["time"] == "1970-01-01T00:00:00Z"
    assert "elapsed_s" not in d and "at" not in d and d["who"] == "node:n1"


def test_refusal_kinds() -> None:
    assert refusal_of(ResourceExhausted("cannot place x: no node")) is Refusal.CAPACITY
    assert refusal_of(ResourceExhausted("x: the vcpus quota of project p ...")) is Refusal.QUOTA
    assert refusal_of(PermissionDenied("image i is not trusted: ...")) is Refusal.TRUST
    assert refusal_of(PermissionDenied("only its owner")) is None
    assert refusal_of(InvalidArgument("bad name")) is None


def test_the_journal_records_node_changes_in_the_same_transaction(tmp_path: Path) -> None:
    store = Store(f"sqlite:///{tmp_path / 's.db'}")
    try:
        with store.write() as s:
            s.add(Node(name="n1", hypervisor="fake", cpus=4, memory_mib=1024, state="READY"))
        with callctx.bound(who="user:admin", method="DrainNode"), store.write() as s:
            node = s.get(Node, "n1")
            assert node is not None
            node.state = "DRAINING"
            written = journal.events_of(s)  # grows with the flush at commit
        with pytest.raises(RuntimeError), store.write() as s:
            node = s.get(Node, "n1")
            assert node is not None
            node.state = "DOWN"
            s.flush()
            raise RuntimeError("rolled back: its event too")
        with store.read() as s:
            rows = [(r.kind, r.node, r.previous, r.state, r.who) for r in s.query(EventRow)]
        assert rows == [
            ("node.registered", "n1", "", "READY", "system"),
            ("node.state", "n1", "READY", "DRAINING", "user:admin"),
        ]
        assert [e.kind for e in written] == ["node.state"]
    finally:
        store.close()


def test_the_store_publishes_the_events_of_plain_writes_once(tmp_path: Path) -> None:
    """A plain write's events (an image import, a save) reach the store's listeners (the
    service's notifier: metrics, followers); a unit of work's are published by the unit
    (after commit, in order), not twice; a rollback's not at all."""
    store = Store(f"sqlite:///{tmp_path / 's.db'}")
    heard: list[str] = []
    store.on_site_events(lambda events: heard.extend(e.kind for e in events))
    try:
        with store.write() as s:
            s.add(Node(name="n1", hypervisor="fake", cpus=4, memory_mib=1024, state="READY"))
        assert heard == ["node.registered"]
        with pytest.raises(RuntimeError), store.write() as s:
            s.add(Node(name="n2", hypervisor="fake", cpus=4, memory_mib=1024, state="READY"))
            s.flush()
            raise RuntimeError("rolled back")
        assert heard == ["node.registered"]
        with store.write() as s:
            journal.owner_publishes(s)  # as a unit of work does
            node = s.get(Node, "n1")
            assert node is not None
            node.state = "DRAINING"
        assert heard == ["node.registered"]
        with store.read() as s:
            assert [r.kind for r in s.query(EventRow)] == ["node.registered", "node.state"]
    finally:
        store.close()


def test_an_rpc_of_minutes_is_not_read_as_ten_seconds() -> None:
    """An Exec (or an upload, a save) that took two minutes falls in a finite bucket of
    the RPC histogram, so the dashboard's quantiles show minutes: with buckets up to 10 s
    it fell in +Inf only, and histogram_quantile read it as 10 s."""
    metrics = ServiceMetrics(cast(Env, None))  # the store is read at scrape time only
    metrics.rpc._done("workspace.v1.Workspaces", "Exec", "OK", time.perf_counter() - 120)
    buckets = {
        float(s.labels["le"]): s.value
        for fam in metrics.rpc_seconds.collect()
        for s in fam.samples
        if s.name.endswith("_bucket") and s.labels["method"] == "Exec"
    }
    holding = [le for le, count in buckets.items() if count == 1 and le != float("inf")]
    assert holding and 120 <= min(holding) <= 600, buckets


def test_metrics_addresses() -> None:
    assert split_address("127.0.0.1:9464") == ("127.0.0.1", 9464)
    assert split_address("[::1]:0") == ("::1", 0)
    for bad in ("9464", "host:", ":9464", "h:99999"):
        with pytest.raises(ConfigError, match="metrics_listen"):
            split_address(bad)


def test_a_metrics_url_names_a_host_others_can_reach() -> None:
    """Bound to every address, the URL an admin is shown (`ws-admin replica list`, the
    log) names this host, not 0.0.0.0; bound to one address, that address."""
    import socket

    from workspace.metrics_http import MetricsServer

    def url(host: str) -> str:
        return MetricsServer(host, 9464, None, None).url

    me = socket.gethostname()
    assert url("0.0.0.0") == url("::") == f"http://{me}:9464/metrics"
    assert url("127.0.0.1") == "http://127.0.0.1:9464/metrics"
    assert url("::1") == "http://[::1]:9464/metrics"


def test_a_throttle_lets_one_line_per_key_and_interval_through() -> None:
    now = [100.0]
    t = Throttle(300.0, clock=lambda: now[0], size=2)
    assert t.due("a") == 0  # the first one is logged
    assert t.due("a") is None and t.due("a") is None  # then muted, counted
    assert t.due("b") == 0  # another key has its own interval
    now[0] += 300.0
    assert t.due("a") == 2  # the next line says how many were muted
    assert t.due("a") is None
    assert t.due("c") == 0  # a third key: the oldest ("b") is forgotten
    assert t.due("a") is None
    assert t.due("b") == 0


def test_warn_mode_logs_an_untrusted_launch_once_and_audits_each(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    import dataclasses

    from tests.unit.test_request_validation import build_site
    from workspace.ops import trust

    site = build_site(tmp_path)
    site.core.env = dataclasses.replace(site.core.env, check_trust=True)
    with caplog.at_level(logging.WARNING, logger="workspace.ops.trust"):
        for i in range(4):
            site.create(name=f"w{i}", memory_mib=64)
    warned = [r for r in caplog.records if "warn mode" in r.getMessage()]
    lines = [r.getMessage() for r in warned]
    assert len(lines) == 1, lines
    assert "untrusted image img allowed (warn mode): image img is not signed" in lines[0]
    decisions = [a for a in trust.list_audit(site.core.env) if a.action == "create"]
    assert len(decisions) == 4 and {a.verdict for a in decisions} == {"warn"}
    # The line names (in JSON logs) the workspace its decision was for, as the audit does.
    first = next(a for a in decisions if a.workspace_id == getattr(warned[0], "workspace", ""))
    assert json.loads(JsonFormatter("s").format(warned[0]))["workspace"] == first.workspace_id


def test_a_launch_refused_by_the_trust_policy_logs_the_workspace(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """`ws start box` refused under enforce logged "start by alice refused: image img is
    not trusted": with log_format = "json" the line had no workspace, so an admin
    reading the lines of box did not see why it did not start."""
    import dataclasses

    from tests.unit.test_request_validation import OWNER, build_site
    from workspace.domain.states import Op
    from workspace.ops import trust_admin

    site = build_site(tmp_path)
    box = site.create(name="box", memory_mib=64)
    site.report(box.id, nodes_pb2.OBSERVED_STATE_RUNNING)
    site.core.operate(OWNER, box.id, Op.STOP)
    site.report(box.id, nodes_pb2.OBSERVED_STATE_STOPPED)
    site.core.env = dataclasses.replace(site.core.env, check_trust=True)
    trust_admin.set_mode(site.core.env, True, False)
    with (
        caplog.at_level(logging.WARNING, logger="workspace.ops.trust"),
        pytest.raises(PermissionDenied),
    ):
        site.core.operate(OWNER, box.id, Op.START)
    # The trust module's own line: with INFO on (a test before it on this worker set it),
    # the store's migration lines are captured too, and one of them says "refused".
    (refused,) = [
        r for r in caplog.records if r.name == "workspace.ops.trust" and "refused" in r.getMessage()
    ]
    assert json.loads(JsonFormatter("s").format(refused))["workspace"] == box.id


def test_a_create_refused_for_its_name_takes_no_trust_decision(tmp_path: Path) -> None:
    """The audit names the workspace each decision was for: a request refused for what it
    asked (a name in use) is refused before the trust check, and leaves no decision about
    a workspace that never was; one refused later (no capacity) keeps its decision."""
    import dataclasses

    from tests.unit.test_request_validation import build_site
    from workspace.ops import trust

    site = build_site(tmp_path)
    site.core.env = dataclasses.replace(site.core.env, check_trust=True)
    box = site.create(name="box", memory_mib=64)
    with pytest.raises(AlreadyExists):
        site.create(name="box", memory_mib=64)
    with pytest.raises(ResourceExhausted):
        site.create(name="huge", memory_mib=16384)
    decisions = [a for a in trust.list_audit(site.core.env) if a.action == "create"]
    assert len(decisions) == 2, decisions  # box's, huge's; none for the second box
    assert box.id in {a.workspace_id for a in decisions}


def test_every_event_kind_is_in_the_documented_table() -> None:
    """An admin reads observability.md's table of kinds to know what `--kind` takes and
    what each event says; `preemption` and `workspace.preempted` were emitted (and
    offered by `--kind`) but not in it."""
    doc = (Path(__file__).resolve().parents[2] / "docs/design/observability.md").read_text()
    table = [line for line in doc.splitlines() if line.startswith("| `")]
    documented = {k for line in table for k in re.findall(r"`([a-z_.]+)`", line.split("|")[1])}
    assert {k.value for k in Kind} - documented == set()


def test_domains_are_unknown_not_zero_while_the_hypervisor_does_not_answer() -> None:
    """The agent's /metrics said 0 domains in every state while libvirtd did not answer:
    the dashboard's "Domains by state" showed every VM of the node gone. Unknown is no
    sample; once it answers again the counts are back."""
    from types import SimpleNamespace

    from prometheus_client import CollectorRegistry

    from agent.cache import BlobCache
    from agent.executor import Executor
    from agent.metrics import AgentCollector
    from agent.virt.base import DomainSpec
    from agent.virt.fake import FakeDriver
    from workspace.config import FakeDriverConfig

    driver = FakeDriver(FakeDriverConfig(persist=False))
    driver.define(DomainSpec("w1", "box", 1, 64))
    driver.start("w1")
    cache = SimpleNamespace(
        hits=0, misses=0, used_bytes=lambda: 0, budget_bytes=0, digests=list, received_bytes={}
    )
    executor = SimpleNamespace(operations={})
    registry = CollectorRegistry()
    registry.register(
        AgentCollector("n1", cast(BlobCache, cache), cast(Executor, executor), driver)
    )
    running = {"state": "running"}
    assert registry.get_sample_value("workspace_agent_domains", running) == 1
    driver.unreachable = "libvirtd is not running"
    assert registry.get_sample_value("workspace_agent_domains", running) is None
    assert registry.get_sample_value("workspace_agent_cache_blobs") == 0  # the rest still
    driver.unreachable = ""
    assert registry.get_sample_value("workspace_agent_domains", running) == 1
