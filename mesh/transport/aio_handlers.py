"""Server interceptor for ``grpc.aio``.

Same checks as the sync flavour (:class:`~mesh.transport.guard.CallGuard`), run in an async
wrapper around the handler. A plain ``def`` handler on an aio server would lose the context
variable (grpc/grpc#37881), so the wrapper runs it through ``asyncio.to_thread``, which copies
the context; streaming-request handlers on aio servers should be ``async def``.
"""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import AsyncIterator, Callable
from typing import Any, NoReturn, TypeAlias

import grpc
import grpc.aio

from mesh.tokens.verify import VerifiedChain
from mesh.transport.context import enter_call, leave_call
from mesh.transport.guard import NO_PEER as _NO_PEER
from mesh.transport.guard import CallGuard, Rejected

_DONE = object()
_MAX_WRAPPED = 4096

Handler: TypeAlias = "grpc.RpcMethodHandler[Any, Any]"  # generic only in the stubs


async def _check(guard: CallGuard, method: str, context: grpc.aio.ServicerContext[Any, Any]
                 ) -> VerifiedChain | None:
    try:
        return guard.check(method, context.invocation_metadata() or (),
                           _NO_PEER if guard.edge else context.auth_context())
    except Rejected as rejected:
        await _abort(context, rejected.status)


async def _abort(context: grpc.aio.ServicerContext[Any, Any], status: grpc.Status) -> NoReturn:
    await context.abort_with_status(status)
    raise AssertionError("abort_with_status returned")  # pragma: no cover - it always raises


async def _unary_result(behaviour: Callable[..., Any], request: Any, context: Any) -> Any:
    if inspect.iscoroutinefunction(behaviour):
        return await behaviour(request, context)
    # A plain def: run it in a thread with a copy of our context (grpc/grpc#37881).
    return await asyncio.to_thread(behaviour, request, context)


async def _stream_result(behaviour: Callable[..., Any], request: Any, context: Any
                         ) -> AsyncIterator[Any]:
    if (inspect.isasyncgenfunction(behaviour) or inspect.iscoroutinefunction(behaviour)
            or inspect.isgeneratorfunction(behaviour)):
        result = behaviour(request, context)  # creating a generator runs none of its code
    else:
        result = await asyncio.to_thread(behaviour, request, context)
    if inspect.isasyncgen(result):
        async for item in result:
            yield item
    elif inspect.isawaitable(result):
        # A coroutine handler writing with context.write(); its return value is ignored.
        await result
    elif result is not None:
        iterator = iter(result)
        while True:
            item = await asyncio.to_thread(next, iterator, _DONE)
            if item is _DONE:
                break
            yield item


def wrap_handler(handler: Handler, method: str, guard: CallGuard) -> Handler:
    """An async handler that checks the call, then runs ``handler``'s behaviour in context."""
    req, resp = handler.request_deserializer, handler.response_serializer
    if handler.unary_unary is not None or handler.stream_unary is not None:
        single = handler.unary_unary or handler.stream_unary
        assert single is not None

        async def unary_response(request: Any, context: grpc.aio.ServicerContext[Any, Any]
                                 ) -> Any:
            token = enter_call(await _check(guard, method, context))
            try:
                return await _unary_result(single, request, context)
            finally:
                leave_call(token)

        factory = (grpc.unary_unary_rpc_method_handler if handler.unary_unary is not None
                   else grpc.stream_unary_rpc_method_handler)
        return factory(unary_response, req, resp)
    stream = handler.unary_stream or handler.stream_stream
    if stream is None:
        raise TypeError(f"the handler of {method} has no behaviour")

    async def stream_response(request: Any, context: grpc.aio.ServicerContext[Any, Any]
                              ) -> AsyncIterator[Any]:
        token = enter_call(await _check(guard, method, context))
        try:
            async for item in _stream_result(stream, request, context):
                yield item
        finally:
            leave_call(token)

    factory_s = (grpc.unary_stream_rpc_method_handler if handler.unary_stream is not None
                 else grpc.stream_stream_rpc_method_handler)
    return factory_s(stream_response, req, resp)


class _WrapCache:
    """(method, handler) -> wrapped handler, built once per handler object."""

    def __init__(self, guard: CallGuard) -> None:
        self._guard = guard
        self._wrapped: dict[tuple[str, int], tuple[Any, Handler]] = {}

    def wrap(self, method: str, handler: Handler) -> Handler:
        key = (method, id(handler))
        hit = self._wrapped.get(key)
        if hit is not None and hit[0] is handler:
            return hit[1]
        wrapped = wrap_handler(handler, method, self._guard)
        if len(self._wrapped) >= _MAX_WRAPPED:
            self._wrapped.clear()
        self._wrapped[key] = (handler, wrapped)  # the handler is kept so its id stays unique
        return wrapped


class AioGuardedGenericHandler(grpc.GenericRpcHandler):
    """Wraps a generic handler so that every method it serves is checked (aio flavour)."""

    def __init__(self, inner: grpc.GenericRpcHandler, guard: CallGuard) -> None:
        self._inner = inner
        self._cache = _WrapCache(guard)

    def service(self, handler_call_details: grpc.HandlerCallDetails) -> Handler | None:
        handler = self._inner.service(handler_call_details)
        if handler is None:
            return None
        return self._cache.wrap(handler_call_details.method, handler)
