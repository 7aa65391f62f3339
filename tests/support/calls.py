"""How a call was refused: its gRPC status and ErrorInfo reason, once or once it happens."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import grpc
import pytest

from mesh.transport.status import error_info


def refusal(call: Callable[[], Any]) -> tuple[grpc.StatusCode, str]:
    """The status and reason ("" without ErrorInfo) of ``call``, which must fail."""
    with pytest.raises(grpc.RpcError) as exc:
        call()
    info = error_info(exc.value)
    return exc.value.code(), info.reason if info else ""


def first_refusal(call: Callable[[], Any], timeout: float = 5.0
                  ) -> tuple[grpc.StatusCode, str]:
    """Call until ``call`` fails (a revocation reaches the server when it re-reads its CRL),
    then its status and reason; ``(OK, "")`` if it never failed within ``timeout``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            call()
        except grpc.RpcError as err:
            info = error_info(err)
            return err.code(), info.reason if info else ""
        time.sleep(0.05)
    return grpc.StatusCode.OK, ""
