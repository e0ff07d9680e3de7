"""`log_format = "json"`: the daemons write one JSON object per line, and the lines about
a workspace carry its id."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from tests.functional.harness import (
    WS,
    Proc,
    Stubs,
    agent_config,
    service_config,
    wait_for,
    write_config,
)
from workspace import rpc
from workspace.v1 import admin_pb2, workspaces_pb2


def json_lines(path: Path) -> list[dict[str, Any]]:
    out = []
    for line in path.read_text().splitlines():
        if line.strip():
            out.append(json.loads(line))  # every line is one JSON object
    return out


def test_json_logs_name_the_workspace_of_a_create(tmp_path: Path) -> None:
    sock = f"unix:{tmp_path / 'svc.sock'}"
    service_conf = write_config(
        tmp_path / "service.toml",
        service_config(tmp_path, listen=sock, log_format="json", log_level="DEBUG"),
    )
    agent_conf = write_config(
        tmp_path / "agent.toml",
        agent_config(tmp_path, "node1", f"unix:{tmp_path / 'nodes.sock'}", log_format="json"),
    )
    service = Proc(
        ["-m", "workspace.service.main", "--config", str(service_conf)], tmp_path / "s.log"
    )
    agent: Proc | None = None
    stubs: Stubs | None = None
    try:
        stubs = Stubs(rpc.channel(sock), rpc.channel(f"unix:{tmp_path / 'nodes.sock'}"))
        wait_for(lambda: (tmp_path / "svc.sock").exists(), what="the service's socket")
        stubs.network()
        stubs.import_image("img")
        agent = Proc(["-m", "agent.main", "--config", str(agent_conf)], tmp_path / "a.log")
        wait_for(
            lambda: (
                stubs is not None
                and any(
                    n.state == admin_pb2.NODE_STATE_READY
                    for n in stubs.admin.ListNodes(admin_pb2.ListNodesRequest()).nodes
                )
            ),
            what="node READY",
        )
        ws = stubs.create(name="alpha", request_id="req-alpha-1")
        stubs.wait_state(ws.id, WS.WORKSPACE_STATE_RUNNING)
        stubs.ws.StopWorkspace(workspaces_pb2.StopWorkspaceRequest(id=ws.id))
        stubs.wait_state(ws.id, WS.WORKSPACE_STATE_STOPPED)
        stubs.ws.DestroyWorkspace(stubs.ref(ws.id))
        stubs.wait_state(ws.id, WS.WORKSPACE_STATE_TERMINATED)
    finally:
        if agent is not None:
            agent.terminate()
        service.terminate()
        if stubs is not None:
            stubs.channel.close()
    lines = json_lines(tmp_path / "s.log")
    assert lines and all({"time", "level", "logger", "message"} <= set(x) for x in lines)
    about = [x for x in lines if x.get("workspace") == ws.id]
    assert about, lines
    created = [x for x in about if "alpha" in x["message"]]
    assert created and created[0]["request_id"] == "req-alpha-1"
    assert created[0]["method"] == "CreateWorkspace" and created[0]["caller"] == "user:local"
    placed = [x for x in about if "scheduled on node" in x["message"]]
    assert placed and placed[0]["node"] == "node1", about  # the line names both ids
    # Every line of the service about the workspace carries its id too: its stop and
    # destroy asked, its end reported by the node (which the line also names).
    mention = [x for x in lines if ws.id in x["message"]]
    assert all(x.get("workspace") == ws.id for x in mention), mention
    assert any("stop requested" in x["message"] for x in mention), mention
    ended = [x for x in mention if "terminated on node" in x["message"]]
    assert ended and ended[0]["node"] == "node1", ended
    agent_lines = json_lines(tmp_path / "a.log")
    assert any(x.get("workspace") == ws.id for x in agent_lines), agent_lines
    # Every line of the agent that is about the workspace carries its id (the driver's
    # "defined and started" line did not).
    mention = [x for x in agent_lines if ws.id in x["message"]]
    assert len(mention) >= 2 and all(x.get("workspace") == ws.id for x in mention), mention
    assert all(x.get("node") == "node1" for x in agent_lines)
