"""The waits of the Python client (``Client`` inherits them), the errors they raise and
the short state names they speak in.

``wait_until`` is the one workspace wait: until a condition on the workspace holds,
level-triggered (watch events plus a periodic re-read). ``wait_for_state`` (one of some
states) and ``wait_for_reboot`` (the node carried a reboot out) are conditions for it.
``wait_for_cluster_state`` polls GetCluster.
"""

from __future__ import annotations

import numbers
import time
from collections.abc import Callable, Iterable
from typing import Any, Literal

import grpc

from workspace import errors, rpc_status
from workspace.v1 import (
    clusters_pb2,
    clusters_pb2_grpc,
    common_pb2,
    workspaces_pb2,
    workspaces_pb2_grpc,
)

# wait_until re-reads the workspace at least this often, whatever the events say.
RESYNC_S = 30.0
# When the service refuses the watch (RESOURCE_EXHAUSTED: the caller has
# max_streams_per_caller streams open), wait_until reads the workspace this often instead,
# and tries a watch again after RESYNC_S.
POLL_S = 1.0

WS = common_pb2.WorkspaceState
# wait_for_state's ``desired=``: DS.DESIRED_STATE_PAUSED after a pause, ...
DS = common_pb2.DesiredState
# States a workspace does not leave by itself: waiting for anything else is hopeless.
FINAL_STATES = frozenset({WS.WORKSPACE_STATE_FAILED, WS.WORKSPACE_STATE_TERMINATED})
# States that end a wait unless asked for (LOST may recover, but a waiter should know).
_FAILED_STATES = frozenset({*FINAL_STATES, WS.WORKSPACE_STATE_LOST})

CS = clusters_pb2.ClusterState
# Cluster states that end a wait unless asked for.
_CLUSTER_FAILED_STATES = frozenset({CS.CLUSTER_STATE_FAILED, CS.CLUSTER_STATE_TERMINATED})
# wait_for_cluster_state reads the cluster this often.
CLUSTER_POLL_S = 0.5
# A wait's read is given the client's timeout, or what is left of the wait when that is
# less, but at least this long.
MIN_READ_S = 1.0


def _seconds(t: float) -> str:
    """A wait's time for a message: to a tenth of a second (what a caller computing its
    deadline's remainder passes is 0.999995 s, not 1 s)."""
    return f"{round(t, 1):g}"


class WaitTimeout(errors.WorkspaceError):
    """A wait for a workspace state ran out of time (the workspace is left as it is)."""

    expected = True

    def __init__(self, message: str, workspace: common_pb2.Workspace | None = None) -> None:
        super().__init__(message)
        self.workspace = workspace


class WaitFailed(errors.FailedPrecondition):
    """The workspace reached a state it will not leave towards the one waited for."""

    def __init__(self, message: str, workspace: common_pb2.Workspace) -> None:
        super().__init__(message)
        self.workspace = workspace


class ClusterWaitTimeout(WaitTimeout):
    """A wait for a cluster state ran out of time (the cluster is left as it is)."""

    def __init__(self, message: str, cluster: clusters_pb2.Cluster | None = None) -> None:
        super().__init__(message)
        self.cluster = cluster


class ClusterWaitFailed(errors.FailedPrecondition):
    """The cluster reached a state it will not leave towards the one waited for."""

    def __init__(self, message: str, cluster: clusters_pb2.Cluster) -> None:
        super().__init__(message)
        self.cluster = cluster


def state_name(value: int) -> str:
    """``WORKSPACE_STATE_RUNNING`` -> ``RUNNING`` (unknown numbers stay numbers)."""
    try:
        name = WS.Name(value)  # type: ignore[arg-type]
    except ValueError:
        return str(value)
    return name.removeprefix("WORKSPACE_STATE_")


def cluster_state_name(value: int) -> str:
    """``CLUSTER_STATE_RUNNING`` -> ``RUNNING`` (unknown numbers stay numbers)."""
    try:
        name = CS.Name(value)  # type: ignore[arg-type]
    except ValueError:
        return str(value)
    return name.removeprefix("CLUSTER_STATE_")


def rebooted(ws: common_pb2.Workspace, reboot_count: int) -> bool | None:
    """Whether the node has carried out reboot number ``reboot_count`` of ``ws`` (the
    ``reboot_count`` that ``reboot_workspace`` returned); None when nobody can tell: the
    workspace's node has not reported the reboots it carried out (its agent predates
    ``applied_reboot_count``), or the service predates the field."""
    if not ws.HasField("applied_reboot_count"):
        return None
    return ws.applied_reboot_count >= reboot_count


def _state(ws: common_pb2.Workspace) -> str:
    return state_name(ws.state)


# How the reason of a request waiting in the capacity queue begins (docs/api.md).
WAITING_PREFIX = "waiting for capacity"


def _state_or_wait(ws: common_pb2.Workspace) -> str:
    """The state, and while the workspace waits for capacity its reason: its place in the
    queue and why it waits (``PENDING (waiting for capacity (2nd in the queue): …)``)."""
    if ws.state == WS.WORKSPACE_STATE_PENDING and ws.reason.startswith(WAITING_PREFIX):
        return f"{state_name(ws.state)} ({ws.reason})"
    return state_name(ws.state)


class Outage:
    """Whether a wait has lost the service: ``on_outage`` is told once when it does (why)
    and once when it answers again (""); a timeout says since when it has not."""

    def __init__(self, on_outage: Callable[[str], None] | None) -> None:
        self.on_outage = on_outage
        self.since: float | None = None

    def lost(self, why: str) -> None:
        if self.since is None:
            self.since = time.time()
            if self.on_outage is not None:
                self.on_outage(why or "no answer")

    def back(self) -> None:
        if self.since is not None:
            self.since = None
            if self.on_outage is not None:
                self.on_outage("")

    def note(self) -> str:
        """``; the service has not answered since 18:04:06`` while it is lost."""
        if self.since is None:
            return ""
        at = time.strftime("%H:%M:%S", time.localtime(self.since))
        return f"; the service has not answered since {at}"


def _retried(ws: common_pb2.Workspace, named: str = "") -> str:
    """What a FAILED workspace that is still meant to run will do: its node tries again.
    ``named``: how the waiter named it (``wait_until``); its name by default."""
    if (
        ws.state == WS.WORKSPACE_STATE_FAILED
        and ws.node
        and ws.desired_state == common_pb2.DESIRED_STATE_RUNNING
    ):
        watch = named or ws.name or ws.id
        return f"; its node {ws.node} tries again (`ws watch {watch}` follows it)"
    return ""


class WaitsClientMixin:
    """Needs ``_workspaces``, ``_clusters``, ``_call``, ``_error`` and ``timeout_s`` from
    the Client."""

    _workspaces: workspaces_pb2_grpc.WorkspacesStub
    _clusters: clusters_pb2_grpc.ClustersStub
    _call: Callable[..., Any]
    _error: Callable[[grpc.RpcError], errors.WorkspaceError]
    timeout_s: float

    def _read_workspace(self, id: str, deadline: float) -> common_pb2.Workspace:
        """GetWorkspace within what is left of a wait (a service that does not answer
        kept a wait the client's whole timeout past its own)."""
        req = workspaces_pb2.GetWorkspaceRequest(id=id)
        found: common_pb2.Workspace = self._call(
            self._workspaces.GetWorkspace, req, _read_timeout(self.timeout_s, deadline)
        )
        return found

    def _read_cluster(self, ref: str, deadline: float) -> clusters_pb2.Cluster:
        """GetCluster within what is left of a wait."""
        req = clusters_pb2.ClusterRef(id=ref)
        found: clusters_pb2.Cluster = self._call(
            self._clusters.GetCluster, req, _read_timeout(self.timeout_s, deadline)
        )
        return found

    def wait_until(
        self,
        id: str,
        done: Callable[[common_pb2.Workspace], bool],
        goal: str,
        timeout_s: float = 300.0,
        on_change: Callable[[common_pb2.Workspace], None] | None = None,
        describe: Callable[[common_pb2.Workspace], str] = _state,
        on_outage: Callable[[str], None] | None = None,
        *,
        waited_s: float | None = None,
        named: str = "",
    ) -> common_pb2.Workspace:
        """Block until ``done(workspace)`` holds for workspace ``id``; return the workspace.

        ``goal`` says what is waited for ("RUNNING"), ``describe`` what the workspace is
        as far as the wait cares (by default its state name): ``on_change`` sees the
        workspace first and then whenever that description changes, and a timeout says
        the last one. Built on WatchWorkspaces; a dropped stream is re-opened, and the
        workspace is re-read at least every RESYNC_S seconds (events only speed things
        up). A watch the service refuses (the caller already has
        ``max_streams_per_caller`` streams open) is replaced by a read every POLL_S
        seconds, and tried again after RESYNC_S. Raises WaitFailed when the workspace
        reaches FAILED, TERMINATED or LOST without ``done`` holding (``done`` may raise
        WaitFailed itself: the goal can no longer be reached) and WaitTimeout after
        ``timeout_s``. A workspace that
        vanishes is judged as TERMINATED (NotFound unless ``done`` takes that: the
        service's own, with its code, when the wait never saw it: a wrong id). An
        unreachable service is retried until the deadline; ``on_outage`` is told once
        when it is lost (why) and once when it answers again ("").
        ``waited_s``: how long a timeout says was waited, when ``timeout_s`` is only what
        was left of a longer wait (several workspaces waited for under one deadline, the
        later ones have what the first ones left); by default ``timeout_s``.
        ``named``: the workspace as the caller named it (`ws start alice/web1 --wait`),
        for the hint of a WaitFailed (`ws watch alice/web1`); by default its name, which
        names the caller's own: another user's is OWNER/NAME.
        """
        deadline = time.monotonic() + timeout_s
        last: list[common_pb2.Workspace] = []
        outage = Outage(on_outage)

        def reached(ws: common_pb2.Workspace) -> bool:
            if (not last or describe(last[-1]) != describe(ws)) and on_change is not None:
                on_change(ws)
            last[:] = [ws]
            if done(ws):
                return True
            if ws.state in _FAILED_STATES:
                reason = f": {ws.reason}" if ws.reason else ""
                raise WaitFailed(
                    f"workspace {ws.name or ws.id} is {state_name(ws.state)}{reason} "
                    f"(waited for {goal}){_retried(ws, named)}",
                    ws,
                )
            return False

        def vanished(unseen: errors.NotFound) -> common_pb2.Workspace:
            """``unseen``: the service's NOT_FOUND; raised as it is when the wait never
            saw the workspace (a wrong id, or one deleted after its retention: the
            service's words tell them apart, the client cannot)."""
            gone = common_pb2.Workspace()
            if last:
                gone.CopyFrom(last[-1])
            gone.id = gone.id or id
            gone.state = WS.WORKSPACE_STATE_TERMINATED
            if done(gone):
                return gone
            if not last:
                raise unseen
            raise errors.NotFound(f"workspace {_named(last[-1], id)} no longer exists")

        def timed_out() -> WaitTimeout:
            ws = last[-1] if last else None
            now = f"; it is {describe(ws)}" if ws is not None else ""
            if ws is not None and outage.since is not None:
                now = f"; it was {describe(ws)} when last seen"
            return WaitTimeout(
                f"timed out after {_seconds(timeout_s if waited_s is None else waited_s)} s "
                f"waiting for workspace {_named(ws, id)} "
                f"to be {goal}{now}{outage.note()}",
                ws,
            )

        current: common_pb2.Workspace | None = None
        while current is None:  # the first read too waits out an outage
            try:
                current = self._read_workspace(id, deadline)
            except errors.NotFound as exc:
                return vanished(exc)
            except errors.Unavailable as exc:
                outage.lost(exc.message)
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise timed_out() from None
                time.sleep(min(POLL_S, remaining))
        outage.back()
        if reached(current):
            return current
        ws_id = current.id
        req = workspaces_pb2.WatchWorkspacesRequest(id=ws_id, include_terminated=True)
        poll_until = 0.0  # polling instead of watching until then (the watch was refused)
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise timed_out()
            if time.monotonic() < poll_until:
                time.sleep(min(POLL_S, remaining))
            else:
                watched = self._follow(req, ws_id, min(remaining, RESYNC_S), reached)
                if watched == "reached":
                    outage.back()
                    return last[-1]
                if watched == "gone":
                    return vanished(errors.NotFound(f"workspace {id} no longer exists"))
                if watched == "refused":
                    poll_until = time.monotonic() + RESYNC_S
            # Level-triggered: whatever the stream did, look at the workspace itself.
            try:
                current = self._read_workspace(ws_id, deadline)
            except errors.NotFound as exc:
                return vanished(exc)
            except errors.Unavailable as exc:
                outage.lost(exc.message)
                continue
            outage.back()
            if reached(current):
                return current

    def _follow(
        self,
        req: workspaces_pb2.WatchWorkspacesRequest,
        ws_id: str,
        timeout_s: float,
        reached: Callable[[common_pb2.Workspace], bool],
    ) -> Literal["reached", "gone", "refused", "ended"]:
        """Watch workspace ``ws_id`` for up to ``timeout_s``, until ``reached`` holds
        ("reached"), the workspace is gone, the service refuses the watch (RESOURCE_EXHAUSTED:
        the caller has too many streams open, or fell behind; the wait polls instead) or
        the stream ends otherwise (an outage, the timeout)."""
        call = self._workspaces.WatchWorkspaces(req, timeout=timeout_s)
        try:
            for event in call:
                if event.workspace.id == ws_id and reached(event.workspace):
                    return "reached"
            # The service ended the stream: do not spin if it keeps doing so.
            time.sleep(min(0.2, timeout_s))
        except grpc.RpcError as exc:
            code = exc.code()
            if code == grpc.StatusCode.NOT_FOUND:
                return "gone"
            if code == grpc.StatusCode.RESOURCE_EXHAUSTED:
                return "refused"
            if code == grpc.StatusCode.UNAVAILABLE or rpc_status.cancelled_by_service(exc):
                time.sleep(min(1.0, timeout_s))
            elif code != grpc.StatusCode.DEADLINE_EXCEEDED:
                raise self._error(exc) from None
        finally:
            call.cancel()
        return "ended"

    def wait_for_state(
        self,
        id: str,
        states: Iterable[int],
        timeout_s: float = 300.0,
        on_change: Callable[[common_pb2.Workspace], None] | None = None,
        on_outage: Callable[[str], None] | None = None,
        *,
        waited_s: float | None = None,
        desired: common_pb2.DesiredState.ValueType = common_pb2.DESIRED_STATE_UNSPECIFIED,
        named: str = "",
    ) -> common_pb2.Workspace:
        """Block until workspace ``id`` is in one of ``states``; return it.

        ``on_change`` sees the workspace first and then at each state change, and while it
        waits for capacity whenever its reason changes (its place in the queue, why it
        waits: the service sends them as they change). Raises WaitFailed when it reaches
        FAILED, TERMINATED or LOST (unless waited for) and WaitTimeout after
        ``timeout_s`` (``wait_until``, as ``waited_s`` and ``named``). A workspace that
        vanishes while TERMINATED is waited for counts as terminated.

        ``desired``: the desired state the operation waited for asked (DS.DESIRED_STATE_PAUSED
        after ``pause_workspace``). A workspace asked for another one meanwhile will not
        get there by itself (a resume withdrew the pause, a stop, a destroy): WaitFailed
        at once, saying what it is to be now, rather than WaitTimeout at the end.
        """
        wanted = _wanted(states, WS, "WS.WORKSPACE_STATE_RUNNING")
        goal = _names(wanted)
        if desired and (not _integral(desired) or int(desired) not in DS.values()):
            # WS.WORKSPACE_STATE_PAUSED (6) failed the wait at its first look, saying
            # only "Enum DesiredState has no name defined for value 6".
            said = repr(desired)
            if _integral(desired) and int(desired) in WS.values():
                said += f" (WS.{WS.Name(WS.ValueType(int(desired)))}, a WorkspaceState)"
            raise ValueError(
                "desired must be a DesiredState number such as DS.DESIRED_STATE_PAUSED "
                f"(`from workspace.client import DS`); not {said}"
            )

        def done(ws: common_pb2.Workspace) -> bool:
            # Asked for another state first: a resume that withdrew the pause shows
            # PAUSED until the node reports it running, which is no pause reached.
            if desired and ws.desired_state and ws.desired_state != desired:
                reason = f": {ws.reason}" if ws.reason else ""
                raise WaitFailed(
                    f"workspace {ws.name or ws.id} is to be {_desired_name(ws.desired_state)} "
                    f"now, no longer {_desired_name(desired)}{reason} (waited for {goal})",
                    ws,
                )
            return ws.state in wanted

        return self.wait_until(
            id,
            done,
            goal,
            timeout_s,
            on_change,
            _state_or_wait,
            on_outage=on_outage,
            waited_s=waited_s,
            named=named,
        )

    def wait_for_reboot(
        self,
        id: str,
        reboot_count: int,
        timeout_s: float = 300.0,
        on_change: Callable[[common_pb2.Workspace], None] | None = None,
        on_outage: Callable[[str], None] | None = None,
        *,
        waited_s: float | None = None,
        named: str = "",
    ) -> common_pb2.Workspace:
        """Block until the node has carried out reboot number ``reboot_count`` of
        workspace ``id`` (the ``reboot_count`` that ``reboot_workspace`` returned: its
        ``applied_reboot_count`` reaches it) and the workspace is RUNNING; return it.

        A node whose agent does not report the reboots it carries out (a release older
        than ``applied_reboot_count``) leaves the field unset: then nothing can confirm
        the reboot, and this waits only for RUNNING, as before; ``rebooted(ws,
        reboot_count)`` on the workspace returned says None. ``on_change`` sees the
        workspace first and then whenever its state or its count changes. Raises
        WaitFailed when the workspace is asked to stop, pause or go before it is back
        RUNNING rebooted, or reaches FAILED, TERMINATED or LOST, and WaitTimeout after
        ``timeout_s`` (``waited_s`` and ``named`` as for ``wait_until``).
        """
        goal = f"RUNNING with reboot {reboot_count} carried out"

        def done(ws: common_pb2.Workspace) -> bool:
            if ws.state == WS.WORKSPACE_STATE_RUNNING and rebooted(ws, reboot_count) is not False:
                return True
            if ws.desired_state not in (
                common_pb2.DESIRED_STATE_RUNNING,
                common_pb2.DESIRED_STATE_UNSPECIFIED,
            ):
                desired = common_pb2.DesiredState.Name(ws.desired_state)
                raise WaitFailed(
                    f"workspace {ws.name or ws.id} is to be "
                    f"{desired.removeprefix('DESIRED_STATE_')} now, no longer RUNNING "
                    f"(waited for {goal}; {_reboots(ws)})",
                    ws,
                )
            return False

        def describe(ws: common_pb2.Workspace) -> str:
            return f"{state_name(ws.state)}, {_reboots(ws)}"

        return self.wait_until(
            id,
            done,
            goal,
            timeout_s,
            on_change,
            describe,
            on_outage,
            waited_s=waited_s,
            named=named,
        )

    def wait_for_cluster_state(
        self,
        ref: str,
        states: Iterable[int],
        timeout_s: float = 300.0,
        on_change: Callable[[clusters_pb2.Cluster], None] | None = None,
        poll_s: float = CLUSTER_POLL_S,
        on_outage: Callable[[str], None] | None = None,
    ) -> clusters_pb2.Cluster:
        """Block until cluster ``ref`` (id or name) is in one of ``states``; return it.

        Polls GetCluster every ``poll_s`` seconds (an unreachable service is retried
        until the deadline). ``on_change`` sees the cluster first and then whenever its
        state, its reason (a waiting cluster's place in the queue) or a member's state
        changes. Raises ClusterWaitFailed when it reaches
        FAILED or TERMINATED (unless waited for) and ClusterWaitTimeout after
        ``timeout_s``. A cluster that vanishes while TERMINATED is waited for counts as
        terminated (else NotFound: the service's own when the wait never saw it).
        ``on_outage``: as for ``wait_until``.
        """
        wanted = _wanted(states, CS, "CS.CLUSTER_STATE_RUNNING")
        deadline = time.monotonic() + timeout_s
        last: list[clusters_pb2.Cluster] = []
        outage = Outage(on_outage)

        def key(c: clusters_pb2.Cluster) -> tuple[object, ...]:
            return (c.state, c.reason, tuple((m.name, m.state) for m in c.members))

        while True:
            try:
                current: clusters_pb2.Cluster | None = self._read_cluster(ref, deadline)
            except errors.NotFound:
                if CS.CLUSTER_STATE_TERMINATED not in wanted:
                    if not last:  # never seen: the service's words (a wrong id or name)
                        raise
                    raise errors.NotFound(
                        f"cluster {_named(last[-1], ref)} no longer exists"
                    ) from None
                gone = clusters_pb2.Cluster()
                if last:
                    gone.CopyFrom(last[-1])
                gone.id = gone.id or ref
                gone.state = CS.CLUSTER_STATE_TERMINATED
                return gone
            except errors.Unavailable as exc:
                outage.lost(exc.message)
                current = None
            if current is not None:
                outage.back()
                if (not last or key(last[-1]) != key(current)) and on_change is not None:
                    on_change(current)
                last[:] = [current]
                ref = current.id or ref
                if current.state in wanted:
                    return current
                if current.state in _CLUSTER_FAILED_STATES:
                    reason = f": {current.reason}" if current.reason else ""
                    raise ClusterWaitFailed(
                        f"cluster {current.name or current.id} is "
                        f"{cluster_state_name(current.state)}{reason} "
                        f"(waited for {_cluster_names(wanted)})",
                        current,
                    )
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                c = last[-1] if last else None
                now = f"; it is {cluster_state_name(c.state)}" if c is not None else ""
                if c is not None and outage.since is not None:
                    now = f"; it was {cluster_state_name(c.state)} when last seen"
                raise ClusterWaitTimeout(
                    f"timed out after {_seconds(timeout_s)} s waiting for cluster "
                    f"{_named(c, ref)} to be "
                    f"{_cluster_names(wanted)}{now}{outage.note()}",
                    c,
                )
            time.sleep(min(poll_s, remaining))


def _wanted(states: Iterable[int], enum: Any, example: str) -> frozenset[int]:
    """The states a wait is given, checked before it begins: none (it could only time
    out) or one that is not a number of ``enum`` (a name, "RUNNING": never equal to a
    state; a cluster wait found it only at its timeout) is a ValueError."""
    given = frozenset(states)
    # numpy's integers too (numbers.Integral), as the plain ints they stand for
    wanted = frozenset(int(s) for s in given if _integral(s))
    bad = [s for s in given if not _integral(s) or int(s) not in enum.values()]
    if bad or not wanted:
        said = f"not {', '.join(sorted(repr(s) for s in bad))}" if bad else "none was given"
        raise ValueError(f"states must be {enum.DESCRIPTOR.name} numbers such as {example}; {said}")
    return wanted


def _integral(value: object) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def _read_timeout(timeout_s: float, deadline: float) -> float:
    """A wait's read's deadline: the client's ``timeout_s``, or less when the wait ends
    sooner (``MIN_READ_S`` at least)."""
    return min(timeout_s, max(deadline - time.monotonic(), MIN_READ_S))


def _named(seen: common_pb2.Workspace | clusters_pb2.Cluster | None, ref: str) -> str:
    """How a wait's error names what it waited for: ``NAME (ID)`` as last seen (the name
    the user knows it by, and the id a script may have passed), else the ``ref`` the
    wait was given. A timeout named it by id alone: ``ws create --wait`` waits by the id
    of the workspace it made, which the user had never seen."""
    if seen is None:
        return ref
    if seen.name and seen.id and seen.name != seen.id:
        return f"{seen.name} ({seen.id})"
    return seen.name or seen.id or ref


def _reboots(ws: common_pb2.Workspace) -> str:
    """``2 of 3 reboots carried out`` (or that its node does not say)."""
    if not ws.HasField("applied_reboot_count"):
        return "its node does not report reboots carried out"
    return f"{ws.applied_reboot_count} of {ws.reboot_count} reboots carried out"


def _desired_name(desired: common_pb2.DesiredState.ValueType) -> str:
    return common_pb2.DesiredState.Name(desired).removeprefix("DESIRED_STATE_")


def _names(states: Iterable[int]) -> str:
    return " or ".join(sorted(state_name(s) for s in states))


def _cluster_names(states: Iterable[int]) -> str:
    return " or ".join(sorted(cluster_state_name(s) for s in states))
