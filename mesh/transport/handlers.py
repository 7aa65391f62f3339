"""Server interceptor for sync ``grpc``.

``intercept_service`` runs on the server's polling thread and has no ServicerContext, so it
only wraps the handler: the checks run inside the wrapper, on the worker thread, where
``context.auth_context()`` holds the peer's certificate. The wrapper sets the context variable
read by :func:`mesh.transport.context.current_call` for the duration of the handler, on every call.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from typing import Any, NoReturn

import grpc

from mesh.tokens.verify import VerifiedChain
from mesh.transport.context import enter_call, leave_call
from mesh.transport.guard import NO_PEER as _NO_PEER
from mesh.transport.guard import CallGuard, Rejected

_MAX_WRAPPED = 4096


def _check(guard: CallGuard, method: str, context: grpc.ServicerContext) -> VerifiedChain | None:
    try:
        # An edge port has no client certificate to read: skip building the auth context.
        return guard.check(method, context.invocation_metadata(),
                           _NO_PEER if guard.edge else context.auth_context())
    except Rejected as rejected:
        _abort(context, rejected.status)


def _abort(context: grpc.ServicerContext, status: grpc.Status) -> NoReturn:
    context.abort_with_status(status)
    raise AssertionError("abort_with_status returned")  # pragma: no cover - it always raises


def wrap_handler(handler: grpc.RpcMethodHandler[Any, Any], method: str, guard: CallGuard
                 ) -> grpc.RpcMethodHandler[Any, Any]:
    """A handler that checks the call, then runs ``handler``'s behaviour with the context set."""
    req, resp = handler.request_deserializer, handler.response_serializer
    if handler.unary_unary is not None:
        uu: Callable[[Any, grpc.ServicerContext], Any] = handler.unary_unary

        def unary_unary(request: Any, context: grpc.ServicerContext) -> Any:
            token = enter_call(_check(guard, method, context))
            try:
                return uu(request, context)
            finally:
                leave_call(token)

        return grpc.unary_unary_rpc_method_handler(unary_unary, req, resp)
    if handler.unary_stream is not None:
        us: Callable[[Any, grpc.ServicerContext], Iterator[Any]] = handler.unary_stream

        def unary_stream(request: Any, context: grpc.ServicerContext) -> Iterator[Any]:
            # Check before returning the generator, so a refusal aborts before any response.
            return _stream(_check(guard, method, context), us, request, context)

        return grpc.unary_stream_rpc_method_handler(unary_stream, req, resp)
    if handler.stream_unary is not None:
        su: Callable[[Iterator[Any], grpc.ServicerContext], Any] = handler.stream_unary

        def stream_unary(requests: Iterator[Any], context: grpc.ServicerContext) -> Any:
            token = enter_call(_check(guard, method, context))
            try:
                return su(requests, context)
            finally:
                leave_call(token)

        return grpc.stream_unary_rpc_method_handler(stream_unary, req, resp)
    ss: Callable[[Iterator[Any], grpc.ServicerContext], Iterator[Any]] | None = (
        handler.stream_stream
    )
    if ss is None:
        raise TypeError(f"the handler of {method} has no behaviour")
    ss_fn = ss

    def stream_stream(requests: Iterator[Any], context: grpc.ServicerContext) -> Iterator[Any]:
        return _stream(_check(guard, method, context), ss_fn, requests, context)

    return grpc.stream_stream_rpc_method_handler(stream_stream, req, resp)


def _stream(chain: VerifiedChain | None, behaviour: Callable[[Any, grpc.ServicerContext],
            Iterator[Any]], request: Any, context: grpc.ServicerContext) -> Iterator[Any]:
    token = enter_call(chain)
    try:
        yield from behaviour(request, context)
    finally:
        leave_call(token)


class _WrapCache:
    """(method, handler) -> wrapped handler; generic handlers usually hand out the same handler
    object per method, so each wrapper is built once, not on every call."""

    def __init__(self, guard: CallGuard) -> None:
        self._guard = guard
        self._wrapped: dict[tuple[str, int], tuple[Any, Any]] = {}
        self._lock = threading.Lock()

    def wrap(self, method: str, handler: grpc.RpcMethodHandler[Any, Any]
             ) -> grpc.RpcMethodHandler[Any, Any]:
        key = (method, id(handler))
        hit = self._wrapped.get(key)
        if hit is not None and hit[0] is handler:
            wrapped: grpc.RpcMethodHandler[Any, Any] = hit[1]
            return wrapped
        wrapped = wrap_handler(handler, method, self._guard)
        with self._lock:
            if len(self._wrapped) >= _MAX_WRAPPED:
                self._wrapped.clear()
            # keep the handler itself so its id cannot be reused while cached
            self._wrapped[key] = (handler, wrapped)
        return wrapped


class GuardedGenericHandler(grpc.GenericRpcHandler):
    """Wraps a generic handler so that every method it serves is checked.

    :class:`mesh.transport.server.MeshServer` wraps at registration instead of using a server
    interceptor: the same checks, without gRPC's per-call interceptor pipeline.
    """

    def __init__(self, inner: grpc.GenericRpcHandler, guard: CallGuard) -> None:
        self._inner = inner
        self._cache = _WrapCache(guard)

    def service(self, handler_call_details: grpc.HandlerCallDetails
                ) -> grpc.RpcMethodHandler[Any, Any] | None:
        handler = self._inner.service(handler_call_details)
        if handler is None:
            return None
        return self._cache.wrap(handler_call_details.method, handler)
