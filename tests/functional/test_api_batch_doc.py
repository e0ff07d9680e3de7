"""docs/api.md, "A batch system's jobs, with the Python client": its example run exactly
as printed, as a batch user over mutual TLS beside a project colleague who uses the same
request-id prefix (the sweep lists only its own: ``mine``). What a batch system's author
checks: each job's workspace or cluster comes up and answers, a job cancelled while it
waits for capacity leaves nothing waiting, a cancel of a job never created ends nothing
(a colleague's workspace of its name survives), and the sweep after a crash ends exactly
what the batch user made for jobs gone."""

from __future__ import annotations

from pathlib import Path

from tests.functional.doc_examples import marked_block, run_example
from tests.functional.harness import WS, SitePki, TlsSite
from workspace.v1 import common_pb2, images_pb2, projects_pb2, projects_pb2_grpc, workspaces_pb2


def test_the_batch_example_runs_and_sweeps_only_its_own(tmp_path: Path) -> None:
    site = TlsSite(tmp_path / "site", SitePki(tmp_path / "pki"))
    try:
        site.stubs.network()
        site.stubs.import_image("tiny")
        public = images_pb2.SetImagePublicRequest(name="tiny", public=True)
        site.stubs.images.SetImagePublic(public)
        # 2 cores, 8 vCPUs with the default cpu_overcommit: the example's 8-vCPU job waits.
        site.add_agent("node1", cpus=2)
        projects = projects_pb2_grpc.ProjectsStub(site.stubs.channel)
        projects.CreateProject(projects_pb2.Project(name="physics"))
        for user in ("alice", "bob"):
            projects.AddProjectUser(projects_pb2.ProjectUserRequest(project="physics", user=user))
        # Bob, in alice's project, made one with a request id of the same prefix: alice
        # sees it in her list (and might destroy it), but it is not hers to sweep.
        bob = site.identity("bob").ws
        bobs = bob.CreateWorkspace(
            workspaces_pb2.CreateWorkspaceRequest(
                name="bobs", image="tiny", cpus=1, memory_mib=64, request_id="htc-sched1-9.0"
            )
        )
        # And one named as alice's job 1238.0 would be, which alice cancels before its
        # create: by name, her cancel destroyed bob's.
        same = bob.CreateWorkspace(
            workspaces_pb2.CreateWorkspaceRequest(
                name="htc-1238-0", image="tiny", cpus=1, memory_mib=64, request_id="b-1238"
            )
        )
        alice = site.identity("alice").ws
        listed = alice.ListWorkspaces(workspaces_pb2.ListWorkspacesRequest()).workspaces
        assert [(w.name, w.owner, w.request_id) for w in listed] == [
            ("bobs", "bob", "htc-sched1-9.0"),
            ("htc-1238-0", "bob", "b-1238"),
        ]
        run_dir = tmp_path / "run"
        run_dir.mkdir()
        env = {"WS_SERVICE": site.address, "WS_IDENTITY": str(site.pki.user("alice"))}
        code = marked_block("docs/api.md", "test_api_batch_doc.py")
        out = run_example(code, run_dir, env)
        assert out.returncode == 0, out.stderr
        assert out.stdout.splitlines() == [
            "htc-1234-0 ['10.213.0.4'] 0 htc-1234-0",
            "htc-1235-0-head-0 head ['10.213.0.5']",
            "htc-1235-0-worker-0 worker ['10.213.0.6']",
            "htc-1235-0-worker-1 worker ['10.213.0.7']",
            "htc-1236-0 PENDING",
            "htc-1236-0 TERMINATED destroyed while waiting for capacity",
            "swept cluster htc-1235-0",
            "swept workspace htc-1237-0",
            "ended htc-1234-0",
            "ended None",
        ]
        progress = out.stderr.splitlines()
        assert progress[-1] == "sweeping as alice", out.stderr  # WhoAmI
        assert progress[-2] == "  htc-1235-0: RUNNING RUNNING RUNNING", out.stderr
        assert "  htc-1234-0: RUNNING" in progress, out.stderr
        # Of alice's, nothing is left running or waiting; bob's is untouched.
        every = workspaces_pb2.ListWorkspacesRequest(all_users=True)
        live = site.stubs.ws.ListWorkspaces(every).workspaces
        going = common_pb2.DESIRED_STATE_TERMINATED
        assert [(w.name, w.owner) for w in live if w.desired_state != going] == [
            ("bobs", "bob"),
            ("htc-1238-0", "bob"),
        ]
        for w in (bobs, same):
            assert site.stubs.get(w.id).desired_state == common_pb2.DESIRED_STATE_RUNNING
        for w in live:
            if w.owner == "alice":
                site.stubs.wait_state(w.id, WS.WORKSPACE_STATE_TERMINATED)
    finally:
        site.close()
