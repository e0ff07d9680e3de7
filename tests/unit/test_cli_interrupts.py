"""Ctrl-C during a wait of ws (`ws stop|start|… --wait`, `ws cluster stop|… --wait`,
`ws cluster scale --wait`, `ws image save`), against a fake client: only the wait ends
(exit 130), and stderr says what was asked, the state it was last seen in and how to
follow it; `ws cluster exec` ends at once. And a scale whose wait fails: what was scaled
is printed all the same."""

from __future__ import annotations

import _thread
import io
import json
import signal
import threading
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from tests.unit.cluster_examples import CS, WS
from tests.unit.cluster_examples import cluster as _cluster
from workspace import errors
from workspace.cli import admin, ws
from workspace.domain.events import SiteEvent
from workspace.v1 import access_pb2, clusters_pb2, common_pb2, workspaces_pb2


def _ws(ref: str, state: int, **kw: Any) -> common_pb2.Workspace:
    return common_pb2.Workspace(id=f"id-{ref}", name=ref, state=state, **kw)


class WaitInterrupted:
    """Asked to stop (or pause), the workspaces are seen STOPPING (PAUSED requested) by the
    wait, and then Ctrl-C; the clusters likewise."""

    def __init__(self) -> None:
        self.calls: list[str] = []

    def stop_workspace(self, ref: str, timeout_s: int = 0, force: bool = False) -> Any:
        self.calls.append(f"stop {ref}")
        return _ws(ref, WS.WORKSPACE_STATE_RUNNING, desired_state=common_pb2.DESIRED_STATE_STOPPED)

    def pause_workspace(self, ref: str) -> Any:
        self.calls.append(f"pause {ref}")
        return _ws(ref, WS.WORKSPACE_STATE_RUNNING, desired_state=common_pb2.DESIRED_STATE_PAUSED)

    def wait_for_state(
        self,
        ref: str,
        states: Any,
        timeout_s: float,
        on_change: Any,
        on_outage: Any = None,
        waited_s: Any = None,
        desired: Any = None,
        named: str = "",
    ) -> Any:
        name = ref.removeprefix("id-")
        if name == "b":  # the second of two: the first was waited for
            raise KeyboardInterrupt
        if on_change is not None:
            on_change(_ws(name, WS.WORKSPACE_STATE_STOPPING))
        if name == "a":
            return _ws(name, WS.WORKSPACE_STATE_STOPPED)
        raise KeyboardInterrupt

    def stop_cluster(self, ref: str) -> Any:
        self.calls.append(f"stop_cluster {ref}")
        return _cluster(CS.CLUSTER_STATE_RUNNING)

    def wait_for_cluster_state(
        self,
        ref: str,
        states: Any,
        timeout_s: float,
        on_change: Any,
        on_outage: Any = None,
        desired: Any = None,
    ) -> Any:
        c = _cluster(CS.CLUSTER_STATE_STOPPING, WS.WORKSPACE_STATE_STOPPING)
        c.members[1].state = WS.WORKSPACE_STATE_STOPPED
        if on_change is not None:
            on_change(c)
        raise KeyboardInterrupt

    def scale_cluster(self, ref: str, role: str, count: int, wait_for_capacity_s: int) -> Any:
        self.calls.append(f"scale {ref} {role} {count}")
        return clusters_pb2.ScaleClusterResponse(
            cluster=_cluster(), added=["mpi-worker-1"], message="worker 1 → 2"
        )

    def get_cluster(self, ref: str) -> Any:
        c = _cluster(CS.CLUSTER_STATE_STARTING)
        c.members.add(name="mpi-worker-1", role="worker", state=WS.WORKSPACE_STATE_PENDING)
        self.calls.append(f"get_cluster {ref}")
        raise_after = sum(call.startswith("get_cluster") for call in self.calls) > 1
        if raise_after:
            raise KeyboardInterrupt
        return c

    def close(self) -> None:
        pass


def _run(argv: list[str], client: WaitInterrupted) -> int:
    return ws.main(argv, connect=lambda _s: client)  # type: ignore[arg-type, return-value]


def _said(err: str) -> list[str]:
    """stderr without the progress lines of the wait (text mode): what the end said."""
    return [line for line in err.splitlines() if "interrupted" in line]


@pytest.mark.parametrize("output", ["text", "json"])
def test_an_interrupted_action_wait_says_what_was_left_and_that_it_goes_on(
    output: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """It said only "ws: interrupted": whether the stop had been asked, and what state the
    workspace was in, the user had to find out."""
    client = WaitInterrupted()
    assert _run(["-o", output, "stop", "x", "--wait"], client) == 130
    out = capsys.readouterr()
    assert out.out == ""
    assert _said(out.err) == [
        "ws: wait interrupted: x (id-x): STOPPING when last seen; the stop goes on "
        "(`ws show id-x` follows it)",
        "ws: interrupted",
    ]
    # Interrupted before the wait saw it: as the request left it.
    assert _run(["-o", output, "pause", "a", "b", "--wait"], client) == 130
    assert client.calls == ["stop x", "pause a", "pause b"]
    assert _said(capsys.readouterr().err) == [
        "ws: wait interrupted: a (id-a): STOPPING when last seen; the pause goes on "
        "(`ws show id-a` follows it)",
        "ws: wait interrupted: b (id-b): RUNNING, PAUSED requested when last seen; the pause "
        "goes on (`ws show id-b` follows it)",
        "ws: interrupted",
    ]


@pytest.mark.parametrize("output", ["text", "json"])
def test_an_interrupted_cluster_wait_says_what_was_left(
    output: str, capsys: pytest.CaptureFixture[str]
) -> None:
    client = WaitInterrupted()
    assert _run(["-o", output, "cluster", "stop", "mpi", "--wait"], client) == 130
    out = capsys.readouterr()
    assert out.out == ""
    assert _said(out.err) == [
        "ws: wait interrupted: cluster mpi (c1): STOPPING, 0/2 members RUNNING when last "
        "seen; the stop goes on (`ws cluster show c1` follows it)",
        "ws: interrupted",
    ]


@pytest.mark.parametrize("output", ["text", "json"])
def test_an_interrupted_scale_wait_says_the_scale_goes_on(
    output: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """A grow queued for capacity stays queued after Ctrl-C; the user was told nothing."""
    client = WaitInterrupted()
    argv = ["-o", output, "cluster", "scale", "mpi", "--role", "worker", "--count", "2"]
    assert _run([*argv, "--wait"], client) == 130
    out = capsys.readouterr()
    assert out.out == ""
    assert _said(out.err) == [
        "ws: wait interrupted: cluster mpi (c1): STARTING, 2/2 members RUNNING when last "
        "seen; the scale goes on (`ws cluster show c1` follows it)",
        "ws: interrupted",
    ]


class SaveInterrupted:
    """`ws image save`: the workspace is seen marked (``seen``), then Ctrl-C."""

    def __init__(self, seen: bool) -> None:
        self.seen = seen

    def save_image(
        self, workspace: str, image: str, project: str, timeout_s: float, on_progress: Any
    ) -> Any:
        if self.seen:
            on_progress(
                _ws(
                    workspace,
                    WS.WORKSPACE_STATE_STOPPED,
                    saving_as=image,
                    saving_disk="root",
                    saving_sent_bytes=1024,
                    saving_size_bytes=2048,
                )
            )
        raise KeyboardInterrupt

    def close(self) -> None:
        pass


@pytest.mark.parametrize("output", ["text", "json"])
def test_an_interrupted_save_says_the_save_goes_on(
    output: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """The service and the node go on with a save they accepted (the workspace cannot
    start until it ends, and the image is made); "ws: interrupted" let the user think
    it was called off."""
    argv = ["-o", output, "image", "save", "box", "env:2"]
    assert _run(argv, SaveInterrupted(seen=True)) == 130  # type: ignore[arg-type]
    out = capsys.readouterr()
    assert out.out == ""
    assert _said(out.err) == [
        "ws: wait interrupted: box (id-box): STOPPED, saving as image env:2: disk root, "
        "1.0 KiB of 2.0 KiB sent when last seen; the save goes on (`ws show id-box` follows "
        "it)",
        "ws: interrupted",
    ]
    assert _run(argv, SaveInterrupted(seen=False)) == 130  # type: ignore[arg-type]
    assert _said(capsys.readouterr().err) == [
        "ws: wait interrupted: the save of box as env:2 was asked and may go on (`ws show "
        "box` says: saving, or not)",
        "ws: interrupted",
    ]


class ScaleFails(WaitInterrupted):
    """The member a scale added fails to start."""

    def get_cluster(self, ref: str) -> Any:
        c = _cluster(CS.CLUSTER_STATE_STARTING)
        c.members.add(
            id="id-w1", name="mpi-worker-1", role="worker", state=WS.WORKSPACE_STATE_FAILED
        )
        c.members[-1].reason = "no disk"
        return c


@pytest.mark.parametrize("output", ["text", "json"])
def test_a_failed_scale_wait_still_prints_what_was_scaled(
    output: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """A scale whose wait failed printed nothing on stdout: a script learnt neither the
    members added nor the cluster's state, where a create whose wait fails prints what it
    made (docs/design/cli.md) before the error (exit 1)."""
    argv = ["-o", output, "cluster", "scale", "mpi", "--role", "worker", "--count", "2"]
    assert _run([*argv, "--wait"], ScaleFails()) == 1
    out = capsys.readouterr()
    assert out.err.splitlines()[-1] == (
        "ws: error: cluster mpi FAILED during the scale: member mpi-worker-1 failed: no disk"
    )
    if output == "json":
        doc = json.loads(out.out)
        assert doc["added"] == ["mpi-worker-1"]
        assert doc["cluster"]["members"][-1]["state"] == "FAILED"
    else:
        assert out.out == "worker 1 → 2\n"


class ExecHangs:
    """`ws cluster exec`: mpi-worker-0's command runs on (and Ctrl-C comes meanwhile)
    until ``release`` is set; mpi-head-0's returns at once."""

    def __init__(self) -> None:
        self.release = threading.Event()
        self.returned: list[str] = []

    def get_cluster(self, ref: str) -> Any:
        return _cluster()

    def whoami(self) -> Any:
        return workspaces_pb2.Caller(user="")

    def exec(self, ref: str, argv: Any, stdin: bytes, timeout_s: int, **kw: Any) -> Any:
        if ref == "id-mpi-worker-0":
            _thread.interrupt_main()
            self.release.wait(10)
        self.returned.append(ref)
        return access_pb2.ExecResult(name=ref, exit_code=0)

    def close(self) -> None:
        pass


def test_an_interrupted_cluster_exec_ends_at_once(capsys: pytest.CaptureFixture[str]) -> None:
    """Ctrl-C during `ws cluster exec` waited until every member's command had ended (its
    --timeout, or for good: `-- tail -f log`), the members run in a ThreadPoolExecutor
    that its end waited for. It now ends at once, saying the command may still run."""
    client = ExecHangs()
    # interrupt_main() does nothing while SIGINT is ignored, as it is in a process started
    # in the background without job control (CI, a pytest-xdist worker of such a run).
    before = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        assert _run(["cluster", "exec", "mpi", "--", "sleep", "600"], client) == 130  # type: ignore[arg-type]
        assert "id-mpi-worker-0" not in client.returned  # its command had not ended
    finally:
        signal.signal(signal.SIGINT, before)
        client.release.set()
    assert capsys.readouterr().err.splitlines() == [
        "ws: the command may still run in the members of mpi it was started in, until it ends",
        "ws: interrupted",
    ]


class PushCut:
    """`ws image push`: a tenth of the disk is sent (a bar drawn on a terminal), then
    ``cut`` (Ctrl-C, or the service's refusal)."""

    def __init__(self, cut: BaseException) -> None:
        self.cut = cut

    def push_image(self, name: str, manifest: Any, progress: Any, project: str = "") -> Any:
        progress("upload", "/data/disk.raw", 100, 1000)
        raise self.cut

    def close(self) -> None:
        pass


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


@pytest.mark.parametrize(
    ("cut", "code", "said"),
    [
        (
            KeyboardInterrupt(),
            130,
            [
                "ws: push interrupted: sci:1 is not registered; the files sent in full stay "
                "in the repository, so pushing again sends only the rest",
                "ws: interrupted",
            ],
        ),
        (errors.ResourceExhausted("over your quota"), 1, ["ws: error: over your quota"]),
    ],
)
def test_a_push_cut_short_ends_its_bar_and_says_what_is_left(
    cut: BaseException,
    code: int,
    said: list[str],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Cut short, the push's bar was left open at a terminal: "ws: interrupted" (or the
    error) was written at the end of it, and nothing said whether the image was made."""
    disk = tmp_path / "disk.raw"
    disk.write_bytes(b"\0" * 4096)
    term = Terminal()
    monkeypatch.setattr("sys.stderr", term)
    assert _run(["image", "push", "sci:1", str(disk)], PushCut(cut)) == code  # type: ignore[arg-type]
    bar, *lines = term.getvalue().split("\n")
    assert bar.startswith("\rsending  disk.raw [###") and bar.endswith("100 B/1000 B")
    assert lines == [*said, ""]


class UploadCut:
    """`ws-admin image import`: a tenth of the disk is sent, then Ctrl-C."""

    def get_image(self, name: str) -> Any:
        raise errors.NotFound(f"no image {name!r}")

    def check_import(self, name: str, project: str = "") -> None:
        pass  # the service would take the name

    def repository_usage(self) -> Any:
        return SimpleNamespace(max_virtual_bytes=0)  # the site's bound: the default

    def upload_blob(self, path: Any, progress: Any = None) -> Any:
        progress(100, 1000)
        raise KeyboardInterrupt

    def close(self) -> None:
        pass


def test_an_interrupted_import_ends_its_bar(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    disk = tmp_path / "disk.raw"
    disk.write_bytes(b"\0" * 4096)
    term = Terminal()
    monkeypatch.setattr("sys.stderr", term)
    argv = ["image", "import", "sci", str(disk), "--format", "raw"]
    assert admin.main(argv, connect=lambda _s: UploadCut()) == 130  # type: ignore[arg-type, return-value]
    bar, *lines = term.getvalue().split("\n")
    assert bar.startswith("\rdisk disk.raw [###") and lines == ["ws-admin: interrupted", ""]


class CreateSeenStarting:
    """`ws create --wait`: the new workspace is seen STARTING, then Ctrl-C."""

    def create_workspace(self, **kw: Any) -> Any:
        return _ws("alpha", WS.WORKSPACE_STATE_PENDING)

    def wait_for_state(
        self,
        ref: str,
        states: Any,
        timeout_s: float,
        on_change: Any,
        on_outage: Any = None,
        desired: Any = None,
    ) -> Any:
        on_change(_ws("alpha", WS.WORKSPACE_STATE_STARTING))
        raise KeyboardInterrupt

    def close(self) -> None:
        pass


@pytest.mark.parametrize("output", ["text", "json"])
def test_an_interrupted_create_wait_says_the_state_last_seen(
    output: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """It said the workspace was created and not destroyed, not whether it was still
    queued or already booting."""
    argv = ["-o", output, "create", "--image", "img", "--wait"]
    assert _run(argv, CreateSeenStarting()) == 130  # type: ignore[arg-type]
    out = capsys.readouterr()
    assert out.out == ""
    assert out.err.splitlines()[-2:] == [
        "ws: workspace alpha (id-alpha) was created and is not destroyed (STARTING when last "
        "seen): `ws show id-alpha` follows it, `ws destroy id-alpha` removes it",
        "ws: interrupted",
    ]


class LoneExecInterrupted:
    """`ws exec`: the workspace is RUNNING; Ctrl-C comes while its command runs."""

    def get_workspace(self, ref: str) -> Any:
        return _ws(ref, WS.WORKSPACE_STATE_RUNNING)

    def exec(self, ref: str, argv: Any, stdin: bytes, timeout_s: int, **kw: Any) -> Any:
        raise KeyboardInterrupt

    def close(self) -> None:
        pass


def test_an_interrupted_exec_says_the_command_may_still_run(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Ctrl-C during `ws exec` ends only the wait for the command: the guest agent runs it
    on (to its --timeout). It said only "interrupted", as if the command had been stopped."""
    client = LoneExecInterrupted()
    assert _run(["exec", "box", "--timeout", "60", "--", "make", "-j4"], client) == 130  # type: ignore[arg-type]
    assert capsys.readouterr().err.splitlines() == [
        "ws: make may still run in box, if it was started, until it ends (its --timeout, 60 s)",
        "ws: interrupted",
    ]


class FollowInterrupted:
    """`ws watch`, `ws events`, `ws cluster events`, `ws-admin events`: one event or
    change is printed, then Ctrl-C."""

    def get_workspace(self, ref: str) -> Any:
        return _ws(ref, WS.WORKSPACE_STATE_RUNNING)

    def health(self) -> None:
        pass

    def watch(self, ws_id: str, **kw: Any) -> Any:
        yield workspaces_pb2.WorkspaceEvent(workspace=_ws("box", WS.WORKSPACE_STATE_RUNNING))
        raise KeyboardInterrupt

    def _events(self, *args: Any, **kw: Any) -> Any:
        yield SiteEvent(1.0, "workspace.state", "node:n1", "id-box", "box", state="RUNNING")
        raise KeyboardInterrupt

    watch_workspace_events = watch_cluster_events = watch_events = _events

    def close(self) -> None:
        pass


@pytest.mark.parametrize("output", ["text", "json"])
@pytest.mark.parametrize(
    "argv",
    [
        ["watch"],
        ["watch", "box"],
        ["events", "box"],
        ["events", "box", "--follow"],
        ["cluster", "events", "mpi", "--follow"],
        ["admin", "events", "--follow"],
    ],
)
def test_ctrl_c_ends_a_watch_or_a_follow_as_it_ends_a_wait(
    argv: list[str], output: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """Ctrl-C ended `ws watch` and `ws events [--follow]` with exit 0 and no word, where
    every `--wait` says "interrupted" and exits 130: a script could not tell a listing
    cut short from one that ended. What was printed stays, JSON lines intact."""
    client = FollowInterrupted()
    if argv[0] == "admin":
        rc = admin.main(["-o", output, *argv[1:]], connect=lambda _s: client)  # type: ignore[arg-type]
        prog = "ws-admin"
    else:
        rc = _run(["-o", output, *argv], client)  # type: ignore[arg-type]
        prog = "ws"
    out = capsys.readouterr()
    assert rc == 130
    assert out.err == f"{prog}: interrupted\n"
    assert len(out.out.splitlines()) == 1 and "box" in out.out
    if output == "json":
        json.loads(out.out)
