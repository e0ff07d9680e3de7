"""Who the caller is, for the Python client (``Client`` inherits it): ``whoami`` asks the
service, and the lists and watches asked for the caller's own objects only (``mine``) are
checked to have been kept to them.

A service older than ``ListWorkspacesRequest.mine`` (or ``WatchWorkspacesRequest.mine``)
ignores the field and answers with every workspace the caller sees, its project
colleagues' too; its answer (each event of a watch) says so (``mine`` false). The client
then keeps those whose ``owner`` is the user its certificate names (the service names
callers by it: workspace/identity.py), or, without one to read, refuses with
``FailedPrecondition``: a batch system must never take a colleague's workspace for its
own.
"""

from __future__ import annotations

from collections.abc import Callable, Generator, Iterable
from typing import Any, Protocol, TypeVar

from workspace import errors, identity, rpc
from workspace.client_address import older_service
from workspace.config import TlsConfig
from workspace.v1 import workspaces_pb2, workspaces_pb2_grpc

T = TypeVar("T")


class Owned(Protocol):
    @property
    def owner(self) -> str: ...


OwnedT = TypeVar("OwnedT", bound=Owned)


class WhoAmIClientMixin:
    """Needs ``_call``, ``_workspaces``, ``address`` and ``tls`` from the Client."""

    _workspaces: workspaces_pb2_grpc.WorkspacesStub
    address: str
    tls: TlsConfig | None

    def _call(self, method: Callable[..., T], request: Any, timeout_s: float | None = None) -> T:
        raise NotImplementedError

    def whoami(self) -> workspaces_pb2.Caller:
        """Who the service takes this client for: ``user`` (the ``owner`` of what it
        makes), ``admin``, and ``projects`` (its certificate's and those an admin added
        it to)."""
        return self._call(self._workspaces.WhoAmI, workspaces_pb2.WhoAmIRequest())

    def _own(self, asked: bool, kept: bool, items: Iterable[OwnedT], what: str) -> list[OwnedT]:
        """``items`` of a list page; when ``asked`` for the caller's own only and the
        service did not keep to it (``kept`` false: a service older than ``mine``), those
        whose owner is the user this client's certificate names."""
        if not asked or kept:
            return list(items)
        me = self._certificate_user(f"listed every {what} you see")
        return [x for x in items if x.owner == me]

    def _own_events(
        self, events: Generator[workspaces_pb2.WorkspaceEvent, None, None], watched: str = ""
    ) -> Generator[workspaces_pb2.WorkspaceEvent, None, None]:
        """The events of a watch asked for the caller's own workspaces only; of an event
        the service did not keep to it (``mine`` false: a service older than the field),
        only one whose owner is the user this client's certificate names. ``watched``:
        the one workspace the watch follows (its id); someone else's is ``NotFound``, as
        a service that knows ``mine`` answers, not a watch that never sends anything.
        Closing it closes ``events`` (the stream is cancelled)."""
        me = ""
        try:
            for ev in events:
                if not ev.mine:
                    me = me or self._certificate_user("watched every workspace you see")
                    if ev.workspace.owner != me:
                        if watched:
                            raise errors.NotFound(
                                f"workspace {watched!r} is {ev.workspace.owner}'s, not yours"
                                " (the watch asked for `mine`)"
                            )
                        continue
                yield ev
        finally:
            events.close()

    def _certificate_user(self, did: str) -> str:
        refused = f"{did}, not only yours (it does not know `mine`)"
        if self.tls is None or not self.tls.enabled:
            raise older_service(
                self.address,
                refused,
                "Without a certificate this client cannot tell which are yours",
            )
        try:
            cert = rpc.tls_files(self.tls).cert_file.read_bytes()
            return identity.from_pem(cert).name
        except (OSError, ValueError, errors.WorkspaceError) as exc:
            raise older_service(
                self.address, refused, f"Its certificate names no user here: {exc}"
            ) from None
