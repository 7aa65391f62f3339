"""A client outside the mesh: log in at auth's edge port, then call the gateway's edge port.

Edge ports are server TLS only (the user has no SVID). The client trusts the mesh's roots
(``svid_bundle.pem``) and pins the service's DNS name (spec 1.5), whatever address it
dials. It holds a DPoP key (:class:`mesh.dpop.DpopClient`): a channel built with it adds a
fresh proof to every call, so the login binds the user token to the key and every gateway call
proves it (spec 4.7); the calls send the token as ``authorization: DPoP``. Used by the
launcher's story and by ``mesh demo call``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import grpc

from mesh.demo.v1 import (
    auth_pb2,
    auth_pb2_grpc,
    gateway_pb2,
    gateway_pb2_grpc,
    orders_pb2,
)
from mesh.dpop import DpopClient
from mesh.identity.spiffeid import TrustDomain
from mesh.transport.status import error_info

DEFAULT_TIMEOUT = 10.0


def edge_channel(
    address: str, roots_pem: bytes, service: str, trust_domain: TrustDomain,
    dpop: DpopClient | None = None,
) -> grpc.Channel:
    """A server-TLS channel to ``service``'s edge port at ``address``; with ``dpop``, every
    call carries a fresh proof made with that key (without, none: what a token thief has)."""
    credentials = grpc.ssl_channel_credentials(root_certificates=roots_pem)
    dns_name = trust_domain.service_dns_name(service)
    options = [("grpc.ssl_target_name_override", dns_name)]
    channel = grpc.secure_channel(address, credentials, options=options)
    return channel if dpop is None else dpop.intercept(channel, dns_name)


@dataclass(frozen=True, slots=True)
class Failure:
    """Why a call failed, as the server said it: status, ErrorInfo reason, message."""

    code: str
    reason: str
    message: str
    service: str = ""

    def __str__(self) -> str:
        return f"{self.summary()}: {self.message}"

    def summary(self) -> str:
        """Status, reason and the refusing service's name, e.g. ``PERMISSION_DENIED
        SCOPE_MISSING at inventory``."""
        text = self.code if self.reason == "-" else f"{self.code} {self.reason}"
        if self.service:
            name = self.service.rsplit("/", 1)[-1] if "/svc/" in self.service else self.service
            text += f" at {name}"
        return text


def failure_of(err: grpc.RpcError) -> Failure:
    call = err if isinstance(err, grpc.Call) else None
    code = call.code().name if call is not None else "UNKNOWN"
    message = call.details() or "" if call is not None else str(err)
    info = error_info(err)
    reason = info.reason if info is not None else "-"
    service = info.metadata.get("service", "") if info is not None else ""
    return Failure(code=code, reason=reason, message=message, service=service)


def _authorization(token: str) -> tuple[tuple[str, str]]:
    # The proof is added by the channel's DpopClient, which names this token in it (ath).
    return (("authorization", f"DPoP {token}"),)


def login(
    channel: grpc.Channel, username: str, password: str, *, timeout: float = DEFAULT_TIMEOUT
) -> auth_pb2.LoginResponse:
    stub = auth_pb2_grpc.AuthServiceStub(channel)  # type: ignore[no-untyped-call]
    response: auth_pb2.LoginResponse = stub.Login(
        auth_pb2.LoginRequest(username=username, password=password), timeout=timeout
    )
    return response


def place_order(
    channel: grpc.Channel, token: str, lines: Sequence[tuple[str, int]], *,
    timeout: float = DEFAULT_TIMEOUT,
) -> orders_pb2.Order:
    stub = gateway_pb2_grpc.GatewayServiceStub(channel)  # type: ignore[no-untyped-call]
    request = gateway_pb2.PlaceOrderRequest(
        lines=[orders_pb2.OrderLine(sku=sku, quantity=qty) for sku, qty in lines]
    )
    order: orders_pb2.Order = stub.PlaceOrder(request, metadata=_authorization(token),
                                              timeout=timeout)
    return order


def list_orders(
    channel: grpc.Channel, token: str, *, limit: int = 0, timeout: float = DEFAULT_TIMEOUT
) -> list[orders_pb2.Order]:
    stub = gateway_pb2_grpc.GatewayServiceStub(channel)  # type: ignore[no-untyped-call]
    stream = stub.ListOrders(
        orders_pb2.ListOrdersRequest(limit=limit), metadata=_authorization(token), timeout=timeout
    )
    return list(stream)


def parse_line(text: str) -> tuple[str, int]:
    """``SKU=QTY`` (or just ``SKU`` for one) -> (sku, qty)."""
    sku, sep, qty = text.partition("=")
    if not sku:
        raise ValueError(f"order line {text!r} must read SKU=QUANTITY")
    try:
        quantity = int(qty) if sep else 1
    except ValueError:
        raise ValueError(f"order line {text!r}: quantity must be a whole number") from None
    return sku, quantity


def describe_order(order: orders_pb2.Order) -> str:
    lines = ", ".join(f"{line.quantity} x {line.sku}" for line in order.lines)
    return (
        f"{order.order_id} for {order.user}: {lines}, {order.total_cents / 100:.2f} EUR, "
        f"payment {order.payment_id}"
    )
