"""ws-slurm's faults as Slurm sees them: what is marked DOWN (with which ``ws: `` reason)
and powered down when ws-slurm cannot do its work (identity, config, a suspend that
cannot destroy), the leftovers a later run destroys, and ``check``'s findings."""

from __future__ import annotations

from pathlib import Path

import grpc
import pytest

from tests.unit.test_slurm_program import FakeScontrol, Run, run
from workspace import errors, rpc_status
from workspace.slurm import cli, scontrol
from workspace.slurm.hostlist import brief
from workspace.slurm.scontrol import Scontrol, is_powered_down

__all__ = ["run"]  # the fixture, used here

REVOKED = errors.PermissionDenied("the certificate of user:slurm has been revoked")


def test_a_revoked_identity_reaches_slurm_for_every_command(run: Run) -> None:
    assert run("resume", "c1") == 0
    run.service.refusal = REVOKED
    assert run("resume", "c[2-3]") == 1
    reason = "ws: service refused ws-slurm: the certificate of user:slurm has been revoked"
    assert run.scontrol.down == {"c2": reason, "c3": reason}
    assert run.scontrol.powered_down == ["c2", "c3"]  # their jobs requeued now
    assert run("suspend", "c1") == 1
    assert run.scontrol.down["c1"] == (
        "ws: suspend could not check for its workspace: service refused ws-slurm: the "
        "certificate of user:slurm has been revoked"
    )
    assert run("resume-fail", "c4") == 1
    assert run.scontrol.down["c4"].startswith(
        "ws: did not register in ResumeTimeout; could not clean up: service refused "
        "ws-slurm: the certificate"
    )


def test_a_missing_identity_is_a_config_error_told_to_slurm(
    run: Run, capsys: pytest.CaptureFixture[str]
) -> None:
    run.config.write_text(
        run.config.read_text() + 'identity = "/nope/ident"\nservice = "unix:/nonexistent/ws.sock"\n'
    )
    # No client given: ws-slurm connects as it does under slurmctld.
    code = cli.main(["--config", str(run.config), "resume", "c[1-2]"], None, run.scontrol)
    assert code == 2
    reason = run.scontrol.down["c1"]
    assert reason.startswith("ws: config: identity directory /nope/ident not found"), reason
    assert set(run.scontrol.down) == {"c1", "c2"}
    assert run.scontrol.powered_down == ["c1", "c2"]
    assert "identity directory /nope/ident not found" in run.text()


@pytest.mark.parametrize("command", ["resume", "suspend"])
def test_an_identity_slurmuser_may_not_read_is_one_log_line_and_told_to_slurm(
    run: Run, monkeypatch: pytest.MonkeyPatch, command: str
) -> None:
    """The identity directory is root's 0700 (copied as root, not chowned): SlurmUser
    may not look inside. ws-slurm crashed with a traceback slurmctld discards: nothing
    in its log, the nodes left POWERING_UP until ResumeTimeout."""
    ident = run.tmp / "ident"
    ident.mkdir()
    for name in ("ca.pem", "cert.pem", "key.pem"):
        (ident / name).write_text("x")
    stat = Path.stat

    def denied(self: Path, **kw: bool) -> object:
        if self.parent == ident:  # as SlurmUser sees it (the test runs as root)
            raise PermissionError(13, "Permission denied", str(self))
        return stat(self, **kw)

    monkeypatch.setattr(Path, "stat", denied)
    run.config.write_text(
        run.config.read_text() + f'identity = "{ident}"\nservice = "unix:/nonexistent/ws.sock"\n'
    )
    code = cli.main(["--config", str(run.config), command, "c[1-2]"], None, run.scontrol)
    assert code == 2
    cause = f"tls: cannot read {ident}/ca.pem: Permission denied"
    assert cause in run.scontrol.down["c1"], run.scontrol.down
    assert set(run.scontrol.down) == {"c1", "c2"}
    assert [line for line in run.text().splitlines() if cause in line] != []


def test_no_service_address_is_a_config_error_told_to_slurm(
    run: Run, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    # The config names no service, slurmctld passes no $WS_SERVICE, and no local site exists.
    monkeypatch.delenv("WS_SERVICE", raising=False)
    monkeypatch.setenv("WS_SITE_DIR", str(tmp_path / "no-site"))
    text = run.config.read_text()
    assert "service =" not in text  # the fixture's config relies on the client it is given
    code = cli.main(["--config", str(run.config), "resume", "c[1-2]"], None, run.scontrol)
    assert code == 2  # a config error, not "the service cannot be reached" (3)
    reason = run.scontrol.down["c1"]
    assert reason.startswith("ws: config has no service address: set service"), reason
    assert run.scontrol.powered_down == ["c1", "c2"]
    assert cli.main(["--config", str(run.config), "check", "c1"], None, run.scontrol) == 1
    assert "config has no service address" in capsys.readouterr().out


def test_a_service_address_the_client_cannot_take_is_a_config_error(run: Run) -> None:
    """A unix socket path too long for a socket's address (a site under a deep directory):
    gRPC's "Failed to create channel", code UNKNOWN, reached Slurm as "service refused
    ws-slurm", which sends the admin to the certificate."""
    path = "/srv/" + "d" * 100 + "/service.sock"
    run.config.write_text(run.config.read_text() + f'service = "unix:{path}"\n')
    code = cli.main(["--config", str(run.config), "resume", "c1"], None, run.scontrol)
    assert code == 2
    said = (
        f"the unix socket path {path} is 118 bytes, over the 107 a socket's address holds: "
        "give it a shorter path (a shorter symlink to its directory will do)"
    )
    reason = run.scontrol.down["c1"]
    assert reason.startswith(f"ws: config: the unix socket path {path} is 118 bytes"), reason
    assert said in run.text()  # the log has all of it


@pytest.mark.parametrize(
    ("command", "powered"),
    [("resume", ["c1", "c2"]), ("suspend", []), ("resume-fail", [])],
)
def test_a_config_error_marks_the_nodes_down_and_is_logged(
    run: Run,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    command: str,
    powered: list[str],
) -> None:
    # As under slurmctld: $WS_SLURM_CONFIG does not reach it, the default file is absent.
    default_log = run.tmp / "default.log"
    monkeypatch.setattr(cli, "DEFAULT_LOG", str(default_log))
    missing = run.tmp / "no-such.toml"
    code = cli.main(["--config", str(missing), command, "c[1-2]"], run.service, run.scontrol)
    assert code == 2
    reason = run.scontrol.down["c1"]
    assert "config file " in reason and "no-such.toml" in reason, reason
    assert set(run.scontrol.down) == {"c1", "c2"}
    assert run.scontrol.powered_down == powered
    assert "no-such.toml" in capsys.readouterr().err
    assert "no-such.toml" in default_log.read_text()


def test_a_suspend_after_a_refused_resume_keeps_the_resumes_reason(run: Run) -> None:
    """Seen with Slurm 22.05: resume's POWER_DOWN makes slurmctld run suspend at once;
    with the same config error, suspend must not replace the cause with its own words."""
    (run.tmp / "nodes.toml").write_text("[[node]]\n")
    assert run("resume", "c1") == 2
    first = run.scontrol.down["c1"]
    assert run("suspend", "c1") == 2
    assert run.scontrol.down["c1"] == first
    # A node that is not DOWN is marked: its workspace may be left.
    assert run("suspend", "c2") == 2
    assert run.scontrol.down["c2"].startswith("ws: suspend could not check for its workspace: ")


def test_a_broken_mapping_file_marks_the_nodes_down(run: Run) -> None:
    (run.tmp / "nodes.toml").write_text("[[node]]\n")
    assert run("resume", "c1") == 2
    assert run.scontrol.down["c1"].startswith("ws: config: ")
    assert "has no image" in run.scontrol.down["c1"]
    assert "has no image" in run.text()  # the config's own log file: it could be read


def test_a_failed_destroy_marks_the_node_down_naming_the_workspace(
    run: Run, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert run("resume", "c[1-2]") == 0

    def refuse(id: str) -> None:
        raise errors.FailedPrecondition("the node of the workspace is away")

    monkeypatch.setattr(run.service, "destroy_workspace", refuse)
    assert run("suspend", "c[1-2]") == 1
    assert run.scontrol.down["c1"] == (
        "ws: suspend could not destroy workspace c1: the node of the workspace is away"
    )
    assert set(run.scontrol.down) == {"c1", "c2"}


def test_an_unreachable_service_mid_suspend_fails_the_rest(
    run: Run, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert run("resume", "c[1-3]") == 0
    real = run.service.destroy_workspace
    done: list[str] = []

    def flaky(id: str) -> object:
        if done:
            raise errors.Unavailable("cannot reach the workspace service")
        done.append(id)
        return real(id)

    monkeypatch.setattr(run.service, "destroy_workspace", flaky)
    assert run("suspend", "c[1-3]") == 3
    assert run.names() == ["c2", "c3"]
    assert set(run.scontrol.down) == {"c2", "c3"}
    assert run.scontrol.down["c2"].startswith(
        "ws: suspend could not destroy workspace c2: service unreachable"
    )


def test_a_later_run_destroys_workspaces_of_powered_down_nodes(run: Run) -> None:
    assert run("resume", "c[1-4]") == 0
    run.scontrol.node_states = {
        "c1": "DOWN+CLOUD+POWERED_DOWN",  # a suspend failed: the leftover
        "c2": "IDLE+CLOUD+POWERED_DOWN+POWERING_UP",  # being resumed again: keep
        "c3": "ALLOCATED+CLOUD",  # running a job: keep
        "c4": "IDLE+CLOUD+POWERED_DOWN",  # this run's own node: handled by the command
    }
    assert run("resume", "c4") == 0
    assert run.names() == ["c2", "c3", "c4"]
    assert "node c1 is powered down in Slurm but still has a workspace" in run.text()
    # Without scontrol's answer nothing is destroyed.
    run.scontrol.node_states = {"c2": "IDLE+CLOUD+POWERED_DOWN"}
    run.scontrol.states = lambda nodes: None  # type: ignore[method-assign]
    assert run("suspend", "c9") == 0
    assert run.names() == ["c2", "c3", "c4"]


def test_powered_down_states() -> None:
    assert is_powered_down("IDLE+CLOUD+POWERED_DOWN")
    assert is_powered_down("DOWN+CLOUD+POWERED_DOWN+NOT_RESPONDING")
    assert not is_powered_down("IDLE+CLOUD+POWERED_DOWN+POWERING_UP")
    assert not is_powered_down("IDLE+CLOUD+POWER_DOWN+NOT_RESPONDING+POWERING_UP")
    assert not is_powered_down("ALLOCATED+CLOUD")


def test_scontrol_force_and_show_node(tmp_path: Path) -> None:
    record = tmp_path / "argv"
    fake = tmp_path / "scontrol"
    fake.write_text(
        f'#!/bin/sh\nprintf "%s|" "$@" >> {record}\necho >> {record}\n'
        'if [ "$1" = show ]; then\n'
        "  echo 'NodeName=c1 Arch=x86_64 State=DOWN+CLOUD+POWERED_DOWN Reason=ws: x'\n"
        "  echo 'NodeName=c2 State=IDLE+CLOUD+POWERED_DOWN+POWERING_UP'\n"
        "fi\n"
    )
    fake.chmod(0o755)
    sc = Scontrol(str(fake))
    assert sc.power_down(["c3", "c4"], force=True)
    assert sc.powered_off(["c1", "c2"]) == {"c1"}
    force, show = record.read_text().splitlines()
    assert force == "update|NodeName=c[3-4]|State=POWER_DOWN_FORCE|"
    assert show == "show|node|-o|c[1-2]|"


def test_a_reason_that_names_a_state_is_not_the_nodes_state(tmp_path: Path) -> None:
    """Reason= is free text (an admin's, or a workspace's failure reason): a node whose
    reason says "was State=IDLE+POWERED_DOWN" is still ALLOCATED, not powered off (a
    sweep would have destroyed its workspace)."""
    fake = tmp_path / "scontrol"
    fake.write_text(
        "#!/bin/sh\n"
        "echo 'NodeName=c1 Arch=x86_64 State=ALLOCATED+CLOUD ThreadsPerCore=1 "
        "Reason=draining after job; was State=IDLE+POWERED_DOWN [root@2026-12-04T10:00:00]'\n"
    )
    fake.chmod(0o755)
    sc = Scontrol(str(fake))
    assert sc.states(["c1"]) == {"c1": "ALLOCATED+CLOUD"}
    assert sc.powered_off(["c1"]) == set()


def test_long_node_lists_are_short_in_the_log(run: Run) -> None:
    names = [f"n{i}x" for i in range(1000)]  # no runs to bracket
    text = brief(names)
    assert len(text) < 160 and text.endswith(" more"), text
    assert brief(["c1", "c2", "c3"]) == "c[1-3]"
    fake = run.tmp / "scontrol"
    fake.write_text('#!/bin/sh\necho "Invalid node name specified" >&2\nexit 1\n')
    fake.chmod(0o755)
    assert not Scontrol(str(fake)).set_down(names, "why", tries=1)


def test_lone_node_log_lines_name_the_node_once(run: Run) -> None:
    assert run("resume", "c1") == 0
    assert run("resume", "c1") == 0
    text = run.text()
    assert "node c1: node c1" not in text
    assert "node c1 already has workspace c1" in text


def test_check_flags_what_resume_would_refuse(run: Run, capsys: pytest.CaptureFixture[str]) -> None:
    (run.tmp / "nodes.toml").write_text(
        '[[node]]\nnames = "Node_A"\nimage = "slurm"\n\n'
        '[[node]]\nnames = "g1"\nimage = "gone"\n\n'
        '[[node]]\nnames = "p1"\nimage = "plain"\n\n'
        '[[node]]\nnames = "c1"\nimage = "slurm"\n'
    )
    run.service.images["plain"] = "none"
    assert run("check", "c1") == 0
    assert run("check", "Node_A") == 1
    assert "cannot be a workspace name" in capsys.readouterr().out
    assert run("check", "g1,p1") == 1
    out = capsys.readouterr().out
    assert "image gone is not in the service" in out
    assert "image plain takes no user-data (context none)" in out
    run.service.unreachable = True
    assert run("check", "c1") == 3
    assert "images not checked: the workspace service cannot be reached" in capsys.readouterr().out


def test_check_finds_a_missing_identity(run: Run, capsys: pytest.CaptureFixture[str]) -> None:
    run.config.write_text(run.config.read_text() + 'identity = "/nope/ident"\n')
    assert run("check", "c1") == 1
    assert "identity directory /nope/ident not found" in capsys.readouterr().out


def test_check_without_a_hostlist_is_a_usage_error(
    run: Run, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exit_:
        run("check")
    assert exit_.value.code == 2
    assert capsys.readouterr().err == (
        "ws-slurm check: error: the following arguments are required: HOSTLIST "
        "(ws-slurm check --help for usage)\n"
    )


def test_a_bad_hostlist_is_said_on_stderr(run: Run, capsys: pytest.CaptureFixture[str]) -> None:
    assert run("check", "c[1-") == 2
    assert len(capsys.readouterr().err.splitlines()) == 1  # once, not logged and printed
    assert run("suspend", "c[1-") == 2
    assert "c[1-" in capsys.readouterr().err  # stderr is no terminal here
    assert "c[1-" in run.text()


def test_check_writes_no_log_file(run: Run, capsys: pytest.CaptureFixture[str]) -> None:
    """A person runs check, often as root: a log file it made would be root's, and
    SlurmUser could not write it later. Its log lines go to stderr."""
    run.scontrol = Scontrol("scontrol-not-here")
    assert run("check", "c1") == 1  # (scontrol is not there to ask: check says so)
    assert not run.log.exists()


def test_fake_scontrol_is_a_scontrol() -> None:
    assert isinstance(FakeScontrol(), Scontrol)


def deadline() -> errors.WorkspaceError:
    """What the client raises for a call the service did not answer within timeout_s
    (workspace/client.py: an Unavailable coded DEADLINE_EXCEEDED)."""
    return rpc_status.coded(
        errors.Unavailable(
            "the workspace service at unix:/run/ws.sock did not answer in time (Deadline Exceeded)"
        ),
        grpc.StatusCode.DEADLINE_EXCEEDED,
    )


def test_a_service_that_does_not_answer_is_not_a_refusal(
    run: Run, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A hung service (every call times out): Slurm is told it did not answer, not that it
    # "refused ws-slurm" (which sends the admin to the certificate), and exit 3.
    run.service.refusal = deadline()
    assert run("resume", "c[1-2]") == 3
    reason = run.scontrol.down["c1"]
    assert reason == "ws: service unreachable: it did not answer within 30 s", reason
    assert "refused" not in reason
    # It stops answering mid-resume: the nodes not tried yet are not each given another
    # timeout (slurmctld waits for ResumeProgram), they are DOWN with the same words.
    run.service.refusal = None
    calls = len(run.service.calls)

    def hung(image: str, **kw: object) -> object:
        run.service.calls.append(f"create {kw['name']}")
        raise deadline()

    monkeypatch.setattr(run.service, "create_workspace", hung)
    assert run("resume", "c[3-4]") == 3
    assert run.service.calls[calls:] == ["list", "create c3"]
    assert run.scontrol.down["c4"].startswith("ws: service unreachable")


def test_a_node_slurm_no_longer_knows_does_not_stop_the_cleanup_of_the_others(
    run: Run, tmp_path: Path
) -> None:
    """``scontrol show node -o c1,c8`` where c8 was removed from slurm.conf while it
    had a workspace: Debian's 22.05 prints c1's line and "Node c8 not found" (stdout,
    in the hostlist's order) and exits 1. c1's leftover is still destroyed; c8's, whose
    state nobody can tell, is kept."""
    assert run("resume", "c1,c8") == 0
    fake = tmp_path / "scontrol"
    fake.write_text(
        "#!/bin/sh\n"
        "echo 'Node c8 not found'\n"  # in the hostlist's order: it may come first
        "echo 'NodeName=c1 Arch=x86_64 State=DOWN+CLOUD+POWERED_DOWN Reason=ws: x'\n"
        "exit 1\n"
    )
    fake.chmod(0o755)
    run.scontrol.states = Scontrol(str(fake)).states  # type: ignore[method-assign]
    assert run("suspend", "c9") == 0
    assert run.names() == ["c8"]
    assert "node c1 is powered down in Slurm but still has a workspace" in run.text()
    # scontrol that cannot answer at all (slurmctld away) still tells nothing.
    fake.write_text("#!/bin/sh\necho 'slurm_load_node error: Unable to contact' >&2\nexit 1\n")
    assert Scontrol(str(fake)).states(["c1"]) is None


def test_an_unforeseen_failure_is_logged_with_its_cause(
    run: Run, monkeypatch: pytest.MonkeyPatch
) -> None:
    """slurmctld discards stderr: an exception ws-slurm did not foresee must be in its log
    (it was only a traceback on stderr, and the log ended at ``resume c1 (1 node(s))``)."""

    def broken(include_terminated: bool = False, *, mine: bool = False) -> list[object]:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(run.service, "list_workspaces", broken)
    assert run("resume", "c1") == 1
    lines = run.text().splitlines()
    assert any(
        "ws-slurm failed unexpectedly: OSError: [Errno 28] No space left on device" in line
        for line in lines
    ), lines


def test_scontrol_is_found_without_path_as_slurmctld_runs_ws_slurm(
    run: Run, monkeypatch: pytest.MonkeyPatch
) -> None:
    """slurmctld gives its programs SLURM_CONF and no PATH: Python then looks for a bare
    ``scontrol`` in /bin:/usr/bin only, so with Slurm under /usr/local (its default
    prefix) a refused resume could not mark its nodes DOWN nor set an address, and the
    job waited ResumeTimeout. The default directories are searched now, and a scontrol
    that is not there is said once, with the key that fixes it."""
    bin_dir = run.tmp / "local-bin"
    bin_dir.mkdir()
    record = run.tmp / "argv"
    fake = bin_dir / "scontrol"
    fake.write_text(f'#!/bin/sh\nprintf "%s|" "$@" >> {record}\necho >> {record}\n')
    fake.chmod(0o755)
    monkeypatch.delenv("PATH")
    monkeypatch.setattr(scontrol, "NO_PATH_SEARCH", f"/nonexistent:{bin_dir}")
    run.scontrol = None  # type: ignore[assignment]  # as under slurmctld: from the config
    run.service.capacity_mib = 100
    assert run("resume", "c1") == 1
    lines = record.read_text().splitlines()
    assert lines[0] == "show|hostnames|c1|"
    assert lines[-2].startswith("update|NodeName=c1|State=DOWN|Reason=ws: node c1: the service")
    assert lines[-1] == "update|NodeName=c1|State=POWER_DOWN|"
    monkeypatch.setattr(scontrol, "NO_PATH_SEARCH", "/nonexistent")
    assert run("resume", "c2") == 1
    text = run.text()
    assert text.count("scontrol is not in /nonexistent (no PATH: as slurmctld runs") == 3
    assert 'set scontrol = "/full/path/scontrol" in the ws-slurm config' in text
