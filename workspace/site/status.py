"""Talking to a local site's service: waiting for it to come up, and ``site status``.

The launcher (``workspace.site.local``) starts the processes; this module asks the
service, through ``workspace.client``, whether it serves and which nodes are READY.
"""

from __future__ import annotations

import contextlib
import subprocess
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from workspace import config, errors, hostproc, pki, sole
from workspace.client import Client
from workspace.config import ServiceConfig, TlsConfig
from workspace.site.configs import DEFAULT_NETWORK, SERVICE_CONFIG, agent_state_dir, service_store
from workspace.site.hostenv import netns_exists
from workspace.site.record import AgentRecord, SiteError, SiteRecord
from workspace.v1 import admin_pb2

SERVICE_MODULE = "workspace.service.main"
AGENT_MODULE = "agent.main"

# (what was started: "service" or a node name, its process)
Started = Sequence[tuple[str, "subprocess.Popen[bytes]"]]
LogOf = Callable[[str], Path]


class NodesNotReady(SiteError):
    """Every process of the site started, but a node did not report in time (its agent
    refused, or slow): the site is left running for a look (``site status``, the logs)
    and for what fixes it (docs/security.md, "Restoring a site")."""


def service_matcher(config_path: Path) -> hostproc.Matcher:
    """Our service: ``python -m workspace.service.main --config <site>/service.toml``."""
    return hostproc.argv_includes(SERVICE_MODULE, config_path)


def agent_matcher(config_path: Path) -> hostproc.Matcher:
    """Our agent: ``python -m agent.main --config <node dir>/agent.toml``."""
    return hostproc.argv_includes(AGENT_MODULE, config_path)


def service_lock(site_dir: Path) -> Path:
    """The lock file the site's service holds while it runs (its SQLite store's)."""
    return sole.store_lock(service_store(site_dir))


def agent_lock(agent: AgentRecord) -> Path:
    """The lock file ``agent`` holds while it runs (its state directory's)."""
    return sole.node_lock(agent_state_dir(Path(agent.dir)))


def is_stopping(pid: int, lock: Path, matches: hostproc.Matcher) -> bool:
    """Whether our daemon ``pid`` got its stop signal and still finishes its work before
    it exits (it says so in its lock file: workspace/sole.py)."""
    return (
        bool(pid) and sole.stopping(lock) == pid and hostproc.pid_if_ours(pid, matches) is not None
    )


def log_tail(path: Path, lines: int = 15) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return ""
    tail = text.splitlines()[-lines:]
    return "\n".join("    " + line for line in tail)


def node_state_name(node: admin_pb2.Node) -> str:
    return admin_pb2.NodeState.Name(node.state).removeprefix("NODE_STATE_")


def check_started(started: Started, log_of: LogOf) -> None:
    """Raise if a process this start launched has exited already."""
    for name, proc in started:
        code = proc.poll()
        if code is not None:
            what = "service" if name == "service" else f"agent of node {name}"
            log = log_of(name)
            raise SiteError(
                f"the {what} exited with status {code} while starting; "
                f"last lines of {log}:\n{log_tail(log)}"
            )


def wait_healthy(
    address: str, started: Started, deadline: float, log_of: LogOf, tls: TlsConfig | None = None
) -> None:
    """Until the service at ``address`` says SERVING (or ``deadline``, monotonic)."""
    last = ""
    with Client(address, tls, timeout_s=2.0) as client:
        while True:
            check_started(started, log_of)
            try:
                status = client.health()
                if status == "SERVING":
                    return
                last = f"health status {status}"
            except errors.WorkspaceError as exc:
                last = exc.message
            if time.monotonic() > deadline:
                log = log_of("service")
                raise SiteError(
                    f"the service at {address} did not become healthy ({last}); "
                    f"last lines of {log}:\n{log_tail(log)}"
                )
            time.sleep(0.1)


def ensure_network(address: str, say: Callable[[str], None], tls: TlsConfig | None = None) -> None:
    """Create the default network unless the service has one."""
    with Client(address, tls, timeout_s=5.0) as client:
        if client.list_networks():
            return
        net = DEFAULT_NETWORK
        say(f"creating network {net.name} ({net.subnet}, bridge {net.bridge})")
        with contextlib.suppress(errors.AlreadyExists):
            client.create_network(net.name, net.subnet, gateway=net.gateway, bridge=net.bridge)


def heartbeat_of(node: admin_pb2.Node) -> float:
    """When ``node`` last reported (epoch seconds; 0: never)."""
    ts = node.last_heartbeat
    return ts.seconds + ts.nanos / 1e9


def age_text(seconds: float) -> str:
    """``45s``, ``3m10s``, ``2h05m``."""
    s = max(0, int(seconds))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s // 3600}h{s % 3600 // 60:02d}m"


def wait_nodes_ready(
    address: str,
    names: Sequence[str],
    started: Started,
    deadline: float,
    log_of: LogOf,
    tls: TlsConfig | None = None,
    since: float = 0.0,
) -> None:
    """Until every node of ``names`` is registered and up: READY, or DRAINING (an admin's
    drain outlives the site's restart; the node is up and keeps it), with a heartbeat at
    or after ``since`` (epoch seconds: when this start began). The state in the database
    is what the node last was: a READY row whose heartbeat predates the start says
    nothing of the agent running now, which may be refused (its certificate)."""
    up = (admin_pb2.NodeState.NODE_STATE_READY, admin_pb2.NodeState.NODE_STATE_DRAINING)
    waiting = list(names)
    last = "not registered"

    def reports(node: admin_pb2.Node | None) -> bool:
        return node is not None and node.state in up and heartbeat_of(node) >= since

    with Client(address, tls, timeout_s=5.0) as client:
        while True:
            check_started(started, log_of)
            try:
                nodes = {n.name: n for n in client.list_nodes()}
                waiting = [name for name in waiting if not reports(nodes.get(name))]
                if not waiting:
                    return
                node = nodes.get(waiting[0])
                last = "not registered" if node is None else node_state_name(node)
                if node is not None and node.reason:
                    last += f": {node.reason}"
                elif node is not None and node.state in up:
                    seen = heartbeat_of(node)
                    last += (
                        f" in the database, but no heartbeat since this start (last "
                        f"{age_text(time.time() - seen)} ago)"
                        if seen
                        else ", never reported"
                    )
            except errors.Unavailable as exc:
                last = exc.message
            if time.monotonic() > deadline:
                log = log_of(waiting[0])
                raise NodesNotReady(
                    f"node {waiting[0]} did not become READY ({last}); "
                    f"last lines of {log}:\n{log_tail(log)}"
                )
            time.sleep(0.2)


# `site status` calls a READY node STALE when its last heartbeat is older than this many
# of the service's heartbeat intervals (the service marks it DOWN only after node_grace_s).
STALE_HEARTBEATS = 3


def heartbeat_interval(site_dir: Path) -> float:
    """The heartbeat interval the site's service.toml asks of agents (its default if the
    file is missing or unreadable)."""
    try:
        return float(config.load(ServiceConfig, site_dir / SERVICE_CONFIG).heartbeat_interval_s)
    except (OSError, errors.WorkspaceError, ValueError):
        return float(ServiceConfig().heartbeat_interval_s)


def node_view(node: admin_pb2.Node | None, stale_after: float) -> dict[str, Any]:
    """A node as `site status` shows it: its state (``STALE`` for a READY or DRAINING
    node that has not reported for ``stale_after`` seconds: the database still says it
    is up, its agent does not say so), how long since its last heartbeat, and why it is
    DOWN."""
    if node is None:
        return {"state": "UNKNOWN", "stored_state": "", "heartbeat_age_s": None, "reason": ""}
    stored = node_state_name(node)
    seen = heartbeat_of(node)
    age = round(time.time() - seen, 1) if seen else None
    state = stored
    reason = node.reason
    if stored in ("READY", "DRAINING") and (age is None or age > stale_after):
        state = "STALE"
        last = f"{age_text(age)} ago" if age is not None else "never"
        reason = f"{stored} in the database, but its last heartbeat was {last}"
    return {"state": state, "stored_state": stored, "heartbeat_age_s": age, "reason": reason}


def identity_of(rec: SiteRecord) -> dict[str, str]:
    """The admin identity the site issued (what `ws` uses here without --identity)."""
    if not rec.identity_dir:
        return {"dir": "", "principal": "", "note": "plaintext (a site from before identities)"}
    try:
        who = pki.identity_of_dir(rec.identity_dir)
    except errors.WorkspaceError as exc:
        return {"dir": rec.identity_dir, "principal": "", "note": exc.message}
    role = " (admin)" if who.admin else ""
    return {"dir": rec.identity_dir, "principal": who.principal + role, "note": ""}


def processes(rec: SiteRecord, service_log: Path) -> dict[str, Any]:
    """What the site started, in the keys both ``site up -o json`` and ``site status -o
    json`` give it: ``service`` (pid, log, netns, metrics), ``agent`` (node 1's pid and
    log), ``agents`` (each node's, named by ``name`` as `ws-admin node list` does, and by
    ``node``), ``identity`` and, with a switch between the nodes, ``switch``. ``site
    status`` adds whether each runs; site.json's flat keys (``service_pid``, ``agent_pid``,
    ``identity_dir``, ...) are ``site up``'s too, kept for the scripts that read them."""
    first = rec.agents[0]
    out: dict[str, Any] = {
        "service": {
            "pid": rec.service_pid,
            "log": str(service_log),
            "netns": rec.service_netns,
            "metrics": rec.service_metrics,
        },
        "agent": {"pid": first.pid, "log": str(first.log)},
        "agents": [
            {
                "node": a.node,
                "name": a.node,  # the node's, as `ws-admin node list` names it
                "pid": a.pid,
                "netns": a.netns,
                "dir": a.dir,
                "log": str(a.log),
                "metrics": a.metrics,
            }
            for a in rec.agents
        ],
        "identity": identity_of(rec),
    }
    if rec.switch_netns:
        out["switch"] = {"netns": rec.switch_netns, "exists": netns_exists(rec.switch_netns)}
    return out


def report(
    rec: SiteRecord, site_dir: Path, service_matches: hostproc.Matcher, service_log: Path
) -> dict[str, Any]:
    """``site status``: what runs, whether the service answers, every node's state. A
    daemon that got its stop signal and still finishes its work is ``stopping``, not
    running: it is gone a moment later (``site up`` then starts it again)."""
    svc_stopping = is_stopping(rec.service_pid, service_lock(site_dir), service_matches)
    svc = (
        not svc_stopping
        and hostproc.pid_if_ours(rec.service_pid or None, service_matches) is not None
    )
    stopping = {
        a.node: is_stopping(a.pid, agent_lock(a), agent_matcher(a.config)) for a in rec.agents
    }
    running = {
        a.node: not stopping[a.node]
        and hostproc.pid_if_ours(a.pid or None, agent_matcher(a.config)) is not None
        for a in rec.agents
    }
    first = rec.agents[0]
    started = processes(rec, service_log)
    out: dict[str, Any] = {"dir": str(site_dir), "state": "stopped"}
    out.update(
        address=rec.address,
        driver=rec.driver,
        virt_type=rec.virt_type,
        netns=rec.netns,
        service={**started["service"], "running": svc, "stopping": svc_stopping},
        agent={
            **started["agent"],
            "running": running[first.node],
            "stopping": stopping[first.node],
        },
    )
    if "switch" in started:
        out["switch"] = started["switch"]
    out["identity"] = started["identity"]
    tls = TlsConfig(identity_dir=rec.identity_dir) if rec.identity_dir else None
    health = ""
    nodes: dict[str, admin_pb2.Node] = {}
    if svc:
        try:
            with Client(rec.address, tls, timeout_s=3.0) as client:
                health = client.health()
                nodes = {n.name: n for n in client.list_nodes()}
        except errors.WorkspaceError as exc:
            health = health or f"error: {exc.message}"
    out["health"] = health
    stale_after = STALE_HEARTBEATS * heartbeat_interval(site_dir)
    views = {a.node: node_view(nodes.get(a.node), stale_after) for a in rec.agents}
    states = {name: v["state"] for name, v in views.items()}
    out["node"] = {"name": first.node, "state": states[first.node]}
    out["agents"] = [
        {**seen, "running": running[a.node], "stopping": stopping[a.node], **views[a.node]}
        for a, seen in zip(rec.agents, started["agents"], strict=True)
    ]
    ok = (
        svc
        and all(running.values())
        and health == "SERVING"
        and all(states.get(a.node) == "READY" for a in rec.agents)
        and (not rec.switch_netns or out["switch"]["exists"])
    )
    out["state"] = "running" if ok else "degraded"
    return out
