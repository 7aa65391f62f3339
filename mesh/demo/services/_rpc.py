"""What every demo servicer shares: who the verified user is, and how failures reach the wire.

A :class:`~mesh.demo.errors.DemoError` becomes its status with a ``google.rpc.ErrorInfo`` (the
same shape as the mesh's own rejections, :mod:`mesh.transport.status`). A
failure of a service called
downstream is passed on with its code and ErrorInfo intact (so the caller learns that, say,
inventory refused for ``SCOPE_MISSING``), its message prefixed with who refused.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable, Iterator, Sequence
from typing import Any, NoReturn, Protocol, TypeVar, cast

import grpc
from google.rpc import status_pb2  # type: ignore[import-untyped]
from grpc_status import rpc_status  # type: ignore[import-untyped]

from mesh.demo.errors import DemoError, DownstreamFailed
from mesh.errors import CallRefused, MeshError
from mesh.identity.spiffeid import SpiffeId
from mesh.transport.status import rejection

F = TypeVar("F", bound=Callable[..., Any])
_log = logging.getLogger("mesh.demo")


class Registry(Protocol):
    """What generated ``add_XServicer_to_server`` functions call (grpc.Server, MeshServer)."""

    def add_generic_rpc_handlers(self, handlers: Sequence[grpc.GenericRpcHandler]) -> None: ...

    def add_registered_method_handlers(self, service_name: str,
                                       method_handlers: dict[str, Any]) -> None: ...


def _abort_demo(context: grpc.ServicerContext, err: DemoError, service: str,
                method: str) -> NoReturn:
    context.abort_with_status(rejection(err.status, str(err), err.reason, service=service,
                                        method=method))
    raise AssertionError("abort_with_status returned")  # pragma: no cover


def _abort_mesh(context: grpc.ServicerContext, err: MeshError, service: str,
                method: str) -> NoReturn:
    """A mesh error raised while handling (a token this service could not mint): its fault."""
    _log.error("%s: %s: %s", method, err.reason, err)
    context.abort_with_status(rejection(grpc.StatusCode.INTERNAL, str(err), err.reason,
                                        service=service, method=method))
    raise AssertionError("abort_with_status returned")  # pragma: no cover


def _abort_downstream(context: grpc.ServicerContext, err: grpc.RpcError, service: str,
                      method: str, downstream: str) -> NoReturn:
    call = cast(grpc.Call, err)
    code = call.code()
    details = call.details() or code.name
    try:
        proto = rpc_status.from_call(call)
    except ValueError:
        proto = None
    if proto is None:
        # No meshid status: a transport failure. Its details name internal addresses, so
        # they go to this service's log, and the caller learns only which hop failed how.
        _log.warning("%s: call to %s failed: %s: %s", method, downstream, code.name, details)
        failure = DownstreamFailed(f"{downstream} could not be reached or failed "
                                   f"({code.name}); see {service}'s log")
        reason = "DEADLINE_EXCEEDED" if code == grpc.StatusCode.DEADLINE_EXCEEDED else (
            failure.reason)
        context.abort_with_status(rejection(code, str(failure), reason, service=service,
                                            method=method))
    else:
        forwarded = status_pb2.Status(code=proto.code, message=f"{downstream} refused: "
                                      f"{proto.message}", details=proto.details)
        context.abort_with_status(rpc_status.to_status(forwarded))
    raise AssertionError("abort_with_status returned")  # pragma: no cover


class Downstream(Exception):
    """A failed call to another service, tagged with that service's name."""

    def __init__(self, service: str, err: grpc.RpcError) -> None:
        super().__init__(service)
        self.service = service
        self.err = err


def call_downstream(service: str, fn: Callable[[], Any]) -> Any:
    """Run one downstream call; a failure is tagged with ``service`` for :func:`handler`."""
    try:
        return fn()
    except grpc.RpcError as err:
        raise Downstream(service, err) from err


def _abort_for(context: grpc.ServicerContext, err: Downstream | DemoError | MeshError, service: str,
               method: str) -> NoReturn:
    """End the call with the status that ``err`` stands for."""
    if isinstance(err, DemoError):
        _abort_demo(context, err, service, method)
    if isinstance(err, Downstream):
        _abort_downstream(context, err.err, service, method, err.service)
    _abort_mesh(context, err, service, method)


def handler(own_id: SpiffeId, method: str) -> Callable[[F], F]:
    """Translate DemoError and downstream failures of a unary or request-streaming method."""

    def wrap(fn: F) -> F:
        @functools.wraps(fn)
        def inner(self: Any, request: Any, context: grpc.ServicerContext) -> Any:
            try:
                return fn(self, request, context)
            except CallRefused:
                raise  # the mesh server's wrapper answers with its status and reason
            except (Downstream, DemoError, MeshError) as err:
                _abort_for(context, err, str(own_id), method)

        return cast(F, inner)

    return wrap


def stream_handler(own_id: SpiffeId, method: str) -> Callable[[F], F]:
    """Like :func:`handler`, for a server-streaming method (a generator)."""

    def wrap(fn: F) -> F:
        @functools.wraps(fn)
        def inner(self: Any, request: Any, context: grpc.ServicerContext) -> Iterator[Any]:
            try:
                yield from fn(self, request, context)
            except CallRefused:
                raise  # the mesh server's wrapper answers with its status and reason
            except (Downstream, DemoError, MeshError) as err:
                _abort_for(context, err, str(own_id), method)

        return cast(F, inner)

    return wrap
