"""Request bytes that are not the method's message are the caller's fault: INVALID_ARGUMENT, one log line.

grpc's server decodes a request with the method's deserializer before any servicer runs; when that raises,
it logs "Exception deserializing request!" with a traceback at ERROR and answers INTERNAL, blaming the
plugin. Services registered through `TolerantServer` get a deserializer that never raises: it hands the
method an `Undecodable` instead, which is refused before the servicer sees it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

import grpc

from plugin.errors import one_line
from plugin.log import get_logger

# How much of the decoder's complaint reaches the caller and the log.
MAX_REASON_CHARS = 120

log = get_logger("service")
Behavior = Callable[[Any, grpc.ServicerContext], Any]


@dataclass(frozen=True)
class Undecodable:
    """What a tolerant deserializer returns for bytes it could not decode."""

    message_name: str
    reason: str


def _message_name(deserializer: Callable[[bytes], Any]) -> str:
    # The generated code passes `SomeRequest.FromString`, bound to the message class.
    descriptor = getattr(getattr(deserializer, "__self__", None), "DESCRIPTOR", None)
    return str(getattr(descriptor, "name", "") or "request message")


def _reason(error: Exception) -> str:
    # protobuf says "Error parsing message with type '<full name>': <what>"; the name is said already.
    text = " ".join(str(error).split()).rpartition(": ")[2] or type(error).__name__
    return one_line(text, MAX_REASON_CHARS)


def _tolerant_deserializer(deserializer: Callable[[bytes], Any]) -> Callable[[bytes], Any]:
    message_name = _message_name(deserializer)

    def deserialize(data: bytes) -> Any:
        try:
            return deserializer(data)
        except Exception as error:  # DecodeError, or whatever a decoder raises on bytes it never expected
            return Undecodable(message_name, _reason(error))

    return deserialize


def _refusing_undecodable(behavior: Behavior, method: str) -> Behavior:
    def answer(request: Any, context: grpc.ServicerContext) -> Any:
        if isinstance(request, Undecodable):
            # No traceback: the bytes are the news, and a flood of them must not flood the log.
            log.warn("Undecodable request refused", method=method, error=request.reason)
            context.abort(
                grpc.StatusCode.INVALID_ARGUMENT,
                f"request is not a valid {request.message_name}: {request.reason}",
            )
        return behavior(request, context)

    return answer


def tolerant(handler: Any, method: str) -> Any:
    """`handler` (a grpc.RpcMethodHandler) with undecodable requests refused; streaming ones unchanged."""
    if handler.request_streaming or handler.response_streaming or handler.request_deserializer is None:
        return handler
    return grpc.unary_unary_rpc_method_handler(
        _refusing_undecodable(handler.unary_unary, method),
        request_deserializer=_tolerant_deserializer(handler.request_deserializer),
        response_serializer=handler.response_serializer,
    )


class _TolerantGenericHandler(grpc.GenericRpcHandler):  # type: ignore[misc]
    def __init__(self, inner: Any) -> None:
        self._inner = inner
        # Wrapped once per method, not per call (a dict write is atomic: racing calls only wrap twice).
        self._wrapped: dict[str, Any] = {}

    def service(self, handler_call_details: Any) -> Any:
        method = str(handler_call_details.method)
        if method not in self._wrapped:
            handler = self._inner.service(handler_call_details)
            if handler is None:
                return None
            self._wrapped[method] = tolerant(handler, method)
        return self._wrapped[method]


class MethodRegistry(Protocol):
    """Where the generated `add_*Servicer_to_server` functions register a servicer's methods: a grpc.Server,
    a `plugin.rpcserver.Server`."""

    def add_generic_rpc_handlers(self, handlers: Iterable[Any], /) -> None: ...

    def add_registered_method_handlers(self, service: str, handlers: Mapping[str, Any], /) -> None: ...


class TolerantServer:
    """Stands in for a server in the generated `add_*Servicer_to_server` functions, registering what they
    register on the real server with undecodable requests refused."""

    def __init__(self, server: MethodRegistry) -> None:
        self._server = server

    def add_generic_rpc_handlers(self, handlers: Iterable[Any]) -> None:
        self._server.add_generic_rpc_handlers(tuple(_TolerantGenericHandler(h) for h in handlers))

    def add_registered_method_handlers(self, service: str, handlers: Mapping[str, Any]) -> None:
        self._server.add_registered_method_handlers(
            service, {name: tolerant(h, f"/{service}/{name}") for name, h in handlers.items()}
        )
