"""Handler wrappers for the ``grpc.aio`` server: the same order as the sync flavour.

Check (:class:`CallGuard`), then parse the raw request bytes with the handler's deserializer
(spec 5: authentication before parsing), then run the handler with the current call set; a
:class:`mesh.errors.CallRefused` raised by the handler ends the call with its status. A plain
``def`` handler on an aio server would lose the context variable (grpc/grpc#37881), so the
wrapper runs it through ``asyncio.to_thread``, which copies the context; streaming-request
handlers on aio servers should be ``async def``.
"""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import AsyncIterator, Callable
from typing import Any, NoReturn, TypeAlias

import grpc
import grpc.aio

from mesh.errors import CallRefused
from mesh.tokens.verify import VerifiedChain
from mesh.transport.context import enter_call, leave_call
from mesh.transport.guard import NO_PEER as _NO_PEER
from mesh.transport.guard import CallGuard, Rejected
from mesh.transport.requests import Parser

_DONE = object()

Handler: TypeAlias = "grpc.RpcMethodHandler[Any, Any]"  # generic only in the stubs
Context: TypeAlias = "grpc.aio.ServicerContext[Any, Any]"


async def _check(guard: CallGuard, method: str, context: Context) -> VerifiedChain | None:
    try:
        return guard.check(method, context.invocation_metadata() or (),
                           _NO_PEER if guard.edge else context.auth_context())
    except Rejected as rejected:
        await _abort(context, rejected.status)


async def _abort(context: Context, status: grpc.Status) -> NoReturn:
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
    """An async handler that checks the call, parses the request, then runs ``handler``'s
    behaviour with the current call set."""
    parse = Parser(handler.request_deserializer, method)
    resp = handler.response_serializer
    streaming_in = handler.stream_unary is not None or handler.stream_stream is not None

    async def request(raw: Any, context: Context) -> Any:
        if not streaming_in:
            try:
                return parse(raw)
            except CallRefused as err:
                await _abort(context, guard.refusal(method, err))
        return _parsed_stream(raw, context)

    async def _parsed_stream(raws: Any, context: Context) -> AsyncIterator[Any]:
        async for raw in raws:
            try:
                item = parse(raw)
            except CallRefused as err:
                await _abort(context, guard.refusal(method, err))
            yield item

    if handler.unary_unary is not None or handler.stream_unary is not None:
        single = handler.unary_unary or handler.stream_unary
        assert single is not None

        async def unary_response(raw: Any, context: Context) -> Any:
            token = enter_call(await _check(guard, method, context))
            try:
                return await _unary_result(single, await request(raw, context), context)
            except CallRefused as err:
                await _abort(context, guard.refusal(method, err))
            finally:
                leave_call(token)

        factory = (grpc.unary_unary_rpc_method_handler if handler.unary_unary is not None
                   else grpc.stream_unary_rpc_method_handler)
        return factory(unary_response, None, resp)
    stream = handler.unary_stream or handler.stream_stream
    if stream is None:
        raise TypeError(f"the handler of {method} has no behaviour")

    async def stream_response(raw: Any, context: Context) -> AsyncIterator[Any]:
        token = enter_call(await _check(guard, method, context))
        try:
            async for item in _stream_result(stream, await request(raw, context), context):
                yield item
        except CallRefused as err:
            await _abort(context, guard.refusal(method, err))
        finally:
            leave_call(token)

    factory_s = (grpc.unary_stream_rpc_method_handler if handler.unary_stream is not None
                 else grpc.stream_stream_rpc_method_handler)
    return factory_s(stream_response, None, resp)

