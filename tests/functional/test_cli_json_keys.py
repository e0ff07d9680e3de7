"""The keys a script reads the same way across ws and ws-admin (`-o json`): an object
the CLIs print names itself by ``name`` (and ``id`` where it has one), whatever other
keys it had first; `site up` and `site status` give a site alike; every time is RFC
3339 to the second; a wait's progress is on stderr. Walked over a local site on the fake
driver."""

from __future__ import annotations

import json
import os
import re
import signal
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.functional.test_cli import ok, run, wait_gone
from workspace.site import local

IMAGE = "keys-img"


@pytest.fixture(scope="module")
def site_dir(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    d = tmp_path_factory.mktemp("keys") / "site"
    ok(d, "admin", "site", "up", "--driver", "fake", "--dir", str(d))
    disk = d.parent / "disk.img"
    disk.write_bytes(os.urandom(1024 * 1024))
    try:
        ok(d, "admin", "image", "import", IMAGE, str(disk))
        yield d
    finally:
        record = local.read_record(d)
        run(d, "admin", "site", "down", "--dir", str(d))
        if record is not None:  # nothing may outlive the tests
            for pid in (record.service_pid, record.agent_pid):
                if not wait_gone(pid, 1.0):
                    os.kill(pid, signal.SIGKILL)


def js(site_dir: Path, module: str, *args: str) -> Any:
    return ok(site_dir, module, "-o", "json", *args).json()


def has(obj: dict[str, Any], **want: Any) -> None:
    got = {k: obj.get(k, "<missing>") for k in want}
    assert got == want, f"{sorted(obj)}"


def test_objects_name_themselves_alike_across_commands(site_dir: Path) -> None:
    """`ws cluster scale -o json` named neither its cluster (but inside "cluster") nor
    the role scaled; `ws project list|show` and `ws quota` named a project only as
    "project" where `ws-admin project list` says "name"; `ws-admin site status` gave
    each node's agent as "node" where `ws-admin node list` says "name". The keys a
    script used stay; the common ones are added."""
    ok(site_dir, "admin", "project", "create", "phys", "--quota", "vcpus=16")
    ok(site_dir, "admin", "project", "add-user", "phys", "local")
    box = js(site_dir, "ws", "create", "--image", IMAGE, "--name", "box", "--project", "phys")
    has(box, name="box", project="phys", owner="local")
    for ws in (js(site_dir, "ws", "show", "box"), *js(site_dir, "ws", "list")):
        assert {"id", "name", "state", "node", "project", "owner"} <= set(ws), sorted(ws)

    made = js(
        site_dir,
        "ws",
        "cluster",
        "create",
        "duo",
        "--project",
        "phys",
        "--member",
        f"head={IMAGE},memory-mib=64",
        "--member",
        f"worker={IMAGE},memory-mib=64",
        "--wait",
    )
    shown = js(site_dir, "ws", "cluster", "show", "duo")
    has(shown, id=made["id"], name="duo", project="phys", owner="local", state="RUNNING")
    scaled = js(site_dir, "ws", "cluster", "scale", "duo", "--role", "worker", "--count", "2")
    has(scaled, id=made["id"], name="duo", role="worker", previous=1, count=2)
    has(scaled["cluster"], id=made["id"], name="duo", project="phys")  # as it was
    ran = js(site_dir, "ws", "cluster", "exec", "duo", "--", "true")
    has(ran, id=made["id"], name="duo", cluster="duo")

    (mine,) = js(site_dir, "ws", "quota")
    has(mine, name="phys", project="phys")
    assert js(site_dir, "ws", "project", "list") == [mine]
    has(js(site_dir, "ws", "project", "show", "phys"), name="phys", project="phys")
    (listed,) = js(site_dir, "admin", "project", "list")
    has(listed, name="phys")
    admin_show = js(site_dir, "admin", "project", "show", "phys")
    has(admin_show, name="phys")
    has(admin_show["project"], name="phys")
    has(admin_show["quota"], name="phys", project="phys")

    (node,) = js(site_dir, "admin", "node", "list")
    has(node, name="local", state="READY")
    status = js(site_dir, "admin", "site", "status")
    has(status["node"], name="local", state="READY")
    (agent,) = status["agents"]
    has(agent, name="local", node="local", state="READY")


def test_site_up_gives_what_site_status_gives_under_the_same_keys(site_dir: Path) -> None:
    """`ws-admin site up -o json` printed site.json's flat keys (``service_pid``,
    ``identity_dir``, agents without ``name`` or ``log``) where `site status -o json`
    says ``service.pid``, ``identity.dir``, ``agents[].name``: a script had to read the
    same site two ways. Both give the nested keys now; the flat ones stay."""
    up = js(site_dir, "admin", "site", "up", "--dir", str(site_dir))
    status = js(site_dir, "admin", "site", "status", "--dir", str(site_dir))
    assert up["state"] == status["state"] == "running" and up["already"] is True
    for key in ("pid", "log", "netns", "metrics"):
        assert up["service"][key] == status["service"][key], key
    assert up["service"]["pid"] == up["service_pid"] > 0
    assert up["service"]["metrics"] == up["service_metrics"]
    assert up["agent"] == {k: status["agent"][k] for k in ("pid", "log")}
    assert up["agent"]["pid"] == up["agent_pid"]
    assert up["identity"] == status["identity"]
    assert up["identity"]["dir"] == up["identity_dir"]
    assert up["virt_type"] == status["virt_type"]
    (agent,) = up["agents"]
    (seen,) = status["agents"]
    for key in ("node", "name", "pid", "netns", "dir", "log", "metrics"):
        assert agent[key] == seen[key], key
    has(agent, name="local", node="local", dir=str(site_dir))


# What every time in -o json looks like: RFC 3339, UTC, to the second (jq's fromdate).
RFC3339_S = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ")


def test_times_are_rfc3339_to_the_second_as_the_text_shows_them(site_dir: Path) -> None:
    """A protobuf Timestamp came out with its nanoseconds (``…T00:05:43.064617472Z``),
    which jq's ``fromdate`` refuses, while `site up`, `pki list` and the events gave
    ``…T00:05:43Z``; every time is now to the second, as the text shows it."""
    box = js(site_dir, "ws", "create", "--image", IMAGE, "--name", "clock")
    shown = js(site_dir, "ws", "show", "clock")
    text = ok(site_dir, "ws", "show", "clock").out
    for key in ("created_at", "updated_at"):
        assert RFC3339_S.fullmatch(shown[key]), shown[key]
        assert re.search(rf"^{key} +{shown[key]}$", text, re.M), text
    assert box["created_at"] == shown["created_at"]
    (img,) = [i for i in js(site_dir, "ws", "image", "list") if i["name"] == IMAGE]
    (node,) = js(site_dir, "admin", "node", "list")
    replicas = js(site_dir, "admin", "replica", "list")
    usage = js(site_dir, "ws", "usage")
    up = js(site_dir, "admin", "site", "up", "--dir", str(site_dir))
    events = [
        json.loads(line)
        for line in ok(site_dir, "ws", "-o", "json", "events", "clock").out.splitlines()
    ]
    times = [
        img["created_at"],
        node["last_heartbeat"],
        *(r["started_at"] for r in replicas),
        usage["until"],
        up["started_at"],
        *(e["time"] for e in events),
    ]
    assert events and all(RFC3339_S.fullmatch(t) for t in times), times


def test_a_wait_in_json_mode_says_its_progress_on_stderr(site_dir: Path) -> None:
    """`--wait -o json` printed no progress at all: a long wait (a boot, a queue) was
    silent until the result. The state lines go to stderr as in text mode; stdout
    holds the result alone."""
    r = ok(site_dir, "ws", "-o", "json", "create", "--image", IMAGE, "--name", "slow", "--wait")
    made = json.loads(r.out)
    assert made["state"] == "RUNNING"
    assert f"ws: slow ({made['id']}): RUNNING" in r.err.splitlines(), r.err
    r = ok(site_dir, "ws", "-o", "json", "stop", "slow", "--wait")
    assert json.loads(r.out)["state"] == "STOPPED"
    assert f"ws: slow ({made['id']}): STOPPED" in r.err.splitlines(), r.err
    r = ok(
        site_dir,
        "ws",
        "-o",
        "json",
        "cluster",
        "create",
        "solo",
        "--member",
        f"head={IMAGE},memory-mib=64",
        "--wait",
    )
    c = json.loads(r.out)
    assert c["state"] == "RUNNING"
    assert f"ws: cluster solo ({c['id']}): RUNNING, 1/1 members RUNNING" in r.err, r.err
    r = ok(
        site_dir,
        "ws",
        "-o",
        "json",
        "cluster",
        "scale",
        "solo",
        "--role",
        "head",
        "--count",
        "2",
        "--wait",
    )
    assert json.loads(r.out)["count"] == 2
    assert f"ws: cluster solo ({c['id']}): 1/1 new members RUNNING" in r.err, r.err
