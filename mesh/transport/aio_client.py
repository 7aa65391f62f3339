"""Client interceptors for ``grpc.aio``: the same token minting as the sync flavour.

aio takes one interceptor object per call kind it implements; :func:`aio_client_interceptors`
returns the four. They run in the calling task, so the context variable is the caller's.
"""

from __future__ import annotations

from collections.abc import AsyncIterable, Callable, Iterable
from typing import Any

import grpc.aio

from mesh.transport.minter import TokenMinter


def _details(minter: TokenMinter, details: grpc.aio.ClientCallDetails
             ) -> grpc.aio.ClientCallDetails:
    token = minter.token()
    metadata = grpc.aio.Metadata(
        *[(k, v) for k, v in (details.metadata or ()) if k != "authorization"],
        ("authorization", "Bearer " + token),
    )
    return grpc.aio.ClientCallDetails(details.method, details.timeout, metadata,
                                      details.credentials, details.wait_for_ready)


class _Base:
    def __init__(self, minter: TokenMinter) -> None:
        self.minter = minter


class AioUnaryUnary(_Base, grpc.aio.UnaryUnaryClientInterceptor):
    async def intercept_unary_unary(self, continuation: Callable[..., Any],
                                    client_call_details: grpc.aio.ClientCallDetails,
                                    request: Any) -> Any:
        return await continuation(_details(self.minter, client_call_details), request)


class AioUnaryStream(_Base, grpc.aio.UnaryStreamClientInterceptor):
    async def intercept_unary_stream(self, continuation: Callable[..., Any],
                                     client_call_details: grpc.aio.ClientCallDetails,
                                     request: Any) -> Any:
        return await continuation(_details(self.minter, client_call_details), request)


class AioStreamUnary(_Base, grpc.aio.StreamUnaryClientInterceptor):
    async def intercept_stream_unary(self, continuation: Callable[..., Any],
                                     client_call_details: grpc.aio.ClientCallDetails,
                                     request_iterator: AsyncIterable[Any] | Iterable[Any]
                                     ) -> Any:
        return await continuation(_details(self.minter, client_call_details), request_iterator)


class AioStreamStream(_Base, grpc.aio.StreamStreamClientInterceptor):
    async def intercept_stream_stream(self, continuation: Callable[..., Any],
                                      client_call_details: grpc.aio.ClientCallDetails,
                                      request_iterator: AsyncIterable[Any] | Iterable[Any]
                                      ) -> Any:
        return await continuation(_details(self.minter, client_call_details), request_iterator)


def aio_client_interceptors(minter: TokenMinter) -> list[grpc.aio.ClientInterceptor]:
    """The four aio interceptors sharing one minter."""
    return [AioUnaryUnary(minter), AioUnaryStream(minter), AioStreamUnary(minter),
            AioStreamStream(minter)]
