"""The demo's servicers in process, on the one mini mesh (``mesh``): real MeshServers on
127.0.0.1:0 with its SVIDs, the shipped policy files, and real tokens. (The launcher tests run
real processes.)"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import pytest
from support.minimesh import MiniMesh

from mesh.demo.logic import catalog
from mesh.demo.logic.inventory import Inventory
from mesh.demo.logic.orders_store import OrdersStore
from mesh.demo.logic.payments import Payments
from mesh.demo.services import gateway as gateway_svc
from mesh.demo.services import inventory as inventory_svc
from mesh.demo.services import load_service_policy
from mesh.demo.services import orders as orders_svc
from mesh.demo.services import payments as payments_svc
from mesh.demo.v1 import inventory_pb2_grpc, orders_pb2_grpc, payments_pb2_grpc
from mesh.dpop import DpopClient
from mesh.identity.spiffeid import TrustDomain
from mesh.identity.svid import StaticSvid
from mesh.tokens.signer import TokenSigner
from mesh.transport.channel import mesh_channel
from mesh.transport.credentials import channel_credentials
from mesh.transport.server import MeshServer

NAMES = ("auth", "gateway", "orders", "inventory", "payments", "reporting")


@dataclass
class InProcessMesh:
    td: TrustDomain
    roots_pem: bytes
    sources: dict[str, StaticSvid]
    inventory: Inventory
    payments: Payments
    store: OrdersStore
    trust: Any = None  # the bundle source the servers verify with
    key: DpopClient = field(default_factory=DpopClient)
    ports: dict[str, int] = field(default_factory=dict)
    servers: dict[str, MeshServer] = field(default_factory=dict)
    closers: list[Any] = field(default_factory=list)

    def address(self, name: str) -> str:
        return f"127.0.0.1:{self.ports[name]}"

    def signer(self, name: str) -> TokenSigner:
        svid = self.sources[name].current()
        return TokenSigner(svid.private_key, svid.chain)

    def user_token(self, sub: str, scope: str) -> str:
        """A user token bound to :attr:`key`, the DPoP key of the client the tests call with."""
        return self.signer("auth").user_token(sub, [self.td.service("gateway")], scope=scope,
                                              jkt=self.key.jkt)

    def raw_channel(self, callee: str, as_service: str) -> grpc.Channel:
        """Mutual TLS as ``as_service`` with no token interceptor (tokens passed by hand)."""
        return grpc.secure_channel(
            self.address(callee), channel_credentials(self.sources[as_service].current()),
            options=[("grpc.ssl_target_name_override", self.td.service_dns_name(callee))])


@pytest.fixture
def inproc_mesh(mesh: MiniMesh, tmp_path: Path) -> Iterator[InProcessMesh]:
    roots = mesh.ca.roots
    sources = {n: StaticSvid(mesh.svids[n].chain, mesh.key(n), roots) for n in NAMES}
    td = mesh.td
    demo = InProcessMesh(
        td=td, roots_pem=mesh.ca.roots_path.read_bytes(), sources=sources,
        inventory=Inventory(catalog.opening_stock()), payments=Payments(),
        store=OrdersStore(tmp_path / "orders.sqlite"), trust=mesh.trust)

    def server(name: str, *, edge: bool = False) -> MeshServer:
        return MeshServer(sources[name], load_service_policy(name, td), mesh.trust, edge=edge,
                          max_workers=4)

    def start(name: str, srv: MeshServer) -> None:
        demo.ports[name] = srv.add_port("127.0.0.1:0")
        srv.start()
        demo.servers[name] = srv
        demo.closers.append(lambda: srv.stop(None).wait())

    def channel(callee: str, caller: str) -> grpc.Channel:
        ch = mesh_channel(demo.address(callee), callee, sources[caller], require_user=True)
        demo.closers.append(ch.close)
        return ch

    inv = server("inventory")
    inventory_svc.register(inv, inventory_svc.make_servicer(td.service("inventory"),
                                                            demo.inventory))
    start("inventory", inv)
    pay = server("payments")
    payments_svc.register(pay, payments_svc.make_servicer(td.service("payments"), demo.payments))
    start("payments", pay)
    orders = server("orders")
    orders_svc.register(orders, orders_svc.make_servicer(
        td.service("orders"), demo.store,
        inventory_pb2_grpc.InventoryServiceStub(channel("inventory", "orders")),  # type: ignore[no-untyped-call]
        payments_pb2_grpc.PaymentsServiceStub(channel("payments", "orders"))))  # type: ignore[no-untyped-call]
    start("orders", orders)
    gateway = server("gateway", edge=True)
    gateway_svc.register(gateway, gateway_svc.make_servicer(
        td.service("gateway"),
        orders_pb2_grpc.OrdersServiceStub(channel("orders", "gateway"))))  # type: ignore[no-untyped-call]
    start("gateway", gateway)
    yield demo
    for close in reversed(demo.closers):
        close()
    demo.store.close()
