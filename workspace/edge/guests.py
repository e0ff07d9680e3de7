"""The Guests API: commands through the guest agent, the interactive serial console.

Both are relayed to the workspace's node over its agent's task stream (``ops/guests.py``,
``ops/taskhub.py``); who may is decided there (the owner and admins).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator

import grpc

from workspace.codec import guests as codec_guests
from workspace.domain.tasks import ConsoleClosed, ConsoleOutput, TaskError, exception_of
from workspace.edge import auth
from workspace.edge.calls import STREAM_POLL_S, first_request, stream, unary
from workspace.errors import InvalidArgument, Stopping, WorkspaceError
from workspace.identity import Identity
from workspace.log import about
from workspace.ops import guests
from workspace.ops.taskhub import CONSOLE_STOPPING, ConsoleLink, TaskHub
from workspace.ops.unit import Env
from workspace.v1 import access_pb2, access_pb2_grpc

log = logging.getLogger("workspace.edge.guests")


class GuestsServicer(access_pb2_grpc.GuestsServicer):
    SERVICE = "workspace.v1.Guests"

    def __init__(self, env: Env, hub: TaskHub) -> None:
        self.env = env
        self.hub = hub
        self.auth = auth.for_config(env.cfg)

    @unary
    def Exec(
        self, request: access_pb2.ExecRequest, context: grpc.ServicerContext, who: Identity
    ) -> access_pb2.ExecResult:
        result = guests.exec(
            self.env,
            self.hub,
            who,
            request.id,
            list(request.argv),
            request.stdin,
            request.timeout_s,
        )
        return codec_guests.exec_result_to_proto(result)

    @stream
    def AttachConsole(
        self,
        request: Iterator[access_pb2.ConsoleInput],
        context: grpc.ServicerContext,
        who: Identity,
    ) -> Iterator[access_pb2.ConsoleChunk]:
        first = first_request(request, "AttachConsole: the first message (naming the workspace)")
        if first is None:
            return
        if not first.id:
            raise InvalidArgument("the first console message must name the workspace (id)")
        link = guests.open_console(self.env, self.hub, who, first.id)
        try:
            if first.data:
                link.send(first.data)
            refused: list[InvalidArgument] = []  # a message of the client's it could not read
            threading.Thread(
                target=_keystrokes, args=(request, link, refused), name="console-in", daemon=True
            ).start()
            while context.is_active() and not self.env.notifier.closed:
                self.auth.check_revoked(who)
                event = link.next(STREAM_POLL_S)
                if isinstance(event, ConsoleOutput):
                    yield access_pb2.ConsoleChunk(data=event.data)
                elif isinstance(event, ConsoleClosed):
                    if refused:  # the input side closed it: the call ends with its status
                        raise refused[0]
                    if event.reason:
                        yield access_pb2.ConsoleChunk(
                            data=f"\r\n[console closed: {event.reason}]\r\n".encode()
                        )
                    return
                elif isinstance(event, TaskError):
                    raise exception_of(event)
            if self.env.notifier.closed and context.is_active():
                # An outage to the client, as a watch's end is (edge/calls.py ``stopping``):
                # not the end of the session that the guest or the user chose.
                raise Stopping(CONSOLE_STOPPING)
        finally:
            link.close()


def _keystrokes(
    request: Iterator[access_pb2.ConsoleInput],
    link: ConsoleLink,
    refused: list[InvalidArgument],
) -> None:
    """The client's input to the guest until the client stops sending (detaches). A
    message that is not a ConsoleInput (rpc_decode.py) ends the session, and the call
    with INVALID_ARGUMENT (``refused``), not as a detach would."""
    try:
        for msg in request:
            if msg.data:
                link.send(msg.data)
    except grpc.RpcError:
        pass
    except InvalidArgument as exc:
        refused.append(exc)
    except WorkspaceError as exc:  # the agent went away: the output side says so
        log.info(
            "console input for %s stopped: %s",
            link.workspace_id,
            exc.message,
            extra=about(link.workspace_id),
        )
    finally:
        link.close()
