"""What every servicer shares: error → status mapping, the caller's identity."""

from __future__ import annotations

import functools
import logging
import queue
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any, Protocol, TypeVar, cast

import grpc

from workspace import callctx, rpc_status
from workspace.edge.auth import Authenticator, method_name
from workspace.edge.storage import storage_error
from workspace.errors import (
    DATABASE_AWAY,
    AccessDenied,
    InvalidArgument,
    Stopping,
    Unauthenticated,
    WorkspaceError,
)
from workspace.identity import Identity, Kind

log = logging.getLogger("workspace.edge")


class _Once:
    """Whether a (method, message) pair is the first of its kind in ``period_s``: an
    outage fails every call the same way (the database away: agents push console output
    every quarter of a second), and one line a period says it as well as hundreds."""

    def __init__(self, period_s: float = 10.0) -> None:
        self.period_s = period_s
        self._last: dict[tuple[str, str], float] = {}
        self._lock = threading.Lock()

    def first(self, key: tuple[str, str]) -> bool:
        now = time.monotonic()
        with self._lock:
            if now - self._last.get(key, -self.period_s) < self.period_s:
                return False
            if len(self._last) > 1000:  # a bound, whatever the messages say
                self._last.clear()
            self._last[key] = now
            return True


_SAME_ERRORS = _Once()

# How often a stream wakes up to check that its client is still there.
STREAM_POLL_S = 5.0
# The most bytes (UTF-8) of an error's message a caller is sent. Messages echo what the
# caller asked for (a name, a reference): one carrying 20,000 characters went over
# gRPC's limits on metadata, where status details travel percent-encoded (a client
# refuses more than 8 KiB at times, 16 KiB always), and the client got "Stream removed"
# instead of the refusal. 2,048 bytes are at most 6 KiB percent-encoded.
MAX_DETAILS = 2048


# How long a request stream's caller may send nothing: the first message of a stream
# that opens with one (an agent's Tasks hello, a console's workspace id: their clients
# send it on opening), and each chunk of an upload (UploadBlob, PutBlob: read from a
# file). grpcio waits for a request message without end: a caller that opened such a
# stream and sent nothing held a server thread until it cancelled (and a stopping
# service waited out its grace for it).
HELLO_S = 10.0
CHUNK_S = 60.0
# How often a request stream's reader looks whether its handler still wants the message
# it holds.
_HANDOVER_S = 1.0


def shown(message: str) -> str:
    """``message`` cut to ``MAX_DETAILS`` bytes of UTF-8, saying how much was left out."""
    raw = message.encode()
    if len(raw) <= MAX_DETAILS:
        return message
    kept = raw[: MAX_DETAILS - 48].decode(errors="ignore")  # no half character
    return f"{kept}… ({len(message) - len(kept)} more characters)"


def _peer(context: grpc.ServicerContext) -> str:
    try:
        return str(context.peer())
    except Exception:  # a test's stand-in, a call already gone
        return "an unknown peer"


def abort(context: grpc.ServicerContext, exc: Exception, method: str) -> None:
    """End the call with the status of ``exc``. An unexpected exception becomes INTERNAL
    with the method and an incident id, never its text (which may show paths, SQL or
    other users' data): the text and traceback go to the log under the same id."""
    if _already_aborted(context):
        # The handler called context.abort() itself: keep the status it chose (grpc's
        # abort raises a bare Exception, which would otherwise end up INTERNAL).
        raise exc
    if isinstance(exc, grpc.RpcError) and not context.is_active():
        # Reading the request stream of a call its client has ended (cancelled, gone):
        # nobody waits for an answer, and nothing went wrong here.
        log.info("%s: the client ended the call", method)
        context.abort(grpc.StatusCode.CANCELLED, "the client ended the call")
    if isinstance(exc, (Unauthenticated, AccessDenied)) and _SAME_ERRORS.first(
        (method, exc.message)
    ):
        # Cut as the caller is told it: the message may echo what they sent (a node
        # naming another node of 10 MB wrote 10 MB lines in the service's log each call).
        log.warning("refused %s from %s: %s", method, _peer(context), shown(exc.message))
    if isinstance(exc, Unauthenticated):
        context.abort(grpc.StatusCode.UNAUTHENTICATED, shown(exc.message))
    if isinstance(exc, WorkspaceError):
        # The database away is the store's to say: once, and when it answers again
        # (store/db.py), not each method every period for as long as it lasts.
        store_says = exc.message.startswith(DATABASE_AWAY)
        if not exc.expected and not store_says and _SAME_ERRORS.first((method, exc.message)):
            log.error("%s failed: %s", method, shown(exc.message))
        context.abort(rpc_status.status_of(exc), shown(exc.message))
    storage = storage_error(exc)
    if storage is not None:  # a full or read-only data directory: no incident
        err, where = storage
        if _SAME_ERRORS.first((method, err.message)):
            log.error("%s failed: %s: %s", method, err.message, where)
        context.abort(rpc_status.status_of(err), shown(err.message))
    incident = uuid.uuid4().hex[:12]
    log.exception("%s failed unexpectedly (incident %s)", method, incident)
    context.abort(
        grpc.StatusCode.INTERNAL,
        f"internal error in {method} (incident {incident}); the service's log has the details",
    )


def _already_aborted(context: grpc.ServicerContext) -> bool:
    try:
        code = context.code()
    except Exception:  # a test's stand-in without code()
        return False
    return isinstance(code, grpc.StatusCode) and code is not grpc.StatusCode.OK


class Guarded(Protocol):
    """A servicer whose RPCs are wrapped below: its service's full name, its authenticator."""

    SERVICE: str
    auth: Authenticator


S = TypeVar("S")
Req = TypeVar("Req")
Resp = TypeVar("Resp")


def _caller(self: object, context: grpc.ServicerContext, name: str) -> Identity:
    servicer = cast(Guarded, self)
    return servicer.auth.authorize(context, method_name(servicer.SERVICE, name))


def _context(who: Identity, method: str, request: object) -> dict[str, str]:
    """The call context (workspace/callctx.py) of a call: who, what, which ids."""
    out = {"who": who.principal, "method": method}
    rid = getattr(request, "request_id", "")
    if isinstance(rid, str) and rid:
        out["request_id"] = rid
    if who.kind is Kind.NODE:
        out["node"] = who.name
    return out


def unary(
    fn: Callable[[S, Req, grpc.ServicerContext, Identity], Resp],
) -> Callable[[S, Req, grpc.ServicerContext], Resp]:
    """An RPC ``fn(self, request, context, who)``: the caller is identified and checked
    against the access rule of the RPC (edge/auth.py) before ``fn`` runs."""

    @functools.wraps(fn)
    def wrapper(self: S, request: Req, context: grpc.ServicerContext) -> Resp:
        try:
            who = _caller(self, context, fn.__name__)
        except Exception as exc:
            abort(context, exc, fn.__name__)
            raise
        # The call's context (workspace/callctx.py) holds for its log lines, its error
        # too, and names the caller of the site events it causes.
        with callctx.bound(**_context(who, fn.__name__, request)):
            try:
                return fn(self, request, context, who)
            except Exception as exc:
                abort(context, exc, fn.__name__)
                raise

    return wrapper


def stopping() -> Stopping:
    """What a watch ends with when the service stops: UNAVAILABLE, as after any outage, so
    that its client watches again (on another replica, or here once the service is back)
    rather than take the end for the last word."""
    return Stopping(
        "the service is stopping; watch again (another replica, or this one once it is back)"
    )


def stream(
    fn: Callable[[S, Req, grpc.ServicerContext, Identity], Iterator[Resp]],
) -> Callable[[S, Req, grpc.ServicerContext], Iterator[Resp]]:
    """A server-streaming RPC ``fn(self, request, context, who)``, guarded as ``unary``;
    and every message, before it is sent, by the CRL as it is then: a caller whose
    certificate was revoked after the stream opened gets UNAUTHENTICATED instead of the
    message (a node its orders, with their secrets; a user their events). A stream idle
    meanwhile ends at its next poll (``STREAM_POLL_S``), where its loop checks too."""

    @functools.wraps(fn)
    def wrapper(self: S, request: Req, context: grpc.ServicerContext) -> Iterator[Resp]:
        try:
            who = _caller(self, context, fn.__name__)
        except Exception as exc:
            abort(context, exc, fn.__name__)
            return
        checker = cast(Guarded, self).auth
        with callctx.bound(**_context(who, fn.__name__, request)):
            messages = fn(self, request, context, who)
            try:
                for message in messages:
                    checker.check_revoked(who)  # a stat of the CRL; re-read if it changed
                    yield message
            except Exception as exc:
                abort(context, exc, fn.__name__)
            finally:
                # Its own cleanup (unsubscribe, disconnect) now, not when it is collected.
                close = getattr(messages, "close", None)
                if close is not None:
                    close()

    return wrapper


def first_request(requests: Iterator[Req], what: str, within_s: float | None = None) -> Req | None:
    """The first message of ``requests`` (None: the stream ended without one), awaited at
    most ``within_s`` (default ``HELLO_S``): then InvalidArgument naming ``what``. Read on
    a thread of its own, which reads nothing more: the rest is read from ``requests`` as
    before. The handler raising ends the call, and with it that thread's read."""
    box: queue.Queue[tuple[Any, BaseException | None]] = queue.Queue()

    def read() -> None:
        try:
            box.put((next(requests, None), None))
        except BaseException as exc:  # the client gone (RpcError), a message unreadable
            box.put((None, exc))

    threading.Thread(target=read, name="first-request", daemon=True).start()
    return cast("Req | None", _take(box, what, HELLO_S if within_s is None else within_s))


def each_request(
    requests: Iterator[Req], context: grpc.ServicerContext, what: str, within_s: float | None = None
) -> Iterator[Req]:
    """The messages of ``requests``, each awaited at most ``within_s`` (default
    ``CHUNK_S``): then InvalidArgument naming ``what``. A thread of its own reads them,
    one ahead of the handler; it stops once the handler stops taking them (the generator
    closed) or the call ``context`` ended."""
    box: queue.Queue[tuple[Any, BaseException | None]] = queue.Queue(maxsize=1)
    taking = threading.Event()
    taking.set()

    def hand(item: tuple[Any, BaseException | None]) -> bool:
        while taking.is_set() and context.is_active():
            try:
                box.put(item, timeout=_HANDOVER_S)
                return True
            except queue.Full:
                continue
        return False

    def read() -> None:
        try:
            for message in requests:
                if not hand((message, None)):
                    return
            hand((None, None))
        except BaseException as exc:  # the client gone (RpcError), a message unreadable
            hand((None, exc))

    threading.Thread(target=read, name="each-request", daemon=True).start()
    wait = CHUNK_S if within_s is None else within_s
    try:
        while (message := _take(box, what, wait)) is not None:
            yield cast(Req, message)
    finally:
        taking.clear()


def _take(box: queue.Queue[tuple[Any, BaseException | None]], what: str, within_s: float) -> Any:
    """The next message in ``box`` (None: the stream ended), or InvalidArgument ("``what``
    did not come within ...") when none came within ``within_s``."""
    try:
        message, exc = box.get(timeout=within_s)
    except queue.Empty:
        raise InvalidArgument(f"{what} did not come within {within_s:g} s") from None
    if exc is not None:
        raise exc
    return message
