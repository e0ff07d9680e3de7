"""A request that is not a valid message of its method's type is the caller's mistake:
INVALID_ARGUMENT naming the type, not grpcio's INTERNAL "Exception deserializing
request!" (which docs/api.md keeps for the service's bugs).

``DecodeRequests`` wraps each handler's request deserializer: a message it cannot parse
becomes an ``Undecodable`` marker, and the handler aborts the call on it before the
servicer sees anything. Request streams are checked message by message: the servicer's
reading of the stream raises ``InvalidArgument`` there."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import grpc

from workspace.errors import InvalidArgument


class Undecodable:
    """What stands for a request message that could not be parsed."""

    def __init__(self, error: BaseException) -> None:
        self.error = error


def _safe(deserialize: Callable[[bytes], Any] | None) -> Callable[[bytes], Any] | None:
    if deserialize is None:
        return None

    def parse(data: bytes) -> Any:
        try:
            return deserialize(data)
        except Exception as exc:  # DecodeError, UnicodeDecodeError: any is the caller's
            return Undecodable(exc)

    return parse


def _message(method: str, bad: Undecodable) -> str:
    return f"{method}: the request is not a valid message of its type ({bad.error})"


def _refuse(context: grpc.ServicerContext, method: str, bad: Undecodable) -> None:
    context.abort(grpc.StatusCode.INVALID_ARGUMENT, _message(method, bad))


class DecodeRequests(grpc.ServerInterceptor):
    """Refuse undecodable requests with INVALID_ARGUMENT (see the module docstring)."""

    def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], grpc.RpcMethodHandler | None],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler | None:
        handler = continuation(handler_call_details)
        if handler is None or handler.request_deserializer is None:
            return handler
        method = handler_call_details.method.rsplit("/", 1)[-1]
        parse = _safe(handler.request_deserializer)
        if handler.request_streaming:
            inner = handler.stream_stream or handler.stream_unary
            assert inner is not None

            def checked(requests: Iterator[Any], context: grpc.ServicerContext) -> Iterator[Any]:
                # Raised inside the servicer's reading of its stream: an error of the
                # project's own, which every servicer answers with its status.
                for r in requests:
                    if isinstance(r, Undecodable):
                        raise InvalidArgument(_message(method, r))
                    yield r

            if handler.response_streaming:

                def stream_stream(requests: Iterator[Any], context: grpc.ServicerContext) -> Any:
                    return inner(checked(requests, context), context)

                return grpc.stream_stream_rpc_method_handler(
                    stream_stream, parse, handler.response_serializer
                )

            def stream_unary(requests: Iterator[Any], context: grpc.ServicerContext) -> Any:
                return inner(checked(requests, context), context)

            return grpc.stream_unary_rpc_method_handler(
                stream_unary, parse, handler.response_serializer
            )
        single = handler.unary_stream or handler.unary_unary
        assert single is not None

        def unary(request: Any, context: grpc.ServicerContext) -> Any:
            if isinstance(request, Undecodable):
                _refuse(context, method, request)
            return single(request, context)

        make = (
            grpc.unary_stream_rpc_method_handler
            if handler.response_streaming
            else grpc.unary_unary_rpc_method_handler
        )
        return make(unary, parse, handler.response_serializer)
