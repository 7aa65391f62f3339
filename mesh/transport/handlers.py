"""Handler wrappers for the sync server: check first, parse second, then run the handler.

A mesh server wraps every method handler when it is registered (no server interceptor: a
sync ``intercept_service`` has no ServicerContext, hence no peer certificate, and runs on the
polling thread). The wrapper is registered with no request deserializer, so gRPC hands it the
raw request bytes; it runs the peer, token and policy checks (:class:`CallGuard`), and only then
parses the request with the handler's own deserializer (spec 5: authentication before parsing).
A request that does not parse gets ``INVALID_ARGUMENT`` / ``REQUEST_INVALID`` with a plain
message and no traceback.

While the handler runs, :func:`mesh.transport.context.current_call` is the verified call. A
:class:`mesh.errors.CallRefused` raised by the handler (``mesh.require_user()``, a channel
that requires a user) ends the call with its status and ErrorInfo.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any, NoReturn, TypeAlias

import grpc

from mesh.errors import CallRefused
from mesh.tokens.verify import VerifiedChain
from mesh.transport.context import enter_call, leave_call
from mesh.transport.guard import NO_PEER as _NO_PEER
from mesh.transport.guard import CallGuard, Rejected
from mesh.transport.requests import Parser

Handler: TypeAlias = "grpc.RpcMethodHandler[Any, Any]"  # generic only in the stubs


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


def _refused(guard: CallGuard, method: str, context: grpc.ServicerContext,
             err: CallRefused) -> NoReturn:
    _abort(context, guard.refusal(method, err))


def wrap_handler(handler: Handler, method: str, guard: CallGuard) -> Handler:
    """A handler that checks the call, parses the request, then runs ``handler``'s behaviour
    with the current call set."""
    parse = Parser(handler.request_deserializer, method)
    resp = handler.response_serializer

    def request(raw: Any, context: grpc.ServicerContext) -> Any:
        try:
            return parse(raw)
        except CallRefused as err:
            _refused(guard, method, context, err)

    def requests(raws: Iterator[Any], context: grpc.ServicerContext) -> Iterator[Any]:
        for raw in raws:
            yield request(raw, context)

    if handler.unary_unary is not None:
        uu: Callable[[Any, grpc.ServicerContext], Any] = handler.unary_unary

        def unary_unary(raw: Any, context: grpc.ServicerContext) -> Any:
            token = enter_call(_check(guard, method, context))
            try:
                return uu(request(raw, context), context)
            except CallRefused as err:
                _refused(guard, method, context, err)
            finally:
                leave_call(token)

        return grpc.unary_unary_rpc_method_handler(unary_unary, None, resp)
    if handler.unary_stream is not None:
        us: Callable[[Any, grpc.ServicerContext], Iterator[Any]] = handler.unary_stream

        def unary_stream(raw: Any, context: grpc.ServicerContext) -> Iterator[Any]:
            # Check and parse before returning the generator, so a refusal aborts before any
            # response.
            chain = _check(guard, method, context)
            return _stream(guard, method, chain, us, request(raw, context), context=context)

        return grpc.unary_stream_rpc_method_handler(unary_stream, None, resp)
    if handler.stream_unary is not None:
        su: Callable[[Iterator[Any], grpc.ServicerContext], Any] = handler.stream_unary

        def stream_unary(raws: Iterator[Any], context: grpc.ServicerContext) -> Any:
            token = enter_call(_check(guard, method, context))
            try:
                return su(requests(raws, context), context)
            except CallRefused as err:
                _refused(guard, method, context, err)
            finally:
                leave_call(token)

        return grpc.stream_unary_rpc_method_handler(stream_unary, None, resp)
    ss = handler.stream_stream
    if ss is None:
        raise TypeError(f"the handler of {method} has no behaviour")
    ss_fn: Callable[[Iterator[Any], grpc.ServicerContext], Iterator[Any]] = ss

    def stream_stream(raws: Iterator[Any], context: grpc.ServicerContext) -> Iterator[Any]:
        chain = _check(guard, method, context)
        return _stream(guard, method, chain, ss_fn, requests(raws, context), context=context)

    return grpc.stream_stream_rpc_method_handler(stream_stream, None, resp)


def _stream(guard: CallGuard, method: str, chain: VerifiedChain | None,
            behaviour: Callable[[Any, grpc.ServicerContext], Iterator[Any]], request: Any, *,
            context: grpc.ServicerContext) -> Iterator[Any]:
    token = enter_call(chain)
    try:
        yield from behaviour(request, context)
    except CallRefused as err:
        _refused(guard, method, context, err)
    finally:
        leave_call(token)


Wrap = Callable[[Handler, str, CallGuard], Handler]


class GuardedGenericHandler(grpc.GenericRpcHandler):
    """Wraps a generic handler so that every method it serves is checked, with ``wrap``
    (:func:`wrap_handler`, or the aio flavour's).

    Generated ``add_XServicer_to_server`` code registers its methods as registered method
    handlers, which the server wraps once; this path serves hand-made generic handlers and
    wraps on each call (no cache: it is not the path that matters for speed).
    """

    def __init__(self, inner: grpc.GenericRpcHandler, guard: CallGuard,
                 wrap: Wrap = wrap_handler) -> None:
        self._inner = inner
        self._guard = guard
        self._wrap = wrap

    def service(self, handler_call_details: grpc.HandlerCallDetails) -> Handler | None:
        handler = self._inner.service(handler_call_details)
        if handler is None:
            return None
        return self._wrap(handler, handler_call_details.method, self._guard)
