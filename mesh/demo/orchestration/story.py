"""The story the launcher tells, step by step, each with what it expects and what it saw.

1. A user logs in (binding her token to her DPoP key) and places orders; every hop's audit
   line shows the chain it verified.
2. Attacks, live, each refused for its own reason; among them a user token lifted by a
   compromised service and replayed at the edge, and a captured DPoP proof replayed.
3. auth is stopped; the logged-in user keeps ordering (no per-call dependency on auth).
4. The agents renew every short-lived SVID by themselves while orders flow; no call fails.
5. node-b is evicted at the CA: its service's certificate is revoked, and inventory refuses it.
"""

from __future__ import annotations

import contextlib
import os
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, TextIO

import grpc
from cryptography import x509

from mesh.demo.client import stubs as client
from mesh.demo.orchestration.stage import NODES, SVID_SECONDS, SVID_TTL, TTL, USERS, Stage
from mesh.demo.orchestration.stage import rel_path as _rel
from mesh.demo.services import SERVICES
from mesh.demo.services.gateway import PLACE_ORDER
from mesh.demo.v1 import (
    gateway_pb2,
    gateway_pb2_grpc,
    inventory_pb2,
    inventory_pb2_grpc,
    orders_pb2,
    orders_pb2_grpc,
)
from mesh.dpop import DpopClient
from mesh.identity.certs import format_serial
from mesh.identity.spiffeid import SpiffeId
from mesh.tokens.jose import decode_unverified
from mesh.tokens.signer import TokenSigner


@dataclass(frozen=True, slots=True)
class Row:
    step: str
    expected: str
    observed: str
    ok: bool
    detail: str = ""


@dataclass
class Report:
    rows: list[Row] = field(default_factory=list)

    def add(self, step: str, expected: str, observed: str, ok: bool, detail: str = "") -> Row:
        row = Row(step, expected, observed, ok, detail)
        self.rows.append(row)
        return row

    @property
    def all_ok(self) -> bool:
        return bool(self.rows) and all(r.ok for r in self.rows)

    def as_json(self) -> dict[str, Any]:
        return {"ok": self.all_ok, "steps": [
            {"step": r.step, "expected": r.expected, "observed": r.observed, "ok": r.ok,
             "detail": r.detail}
            for r in self.rows
        ]}


class Out:
    """Terminal output: section headers, indented lines, one mark per checked outcome."""

    def __init__(self, stream: TextIO) -> None:
        self._s = stream
        self._closed = False

    def _write(self, text: str) -> None:
        # A reader that went away (`| head`) must not stop the demo or its clean shutdown.
        if self._closed:
            return
        try:
            self._s.write(text)
            self._s.flush()
        except BrokenPipeError:
            self._closed = True
            with contextlib.suppress(OSError, ValueError):
                devnull = os.open(os.devnull, os.O_WRONLY)
                os.dup2(devnull, self._s.fileno())

    def section(self, title: str) -> None:
        self._write(f"\n== {title} " + "=" * max(3, 86 - len(title)) + "\n")

    def line(self, text: str = "", indent: int = 0) -> None:
        self._write("".join(" " * indent + part + "\n" for part in text.splitlines() or [""]))

    def result(self, row: Row) -> None:
        mark = "ok  " if row.ok else "FAIL"
        self.line(f"[{mark}] {row.step}: {row.observed}", 2)
        if row.detail:
            self.line(row.detail, 9)


def _jkt(token: str) -> str | None:
    """The DPoP key thumbprint a user token is bound to (read, not verified: for display)."""
    cnf = (decode_unverified(token).claims or {}).get("cnf")
    jkt = cnf.get("jkt") if isinstance(cnf, dict) else None
    return jkt if isinstance(jkt, str) else None


def _short(spiffe_id: str | None) -> str:
    if spiffe_id is None:
        return "-"
    try:
        return SpiffeId.parse(spiffe_id).service_name or spiffe_id
    except ValueError:
        return spiffe_id


def describe_chain(line: dict[str, Any]) -> str:
    chain = [_short(s) for s in line.get("chain") or []]
    if line.get("peer") is None:
        return "edge port: user token from auth"
    if line.get("user") is None:
        return f"{' -> '.join(chain)} (app token, no user)"
    return " -> ".join(chain)


def audit_row(service: str, line: dict[str, Any]) -> str:
    method = str(line.get("method", "")).rsplit("/", 1)[-1]
    return (f"{service:<10} {method:<12} {line.get('decision', '?'):<6} "
            f"user {line.get('user') or '-':<6} chain {describe_chain(line):<34} "
            f"rule \"{line.get('rule') or '-'}\"  {int(line.get('verify_us', 0)) / 1000:.2f} ms")


@dataclass(frozen=True, slots=True)
class Expect:
    code: str
    reason: str | None = None
    service: str | None = None

    def __str__(self) -> str:
        where = f" at {self.service}" if self.service else ""
        return f"{self.code} {self.reason or ''}{where}".strip()

    def matches(self, failure: client.Failure, td_service: Callable[[str], SpiffeId]) -> bool:
        if failure.code != self.code:
            return False
        if self.reason is not None and failure.reason != self.reason:
            return False
        return self.service is None or failure.service == str(td_service(self.service))


class Story:
    def __init__(self, stage: Stage, out: Out, report: Report) -> None:
        self.stage = stage
        self.out = out
        self.report = report
        self.tokens: dict[str, str] = {}
        # each user's DPoP key, made by her client; her user token is bound to it
        self.keys: dict[str, DpopClient] = {}

    # -- helpers -------------------------------------------------------------------------------

    def check(self, step: str, expected: str, observed: str, ok: bool, detail: str = "") -> bool:
        self.out.result(self.report.add(step, expected, observed, ok, detail))
        return ok

    @contextmanager
    def guarded(self, step: str, expected: str) -> Iterator[None]:
        """A step that raises is recorded as failed with the error, and the story goes on."""
        try:
            yield
        except grpc.RpcError as err:
            failure = client.failure_of(err)
            self.check(step, expected, f"call failed: {failure.summary()}", False,
                       detail=failure.message)
        except Exception as err:  # a broken step must not hide the others
            self.check(step, expected, f"{type(err).__name__}: {err}", False)

    def edge(self, service: str, key: DpopClient | None = None) -> grpc.Channel:
        """An outside client's channel to ``service``'s edge port; with ``key``, each call
        carries a fresh DPoP proof made with it."""
        endpoint = self.stage.endpoints[service]
        if endpoint.edge is None:
            raise RuntimeError(f"{service} has no edge port")
        return client.edge_channel(endpoint.edge, self.stage.roots_pem(), service,
                                   self.stage.td, key)

    def signer(self, service: str, *, clock: Callable[[], float] = time.time) -> TokenSigner:
        svid = self.stage.svid(service)
        return TokenSigner(svid.private_key, svid.chain, clock=clock)

    def expect_failure(self, step: str, expected: Expect, call: Callable[[], Any]) -> None:
        try:
            call()
        except grpc.RpcError as err:
            failure = client.failure_of(err)
            self.check(step, str(expected), failure.summary(),
                       expected.matches(failure, self.stage.td.service),
                       detail=f"\"{failure.message}\"")
            return
        self.check(step, str(expected), "the call succeeded", False)

    def _audit_since(self, service: str, start: int, method: str) -> list[dict[str, Any]]:
        return [line for line in self.stage.audit(service)[start:]
                if str(line.get("method", "")).endswith("/" + method)]

    # -- 1 -------------------------------------------------------------------------------------

    def login_and_order(self) -> None:
        out = self.out
        out.section("1. A user logs in and places orders")
        alice = USERS[0]
        key = self.keys.setdefault("alice", DpopClient())
        with self.guarded("alice logs in", "a user token for the gateway"):
            with self.edge("auth", key) as channel:
                login = client.login(channel, alice.username, alice.password)
            self.tokens["alice"] = login.token
            bound = _jkt(login.token)
            self.check("1 alice logs in at auth's edge",
                       "a user token for the gateway, bound to her key",
                       f"user token for {alice.username} (scope \"{login.scope}\", valid "
                       f"{login.expires_at - int(time.time())} s), bound to her DPoP key "
                       f"(cnf.jkt {bound[:10] if bound else 'missing'}...); auth is not called "
                       "again",
                       bool(login.token) and bound == key.jkt)
        if "alice" not in self.tokens:
            return
        token = self.tokens["alice"]
        services = ("gateway", "orders", "inventory", "payments")
        starts = {s: len(self.stage.audit(s)) for s in services}
        with self.guarded("alice places an order", "an order, charged"), self.edge(
                "gateway", key) as gw:
            order = client.place_order(gw, token, [("coffee-beans", 2)])
            self.check("1 alice places an order",
                       "order stored, stock reserved, user charged",
                       client.describe_order(order), order.user == "alice")
        methods = {"gateway": "PlaceOrder", "orders": "CreateOrder", "inventory": "Reserve",
                   "payments": "Charge"}
        expected_chains = {"gateway": [], "orders": ["gateway"],
                           "inventory": ["gateway", "orders"], "payments": ["gateway", "orders"]}
        out.line("what each hop verified, from its own audit log:", 2)
        seen: dict[str, list[str]] = {}
        for service in services:
            lines = self._audit_since(service, starts[service], methods[service])
            if lines:
                out.line(audit_row(service, lines[-1]), 4)
                if lines[-1].get("decision") == "allow" and lines[-1].get("user") == "alice":
                    seen[service] = [_short(s) for s in lines[-1].get("chain") or []]
            else:
                out.line(f"{service:<10} (no audit line)", 4)
        self.check("1 each hop verified the chain",
                   "gateway edge, orders <- gateway, inventory/payments <- gateway, orders",
                   "; ".join(f"{s}: {' -> '.join(c) or 'edge'}" for s, c in seen.items()),
                   seen == expected_chains)

        start = len(self.stage.audit("inventory"))
        with self.guarded("multi-line order", "ReserveMany (client streaming)"), self.edge(
                "gateway", key) as gw:
            order = client.place_order(gw, token, [("sencha", 1), ("mug", 2)])
            streamed = self._audit_since("inventory", start, "ReserveMany")
            self.check("1 two-line order (client stream)",
                       "inventory.ReserveMany allowed for alice via gateway -> orders",
                       f"{client.describe_order(order)}; inventory audit: "
                       f"{describe_chain(streamed[-1]) if streamed else 'no line'}",
                       bool(streamed) and streamed[-1].get("decision") == "allow"
                       and len(order.reservation_ids) == 2)
        with self.guarded("list orders", "server streaming"), self.edge("gateway", key) as gw:
            orders = client.list_orders(gw, token)
            self.check("1 list orders (server stream)",
                       "her 2 orders, newest first",
                       ", ".join(o.order_id for o in orders),
                       len(orders) == 2 and all(o.user == "alice" for o in orders))
        stock = [line for line in self.stage.audit("inventory")
                 if str(line.get("method", "")).endswith("/Stock")]
        allowed = [line for line in stock if line.get("decision") == "allow"]
        self.check("1 reporting job, app token",
                   "inventory.Stock allowed for reporting with an app token",
                   f"{len(allowed)} Stock call(s) allowed; last: "
                   f"{describe_chain(allowed[-1]) if allowed else 'none'}",
                   bool(allowed) and allowed[-1].get("user") is None
                   and _short(allowed[-1].get("peer")) == "reporting")

    # -- 2 -------------------------------------------------------------------------------------

    def attacks(self) -> None:
        out = self.out
        out.section("2. Attacks, live: each one refused, for its own reason")
        stage = self.stage
        td = stage.td
        token = self.tokens.get("alice")
        if token is None:
            self.check("attacks", "run with alice's token", "no token: step 1 failed", False)
            return
        inventory_addr = stage.endpoints["inventory"].listen
        reserve = inventory_pb2.ReserveRequest(order_ref="attack", sku="mug", quantity=1)

        def reserve_as(peer: str, bearer: str) -> inventory_pb2.Reservation:
            with stage.mtls_channel(inventory_addr, "inventory", peer) as ch:
                stub = inventory_pb2_grpc.InventoryServiceStub(ch)  # type: ignore[no-untyped-call]
                result: inventory_pb2.Reservation = stub.Reserve(
                    reserve, metadata=(("authorization", f"Bearer {bearer}"),), timeout=10)
                return result

        # a) A token orders sends to inventory, captured from the wire and replayed by another
        # service over its own mutual-TLS connection. Minted here with orders' key exactly as
        # orders would: gateway wraps alice's token for orders, orders wraps that for inventory.
        with self.guarded("stolen token replayed", "refused: not the peer's token"):
            hop1 = self.signer("gateway").app_asserted_token(token, td.service("orders"))
            stolen = self.signer("orders").app_asserted_token(hop1, td.service("inventory"))
            out.line("a) a token orders sent to inventory (alice's chain), replayed by payments",
                     2)
            out.line(f"the token nests 3 signatures (auth, gateway, orders): {len(token)} B -> "
                     f"{len(hop1)} B -> {len(stolen)} B", 5)
            control = reserve_as("orders", stolen)
            out.line(f"control: the same token from orders' own connection is accepted "
                     f"(reservation {control.reservation_id})", 5)
            self.expect_failure("2a stolen token replayed",
                                Expect("UNAUTHENTICATED", "PEER_MISMATCH", "inventory"),
                                lambda: reserve_as("payments", stolen))

        # b) The gateway (or anyone holding its key) calls inventory directly, skipping orders,
        # with alice's real token correctly wrapped: the chain is wrong, so the policy refuses.
        with self.guarded("direct call skipping orders", "refused by inventory's policy"):
            out.line("b) gateway calls inventory directly with alice's token, skipping orders",
                     2)
            direct = self.signer("gateway").app_asserted_token(token, td.service("inventory"))
            self.expect_failure("2b inventory called, orders skipped",
                                Expect("PERMISSION_DENIED", "CHAIN_NOT_ALLOWED", "inventory"),
                                lambda: reserve_as("gateway", direct))

        # c) bob may read orders but not write them: the gateway and orders let him through;
        # inventory, which reserves stock, checks the scope carried in his token.
        with self.guarded("user without the scope", "refused at inventory"):
            out.line("c) bob (scope orders:read only) places an order", 2)
            bob = USERS[1]
            bob_key = self.keys.setdefault("bob", DpopClient())
            payments_before = len(stage.audit("payments"))
            with self.edge("auth", bob_key) as channel:
                bob_token = client.login(channel, bob.username, bob.password).token
            self.tokens["bob"] = bob_token
            with self.edge("gateway", bob_key) as gw:
                self.expect_failure("2c user without the scope",
                                    Expect("PERMISSION_DENIED", "SCOPE_MISSING", "inventory"),
                                    lambda: client.place_order(gw, bob_token, [("mug", 1)]))
            charged = [line for line in stage.audit("payments")[payments_before:]
                       if line.get("user") == "bob"]
            out.line(f"payments saw {len(charged)} call(s) for bob: nothing was charged", 5)

        # d) A user token that expired an hour... well, 45 minutes ago: signed by auth's own
        # key, so only its time claims are wrong.
        with self.guarded("expired user token", "refused at the edge"):
            out.line("d) a user token signed by auth that expired 45 minutes ago, bound to "
                     "alice's key and sent with her fresh proof", 2)
            alice_key = self.keys["alice"]
            expired = self.signer("auth", clock=lambda: time.time() - 3600).user_token(
                "alice", [td.service("gateway")], scope="orders:read orders:write", ttl=900,
                jkt=alice_key.jkt)
            with self.edge("gateway", alice_key) as gw:
                self.expect_failure("2d expired user token",
                                    Expect("UNAUTHENTICATED", "TOKEN_EXPIRED", "gateway"),
                                    lambda: client.place_order(gw, expired, [("mug", 1)]))

        # e) A client with no certificate at all dials orders' mutual-TLS port.
        with self.guarded("no client certificate", "handshake refused"):
            out.line("e) a client without a certificate calls orders with alice's token", 2)
            out.line("orders requires a client certificate: the TLS handshake fails before any "
                     "token is read (gRPC reports it to the client as UNAVAILABLE)", 5)
            creds = grpc.ssl_channel_credentials(root_certificates=stage.roots_pem())
            options = [("grpc.ssl_target_name_override", td.service_dns_name("orders"))]
            with grpc.secure_channel(stage.endpoints["orders"].listen, creds,
                                     options=options) as ch:
                stub = orders_pb2_grpc.OrdersServiceStub(ch)  # type: ignore[no-untyped-call]
                request = orders_pb2.CreateOrderRequest(
                    lines=[orders_pb2.OrderLine(sku="mug", quantity=1)])
                self.expect_failure(
                    "2e no client certificate",
                    Expect("UNAVAILABLE"),
                    lambda: stub.CreateOrder(request, timeout=5,
                                             metadata=(("authorization", f"Bearer {token}"),)))

        self._lifted_token(token)
        self._proof_replayed(token)

    def _lifted_token(self, token: str) -> None:
        """f) A compromised internal service replays the user token nested in a call it
        received, at the gateway's edge."""
        out, td = self.out, self.stage.td
        with self.guarded("lifted user token replayed at the edge", "refused at the gateway"):
            out.line("f) orders, compromised, unwraps the token gateway sent it and replays "
                     "alice's user token at the gateway's edge", 2)
            received = self.signer("gateway").app_asserted_token(token, td.service("orders"))
            upstream = (decode_unverified(received).claims or {}).get("upstream")
            if not isinstance(upstream, str) or upstream != token:
                raise RuntimeError("the wrapped token does not nest alice's user token")
            out.line(f"what orders received nests alice's user token ({len(upstream)} B), "
                     "readable by any service down the chain", 5)
            line = [("mug", 1)]
            with self.edge("gateway", self.keys["alice"]) as gw:
                control = client.place_order(gw, upstream, line)
            out.line(f"control: the same token with alice's own key is accepted (order "
                     f"{control.order_id})", 5)
            with self.edge("gateway") as gw:  # the token alone, no proof
                bare = self._failure(lambda: client.place_order(gw, upstream, line))
            out.line(f"sent as it is, without a proof: {bare.summary()}", 5)
            with self.edge("gateway", DpopClient()) as gw:  # a key orders made itself
                self.expect_failure(
                    "2f lifted user token replayed",
                    Expect("UNAUTHENTICATED", "DPOP_KEY_MISMATCH", "gateway"),
                    lambda: client.place_order(gw, upstream, line))
            if bare.reason != "DPOP_MISSING":
                self.check("2f lifted token without a proof", "UNAUTHENTICATED DPOP_MISSING",
                           bare.summary(), False)

    def _proof_replayed(self, token: str) -> None:
        """g) A proof captured from one of alice's calls is sent again with her token."""
        out, td = self.out, self.stage.td
        with self.guarded("captured proof replayed", "refused at the gateway"):
            out.line("g) a proof captured from one of alice's calls, replayed with her token", 2)
            metadata = self.keys["alice"].metadata(td.service("gateway"), PLACE_ORDER,
                                                   token=token)
            request = gateway_pb2.PlaceOrderRequest(
                lines=[orders_pb2.OrderLine(sku="sencha", quantity=1)])
            with self.edge("gateway") as gw:  # the exact metadata, sent by hand
                stub = gateway_pb2_grpc.GatewayServiceStub(gw)  # type: ignore[no-untyped-call]
                first = stub.PlaceOrder(request, metadata=metadata, timeout=10)
                out.line(f"control: alice's call with that proof is accepted (order "
                         f"{first.order_id})", 5)
                self.expect_failure("2g captured proof replayed",
                                    Expect("UNAUTHENTICATED", "DPOP_REPLAYED", "gateway"),
                                    lambda: stub.PlaceOrder(request, metadata=metadata,
                                                            timeout=10))

    @staticmethod
    def _failure(call: Callable[[], Any]) -> client.Failure:
        try:
            call()
        except grpc.RpcError as err:
            return client.failure_of(err)
        return client.Failure("OK", "-", "the call succeeded")

    # -- 3 -------------------------------------------------------------------------------------

    def auth_down(self) -> None:
        self.out.section("3. auth is stopped; the logged-in user keeps ordering")
        token = self.tokens.get("alice")
        with self.guarded("auth down", "orders still succeed"):
            auth_edge = self.stage.endpoints["auth"].edge
            code = self.stage.stop("auth")
            self.out.line(f"auth stopped (exit code {code})", 2)
            assert auth_edge is not None
            creds = client.edge_channel(auth_edge, self.stage.roots_pem(), "auth", self.stage.td,
                                        self.keys.get("alice"))
            with creds as channel:
                self.expect_failure("3 login while auth is down", Expect("UNAVAILABLE"),
                                    lambda: client.login(channel, "alice", USERS[0].password,
                                                         timeout=3))
            if token is None:
                self.check("alice orders with auth down", "3 orders", "no token", False)
                return
            placed = []
            with self.edge("gateway", self.keys["alice"]) as gw:
                for sku in ("coffee-beans", "sencha", "mug"):
                    placed.append(client.place_order(gw, token, [(sku, 1)]).order_id)
            self.check("3 orders while auth is down",
                       "3 orders accepted", f"{len(placed)} orders accepted: {', '.join(placed)}",
                       len(placed) == 3)

    # -- 4 -------------------------------------------------------------------------------------

    def renewals_under_traffic(self) -> None:
        """Every service with a short-lived SVID serves a new certificate, renewed by its
        node's agent, while alice's orders flow; no call fails."""
        stage = self.stage
        self.out.section(f"4. The agents renew every {SVID_TTL} SVID by themselves, under "
                         "traffic")
        token = self.tokens.get("alice")
        if token is None:
            self.check("4 renewals under traffic", "traffic keeps flowing", "no token", False)
            return
        watched = [s for s in SERVICES if s in stage.endpoints and s not in TTL]
        traffic = _Traffic(self, token, self.keys["alice"])
        with self.guarded("4 renewals under traffic", "no failed call"):
            self.out.line("$ mesh agent status --socket " + _rel(stage.socket("node-a")), 2)
            self.out.line(stage.agent_status("node-a").rstrip(), 4)
            first = {s: stage.served_certificate(s) for s in watched}
            traffic.start()
            self.out.line(f"traffic running; watching the certificate each of "
                          f"{', '.join(watched)} serves to new connections", 2)
            served, shares = self._wait_renewed(first, timeout=40)
            time.sleep(1.0)  # keep the traffic on the new certificates for a while
            traffic.stop()
            for service in watched:
                serials = served[service]
                self.out.line(f"{service:<10} " + " -> ".join(format_serial(n)[:12] + "..."
                                                              for n in serials), 4)
            replaced = (f"; each replaced {min(shares):.0%} to {max(shares):.0%} into its life"
                        if shares else "")
            if shares:
                self.out.line(f"the replaced certificates were {min(shares):.0%} to "
                              f"{max(shares):.0%} into their {SVID_TTL} life when a probe first "
                              "saw the new one (probes 0.2 s apart): the agent renews at 25-33 % "
                              "and serves the new SVID before half", 2)
            renewed = [s for s in watched if len(served[s]) > 1]
            self.check("4 every SVID renewed by its agent",
                       f"{len(watched)} services serve a new certificate",
                       f"{len(renewed)} of {len(watched)} renewed, "
                       f"{sum(len(v) - 1 for v in served.values())} renewals seen{replaced}; "
                       "no command was run", len(renewed) == len(watched))
            failed = traffic.failures
            self.check("4 calls during the renewals",
                       "all succeed", f"{traffic.ok} succeeded, {len(failed)} failed"
                       + (f" (first: {failed[0]})" if failed else ""),
                       traffic.ok > 0 and not failed)
        traffic.stop()

    def _wait_renewed(self, first: dict[str, x509.Certificate], *, timeout: float
                      ) -> tuple[dict[str, list[int]], list[float]]:
        """The serials each service served, probed until every one changed once; and, for
        each change seen, how much of the replaced certificate's life had passed (its life
        taken as the registered one, ending at its ``notAfter``)."""
        seen = {service: [cert.serial_number] for service, cert in first.items()}
        not_after = {service: cert.not_valid_after_utc.timestamp()
                     for service, cert in first.items()}
        shares: list[float] = []
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for service, serials in seen.items():
                cert = self.stage.served_certificate(service)
                if cert.serial_number != serials[-1]:
                    shares.append((time.time() - (not_after[service] - SVID_SECONDS))
                                  / SVID_SECONDS)
                    serials.append(cert.serial_number)
                    not_after[service] = cert.not_valid_after_utc.timestamp()
            if all(len(serials) > 1 for serials in seen.values()):
                break
            time.sleep(0.2)
        return seen, shares

    # -- 5 -------------------------------------------------------------------------------------

    def node_evicted(self, node: str = "node-b") -> None:
        """``mesh-ca evict`` revokes the node's agent and every SVID issued through it; the
        new CRL reaches the other node's agent, and inventory refuses the evicted service."""
        stage = self.stage
        victims = NODES[node]
        self.out.section(f"5. {node} is evicted while {', '.join(victims)} runs there")
        with self.guarded(f"5 {node} evicted", "its service refused"):
            start = len(stage.audit("inventory"))
            self.out.line(f"$ mesh-ca evict {node} --ca-dir {_rel(stage.ca_dir)}", 2)
            self.out.line(stage.evict(node).rstrip(), 4)
            evicted_at = time.monotonic()
            refused = self._wait_refused("inventory", start, victims, timeout=20)
            took = time.monotonic() - evicted_at
            line = refused or {}
            self.check(f"5 {', '.join(victims)} refused after the eviction",
                       "inventory refuses it: CERT_REVOKED",
                       f"{_short(line.get('presented'))} -> inventory "
                       f"{str(line.get('method', '?')).rsplit('/', 1)[-1]}: "
                       f"{line.get('decision', 'no refusal seen')} {line.get('reason', '')}, "
                       f"{took:.1f} s after the eviction (the CRL travelled CA -> node-a's "
                       "agent -> inventory's folder)",
                       refused is not None and line.get("reason") == "CERT_REVOKED")
            agent = stage.sup.get(f"agent-{node}")
            self.out.line(f"{node}'s agent: " + (
                f"exited with code {agent.popen.returncode}" if not agent.alive()
                else "still running, its renewals refused"), 2)
            with self.edge("gateway", self.keys["alice"]) as gw:
                order = client.place_order(gw, self.tokens["alice"], [("mug", 1)])
            self.check("5 node-a's services unaffected", "an order succeeds",
                       client.describe_order(order), order.user == "alice")

    def _wait_refused(self, service: str, start: int, peers: tuple[str, ...], *,
                      timeout: float) -> dict[str, Any] | None:
        """The first audit line of ``service`` after ``start`` that denies one of ``peers``."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for line in self.stage.audit(service)[start:]:
                # A refused certificate establishes no peer: its SPIFFE ID is "presented".
                who = _short(line.get("peer") or line.get("presented"))
                if line.get("decision") == "deny" and who in peers:
                    return line
            time.sleep(0.2)
        return None


class _Traffic:
    """Orders placed (and listed) in a loop on a thread until stopped; counts every outcome."""

    def __init__(self, story: Story, token: str, key: DpopClient) -> None:
        self._story = story
        self._token = token
        self._key = key
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.ok = 0
        self.failures: list[str] = []

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="demo-traffic", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(30)

    def _run(self) -> None:
        skus = ("coffee-beans", "sencha")
        i = 0
        with self._story.edge("gateway", self._key) as gw:
            while not self._stop.is_set():
                try:
                    if i % 5 == 4:
                        client.list_orders(gw, self._token, limit=5)
                    else:
                        client.place_order(gw, self._token, [(skus[i % 2], 1)])
                    self.ok += 1
                except grpc.RpcError as err:
                    self.failures.append(str(client.failure_of(err)))
                i += 1
                self._stop.wait(0.03)
