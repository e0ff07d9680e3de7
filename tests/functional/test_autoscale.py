"""Autoscaled cluster roles over the real service (fake driver): a command signal, a
Slurm-queue signal (a stand-in squeue here; tests/host/test_slurm_real.py has the real
one), clamping to [min, max], the cool-down, a failing signal, and bad settings. The
passes are run directly (``autoscale.evaluate``) except in the one test of the leader's
own loop."""

from __future__ import annotations

import json
import stat
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest

from tests.functional.harness import Site, SitePki, TlsSite, wait_for
from tests.functional.test_site_events import events as site_events
from workspace.cli import render
from workspace.cli import ws as ws_cli
from workspace.errors import PermissionDenied
from workspace.identity import Identity, Kind
from workspace.ops import autoscale
from workspace.store import Cluster
from workspace.v1 import clusters_pb2, clusters_pb2_grpc, images_pb2

CS = clusters_pb2.ClusterState
IMG = "aimg"


def make_site(tmp_path: Path, **kw: Any) -> Site:
    kw.setdefault("autoscale_interval_s", 3600)
    kw.setdefault("autoscale_cooldown_s", 0)  # a cool-down only where a test sets one
    s = Site(tmp_path, roster_push_interval_s=0.2, **kw)
    s.stubs.network()
    s.stubs.import_image(IMG, context="nocloud")
    s.add_agent("node1")
    stub(s).CreateCluster(
        clusters_pb2.CreateClusterRequest(
            name="auto",
            members=[
                clusters_pb2.ClusterMember(role="head", image=IMG, memory_mib=128),
                clusters_pb2.ClusterMember(role="worker", image=IMG, memory_mib=128, count=2),
            ],
        )
    )
    return s


@pytest.fixture
def site(tmp_path: Path) -> Iterator[Site]:
    s = make_site(tmp_path)
    try:
        yield s
    finally:
        s.close()


def stub(site: Site) -> clusters_pb2_grpc.ClustersStub:
    return clusters_pb2_grpc.ClustersStub(site.stubs.channel)


def get(site: Site) -> clusters_pb2.Cluster:
    return stub(site).GetCluster(clusters_pb2.ClusterRef(id="auto"))


def workers(site: Site) -> list[str]:
    return sorted(m.name for m in get(site).members if m.role == "worker")


def script(tmp_path: Path, body: str, name: str = "signal") -> Path:
    p = tmp_path / name
    p.write_text("#!/bin/sh\n" + body + "\n")
    p.chmod(p.stat().st_mode | stat.S_IXUSR)
    return p


def counter(tmp_path: Path) -> tuple[Path, Path]:
    """A signal that prints what the file ``want`` holds (and logs its environment)."""
    want = tmp_path / "want"
    want.write_text("2\n")
    env_log = tmp_path / "env"
    p = script(tmp_path, f"env | grep ^WS_ | sort > {env_log}\ncat {want}")
    return p, want


def set_auto(site: Site, **kw: Any) -> clusters_pb2.Cluster:
    kw.setdefault("role", "worker")
    return stub(site).SetAutoscale(clusters_pb2.SetAutoscaleRequest(id="auto", **kw))


def evaluate(site: Site) -> autoscale.Outcome:
    assert site.service is not None
    (out,) = autoscale.evaluate(site.service.env)
    return out


def info(site: Site) -> clusters_pb2.AutoscaleInfo:
    (a,) = get(site).autoscale
    return a


def test_command_signal_grows_and_shrinks_within_min_and_max(site: Site, tmp_path: Path) -> None:
    sig, want = counter(tmp_path)
    c = set_auto(site, min=1, max=4, signal=f"command:{sig}", cooldown_s=0)
    assert [(a.role, a.min, a.max, a.signal) for a in c.autoscale] == [
        ("worker", 1, 4, f"command:{sig}")
    ]
    want.write_text("3\n")
    d = evaluate(site).decision
    assert (d.action, d.wanted, d.current) == ("grew", 3, 2)
    assert workers(site) == ["auto-worker-0", "auto-worker-1", "auto-worker-2"]
    env = (tmp_path / "env").read_text().split()
    assert env == ["WS_CLUSTER=auto", "WS_CURRENT=2", "WS_MAX=4", "WS_MIN=1", "WS_ROLE=worker"]

    want.write_text("10\n")  # clamped to max
    d = evaluate(site).decision
    assert d.action == "grew" and "signal wants 10 (clamped to 4), have 3" in d.detail
    assert len(workers(site)) == 4

    want.write_text("0\n")  # clamped to min; the highest indices go first
    d = evaluate(site).decision
    assert d.action == "shrank" and "(clamped to 1)" in d.detail
    wait_for(lambda: workers(site) == ["auto-worker-0"], what="shrunk to min")

    d = evaluate(site).decision
    assert d.action == "steady" and "no change" in d.detail
    # `ws cluster show` explains the last decision in one line.
    line = render.cluster_text(get(site)).splitlines()
    shown = [x for x in line if x.startswith("autoscale worker")]
    assert len(shown) == 1
    assert shown[0].startswith(
        f"autoscale worker 1..4 on command:{sig}, cool-down 0 s; last decision"
    )
    assert shown[0].endswith("signal wants 0 (clamped to 1), have 1: no change")

    # The same decision again is not written again: it keeps the time it was first made.
    assert site.service is not None
    with site.service.env.store.read() as s:
        before = s.get(Cluster, get(site).id).autoscale["worker"]["last"]
    assert evaluate(site).decision.action == "steady"
    with site.service.env.store.read() as s:
        assert s.get(Cluster, get(site).id).autoscale["worker"]["last"] == before


def test_cool_down_holds_a_change(site: Site, tmp_path: Path) -> None:
    sig, want = counter(tmp_path)
    set_auto(site, min=1, max=5, signal=f"command:{sig}", cooldown_s=3600)
    want.write_text("3\n")
    assert evaluate(site).decision.action == "grew"  # the first change needs no cool-down
    first = info(site)
    assert first.last_action_at.seconds > 0
    want.write_text("5\n")
    d = evaluate(site).decision
    assert d.action == "hold" and "hold, cool-down until" in d.detail
    assert len(workers(site)) == 3
    a = info(site)
    assert a.action == "hold" and a.wanted == 5 and a.current == 3
    assert a.last_action_at == first.last_action_at


def test_an_autoscaler_turned_off_while_its_signal_is_read_scales_nothing(
    site: Site, tmp_path: Path
) -> None:
    """`ws cluster autoscale --off` answered while a pass read the signal (a command or
    squeue may take seconds): the pass must not scale after the owner turned it off."""
    sig, _want = counter(tmp_path)
    set_auto(site, min=1, max=4, signal=f"command:{sig}", cooldown_s=0)

    def reader(*_args: Any) -> int:
        set_auto(site, off=True)
        return 4

    assert site.service is not None
    (out,) = autoscale.evaluate(site.service.env, reader)
    assert out.decision.action != "grew"
    assert workers(site) == ["auto-worker-0", "auto-worker-1"]
    assert not get(site).autoscale


def test_two_overlapping_passes_keep_the_cool_down(site: Site, tmp_path: Path) -> None:
    """Two replicas' passes at once (the old leader's in flight as the next one leads):
    the second to write sees the first one's change and holds for the cool-down, rather
    than undoing it at once from what it read before."""
    sig, _want = counter(tmp_path)
    set_auto(site, min=1, max=5, signal=f"command:{sig}", cooldown_s=3600)
    assert site.service is not None
    env = site.service.env

    def other_pass(*_args: Any) -> int:
        (other,) = autoscale.evaluate(env, lambda *_a: 4)
        assert other.decision.action == "grew"
        return 1

    (out,) = autoscale.evaluate(env, other_pass)
    assert out.decision.action == "hold"
    assert len(workers(site)) == 4
    assert info(site).action == "hold"


@pytest.mark.parametrize(
    ("body", "match"),
    [
        ("echo boom >&2; exit 3", "exited 3: boom"),
        ("echo lots", "printed 'lots', not a count"),
        ("sleep 30 & sleep 30; wait", "ran longer than 1 s"),
    ],
)
def test_a_failing_signal_changes_nothing_and_says_why(
    tmp_path: Path, body: str, match: str
) -> None:
    s = make_site(tmp_path, autoscale_command_timeout_s=1)
    try:
        sig = script(tmp_path, body)
        set_auto(s, min=0, max=4, signal=f"command:{sig}", cooldown_s=0)
        before = workers(s)
        d = evaluate(s).decision
        assert d.action == "failed" and d.wanted == -1
        assert d.detail.startswith("signal failed: ") and match in d.detail
        assert d.detail.endswith("; no change")
        assert workers(s) == before
        assert match in info(s).detail
    finally:
        s.close()


def test_slurm_queue_signal_sums_pending_and_running_nodes(tmp_path: Path) -> None:
    args = tmp_path / "args"
    squeue = script(tmp_path, f'echo "$@" > {args}\nprintf "2\\n1\\n"', name="squeue")
    s = make_site(tmp_path, squeue_command=str(squeue))
    try:
        set_auto(s, min=0, max=8, signal="slurm-queue:debug", cooldown_s=0)
        d = evaluate(s).decision
        assert (d.action, d.wanted) == ("grew", 3)
        assert args.read_text().split() == [
            "-h",
            "-r",
            "-t",
            "PENDING,RUNNING",
            "-o",
            "%D",
            "-p",
            "debug",
        ]
        assert len(workers(s)) == 3
    finally:
        s.close()


def test_the_leader_loop_scales_on_its_own(tmp_path: Path) -> None:
    s = make_site(tmp_path, autoscale_interval_s=0.2)
    try:
        sig = script(tmp_path, "echo 4")
        set_auto(s, min=0, max=6, signal=f"command:{sig}", cooldown_s=0)
        wait_for(lambda: len(workers(s)) == 4, what="grown by the loop")
        wait_for(lambda: info(s).action == "steady", what="a steady decision")
    finally:
        s.close()


def test_a_refused_grow_is_a_decision_too(tmp_path: Path) -> None:
    s = make_site(tmp_path)
    try:
        sig = script(tmp_path, "echo 900")
        set_auto(s, min=0, max=900, signal=f"command:{sig}", cooldown_s=0)
        before = workers(s)
        d = evaluate(s).decision
        assert d.action == "failed" and "refused: cannot place" in d.detail
        assert workers(s) == before
    finally:
        s.close()


def test_a_grow_refused_again_for_the_same_reason_is_not_a_new_refusal_event(
    tmp_path: Path,
) -> None:
    """Every pass tries the grow again; one that is refused as before (nothing changed)
    does not journal its workspace.refused events again: on a full site with a long
    queue that was one event per missing member every autoscale_interval_s, forever."""
    s = make_site(tmp_path)
    try:
        want = tmp_path / "want"
        want.write_text("50\n")
        sig = script(tmp_path, f"cat {want}")
        set_auto(s, min=0, max=900, signal=f"command:{sig}", cooldown_s=0)

        def refusals() -> int:
            return len([e for e in site_events(s) if e.kind == "workspace.refused"])

        assert evaluate(s).decision.action == "failed"
        first = refusals()
        assert first > 0  # the admin sees the refusal once
        for _ in range(3):
            assert evaluate(s).decision.action == "failed"
        assert refusals() == first
        # Refused for another reason (more wanted): that is news.
        want.write_text("60\n")
        assert evaluate(s).decision.action == "failed"
        assert refusals() > first
    finally:
        s.close()


def refused(site: Site, code: grpc.StatusCode, **kw: Any) -> str:
    with pytest.raises(grpc.RpcError) as err:
        set_auto(site, **kw)
    assert err.value.code() == code, err.value.details()
    return str(err.value.details())


def test_bad_settings_are_refused_and_store_nothing(site: Site, tmp_path: Path) -> None:
    sig = script(tmp_path, "echo 1")
    plain = tmp_path / "plain"
    plain.write_text("echo 1\n")
    bad = grpc.StatusCode.INVALID_ARGUMENT
    cases = [
        (dict(min=1, max=3, signal="command:relative/path"), "give the command's absolute path"),
        (dict(min=1, max=3, signal=f"command:{tmp_path}/nope"), "does not exist"),
        (dict(min=1, max=3, signal=f"command:{plain}"), "is not executable"),
        (dict(min=1, max=3, signal="cpu-load"), "is not one of slurm-queue"),
        (dict(min=3, max=1, signal=f"command:{sig}"), "give 0 <= --min <= --max, not 3..1"),
        (dict(min=0, max=5000, signal=f"command:{sig}"), "above the cluster member limit (1000)"),
        (dict(min=0, max=2, signal=f"command:{sig}", cooldown_s=-1), "cool-down must be 0 or more"),
        (dict(role="nope", min=0, max=2, signal=f"command:{sig}"), "has no role 'nope'"),
    ]
    for kw, match in cases:
        assert match in refused(site, bad, **kw), kw
    assert list(get(site).autoscale) == []


def test_ws_cluster_autoscale_cli(
    site: Site, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    sig = script(tmp_path, "echo 2")
    base = ["--service", site.address]
    argv = ["cluster", "autoscale", "auto", "--role", "worker", "--min", "1", "--max", "3"]
    assert ws_cli.main([*base, *argv, "--signal", f"command:{sig}", "--cooldown", "30"]) == 0
    out = capsys.readouterr().out
    assert f"cluster auto: autoscale worker 1..3 on command:{sig}, cool-down 30 s" in out
    assert "no decision yet" in out
    assert ws_cli.main([*base, "-o", "json", "cluster", "show", "auto"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["autoscale"][0]["role"] == "worker" and data["autoscale"][0]["max"] == 3
    assert ws_cli.main([*base, *argv]) == 2  # a usage error
    assert "give --min, --max and --signal (or --off)" in capsys.readouterr().err
    off = ["cluster", "autoscale", "auto", "--role", "worker", "--off"]
    assert ws_cli.main([*base, *off]) == 0
    assert "autoscale worker: off" in capsys.readouterr().out
    assert list(get(site).autoscale) == []


def _mallorys_cluster(site: TlsSite) -> clusters_pb2_grpc.ClustersStub:
    """A public image, a node, and a plain user's cluster "auto" (one worker role); that
    user's (mallory's) Clusters stub."""
    site.stubs.network()
    site.stubs.import_image(IMG, context="nocloud")
    site.stubs.images.SetImagePublic(images_pb2.SetImagePublicRequest(name=IMG, public=True))
    site.add_agent("node1")
    mallory = clusters_pb2_grpc.ClustersStub(site.identity("mallory").channel)
    mallory.CreateCluster(
        clusters_pb2.CreateClusterRequest(
            name="auto",
            members=[clusters_pb2.ClusterMember(role="worker", image=IMG, memory_mib=128)],
        )
    )
    return mallory


def test_a_users_command_signal_runs_only_what_the_site_vetted(tmp_path: Path) -> None:
    """A command: signal runs on the service's host as the service's user: a user may name
    only a program in the site's autoscale_commands_dir, links resolved (not /usr/bin/id,
    whose output would reach them in the decision); an admin may name any."""
    vetted = tmp_path / "vetted"
    vetted.mkdir()
    ok = script(vetted, "echo 1", name="want")
    (vetted / "id").symlink_to("/usr/bin/id")  # a link out of the directory
    elsewhere = script(tmp_path, "echo 1", name="mine")
    site = TlsSite(tmp_path / "site", SitePki(tmp_path / "pki"), autoscale_commands_dir=str(vetted))
    try:
        mallory = _mallorys_cluster(site)
        ref = clusters_pb2.ClusterRef(id="auto")

        def as_mallory(signal: str) -> clusters_pb2.Cluster:
            req = clusters_pb2.SetAutoscaleRequest(
                id="auto", role="worker", min=0, max=2, signal=signal
            )
            return mallory.SetAutoscale(req)

        for outside in (f"command:{elsewhere}", f"command:{vetted / 'id'}", "command:/usr/bin/id"):
            with pytest.raises(grpc.RpcError) as err:
                as_mallory(outside)
            assert err.value.code() == grpc.StatusCode.PERMISSION_DENIED, outside
            assert f"must be a program in {vetted}" in str(err.value.details()), outside
        assert list(mallory.GetCluster(ref).autoscale) == []
        assert as_mallory(f"command:{ok}").autoscale[0].signal == f"command:{ok}"
        assert as_mallory("slurm-queue").autoscale[0].signal == "slurm-queue"
        # The admin's choice of program on the user's cluster is taken.
        admin = clusters_pb2_grpc.ClustersStub(site.stubs.channel)
        c = admin.SetAutoscale(
            clusters_pb2.SetAutoscaleRequest(
                id="mallory/auto", role="worker", min=0, max=2, signal=f"command:{elsewhere}"
            )
        )
        assert c.autoscale[0].signal == f"command:{elsewhere}"
        assert mallory.GetCluster(ref).autoscale[0].signal == f"command:{elsewhere}"
    finally:
        site.close()


def test_a_users_link_to_a_vetted_program_cannot_be_pointed_elsewhere_later(
    tmp_path: Path,
) -> None:
    """A user's command: signal through a link of theirs into the vetted directory runs
    the program the link named when it was set: pointing the link at a program of their
    own afterwards must not make the service run that one (as the service's user)."""
    vetted = tmp_path / "vetted"
    vetted.mkdir()
    ok = script(vetted, "echo 1", name="want")
    mine = script(tmp_path, "echo 2", name="mine")
    link = tmp_path / "link"
    link.symlink_to(ok)
    site = TlsSite(tmp_path / "site", SitePki(tmp_path / "pki"), autoscale_commands_dir=str(vetted))
    try:
        mallory = _mallorys_cluster(site)
        mallory.SetAutoscale(
            clusters_pb2.SetAutoscaleRequest(
                id="auto", role="worker", min=0, max=3, signal=f"command:{link}"
            )
        )
        link.unlink()
        link.symlink_to(mine)
        assert site.service is not None
        (out,) = autoscale.evaluate(site.service.env)
        assert out.decision.wanted == 1
        shown = mallory.GetCluster(clusters_pb2.ClusterRef(id="auto")).autoscale[0].signal
        assert shown == f"command:{ok.resolve()}"
    finally:
        site.close()


def test_without_a_commands_directory_only_admins_set_command_signals(tmp_path: Path) -> None:
    sig = script(tmp_path, "echo 1")
    user = Identity(Kind.USER, "mallory")
    with pytest.raises(PermissionDenied, match="only an admin may set a command: signal"):
        autoscale.check_signal(f"command:{sig}", user, "")
    with pytest.raises(PermissionDenied, match="only an admin"):
        autoscale.check_signal("command:/usr/bin/id", user, "")
    assert autoscale.check_signal("slurm-queue:debug", user, "").arg == "debug"
    admin = Identity(Kind.USER, "root", admin=True)
    assert autoscale.check_signal(f"command:{sig}", admin, "").arg == str(sig)
