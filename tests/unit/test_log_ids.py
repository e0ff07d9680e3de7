"""JSON log lines about a workspace carry its id (docs/design/observability.md, "JSON
logs"): a line whose arguments name a workspace's id passes ``extra=about(id, node)``, so
that the id is a field of the line wherever it is written from (a loop, a node's call, a
pool thread), not only words of its message."""

from __future__ import annotations

import ast
import json
import logging
from dataclasses import replace
from pathlib import Path

import pytest

from tests.unit.test_cli_guests import agent_tasks, replies
from tests.unit.test_executor import Parts, _order, observed, wait_for
from tests.unit.test_request_validation import OWNER, build_site
from workspace.domain.model import ExecOutcome
from workspace.domain.netpolicy import Limits, PolicyUpdate
from workspace.domain.states import Desired, Observed, Op
from workspace.domain.tasks import (
    ConsoleClose,
    ConsoleClosed,
    ConsoleOpen,
    ConsoleOutput,
    ExecTask,
    Task,
)
from workspace.log import JsonFormatter
from workspace.node.v1 import nodes_pb2
from workspace.ops import leases, nodes, queue, update

ROOT = Path(__file__).resolve().parents[2]
LEVELS = {"debug", "info", "warning", "error", "exception", "critical"}
# Names an id of a workspace goes by in the service and the agent.
ID_NAMES = {"wid", "workspace_id"}
ID_OWNERS = {"w", "ws", "row", "view", "src", "order", "link", "first", "console"}
# Functions run only inside ``callctx.bound(workspace=wid)``: the call context names the
# workspace of each of their lines (agent/executor.py ``_run_for``, ``_recheck``).
BOUND = {("agent/executor.py", name) for name in ("_execute", "create", "_recheck_one")}


def names_a_workspace_id(node: ast.expr) -> bool:
    for sub in ast.walk(node):
        if isinstance(sub, ast.Name) and sub.id in ID_NAMES:
            return True
        if isinstance(sub, ast.Attribute) and sub.attr in ID_NAMES:
            return True
        if (
            isinstance(sub, ast.Attribute)
            and sub.attr == "id"
            and isinstance(sub.value, ast.Name)
            and sub.value.id in ID_OWNERS
        ):
            return True
    return False


def lines_without_ids() -> list[str]:
    out = []
    # The service's and the agent's modules (the clients log as they print: no JSON).
    daemons = ("workspace/ops", "workspace/edge", "workspace/service", "workspace/store", "agent")
    for path in sorted(p for d in daemons for p in ROOT.glob(f"{d}/**/*.py")):
        tree = ast.parse(path.read_text(), str(path))
        where = str(path.relative_to(ROOT))
        bound = {
            id(c)
            for fn in ast.walk(tree)
            if isinstance(fn, ast.FunctionDef) and (where, fn.name) in BOUND
            for c in ast.walk(fn)
        }
        for call in ast.walk(tree):
            if id(call) in bound:
                continue
            if not (
                isinstance(call, ast.Call)
                and isinstance(call.func, ast.Attribute)
                and call.func.attr in LEVELS
                and isinstance(call.func.value, ast.Name)
                and call.func.value.id == "log"
            ):
                continue
            if call.func.attr == "debug" or not any(names_a_workspace_id(a) for a in call.args[1:]):
                continue
            if not any(k.arg == "extra" for k in call.keywords):
                out.append(f"{where}:{call.lineno}")
    return out


def test_a_log_line_naming_a_workspace_carries_its_id() -> None:
    assert lines_without_ids() == []


class JsonLines(logging.Handler):
    """The JSON lines of the records it is given, formatted in the thread that logs them
    (where the call context is)."""

    def __init__(self) -> None:
        super().__init__()
        self.setFormatter(JsonFormatter("workspace-agent[n1]", {"node": "n1"}))
        self.lines: list[dict[str, str]] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(json.loads(self.format(record)))


def test_the_agents_exec_and_console_lines_carry_the_workspace_id(tmp_path: Path) -> None:
    """`ws exec` and `ws console` of a workspace logged on its node as "exec hostname in
    box (w1): exit 0": the id in the words only, so a JSON line had no ``workspace`` and
    an admin selecting the lines of w1 did not find them."""
    tasks, _driver, outbox = agent_tasks(tmp_path)
    lines = JsonLines()
    logger = logging.getLogger("agent.tasks")
    logger.addHandler(lines)
    level = logger.level
    logger.setLevel(logging.INFO)
    try:
        tasks.take(Task("e1", "w1", ExecTask(("hostname",))))
        assert replies(outbox, "e1", ExecOutcome) == [ExecOutcome(0, b"box\n")]
        tasks.take(Task("c1", "w1", ConsoleOpen()))
        replies(outbox, "c1", ConsoleOutput)
        tasks.take(Task("c1", "w1", ConsoleClose()))
        replies(outbox, "c1", ConsoleClosed)
    finally:
        tasks.close()
        logger.removeHandler(lines)
        logger.setLevel(level)
    said = [(line["message"], line.get("workspace"), line.get("node")) for line in lines.lines]
    assert ("exec hostname in w1: exit 0", "w1", "n1") in said
    assert ("console of w1 attached", "w1", "n1") in said
    assert all(ws == "w1" for _m, ws, _n in said), said


def test_the_queue_lines_of_a_workspace_carry_its_id(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """ "workspace 1a2b (later) placed from the queue on ['n1']" was written by the
    queue's loop (no call context) with the id in its words only: no workspace field in
    JSON logs."""
    site = build_site(tmp_path, memory_mib=4096)
    big = site.create(name="big", memory_mib=3000)
    later = site.create(name="later", memory_mib=2000, wait_for_capacity_s=600)
    site.destroy(big.id)
    with caplog.at_level(logging.INFO, logger="workspace.ops.queue"):
        queue.process(site.core.env)
    (placed,) = [r for r in caplog.records if "placed from the queue" in r.getMessage()]
    line = json.loads(JsonFormatter("workspace-service").format(placed))
    assert (line["workspace"], line["node"]) == (later.id, "n1")


def test_the_service_lines_of_a_placed_workspace_carry_its_node(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """ "workspace 1a2b (box): stop requested" (and destroy, update, a lease's warning
    and end, a trust power-off, a save, a release) passed the workspace's id only,
    though its row names the node it is on: an admin selecting the JSON lines of node n1
    (`jq 'select(.node == "n1")'`) did not see what was asked of its workspaces."""
    site = build_site(tmp_path)
    box = site.create(name="box", cpus=1, memory_mib=256)
    assert box.node == "n1"
    site.report(box.id, nodes_pb2.OBSERVED_STATE_RUNNING)
    loggers = ("workspace.ops.operate", "workspace.ops.update")
    caplog.clear()
    with caplog.at_level(logging.INFO):
        update.update(site.core.env, OWNER, PolicyUpdate("box", limits=Limits(cpu_percent=50)))
        site.core.operate(OWNER, box.id, Op.STOP)
        site.core.operate(OWNER, box.id, Op.DESTROY)
        site.core.operate(OWNER, box.id, Op.DESTROY)  # asked again: nothing to change
    lines = [
        json.loads(JsonFormatter("workspace-service").format(r))
        for r in caplog.records
        if r.name in loggers
    ]
    said = [
        (line["message"].split(": ", 1)[1], line["workspace"], line.get("node")) for line in lines
    ]
    assert said == [
        ("cpu_percent 0 -> 50", box.id, "n1"),
        ("stop requested", box.id, "n1"),
        ("destroy requested", box.id, "n1"),
        ("destroy asked again (nothing to change)", box.id, "n1"),
    ], said


def test_a_node_down_line_carries_the_node_and_names_what_it_lost(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """ "node n1 is DOWN: no heartbeat since ..." was written by the liveness loop with
    the node in its words only (no node field in JSON), and named none of the
    workspaces it made LOST: the admin reading the log learnt of the outage, not what
    it cost, nor did a line say which came back. The node's drain, enable and removal,
    asked by an admin (whose call names no node), had no node field either."""
    site = build_site(tmp_path)
    a = site.create(name="a", cpus=1, memory_mib=256)
    b = site.create(name="b", cpus=1, memory_mib=256)
    gone = site.create(name="gone", cpus=1, memory_mib=256)
    site.core.operate(OWNER, gone.id, Op.DESTROY)  # released at DOWN, not LOST
    env = site.core.env
    site.clock.now += env.cfg.node_grace_s + 1
    caplog.clear()  # the site's making (a test before may have set INFO for every logger)
    with caplog.at_level(logging.INFO):
        assert site.nodes.check_liveness() == ["n1"]
        site.report(b.id, nodes_pb2.OBSERVED_STATE_RUNNING)  # its agent back, b with it
        nodes.set_drained(env, "n1", True)
        nodes.set_drained(env, "n1", False)
        site.core.operate(OWNER, b.id, Op.DESTROY)
        site.report(b.id, nodes_pb2.OBSERVED_STATE_ABSENT)
        site.core.operate(OWNER, a.id, Op.DESTROY)
        nodes.remove(env, "n1")
    loggers = ("workspace.ops.liveness", "workspace.ops.nodes", "workspace.ops.reports")
    lines = [
        json.loads(JsonFormatter("workspace-service").format(r))
        for r in caplog.records
        if r.name in loggers
    ]
    said = [(line["message"], line.get("node")) for line in lines]
    assert said[0][0].startswith("node n1 is DOWN: no heartbeat since "), said
    assert said[0][0].endswith(f"; workspace(s) LOST: {a.id} (a), {b.id} (b)"), said
    assert [m for m, _ in said[1:]] == [
        f"workspace {b.id} (b) is back from LOST on node n1: RUNNING",
        "node n1 draining: no new work",
        "node n1 enabled",
        "node n1 removed",
    ], said
    assert all(node == "n1" for _m, node in said), said
    # b is named the same way going LOST and coming back (as every line names a
    # workspace: "ID (NAME)"); the DOWN line said "b (ID)" and the other "ID (b)".
    assert f"{b.id} (b)" in said[0][0] and f"{b.id} (b)" in said[1][0], said


def test_a_node_down_line_names_twenty_lost_workspaces_and_counts_the_rest(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The DOWN line of a node with many workspaces stays one bounded line: it names 20
    of those it made LOST (by name) and counts the others."""
    site = build_site(tmp_path, cpus=64, memory_mib=65536)
    made = [site.create(name=f"w{i:02d}", cpus=1, memory_mib=128) for i in range(23)]
    site.clock.now += site.core.env.cfg.node_grace_s + 1
    caplog.clear()
    with caplog.at_level(logging.INFO):
        assert site.nodes.check_liveness() == ["n1"]
    (down,) = [r.getMessage() for r in caplog.records if "is DOWN" in r.getMessage()]
    named = ", ".join(f"{w.id} ({w.name})" for w in made[:20])
    assert down.endswith(f"; workspace(s) LOST: {named} and 3 more"), down


def test_the_text_lines_of_a_placed_workspace_name_its_node(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The default text log said "workspace 1a2b (box): stop requested" (and destroy,
    update, a lease's extension): the node the workspace is on was a field of the JSON
    line only, so an admin reading service.log, or grepping it for a node before its
    maintenance, did not learn where the stop was to happen."""
    site = build_site(tmp_path)
    box = site.create(name="box", cpus=1, memory_mib=256, lease_s=3600)
    site.report(box.id, nodes_pb2.OBSERVED_STATE_RUNNING)
    loggers = ("workspace.ops.operate", "workspace.ops.update", "workspace.ops.leases")
    caplog.clear()
    with caplog.at_level(logging.INFO):
        update.update(site.core.env, OWNER, PolicyUpdate("box", limits=Limits(cpu_percent=50)))
        leases.extend(site.core.env, OWNER, box.id, 600)
        site.core.operate(OWNER, box.id, Op.STOP)
        site.core.operate(OWNER, box.id, Op.DESTROY)
        site.core.operate(OWNER, box.id, Op.DESTROY)  # asked again: nothing to change
    said = [r.getMessage() for r in caplog.records if r.name in loggers]
    named = f"workspace {box.id} (box) on node n1"
    assert [m.partition(": ")[0] for m in said] == [
        f"{named} updated",
        named,
        named,
        named,
        named,
    ], said
    assert said[2:] == [
        f"{named}: stop requested",
        f"{named}: destroy requested",
        f"{named}: destroy asked again (nothing to change)",
    ], said


def test_the_agents_lines_of_a_workspace_name_it(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The node's log named a workspace by its id alone in some lines ("workspace w1:
    remove", "workspace w1: 2 vCPU(s) and 512 MiB from this start on", "workspace w1:
    image img is not trusted ..."), by "ID (NAME)" in others: an admin who read "w1:
    remove" had to look the id up to know which workspace of theirs went. Every line
    names it "ID (NAME)", also the removal, whose orders no longer name it."""
    parts = Parts(tmp_path)
    ex = parts.executor
    try:
        with caplog.at_level(logging.INFO, logger="agent"):
            ex.take([_order()])
            ex.reconcile_once()
            wait_for(lambda: ex.observe(["w1"]) == [observed("w1", Observed.RUNNING)])
            ex.take([_order(Desired.STOPPED, stop_timeout_s=1)])
            ex.reconcile_once()
            wait_for(lambda: ex.observe(["w1"]) == [observed("w1", Observed.STOPPED)])
            ex.take([replace(_order(), cpus=2)])  # `ws update --cpus 2`, then `ws start`
            ex.reconcile_once()
            wait_for(lambda: ex.observe(["w1"]) == [observed("w1", Observed.RUNNING)])
            ex.take([])
            ex.reconcile_once()
            wait_for(lambda: ex.observe(["w1"]) == [observed("w1", Observed.ABSENT)])
    finally:
        parts.close()
    said = [r.getMessage() for r in caplog.records if r.name == "agent" and "w1" in r.getMessage()]
    assert "workspace w1 (one): 2 vCPU(s) and 512 MiB from this start on" in said, said
    assert "workspace w1 (one): remove" in said, said
    assert all(m.startswith("workspace w1 (one)") for m in said), said


def test_the_agents_exec_lines_name_a_workspace_as_its_other_lines_do(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """`ws exec` on a node logged "exec hostname in box (w1): exit 0" beside "workspace
    w1 (box): stop": the same workspace written two ways, so grepping the log for "w1
    (box)" missed its execs, consoles and saves."""
    tasks, _driver, outbox = agent_tasks(tmp_path)
    tasks.name_of = {"w1": "box"}.get  # type: ignore[assignment]
    try:
        with caplog.at_level(logging.INFO, logger="agent.tasks"):
            tasks.take(Task("e1", "w1", ExecTask(("hostname",))))
            assert replies(outbox, "e1", ExecOutcome) == [ExecOutcome(0, b"box\n")]
    finally:
        tasks.close()
    assert "exec hostname in w1 (box): exit 0" in caplog.messages, caplog.messages


def test_the_agent_forgets_the_name_of_a_workspace_gone_from_its_node(tmp_path: Path) -> None:
    """The names kept for a removal's lines go with the workspace: a node that ran
    thousands of workspaces over months does not keep them all."""
    parts = Parts(tmp_path)
    ex = parts.executor
    try:
        ex.take([_order()])
        ex.reconcile_once()
        wait_for(lambda: ex.observe(["w1"]) == [observed("w1", Observed.RUNNING)])
        ex.take([])
        ex.reconcile_once()
        wait_for(lambda: ex.observe(["w1"]) == [observed("w1", Observed.ABSENT)])
        assert ex.who("w1") == "w1 (one)"  # still named until a pass finds nothing of it
        wait_for(lambda: ex.idle())
        ex.reconcile_once()
        assert ex.who("w1") == "w1"
    finally:
        parts.close()
