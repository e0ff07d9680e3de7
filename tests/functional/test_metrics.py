"""Prometheus metrics of a real service and a fake-driver agent: scraped over HTTP,
accepted by `promtool check metrics`, and counting what happened."""

from __future__ import annotations

import json
import re
import shutil
import socket
import subprocess
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.functional.harness import WS, Site, leader_pid, start_replicas, wait_for
from workspace.client import Client
from workspace.v1 import admin_pb2, workspaces_pb2

LOOPBACK_ANY = "127.0.0.1:0"
DASHBOARD = Path(__file__).resolve().parents[2] / "conf" / "grafana-dashboard.json"


@pytest.fixture
def metered(tmp_path: Path) -> Iterator[Site]:
    s = Site(tmp_path, metrics_listen=LOOPBACK_ANY)
    try:
        s.stubs.network()
        s.stubs.import_image("img")
        s.add_agent("node1", metrics_listen=LOOPBACK_ANY)
        yield s
    finally:
        s.close()


def scrape(url: str) -> str:
    with urllib.request.urlopen(url, timeout=10) as r:
        assert r.status == 200
        return str(r.read().decode())


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    out = {}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def value(text: str, name: str, **labels: str) -> float:
    return samples(text).get((name, tuple(sorted(labels.items()))), 0.0)


def promtool_check(text: str) -> None:
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.skip("promtool is not installed (Debian's prometheus; `make deps`)")
    r = subprocess.run(
        [promtool, "check", "metrics"], input=text, capture_output=True, text=True, timeout=60
    )
    assert r.returncode == 0, r.stdout + r.stderr
    assert not (r.stdout + r.stderr).strip(), r.stdout + r.stderr  # no lint complaints


# Labels Prometheus adds to every series it scrapes, and the one of histogram buckets.
TARGET_LABELS = {"job", "instance"}
# A metric selector in PromQL: a name, its label matchers (if any), its range (if any).
SELECTOR = re.compile(r"\b(workspace_[a-z_]+)(\{[^}]*\})?(\[[^\]]+\])?")
FUNCTION_CALL = re.compile(r"\b(rate|irate|increase)\(\s*(workspace_[a-z_]+)")
GROUPING = re.compile(r"\b(?:by|without)\s*\(([^)]*)\)")


def dashboard_exprs() -> list[str]:
    def panels(node: dict[str, object]) -> Iterator[dict[str, object]]:
        for p in node.get("panels", []) or []:  # type: ignore[attr-defined]
            yield p
            yield from panels(p)

    dashboard = json.loads(DASHBOARD.read_text())
    return [str(t["expr"]) for p in panels(dashboard) for t in p.get("targets", [])]  # type: ignore[attr-defined]


def check_dashboard(exposition: str) -> None:
    """Every expression of the Grafana dashboard reads series the service and the agent
    export: each metric name is a sample's name (with its _total, _bucket, _seconds), each
    label it matches or groups by is one of that metric's (or one Prometheus adds), rate()
    and increase() read only counters and histogram buckets, and the gauges every replica
    exports alike (read from the database) are taken once per replica (max), not summed."""
    types: dict[str, str] = {}  # sample name -> its family's type
    labels: dict[str, set[str]] = {}  # sample name -> its labels
    for fam in text_string_to_metric_families(exposition):
        for s in fam.samples:
            types[s.name] = fam.type
            labels.setdefault(s.name, set()).update(s.labels)
    exprs = dashboard_exprs()
    assert exprs
    for e in exprs:
        names = [m.group(1) for m in SELECTOR.finditer(e)]
        assert names, e
        for m in SELECTOR.finditer(e):
            name = m.group(1)
            assert name in types, f"{name} is not exported (in {e})"
            matched = re.findall(r"([a-z_]+)\s*=~?", m.group(2) or "")
            unknown = set(matched) - labels[name] - TARGET_LABELS
            assert not unknown, f"{name} has no label {unknown} (in {e})"
        for by in GROUPING.findall(e):
            grouped = {x.strip() for x in by.split(",") if x.strip()}
            have = set().union(*(labels[n] for n in names)) | TARGET_LABELS
            assert grouped <= have, f"no label {grouped - have} on {names} (in {e})"
        for fn, name in FUNCTION_CALL.findall(e):
            assert types[name] in ("counter", "histogram") and name.endswith(
                ("_total", "_bucket", "_count", "_sum")
            ), f"{fn}() over {name}, a {types[name]} (in {e})"
        # Gauges read from the database are the same on every replica: a panel takes one
        # replica's value (max), never their sum (two replicas showed twice the workspaces).
        shared = ("workspace_workspaces", "workspace_nodes", "workspace_queue_", "workspace_node_")
        for m in re.finditer(r"(max(?: by \([a-z, ]+\))? ?\()?(workspace_[a-z_]+)\{", e):
            if m.group(2).startswith(shared) and types[m.group(2)] == "gauge":
                assert m.group(1), f"{m.group(2)} not taken once per replica in {e}"


def test_service_and_agent_metrics_pass_promtool_and_count(metered: Site) -> None:
    assert metered.service is not None
    service_url = metered.service.metrics_url
    agent_url = metered.agents["node1"].metrics_url
    assert service_url.startswith("http://127.0.0.1:") and service_url.endswith("/metrics")
    assert agent_url.startswith("http://127.0.0.1:") and agent_url != service_url

    ws = metered.stubs.create(name="alpha")
    metered.stubs.wait_state(ws.id, WS.WORKSPACE_STATE_RUNNING)
    with pytest.raises(grpc.RpcError):
        metered.stubs.create(name="huge", cpus=64, memory_mib=1024)

    text = wait_for(
        lambda: (
            (t := scrape(service_url))
            and value(t, "workspace_create_to_running_seconds_count") >= 1
            and t
        ),
        what="create -> running observed",
    )
    promtool_check(text)
    assert "_created" not in text  # no second series per counter and histogram
    ok = value(
        text,
        "workspace_rpc_requests_total",
        service="workspace.v1.Workspaces",
        method="CreateWorkspace",
        code="OK",
    )
    assert ok == 1
    refused = value(
        text,
        "workspace_rpc_requests_total",
        service="workspace.v1.Workspaces",
        method="CreateWorkspace",
        code="RESOURCE_EXHAUSTED",
    )
    assert refused == 1
    assert (
        value(
            text,
            "workspace_rpc_duration_seconds_count",
            service="workspace.v1.Workspaces",
            method="CreateWorkspace",
            code="OK",
        )
        == 1
    )
    assert value(text, "workspace_workspaces", state="RUNNING") == 1
    assert value(text, "workspace_placements_total", source="request") == 1
    assert value(text, "workspace_refusals_total", reason="capacity") == 1
    assert value(text, "workspace_node_cpus", node="node1") == 8
    assert value(text, "workspace_node_memory_bytes", node="node1") == 16384 * 1024 * 1024
    assert value(text, "workspace_node_used_cpus", node="node1") >= 1
    assert value(text, "workspace_nodes", state="READY") == 1
    assert value(text, "workspace_queue_depth") == 0
    assert value(text, "workspace_leader") == 1
    # Every site event counts, also those of a plain store write (the image imported
    # once the site was up): image.added stayed at 0.
    assert value(text, "workspace_site_events_total", kind="image.added") == 1
    assert value(text, "workspace_site_events_total", kind="workspace.created") == 1
    # The gauges read from the database say they are the site's, for whoever sums replicas.
    helps = {f.name: f.documentation for f in text_string_to_metric_families(text)}
    for name in ("workspace_workspaces", "workspace_nodes", "workspace_queue_depth"):
        assert "every replica exports the same" in helps[name], helps[name]
    assert "every replica" not in helps["workspace_placements"]
    # the Nodes API is counted too
    assert (
        value(
            text,
            "workspace_rpc_requests_total",
            service="workspace.node.v1.Nodes",
            method="Register",
            code="OK",
        )
        >= 1
    )

    agent_text = wait_for(
        lambda: (
            (t := scrape(agent_url))
            and value(t, "workspace_agent_operations_total", action="create", result="ok") >= 1
            and t
        ),
        what="the agent's create counted",
    )
    promtool_check(agent_text)
    assert "_created" not in agent_text
    assert value(agent_text, "workspace_agent_domains", state="running") == 1
    assert value(agent_text, "workspace_agent_cache_misses_total") >= 1
    assert value(agent_text, "workspace_agent_blob_transfer_bytes_total", source="service") == 65536
    assert value(agent_text, "workspace_agent_blob_transfer_bytes_total", source="peer") == 0
    assert value(agent_text, "workspace_agent_cache_used_bytes") == 65536

    check_dashboard(text + agent_text)


def test_queue_metrics(metered: Site) -> None:
    assert metered.service is not None
    url = metered.service.metrics_url
    big = metered.stubs.create(name="big", cpus=1, memory_mib=12000)
    metered.stubs.create(name="later", cpus=1, memory_mib=8000, wait_for_capacity_s=60)
    text = scrape(url)
    assert value(text, "workspace_queue_depth") == 1
    assert value(text, "workspace_queue_oldest_wait_seconds") >= 0
    metered.stubs.ws.DestroyWorkspace(metered.stubs.ref(big.id))
    text = wait_for(
        lambda: (t := scrape(url)) and value(t, "workspace_queue_wait_seconds_count") == 1 and t,
        what="the queue wait observed",
    )
    assert value(text, "workspace_placements_total", source="queue") == 1
    assert value(text, "workspace_queue_depth") == 0


def test_metrics_are_off_by_default(ready_site: Site) -> None:
    assert ready_site.service is not None
    assert ready_site.service.metrics is None and ready_site.service.metrics_url == ""
    assert ready_site.agents["node1"].metrics_url == ""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_a_restarted_service_and_agent_serve_metrics_again_on_their_port(tmp_path: Path) -> None:
    """An admin's Prometheus scrapes a fixed address: after a restart of the service and
    of the agent the same URL answers again (counters start over; the site's gauges,
    read from the database, do not; the node's cache does not either: a hit)."""
    svc_address, agent_address = f"127.0.0.1:{free_port()}", f"127.0.0.1:{free_port()}"
    s = Site(tmp_path, metrics_listen=svc_address)
    try:
        s.stubs.network()
        s.stubs.import_image("img")
        s.add_agent("node1", metrics_listen=agent_address)
        ws = s.stubs.create(name="alpha")
        s.stubs.wait_state(ws.id, WS.WORKSPACE_STATE_RUNNING)
        url = f"http://{svc_address}/metrics"
        before = scrape(url)
        assert value(before, "workspace_placements_total", source="request") == 1
        s.stop_agent("node1")
        s.stop_service()
        s.start_service()
        assert s.service is not None and s.service.metrics_url == url
        s.add_agent("node1", metrics_listen=agent_address)
        after = scrape(url)
        promtool_check(after)
        assert value(after, "workspace_placements_total", source="request") == 0
        assert value(after, "workspace_workspaces", state="RUNNING") == 1
        assert value(after, "workspace_leader") == 1
        agent_url = f"http://{agent_address}/metrics"
        agent_text = scrape(agent_url)
        promtool_check(agent_text)
        assert value(agent_text, "workspace_agent_domains", state="running") == 1
        # The image stayed in the node's cache: a second workspace of it is a hit.
        beta = s.stubs.create(name="beta")
        s.stubs.wait_state(beta.id, WS.WORKSPACE_STATE_RUNNING)
        agent_text = scrape(agent_url)
        assert value(agent_text, "workspace_agent_cache_hits_total") == 1
        assert value(agent_text, "workspace_agent_cache_misses_total") == 0
        assert value(agent_text, "workspace_agent_blob_transfer_bytes_total", source="service") == 0
        assert value(agent_text, "workspace_agent_domains", state="running") == 2
    finally:
        s.close()


def test_every_replica_serves_metrics_and_only_the_leader_says_it_leads(
    tmp_path: Path, pg_db: str
) -> None:
    """Two replicas on PostgreSQL: each answers /metrics with the site's gauges (read from
    the database), workspace_leader is 1 on the replica that holds the leader lock and 0
    on the other, and 1 on the survivor once the leader stops."""
    replicas = start_replicas(tmp_path, pg_db, metrics_listen="127.0.0.1:0")
    try:
        for r in replicas.values():
            wait_for(lambda r=r: Path(r.listen[5:]).exists(), 60, f"replica {r.listen}")

        def urls() -> dict[int, str]:
            with Client(replicas["a"].listen, timeout_s=10) as c:
                return {r.pid: r.metrics_url for r in c.list_replicas()}

        by_pid = wait_for(
            lambda: (u := urls()) and len(u) == 2 and leader_pid(pg_db) in u and u,
            30,
            "both replicas listed, one leading",
        )
        leader = leader_pid(pg_db)

        def leads(pid: int) -> float:
            return value(scrape(by_pid[pid]), "workspace_leader")

        wait_for(
            lambda: all(leads(p) == (1 if p == leader else 0) for p in by_pid),
            20,
            "workspace_leader 1 on the leader only",
        )
        for text in (scrape(u) for u in by_pid.values()):
            promtool_check(text)
            got = samples(text)
            assert ("workspace_nodes", (("state", "READY"),)) in got
            assert ("workspace_workspaces", (("state", "RUNNING"),)) in got
        (survivor,) = (p for p in by_pid if p != leader)
        (stopped,) = (r for r in replicas.values() if r.pid == leader)
        stopped.proc.terminate()
        wait_for(lambda: leads(survivor) == 1, 30, "the survivor's workspace_leader 1")
    finally:
        for r in replicas.values():
            r.proc.terminate()


def dashboard_targets() -> Iterator[tuple[str, str, str, str]]:
    """(panel title, refId, expr, the unit Grafana draws that target's series in: the
    panel's, or an override's for that refId)."""
    for p in json.loads(DASHBOARD.read_text())["panels"]:
        field_config = p.get("fieldConfig", {})
        default = field_config.get("defaults", {}).get("unit", "")
        for t in p["targets"]:
            unit = default
            for o in field_config.get("overrides", []):
                if o["matcher"] == {"id": "byFrameRefID", "options": t["refId"]}:
                    for prop in o["properties"]:
                        unit = prop["value"] if prop["id"] == "unit" else unit
            yield p["title"], t["refId"], t["expr"], unit


def expected_unit(expr: str) -> set[str]:
    """The Grafana units that fit what ``expr`` computes, from its metric's name."""
    name = SELECTOR.search(expr).group(1)  # type: ignore[union-attr]
    if "histogram_quantile" in expr:
        assert name.endswith("_seconds_bucket"), expr
        return {"s"}
    if " / " in expr:
        return {"percentunit"}  # a ratio of two like quantities
    if "rate(" in expr:
        return {"Bps"} if name.endswith("_bytes_total") else {"reqps", "ops"}
    if name.endswith("_seconds"):
        return {"s"}
    if name.endswith("_bytes"):
        return {"bytes"}
    return {"short"}


def test_each_dashboard_series_is_drawn_in_its_metrics_unit() -> None:
    """A panel showing a count and a time drew the time on the count's axis (the queue's
    oldest wait of an hour read "3.6 K" next to "waiting"): each target's unit is its
    metric's, overriding the panel's where they differ."""
    targets = list(dashboard_targets())
    assert targets
    for title, ref, expr, unit in targets:
        assert unit in expected_unit(expr), f"{title} {ref}: {expr} drawn in {unit!r}"


def test_rpc_panels_keep_methods_of_two_services_apart() -> None:
    """Admin.GetUsage (every project's) and Workspaces.GetUsage (the caller's) are
    different calls with one method name: a panel grouping by method alone added their
    rates and latencies into one GetUsage series."""
    services: dict[str, set[str]] = {}
    for module in (admin_pb2, workspaces_pb2):
        for svc in module.DESCRIPTOR.services_by_name.values():
            services[svc.full_name] = {m.name for m in svc.methods}
    assert services["workspace.v1.Admin"] & services["workspace.v1.Workspaces"]
    for title, ref, expr, _unit in dashboard_targets():
        if "workspace_rpc_" not in expr:
            continue
        for by in GROUPING.findall(expr):
            grouped = {x.strip() for x in by.split(",")}
            assert "method" not in grouped or "service" in grouped, f"{title} {ref}: {expr}"


def test_every_dashboard_expression_is_promql(tmp_path: Path) -> None:
    """Each expression parses as PromQL (`promtool check rules` on them as recording
    rules, the dashboard's variables given the jobs' default names)."""
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.skip("promtool is not installed (Debian's prometheus; `make deps`)")
    rules = [
        {
            "record": f"dashboard:{i}",
            "expr": e.replace("$service_job", "workspace-service").replace(
                "$agent_job", "workspace-agent"
            ),
        }
        for i, (_title, _ref, e, _unit) in enumerate(dashboard_targets())
    ]
    path = tmp_path / "rules.json"  # YAML's superset: JSON is read as it is
    path.write_text(json.dumps({"groups": [{"name": "dashboard", "rules": rules}]}))
    r = subprocess.run(
        [promtool, "check", "rules", str(path)], capture_output=True, text=True, timeout=60
    )
    assert r.returncode == 0 and f"{len(rules)} rules found" in r.stdout, r.stdout + r.stderr
