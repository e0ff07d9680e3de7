"""A wrong argument to a ``Client`` method is the client's documented error, not protobuf's.

The client's methods build their requests from what the caller gave; protobuf refuses a
value of the wrong type (``name=123``: ``TypeError: bad argument type for built-in
operation``) or out of its field's range (``cpus=2**40``: ``ValueError: Value out of
range``), and the client's own argument checks (``limits``, ``affinity``, quotas) raise
ValueError or TypeError too. A library user catches ``workspace.errors.WorkspaceError``
(README, "The Python client"), so ``checked_arguments`` wraps every public method once:
such an error leaves it as ``BadArgument``, an ``InvalidArgument`` naming the method, which
is still a ValueError and a TypeError for callers that caught those.

Only errors raised in the client's own modules or in protobuf are changed: one raised by a
caller's callback (``on_progress``, a ``wait_until`` predicate) is the caller's, as it was.
A ValueError gRPC raises for a call on a closed channel leaves a closed ``Client`` as
``ClientClosed`` (a ``WorkspaceError``, still a ValueError): a program sharing one client
between threads got that ValueError, not a ``WorkspaceError``, when another thread closed
it just before a call, and a ``WorkspaceError`` when it closed it just after.
"""

from __future__ import annotations

import functools
import inspect
import numbers
import os
import sysconfig
from collections.abc import Callable, Generator, Iterable
from types import TracebackType
from typing import Any, TypeVar

import google.protobuf
import grpc

from workspace import errors, rpc
from workspace.tls_reload import ChannelClosed

C = TypeVar("C", bound=type)

_CLIENT_DIR = os.path.dirname(os.path.abspath(__file__))
_PROTOBUF_DIR = os.path.dirname(os.path.abspath(google.protobuf.__file__))
_GRPC_DIR = os.path.dirname(os.path.abspath(grpc.__file__))
_STDLIB_DIR = os.path.abspath(sysconfig.get_paths()["stdlib"])
# Where installed packages go; without a venv they may lie inside _STDLIB_DIR.
_SITE_DIRS = tuple(
    os.path.abspath(sysconfig.get_paths()[k]) + os.sep for k in ("purelib", "platlib")
)


# With the other errors, where the README names it (`except errors.BadArgument`).
BadArgument = errors.BadArgument


def _origin(tb: TracebackType | None) -> str:
    """Who raised the error of traceback ``tb``: "client" (protobuf, or the client's own
    code, a workspace/client*.py module: a request built there, or its own check),
    "grpc" (a call on a closed channel) or "" (anyone else: a caller's callback). The
    innermost frame that is not the standard library's (protobuf fills a map field
    through ``collections.abc``) decides."""
    paths = []
    while tb is not None:
        paths.append(tb.tb_frame.f_code.co_filename)
        tb = tb.tb_next
    for path in reversed(paths):
        if path.startswith("<"):  # frozen: the standard library's
            continue
        if path.endswith((".pyx", ".pxi")):  # compiled: the package that called it decides
            continue
        path = os.path.abspath(path)
        if path.startswith(_PROTOBUF_DIR + os.sep):
            return "client"
        if path.startswith(_GRPC_DIR + os.sep):
            return "grpc"
        # The standard library's own modules, not the packages installed inside its
        # directory (a Python without a venv: Docker's python images, pyenv builds).
        if path.startswith(_STDLIB_DIR + os.sep) and not path.startswith(_SITE_DIRS):
            continue
        folder, name = os.path.split(path)
        return "client" if folder == _CLIENT_DIR and name.startswith("client") else ""
    return ""


def strings(value: Iterable[str], what: str) -> list[str]:
    """``value``, a list of strings, as a list; one string is refused (TypeError, so
    BadArgument), where ``list()`` and protobuf's repeated fields split it into its
    characters: ``exec(id, "uname -a")`` ran the command ``u``, ``networks="default"``
    asked for the network ``d``."""
    if isinstance(value, (str, bytes)):
        raise TypeError(
            f"{what} must be a list of strings, not the string {value!r} "
            "(it would be taken a character at a time)"
        )
    return list(value)


# The longest time ``seconds`` takes, as the CLIs' (68 years): a deadline past the end of
# gRPC's clock (2262; ``float("inf")`` too) is one already passed, not none.
MAX_SECONDS = 2**31 - 1


def address(value: object) -> str:
    """``value``, a service address as text (``host:port``, ``unix:/path``, several
    comma-separated); else BadArgument naming the argument: ``Client(1234)`` raised
    "TypeError: argument of type 'int' is not iterable" from deep in the channel code,
    and ``Client("")`` logged gRPC's "no server name supplied in dns URI"."""
    if not isinstance(value, str) or not value.strip():
        raise BadArgument(
            "Client: address must be the service's address as a string, such as "
            f"'localhost:50051' or 'unix:/run/workspace/service.sock', not {value!r}"
        )
    for part in value.split(","):
        if rpc.is_unix(part.strip()) and (why := rpc.too_long(rpc.unix_path(part.strip()))):
            raise BadArgument(f"Client: {why}")  # ws-slurm took gRPC's words for a refusal
    return value


def seconds(value: object, what: str) -> float:
    """``value``, a time in seconds above 0 and at most MAX_SECONDS; else BadArgument: a
    Client whose ``timeout_s`` was 0 (meant as "none"), or ``float("inf")`` or 1e12,
    gave every call up at once, a retryable Unavailable "did not answer in time" a
    program retried for minutes."""
    # numpy's numbers too (numbers.Real), not a bool
    number = float(value) if isinstance(value, numbers.Real) else None
    if isinstance(value, bool) or number is None or not 0 < number <= MAX_SECONDS:
        raise BadArgument(
            f"{what} must be a number of seconds above 0 and at most {MAX_SECONDS} "
            f"(68 years), not {value!r}"
        )
    return number


def grpc_timeout(timeout_s: float | None) -> float | None:
    """``timeout_s`` as gRPC's ``timeout``: None (no deadline) for one past MAX_SECONDS,
    ``float("inf")`` too, which gRPC took for a deadline already passed (a call gave up
    at once, a watch ended before its first event)."""
    if timeout_s is not None and timeout_s > MAX_SECONDS:
        return None
    return timeout_s


def _bad(method: str, exc: ValueError | TypeError) -> BadArgument:
    return BadArgument(f"{method}: invalid argument: {exc}")


def _translated(name: str, owner: Any, exc: ValueError | TypeError) -> errors.WorkspaceError | None:
    """The client's error for ``exc``, raised in method ``name`` of ``owner``: a wrong
    argument (``BadArgument``) or a call gRPC refused because ``owner`` (a ``Client``) was
    closed (``ClientClosed``); None to let it through as it is."""
    if isinstance(exc, errors.WorkspaceError):
        return None
    origin = _origin(exc.__traceback__)
    if origin == "client":
        return _bad(name, exc)
    # gRPC's channel, or the TLS channel that stands in for it (a site with identities)
    closed_channel = origin == "grpc" or isinstance(exc, ChannelClosed)
    if closed_channel and isinstance(exc, ValueError) and getattr(owner, "closed", False):
        return errors.ClientClosed(
            f"{name}: the client is closed ({exc}): a call needs a Client that is open"
        )
    return None


def _wrapped(name: str, fn: Callable[..., Any]) -> Callable[..., Any]:
    def stream(gen: Generator[Any, Any, Any], owner: Any) -> Generator[Any, Any, Any]:
        try:
            return (yield from gen)
        except (ValueError, TypeError) as exc:
            err = _translated(name, owner, exc)
            if err is None:
                raise
            raise err from exc

    @functools.wraps(fn)
    def method(*args: Any, **kwargs: Any) -> Any:
        owner = args[0] if args else None
        try:
            out = fn(*args, **kwargs)
        except (ValueError, TypeError) as exc:
            err = _translated(name, owner, exc)
            if err is None:
                raise
            raise err from exc
        # A stream builds its request when first iterated (watch, the event streams).
        return stream(out, owner) if inspect.isgenerator(out) else out

    return method


def checked_arguments(cls: C) -> C:
    """``cls`` with every public method (its own and its mixins') raising ``BadArgument``
    for a wrong argument (see the module's docstring)."""
    for name in dir(cls):
        if name.startswith("_"):
            continue
        if inspect.isfunction(inspect.getattr_static(cls, name)):
            setattr(cls, name, _wrapped(name, getattr(cls, name)))
    return cls
