"""Rejections on the wire: a gRPC status with a ``google.rpc.ErrorInfo`` detail (spec 5.5).

The detail's ``reason`` is the stable machine code (``TOKEN_EXPIRED``, ``CHAIN_NOT_ALLOWED``,
...); ``domain`` is ``meshid``; ``metadata`` names the service that refused and the method, and
the policy rule when one decided. Clients read it back with :func:`error_info`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import grpc
from google.protobuf import any_pb2
from google.rpc import error_details_pb2, status_pb2  # type: ignore[import-untyped]
from grpc_status import rpc_status  # type: ignore[import-untyped]

DOMAIN = "meshid"

def rejection(code: grpc.StatusCode, message: str, reason: str, *, service: str, method: str,
              extra: Mapping[str, str] | None = None) -> grpc.Status:
    """A status carrying ``message`` and an ErrorInfo(reason, service, method, extra)."""
    metadata = {"service": service, "method": method, **(extra or {})}
    info = error_details_pb2.ErrorInfo(reason=reason, domain=DOMAIN, metadata=metadata)
    detail = any_pb2.Any()
    detail.Pack(info)
    proto = status_pb2.Status(code=code.value[0], message=message, details=[detail])
    status: grpc.Status = rpc_status.to_status(proto)
    return status


def error_info(err: grpc.RpcError | grpc.aio.AioRpcError) -> Any:
    """The ``google.rpc.ErrorInfo`` a meshid server attached to a failed call, or None."""
    try:
        if isinstance(err, grpc.aio.AioRpcError):
            trailing = err.trailing_metadata() or ()
            raw = next((v for k, v in trailing if k == "grpc-status-details-bin"), None)
            proto = status_pb2.Status.FromString(raw) if isinstance(raw, bytes) else None
        else:
            proto = rpc_status.from_call(err)
    except ValueError:
        return None
    if proto is None:
        return None
    for detail in proto.details:
        if detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
            info = error_details_pb2.ErrorInfo()
            detail.Unpack(info)
            return info
    return None
