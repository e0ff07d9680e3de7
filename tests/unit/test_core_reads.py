"""Hot reads run as Core statements (store/mapping.py ``run``) answer as the ORM did:
what the transaction added and did not flush yet counts; a caller's own workspace and
an admin's view need no memberships, anyone else's still does."""

from __future__ import annotations

from pathlib import Path

import pytest

from workspace.errors import FailedPrecondition, InvalidArgument, NotFound
from workspace.identity import Identity, Kind
from workspace.ops.lifecycle import resolve_workspace
from workspace.ops.projects import memberships
from workspace.store import Project, ProjectMember, Store, Workspace


def _store(tmp_path: Path) -> Store:
    return Store(f"sqlite:///{tmp_path / 'db.sqlite'}")


def test_memberships_see_a_member_added_in_the_same_transaction(tmp_path: Path) -> None:
    store = _store(tmp_path)
    alice = Identity(Kind.USER, "alice")
    with store.write() as s:
        s.add(Project(name="p1"))
        s.add(ProjectMember(project="p1", user="alice"))  # pending, not flushed
        assert memberships(s, alice) == frozenset({"p1"})
    with store.read() as s:
        assert memberships(s, alice) == frozenset({"p1"})
        assert memberships(s, Identity(Kind.USER, "bob")) == frozenset()


def _workspace(wid: str, owner: str, project: str = "") -> Workspace:
    return Workspace(
        id=wid,
        name=wid,
        owner=owner,
        project=project,
        request_id=wid,
        request_hash="",
        image="img",
        cpus=1,
        memory_mib=64,
        state="PENDING",
        desired_state="RUNNING",
        created_at=1.0,
        updated_at=1.0,
    )


def test_who_sees_a_workspace_by_id(tmp_path: Path) -> None:
    store = _store(tmp_path)
    with store.write() as s:
        s.add(Project(name="p1"))
        s.add(ProjectMember(project="p1", user="bob"))
        s.add(_workspace("w-alice", "alice", "p1"))
        s.add(_workspace("w-carol", "carol"))
    alice = Identity(Kind.USER, "alice")
    bob = Identity(Kind.USER, "bob")  # a member of p1 by his member row
    admin = Identity(Kind.USER, "root", admin=True)
    with store.read() as s:
        assert resolve_workspace(s, alice, "w-alice").id == "w-alice"
        assert resolve_workspace(s, bob, "w-alice").id == "w-alice"
        assert resolve_workspace(s, admin, "w-carol").id == "w-carol"
        for who, ref in ((bob, "w-carol"), (alice, "w-carol")):
            with pytest.raises(NotFound, match=f"no workspace '{ref}'"):
                resolve_workspace(s, who, ref)


def test_by_name_the_callers_own_comes_first_and_others_must_not_be_a_guess(
    tmp_path: Path,
) -> None:
    store = _store(tmp_path)
    admin = Identity(Kind.USER, "root", admin=True)

    def named(wid: str, owner: str, state: str = "RUNNING") -> Workspace:
        w = _workspace(wid, owner)
        w.name, w.state = "g1", state
        return w

    with store.write() as s:
        s.add(named("root-g1", "root", "TERMINATED"))
        s.add(named("slurm-g1", "slurm"))
    with store.read() as s:
        # The admin's own g1, though terminated; not the batch user's live one.
        assert resolve_workspace(s, admin, "g1").id == "root-g1"
        assert resolve_workspace(s, admin, "slurm-g1").id == "slurm-g1"  # by id: any
    with store.write() as s:
        s.delete(s.get(Workspace, "root-g1"))
        s.add(named("alice-g1", "alice"))
    with store.read() as s:
        # None of the admin's own and two users' live ones: which one is not guessed.
        with pytest.raises(FailedPrecondition, match="several users have a workspace named"):
            resolve_workspace(s, admin, "g1")
        assert resolve_workspace(s, Identity(Kind.USER, "alice"), "g1").id == "alice-g1"


def test_a_bare_name_acts_on_no_one_elses_workspace(tmp_path: Path) -> None:
    """An admin (or a project member) with no g1 of their own reads the batch user's g1
    by that name, but a destroy, stop, reboot or pause by it is refused, naming it: the
    id or OWNER/NAME says whose. It destroyed the one other user's of that name."""
    store = _store(tmp_path)
    admin = Identity(Kind.USER, "root", admin=True)
    with store.write() as s:
        w = _workspace("slurm-g1", "slurm")
        w.name, w.state = "g1", "RUNNING"
        s.add(w)
    with store.read() as s:
        assert resolve_workspace(s, admin, "g1").id == "slurm-g1"
        with pytest.raises(FailedPrecondition) as refused:
            resolve_workspace(s, admin, "g1", acting="destroy")
        assert refused.value.message == (
            "you have no workspace named 'g1'; not guessing someone else's to destroy: "
            "give its id or OWNER/NAME (slurm/g1 (id slurm-g1, RUNNING))"
        )
        assert resolve_workspace(s, admin, "slurm/g1", acting="destroy").id == "slurm-g1"
        assert resolve_workspace(s, admin, "slurm-g1", acting="destroy").id == "slurm-g1"
        with pytest.raises(NotFound, match="no workspace 'g1' of alice that you may see"):
            resolve_workspace(s, admin, "alice/g1", acting="destroy")
        for bad in ("slurm/", "/g1", "a/b/c"):
            with pytest.raises(InvalidArgument, match="give an id, a name, or OWNER/NAME"):
                resolve_workspace(s, admin, bad)
