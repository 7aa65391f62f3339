"""Run one demo service: ``python -m mesh.demo SERVICE --identity DIR --listen ADDR ...``.

The service reads its X.509-SVID and trust bundle either from ``--identity`` (a spiffe-helper
folder, as ``mesh agent --write`` or ``ca-issue`` make it, reloaded when it changes; ``--bundle``
and ``--crl`` may name the bundle files elsewhere) or from a SPIFFE Workload API socket
(``--workload-api``, what ``mesh agent --socket`` serves), its policy from the TOML file beside
its code (or ``--policy``), and finds the services it calls with ``--peer NAME=ADDR``. Every
authorization decision goes to ``--audit-log`` as one JSON line. When it listens, it writes
``--ready-file`` (JSON: ports, SPIFFE ID, pid); it stops cleanly on SIGTERM or SIGINT.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import sys
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import grpc

from mesh.cliutil import ArgumentParser
from mesh.demo.errors import DemoConfigError
from mesh.demo.logic import catalog
from mesh.demo.logic.auth import LoginService
from mesh.demo.logic.inventory import Inventory
from mesh.demo.logic.orders_store import OrdersStore
from mesh.demo.logic.payments import Payments
from mesh.demo.logic.reporting import ReportingJob, StockReport
from mesh.demo.logic.users import UserStore
from mesh.demo.services import SERVICES, load_service_policy
from mesh.demo.services import auth as auth_svc
from mesh.demo.services import gateway as gateway_svc
from mesh.demo.services import inventory as inventory_svc
from mesh.demo.services import orders as orders_svc
from mesh.demo.services import payments as payments_svc
from mesh.demo.services import reporting as reporting_svc
from mesh.demo.v1 import inventory_pb2_grpc, orders_pb2_grpc, payments_pb2_grpc
from mesh.errors import MeshError
from mesh.identity.spiffeid import SpiffeId
from mesh.policy import Policy
from mesh.transport.address import AddressError, dial_address, listen_address
from mesh.transport.audit import LOGGER_NAME as AUDIT_LOGGER
from mesh.transport.channel import MeshChannel
from mesh.transport.server import MeshServer
from mesh.workload import Workload

_log = logging.getLogger("mesh.demo")

# Which services each one calls; the launcher passes their addresses with --peer.
NEEDS: dict[str, tuple[str, ...]] = {
    "auth": (),
    "gateway": ("orders",),
    "orders": ("inventory", "payments"),
    "inventory": (),
    "payments": (),
    "reporting": ("inventory",),
}
EDGE_SERVICES = ("auth", "gateway")
STOP_GRACE = 2.0


@dataclass
class Running:
    """What one service process holds; :meth:`close` releases it in reverse order."""

    spiffe_id: str = ""
    ports: dict[str, int] = field(default_factory=dict)
    stoppers: list[Callable[[], object]] = field(default_factory=list)

    def close(self) -> None:
        for stop in reversed(self.stoppers):
            try:
                stop()
            except Exception:  # shutdown goes on; the failure is logged
                _log.exception("error while stopping")


def _parse_peers(values: Sequence[str]) -> dict[str, str]:
    peers: dict[str, str] = {}
    for value in values:
        name, sep, addr = value.partition("=")
        if not sep or not name or not addr:
            raise DemoConfigError(f"--peer {value!r} must read NAME=HOST:PORT")
        peers[name] = dial_address(addr, what=f"--peer {name}")
    return peers


def _listen(text: str) -> str:
    """argparse type of --listen and --edge-listen: HOST:PORT, the port written out."""
    try:
        return listen_address(text, what="address")
    except AddressError as err:
        raise argparse.ArgumentTypeError(str(err)) from None


def _port_of(address: str, port: int) -> str:
    host = address.rsplit(":", 1)[0]
    return f"{host}:{port}"


def parser() -> argparse.ArgumentParser:
    p = ArgumentParser(prog="python -m mesh.demo",
                       description="Run one service of the meshid demo mesh.")
    p.add_argument("service", choices=SERVICES, help="the service to run")
    source = p.add_mutually_exclusive_group(required=True)
    source.add_argument("--identity", type=Path, metavar="DIR",
                        help="folder with svid.pem, svid_key.pem, svid_bundle.pem, "
                        "bundle.spiffe.json and crl.pem (this or --workload-api is required)")
    source.add_argument("--workload-api", type=Path, metavar="SOCKET",
                        help="the SPIFFE Workload API socket of this host's agent")
    p.add_argument("--listen", required=True, type=_listen, metavar="HOST:PORT",
                   help="mutual-TLS address, port 0 for any free one, e.g. 127.0.0.1:0 "
                   "(required)")
    p.add_argument("--edge-listen", type=_listen, metavar="HOST:PORT",
                   help="server-TLS edge address (auth and gateway only; required there, "
                   "default: none)")
    p.add_argument("--bundle", type=Path,
                   help="bundle.spiffe.json, with --identity only (default: the one in the "
                   "--identity folder)")
    p.add_argument("--crl", type=Path,
                   help="crl.pem of the CA, with --identity only (default: crl.pem in the "
                   "--identity folder)")
    p.add_argument("--policy", type=Path, help="policy TOML (default: the one shipped)")
    p.add_argument("--peer", action="append", default=[], metavar="NAME=HOST:PORT",
                   help="address of a service this one calls, repeatable (default: none)")
    p.add_argument("--data", type=Path,
                   help="folder for the service's own state, orders only (default: .)")
    p.add_argument("--users", type=Path, help="demo users file (auth only; default: none)")
    p.add_argument("--audit-log", type=Path,
                   help="file for the JSON audit lines (default: stderr)")
    p.add_argument("--ready-file", type=Path,
                   help="written (JSON) once the ports listen (default: none)")
    p.add_argument("--report-interval", type=float, default=2.0,
                   help="seconds between reporting rounds, reporting only (default: 2)")
    p.add_argument("--token-ttl", type=int, default=900,
                   help="user token lifetime in seconds, auth only (default: 900)")
    return p


def _configure_logging(service: str, audit_log: Path | None) -> None:
    logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                        format=f"%(asctime)s {service} %(levelname)s %(name)s: %(message)s")
    audit = logging.getLogger(AUDIT_LOGGER)
    audit.setLevel(logging.INFO)
    if audit_log is not None:
        audit_log.parent.mkdir(parents=True, exist_ok=True)
        handler = logging.FileHandler(audit_log, encoding="utf-8")
        handler.setFormatter(logging.Formatter("%(message)s"))
        audit.addHandler(handler)
        audit.propagate = False


def build(args: argparse.Namespace) -> Running:
    """Start ``args.service``; raise DemoConfigError (or a MeshError) naming what is wrong."""
    service: str = args.service
    peers = _parse_peers(args.peer)
    missing = [n for n in NEEDS[service] if n not in peers]
    if missing:
        raise DemoConfigError(f"{service} calls {', '.join(missing)}: pass --peer NAME=ADDR")
    if service in EDGE_SERVICES and not args.edge_listen:
        raise DemoConfigError(f"{service} serves users: pass --edge-listen ADDR")
    if service not in EDGE_SERVICES and args.edge_listen:
        raise DemoConfigError(f"{service} has no edge port; drop --edge-listen")
    if args.workload_api is not None and (args.bundle or args.crl):
        raise DemoConfigError("the Workload API sends the bundle and the CRL; drop --bundle "
                              "and --crl")

    running = Running()
    try:
        _start(args, running, peers)
    except BaseException:
        running.close()
        raise
    return running


def _start(args: argparse.Namespace, running: Running, peers: dict[str, str]) -> None:
    service: str = args.service
    if args.workload_api is not None:
        workload = Workload.from_workload_api(args.workload_api)
        where = f"the Workload API on {args.workload_api}"
    else:
        workload = Workload.from_folder(args.identity, bundle=args.bundle, crl=args.crl)
        where = str(args.identity)
    running.stoppers.append(workload.close)
    own: SpiffeId = workload.spiffe_id
    running.spiffe_id = str(own)
    if own.service_name != service:
        raise DemoConfigError(f"the identity from {where} is {own}, not the {service} service")
    td = own.trust_domain
    policy = load_service_policy(service, td, args.policy)

    def channel(name: str, *, require_user: bool) -> MeshChannel:
        ch = workload.channel(name, peers[name], require_user=require_user)
        running.stoppers.append(ch.close)
        return ch

    def start(server: MeshServer, address: str, key: str) -> None:
        running.ports[key] = server.add_port(address)
        server.start()
        running.stoppers.append(lambda: server.stop(STOP_GRACE).wait())

    # The mutual-TLS port: every service has one (health checks at least). For the edge
    # services it serves nothing else, so it gets a deny-all policy.
    internal = workload.server(Policy.deny_all(trust_domain=td) if service in EDGE_SERVICES
                               else policy)

    if service == "auth":
        if args.users is None:
            raise DemoConfigError("auth needs --users FILE")
        logins = LoginService(UserStore.load(args.users), workload.signer,
                              [td.service("gateway")], ttl=args.token_ttl)
        # Login takes a password, not a token: an edge port (server TLS, certificate following
        # rotation) on which Login alone is tokenless; any other method is refused.
        auth_edge = workload.server(Policy.deny_all(trust_domain=td), edge=True, max_workers=8,
                                    tokenless_methods=[auth_svc.LOGIN])
        assert auth_edge.dpop is not None  # an edge server always has one
        auth_svc.register(auth_edge, auth_svc.make_servicer(own, logins, auth_edge.dpop))
        start(auth_edge, args.edge_listen, "edge")
    elif service == "gateway":
        orders = orders_pb2_grpc.OrdersServiceStub(  # type: ignore[no-untyped-call]
            channel("orders", require_user=True))
        edge_server = workload.server(policy, edge=True)
        gateway_svc.register(edge_server, gateway_svc.make_servicer(own, orders))
        start(edge_server, args.edge_listen, "edge")
    elif service == "orders":
        data = args.data or Path(".")
        store = OrdersStore(data / "orders.sqlite")
        running.stoppers.append(store.close)
        inventory = inventory_pb2_grpc.InventoryServiceStub(  # type: ignore[no-untyped-call]
            channel("inventory", require_user=True))
        payments = payments_pb2_grpc.PaymentsServiceStub(  # type: ignore[no-untyped-call]
            channel("payments", require_user=True))
        orders_svc.register(internal, orders_svc.make_servicer(own, store, inventory,
                                                                payments))
    elif service == "inventory":
        inventory_svc.register(internal, inventory_svc.make_servicer(
            own, Inventory(catalog.opening_stock())))
    elif service == "payments":
        payments_svc.register(internal, payments_svc.make_servicer(own, Payments()))
    elif service == "reporting":
        stock = inventory_pb2_grpc.InventoryServiceStub(  # type: ignore[no-untyped-call]
            channel("inventory", require_user=False))

        def report(r: StockReport) -> None:
            _log.info("stock report: %s", r.summary())

        def failed(err: Exception) -> None:
            code = err.code().name if isinstance(err, grpc.Call) else type(err).__name__
            _log.warning("stock report failed: %s", code)

        job = ReportingJob(reporting_svc.stock_fetcher(stock), interval=args.report_interval,
                           on_report=report, on_error=failed)
        running.stoppers.append(job.stop)
        job.start()

    start(internal, args.listen, "listen")


def _write_ready(path: Path, args: argparse.Namespace, own: str, ports: dict[str, int]) -> None:
    doc = {
        "service": args.service,
        "spiffe_id": own,
        "pid": os.getpid(),
        "listen": _port_of(args.listen, ports["listen"]),
        "edge": _port_of(args.edge_listen, ports["edge"]) if args.edge_listen else None,
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(doc))
    os.replace(tmp, path)


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    _configure_logging(args.service, args.audit_log)
    stop = threading.Event()

    def on_signal(signum: int, _frame: object) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    try:
        running = build(args)
    except (MeshError, OSError) as err:
        print(f"{args.service}: cannot start: {err}", file=sys.stderr)
        return 2
    try:
        own = running.spiffe_id
        if args.ready_file is not None:
            _write_ready(args.ready_file, args, own, running.ports)
        _log.info("%s serving: mutual TLS on port %s%s", own, running.ports["listen"],
                  f", edge on port {running.ports['edge']}" if "edge" in running.ports else "")
        while not stop.wait(0.5):
            pass
        _log.info("stopping")
    finally:
        running.close()
    return 0
