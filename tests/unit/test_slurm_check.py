"""``ws-slurm check`` against Slurm's own settings: ``replace_wait_s`` must stay below each
node's ResumeTimeout (``scontrol show config``, ``show partition -o``, ``show node -o``;
the lines below are Debian's slurmctld 22.05.8's, trimmed)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.unit.test_slurm_program import FakeScontrol, Run, run
from workspace.slurm import check, scontrol
from workspace.slurm.scontrol import Scontrol

__all__ = ["run"]  # the fixture, used here

FAKE = """#!/bin/sh
case "$1 $2" in
"show config")
  echo 'ResumeProgram           = /usr/local/sbin/ws-slurm-resume'
  echo 'ResumeRate              = 0 nodes/min'
  echo 'ResumeTimeout           = {cluster} sec'
  ;;
"show partition")
  echo 'PartitionName=p1 Nodes=c[1-2] State=UP ResumeTimeout=30 SuspendTimeout=GLOBAL'
  echo 'PartitionName=p2 AllowGroups=ALL Default=YES Nodes=c[2-3] State=UP TRES=cpu=2,node=2'
  echo 'PartitionName=p3 AllowGroups=ALL Nodes=c4 State=UP ResumeTimeout=INFINITE'
  ;;
"show node")
  echo 'NodeName=c1 Arch=x86_64 State=IDLE+CLOUD+POWERED_DOWN Partitions=p1'
  echo 'NodeName=c2 Arch=x86_64 State=IDLE+CLOUD+POWERED_DOWN Partitions=p1,p2'
  echo 'NodeName=c3 Arch=x86_64 State=IDLE+CLOUD+POWERED_DOWN Partitions=p2'
  echo 'NodeName=c4 Arch=x86_64 State=IDLE+CLOUD+POWERED_DOWN Partitions=p3'
  ;;
*) exit 1 ;;
esac
"""


def fake_scontrol(tmp: Path, cluster: int = 600) -> Scontrol:
    fake = tmp / "scontrol"
    fake.write_text(FAKE.replace("{cluster}", str(cluster)))
    fake.chmod(0o755)
    return Scontrol(str(fake))


def test_resume_timeout_per_node(tmp_path: Path) -> None:
    """slurm.conf(5): the highest of the node's partitions that set one, else the
    cluster's; INFINITE is never given up."""
    sc = fake_scontrol(tmp_path)
    assert sc.resume_timeouts(["c1", "c2", "c3", "c4"]) == {
        "c1": (30, "partition p1"),
        "c2": (30, "partition p1"),  # p2 sets none: p1's is the only one set
        "c3": (600, "slurm.conf"),
    }
    assert Scontrol("scontrol-not-here").resume_timeouts(["c1"]) is None


def test_check_finds_a_replace_wait_slurm_would_not_wait_for(
    run: Run, capsys: pytest.CaptureFixture[str]
) -> None:
    run.scontrol = fake_scontrol(run.tmp)
    assert run("check", "c3") == 0  # 60 s of 600
    assert "replace_wait_s" not in capsys.readouterr().out
    assert run("check", "c[1-4]") == 1
    out = capsys.readouterr().out
    assert (
        "c[1-2]: replace_wait_s 60 s is not below their ResumeTimeout (30 s, partition p1): "
        "Slurm would give up on a node while resume still waits for its old workspace"
    ) in out
    assert "c3:" in out and "c4:" in out  # still listed with their images
    run.config.write_text(run.config.read_text() + "replace_wait_s = 20\n")
    assert run("check", "c[1-4]") == 0
    run.scontrol = fake_scontrol(run.tmp, cluster=20)
    assert run("check", "c3") == 1
    assert "(20 s, slurm.conf)" in capsys.readouterr().out


def test_check_finds_auth_none_with_configless_slurmd(
    run: Run, capsys: pytest.CaptureFixture[str]
) -> None:
    """slurm.conf with AuthType=auth/none (the fragment's "closed test site") and no
    slurm_conf_file: check passed, resume made the workspaces, and no slurmd ever
    registered (a configless slurmd asks for slurm.conf with munge)."""
    fake = run.tmp / "scontrol"
    fake.write_text(FAKE.replace("{cluster}", "600").replace(
        "  echo 'ResumeRate", "  echo 'AuthType                = auth/none'\n  echo 'ResumeRate"
    ))  # fmt: skip
    fake.chmod(0o755)
    run.scontrol = Scontrol(str(fake))
    assert run("check", "c3") == 1
    assert (
        "slurm.conf has AuthType=auth/none: a configless slurmd asks for slurm.conf with munge"
    ) in capsys.readouterr().out
    conf = run.tmp / "slurm.conf"
    conf.write_text("ClusterName=x\n")
    run.config.write_text(run.config.read_text() + f'slurm_conf_file = "{conf}"\n')
    assert run("check", "c3") == 0
    assert "AuthType" not in capsys.readouterr().out
    run.scontrol = fake_scontrol(run.tmp)  # auth/munge (not shown here): nothing said
    run.config.write_text(run.config.read_text().replace(f'slurm_conf_file = "{conf}"', ""))
    assert run("check", "c3") == 0


@pytest.mark.parametrize(("ports", "fine"), [("6817", True), ("17817", False), ("6810-6820", True)])
def test_check_finds_a_controller_port_slurmctld_does_not_listen_on(
    run: Run, capsys: pytest.CaptureFixture[str], ports: str, fine: bool
) -> None:
    """A slurmctld on another SlurmctldPort than controller_port (default 6817): check
    passed, and every node's configless slurmd asked a port nobody listens on."""
    fake = run.tmp / "scontrol"
    fake.write_text(FAKE.replace("{cluster}", "600").replace(
        "  echo 'ResumeRate", f"  echo 'SlurmctldPort           = {ports}'\n  echo 'ResumeRate"
    ))  # fmt: skip
    fake.chmod(0o755)
    run.scontrol = Scontrol(str(fake))
    assert run("check", "c3") == (0 if fine else 1)
    out = capsys.readouterr().out
    said = (
        "controller_port: 6817, but slurmctld listens on 17817 (SlurmctldPort): the nodes' "
        "slurmd --conf-server 10.213.0.1:6817 would never reach it; set controller_port = 17817"
    )
    assert (said in out) is not fine, out


HIDDEN = """#!/bin/sh
case "$1 $2" in
"show node")
  echo 'NodeName=c1 Arch=x86_64 State=IDLE+CLOUD Partitions=p1'
  echo 'Node c2 not found'
  echo 'Node c3 not found'
  exit 1
  ;;
*) exit 1 ;;
esac
"""


def test_check_finds_nodes_slurm_hides(run: Run, capsys: pytest.CaptureFixture[str]) -> None:
    """Without PrivateData=cloud slurmctld hides powered-down cloud nodes (Debian's
    22.05.8: `Node c2 not found`, exit 1): ws-slurm can then neither read their features
    nor find a workspace a failed suspend left on them, for good."""
    fake = run.tmp / "scontrol"
    fake.write_text(HIDDEN)
    fake.chmod(0o755)
    run.scontrol = Scontrol(str(fake))
    assert run.scontrol.not_shown(["c1", "c2", "c3"]) == ["c2", "c3"]
    assert run("check", "c[1-3]") == 1
    out = capsys.readouterr().out
    assert (
        "c[2-3]: scontrol show node says 'not found': not in slurm.conf, or slurm.conf "
        "lacks PrivateData=cloud"
    ) in out
    assert run("check", "c1") == 0
    assert "not found" not in capsys.readouterr().out


UNKNOWN = """#!/bin/sh
case "$1 $2" in
"show node")
  echo 'Node c2 not found'; echo 'Node c3 not found'
  echo 'Node c2 not found' >&2; echo 'Node c3 not found' >&2
  exit 1
  ;;
"show config") echo 'ResumeTimeout           = 600 sec' ;;
"show partition") echo 'PartitionName=p1 Nodes=c[1-3] State=UP' ;;
*) exit 1 ;;
esac
"""


def test_check_of_nodes_slurm_does_not_know_says_so_not_that_scontrol_failed(
    run: Run, capsys: pytest.CaptureFixture[str]
) -> None:
    """`ws-slurm check gpu1`, a node not in slurm.conf (Debian's 22.05.8: `Node gpu1 not
    found` on stdout, exit 1): check said "scontrol could not be asked", with slurmctld
    up and answering, besides the 'not found' line."""
    fake = run.tmp / "scontrol"
    fake.write_text(UNKNOWN)
    fake.chmod(0o755)
    run.scontrol = Scontrol(str(fake))
    assert run.scontrol.states(["c2", "c3"]) == {}
    assert run("check", "c[2-3]") == 1
    out = capsys.readouterr().out
    assert "c[2-3]: scontrol show node says 'not found'" in out
    assert "could not be asked" not in out


def test_not_found_for_nodes_not_asked_is_no_answer(
    run: Run, capsys: pytest.CaptureFixture[str]
) -> None:
    """scontrol reading the hostlist as other nodes (Debian's 22.05 reads ``c[1-3`` as the
    node ``c]``): its 'Node c] not found' said nothing of c2 and c3, yet was taken as
    slurmctld's answer, and check, seeing neither node shown nor 'not found', passed them."""
    fake = run.tmp / "scontrol"
    fake.write_text(UNKNOWN.replace("Node c2", "Node c]").replace("Node c3", "Node c]"))
    fake.chmod(0o755)
    run.scontrol = Scontrol(str(fake))
    assert run.scontrol.states(["c2", "c3"]) is None
    assert run("check", "c[2-3]") == 1
    assert "c[2-3]: scontrol could not be asked" in capsys.readouterr().out


def test_check_says_when_scontrol_cannot_be_asked(
    run: Run, capsys: pytest.CaptureFixture[str]
) -> None:
    """slurmctld away (scontrol exits 1 for every call): check printed each node's rule and
    exited 0, though no feature, visibility or ResumeTimeout had been read, a node mapped
    by feature had taken another rule, and resume could not set the nodes' addresses."""
    fake = run.tmp / "scontrol"
    fake.write_text(
        "#!/bin/sh\necho 'scontrol: fatal: Could not establish a config source' >&2\nexit 1\n"
    )
    fake.chmod(0o755)
    run.scontrol = Scontrol(str(fake))
    assert run("check", "c[1-2]") == 1
    assert (
        "c[1-2]: scontrol could not be asked (see the warnings above): the nodes' features "
        "(rules by feature), whether slurmctld shows them and their ResumeTimeout are not "
        "checked"
    ) in capsys.readouterr().out


def test_check_asks_an_unanswering_slurmctld_once(
    run: Run, capsys: pytest.CaptureFixture[str]
) -> None:
    """slurmctld away: each scontrol call fails after ~9 s (its own retries), and check
    made seven (show node four times, show config twice, show partition), the same
    warning each time, a minute in all before it said so."""
    fake = run.tmp / "scontrol"
    fake.write_text(
        "#!/bin/sh\n"
        "[ \"$1 $2\" = 'show hostnames' ] && exit 1\n"
        "echo 'slurm_load_node error: Unable to contact slurm controller (connect failure)' >&2\n"
        "exit 1\n"
    )
    fake.chmod(0o755)
    run.scontrol = Scontrol(str(fake))
    assert run("check", "c[1-2]") == 1
    got = capsys.readouterr()
    assert "c[1-2]: scontrol could not be asked (see the warnings above)" in got.out
    assert got.err.count("Unable to contact slurm controller") == 1, got.err


def test_check_finds_a_scontrol_slurmctlds_programs_would_not_find(
    run: Run, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Slurm under /opt/slurm: the admin's PATH has it, and check said all was well, but
    slurmctld runs ws-slurm without PATH, where a bare ``scontrol`` is looked for in the
    default directories only: resume could then tell Slurm nothing (no address, no DOWN
    reason, no features)."""
    opt, std = run.tmp / "opt", run.tmp / "std"
    opt.mkdir()
    std.mkdir()
    (opt / "scontrol").write_text("#!/bin/sh\nexit 1\n")
    (opt / "scontrol").chmod(0o755)
    monkeypatch.setenv("PATH", f"{opt}:/usr/bin:/bin")
    monkeypatch.setattr(scontrol, "NO_PATH_SEARCH", str(std))
    monkeypatch.setattr(check, "NO_PATH_SEARCH", str(std))
    run.scontrol = FakeScontrol()
    assert run("check", "c1") == 1
    assert (
        f"scontrol: 'scontrol' is {opt}/scontrol on your PATH, but slurmctld runs ws-slurm "
        f"without PATH, and in {std} it is not found: set "
        f'scontrol = "{opt}/scontrol" in the ws-slurm config'
    ) in capsys.readouterr().out
    # Found in the default directories too, or named by its path: nothing to say.
    (std / "scontrol").symlink_to(opt / "scontrol")
    assert run("check", "c1") == 0
    (std / "scontrol").unlink()
    run.config.write_text(run.config.read_text() + f'scontrol = "{opt}/scontrol"\n')
    assert run("check", "c1") == 0
    assert "on your PATH" not in capsys.readouterr().out


def test_check_says_what_it_took_from_this_shell_that_slurmctld_does_not_pass(
    run: Run, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """An admin with $WS_SERVICE and $WS_IDENTITY in root's profile and neither in the
    config: check connected with them and found every image, exit 0; under slurmctld,
    which passes no environment, resume had no service address (every node DOWN) or
    called without a certificate."""
    run.scontrol = FakeScontrol()
    monkeypatch.setenv("WS_SERVICE", "ws.example.org:7070")
    monkeypatch.setenv("WS_IDENTITY", "/root/.ws/admin")
    assert run("check", "c1") == 1
    out = capsys.readouterr().out
    assert (
        "service: the config names none; this check used $WS_SERVICE (ws.example.org:7070), "
        'which slurmctld does not pass to ws-slurm: set service = "HOST:PORT"'
    ) in out
    assert (
        "identity: the config names none; this check used $WS_IDENTITY (/root/.ws/admin), "
        "which slurmctld does not pass to ws-slurm (it would call the service without a "
        "certificate)"
    ) in out
    ident = run.tmp / "ident"
    ident.mkdir()
    run.config.write_text(
        run.config.read_text() + f'service = "ws.example.org:7070"\nidentity = "{ident}"\n'
    )
    assert run("check", "c1") == 0
    assert "slurmctld does not pass" not in capsys.readouterr().out


COUNTED = """#!/bin/sh
echo "$1 $2" >> {calls}
case "$1 $2" in
"show config")
  echo 'AuthType                = auth/munge'
  echo 'ResumeTimeout           = 600 sec'
  echo 'SlurmctldPort           = 6817'
  ;;
"show partition") echo 'PartitionName=p1 Nodes=c[1-2] State=UP' ;;
"show node")
  echo 'NodeName=c1 Arch=x86_64 State=IDLE+CLOUD+POWERED_DOWN Partitions=p1'
  echo 'Node c2 not found'
  exit 1
  ;;
*) exit 1 ;;
esac
"""


def counted(run: Run) -> Path:
    """A scontrol that notes each call's first two words in the file returned."""
    calls = run.tmp / "calls"
    fake = run.tmp / "scontrol"
    fake.write_text(COUNTED.replace("{calls}", str(calls)))
    fake.chmod(0o755)
    run.scontrol = Scontrol(str(fake))
    return calls


def test_check_reads_slurm_conf_once(run: Run) -> None:
    """check ran `scontrol show config` four times (AuthType, SlurmctldPort, ResumeTimeout,
    SlurmUser), each a call to slurmctld: once a run."""
    calls = counted(run)
    assert run("check", "c1") == 0
    assert calls.read_text().splitlines().count("show config") == 1


def test_check_warns_of_an_unknown_node_once(run: Run, capsys: pytest.CaptureFixture[str]) -> None:
    """check logged `scontrol show node -o c[1-2]: Node c2 not found` three times (for the
    nodes' states, features and ResumeTimeout): once."""
    counted(run)
    assert run("check", "c[1-2]") == 1
    got = capsys.readouterr()
    assert "c2: scontrol show node says 'not found'" in got.out
    assert got.err.count("Node c2 not found") == 1, got.err
