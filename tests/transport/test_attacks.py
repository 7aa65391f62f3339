"""Every failure class of spec 4 observed through a real call: status code and reason.

Each attack has a negative control (the same call made honestly succeeds), so a test can only
pass when the check under test is what refused the call.
"""

from __future__ import annotations

import json
import logging
import time
from typing import Any

import grpc
import pytest
from cryptography.hazmat.primitives import serialization
from grpc_health.v1 import health_pb2, health_pb2_grpc
from support.calls import first_refusal, refusal

from mesh.dpop import DpopClient
from mesh.policy import Policy, Rule
from mesh.tokens.signer import TokenSigner
from mesh.transport.audit import LOGGER_NAME as AUDIT_LOGGER
from mesh.transport.errors import UserRequiredError

UNARY = "/test.v1.Echo/Unary"
PEM = serialization.Encoding.PEM


def pem_files(mesh: Any, name: str) -> tuple[bytes, bytes, bytes]:
    folder = mesh.folder(name)
    return tuple((folder / f).read_bytes() for f in ("svid.pem", "svid_key.pem",  # type: ignore[return-value]
                                                     "svid_bundle.pem"))


def raw_channel(port: int, callee_dns: str, *, key: bytes | None, chain: bytes | None,
                roots: bytes) -> grpc.Channel:
    creds = grpc.ssl_channel_credentials(roots, key, chain)
    return grpc.secure_channel(f"127.0.0.1:{port}", creds,
                               options=[("grpc.ssl_target_name_override", callee_dns)])


def app_policy(*peers: str) -> Policy:
    return Policy([Rule(methods=("*",), peers=peers, require_user=False)])


def test_no_client_certificate_fails_the_handshake(mesh: Any) -> None:
    port = mesh.serve("orders", app_policy("gateway"))
    _, _, roots = pem_files(mesh, "orders")
    plain = raw_channel(port, "orders.svc.mesh.internal", key=None, chain=None, roots=roots)
    code, reason = refusal(lambda: plain.unary_unary(UNARY)(b"x", timeout=5))
    assert (code, reason) == (grpc.StatusCode.UNAVAILABLE, "")  # NOTES: handshake failure
    # control: the same server answers a caller with a certificate
    ok = mesh.channel(port, "orders", mesh.identity("gateway")).unary_unary(UNARY)(b"x", timeout=5)
    assert json.loads(ok)["peer"].endswith("/svc/gateway")
    plain.close()


def test_certificate_from_another_ca_fails_the_handshake(mesh: Any, ca_factory: Any,
                                                         tmp_path: Any) -> None:
    port = mesh.serve("orders", app_policy("*"))
    rogue_ca = ca_factory()
    rogue = rogue_ca.issue("gateway")  # same name, same trust domain, wrong issuer
    _, _, our_roots = pem_files(mesh, "orders")
    key = rogue.private_key.private_bytes(PEM, serialization.PrivateFormat.PKCS8,
                                          serialization.NoEncryption())
    chain = b"".join(c.public_bytes(PEM) for c in rogue.chain)
    channel = raw_channel(port, "orders.svc.mesh.internal", key=key, chain=chain,
                          roots=our_roots)
    assert refusal(lambda: channel.unary_unary(UNARY)(b"x", timeout=5)) == (
        grpc.StatusCode.UNAVAILABLE, "")
    channel.close()


def test_revoked_certificate_is_refused_even_on_an_open_connection(
        mesh: Any, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger=AUDIT_LOGGER)
    port = mesh.serve("orders", app_policy("gateway"))
    channel = mesh.channel(port, "orders", mesh.identity("gateway"))
    call = channel.unary_unary(UNARY)
    assert json.loads(call(b"x", timeout=5))["chain"] == ["gateway"]  # control
    mesh.ca.revoke(name="gateway")
    # the CRL file is re-read within check_interval
    assert first_refusal(lambda: call(b"x", timeout=5)) == (
        grpc.StatusCode.UNAUTHENTICATED, "CERT_REVOKED")
    # The audit names who was refused (unverified, as "presented"), never as the peer.
    lines = [json.loads(r.getMessage()) for r in caplog.records if r.name == AUDIT_LOGGER]
    assert (lines[0]["peer"], lines[0]["decision"]) == (
        "spiffe://mesh.internal/svc/gateway", "allow")
    assert "presented" not in lines[0]
    assert lines[-1]["reason"] == "CERT_REVOKED" and lines[-1]["peer"] is None
    assert lines[-1]["presented"] == "spiffe://mesh.internal/svc/gateway"


def test_stolen_token_replayed_over_another_services_connection(mesh: Any) -> None:
    port = mesh.serve("orders", app_policy("gateway", "inventory"))
    mesh.identity("gateway")
    gateway = mesh.ca.issue("gateway")  # the victim's current identity
    gateway.write_to(mesh.folder("gateway"))
    stolen = TokenSigner(gateway.private_key, gateway.chain).app_token(mesh.td.service("orders"))
    mesh.identity("inventory")
    chain, key, roots = pem_files(mesh, "inventory")
    thief = raw_channel(port, "orders.svc.mesh.internal", key=key, chain=chain, roots=roots)
    md = (("authorization", "Bearer " + stolen),)
    assert refusal(lambda: thief.unary_unary(UNARY)(b"x", metadata=md, timeout=5)) == (
        grpc.StatusCode.UNAUTHENTICATED, "PEER_MISMATCH")
    # control: over the victim's own connection the same token is accepted
    gw_chain, gw_key, _ = pem_files(mesh, "gateway")
    victim = raw_channel(port, "orders.svc.mesh.internal", key=gw_key, chain=gw_chain,
                         roots=roots)
    assert json.loads(victim.unary_unary(UNARY)(b"x", metadata=md, timeout=5))["chain"] == [
        "gateway"]
    thief.close()
    victim.close()


def test_call_without_token_is_unauthenticated(mesh: Any) -> None:
    port = mesh.serve("orders", app_policy("inventory"))
    mesh.identity("inventory")
    chain, key, roots = pem_files(mesh, "inventory")
    channel = raw_channel(port, "orders.svc.mesh.internal", key=key, chain=chain, roots=roots)
    assert refusal(lambda: channel.unary_unary(UNARY)(b"x", timeout=5)) == (
        grpc.StatusCode.UNAUTHENTICATED, "TOKEN_MISSING")
    channel.close()


def test_chain_that_skipped_a_required_hop(mesh: Any) -> None:
    payments_policy = Policy([Rule(methods=("*",), chains=(("gateway", "orders"),))])
    payments_port = mesh.serve("payments", payments_policy)
    orders_id = mesh.identity("orders")
    to_payments = mesh.channel(payments_port, "payments", orders_id)
    orders_port = mesh.serve("orders", Policy([Rule(methods=("*",), chains=(("gateway",),))]),
                            source=orders_id,
                            forward=lambda req: to_payments.unary_unary(UNARY)(req, timeout=5))
    gateway = mesh.identity("gateway")
    token = mesh.user_token(sub="alice")
    with mesh.as_user_call("gateway", token):
        # the attack: gateway calls payments directly, skipping orders
        skipped = mesh.channel(payments_port, "payments", gateway)
        assert refusal(lambda: skipped.unary_unary(UNARY)(b"x", timeout=5)) == (
            grpc.StatusCode.PERMISSION_DENIED, "CHAIN_NOT_ALLOWED")
        # control: through orders it is allowed
        via_orders = mesh.channel(orders_port, "orders", gateway)
        seen = json.loads(via_orders.unary_unary(UNARY)(b"x", timeout=5))
    assert seen["downstream"]["chain"] == ["gateway", "orders"]


def test_user_missing_a_scope(mesh: Any) -> None:
    port = mesh.serve("orders", Policy([Rule(methods=("*",), peers=("gateway",),
                                            scopes=("orders:write",))]))
    channel = mesh.channel(port, "orders", mesh.identity("gateway"))
    with mesh.as_user_call("gateway", mesh.user_token(sub="alice", scope="orders:read")):
        assert refusal(lambda: channel.unary_unary(UNARY)(b"x", timeout=5)) == (
            grpc.StatusCode.PERMISSION_DENIED, "SCOPE_MISSING")
    with mesh.as_user_call("gateway", mesh.user_token(sub="bob", scope="orders:read orders:write")):
        assert json.loads(channel.unary_unary(UNARY)(b"x", timeout=5))["user"] == "bob"


def test_expired_token_is_refused_by_the_callee(mesh: Any) -> None:
    port = mesh.serve("orders", app_policy("gateway"))
    mesh.identity("gateway")
    gateway = mesh.ca.issue("gateway")
    gateway.write_to(mesh.folder("gateway"))
    chain, key, roots = pem_files(mesh, "gateway")
    channel = raw_channel(port, "orders.svc.mesh.internal", key=key, chain=chain, roots=roots)
    orders = mesh.td.service("orders")
    past = TokenSigner(gateway.private_key, gateway.chain, clock=lambda: time.time() - 120)
    md = (("authorization", "Bearer " + past.app_token(orders, ttl=60)),)
    assert refusal(lambda: channel.unary_unary(UNARY)(b"x", metadata=md, timeout=5)) == (
        grpc.StatusCode.UNAUTHENTICATED, "TOKEN_EXPIRED")
    fresh = (("authorization", "Bearer " + TokenSigner(gateway.private_key, gateway.chain)
              .app_token(orders)),)
    assert json.loads(channel.unary_unary(UNARY)(b"x", metadata=fresh, timeout=5))["peer"]
    channel.close()


def test_method_without_rule_is_denied_by_default(mesh: Any) -> None:
    port = mesh.serve("orders", Policy([Rule(methods=("/other.v1.Svc/Get",), peers=("*",),
                                            require_user=False)]))
    channel = mesh.channel(port, "orders", mesh.identity("gateway"))
    assert refusal(lambda: channel.unary_unary(UNARY)(b"x", timeout=5)) == (
        grpc.StatusCode.PERMISSION_DENIED, "NO_POLICY_RULE")


def test_client_refuses_to_call_without_user_when_required(mesh: Any) -> None:
    port = mesh.serve("orders", Policy([Rule(methods=("*",), peers=("gateway",))]))
    channel = mesh.channel(port, "orders", mesh.identity("gateway"), require_user=True)
    with pytest.raises(UserRequiredError, match="require an end user"):
        channel.unary_unary(UNARY)(b"x", timeout=5)
    with mesh.as_user_call("gateway", mesh.user_token(sub="alice")):  # control
        assert json.loads(channel.unary_unary(UNARY)(b"x", timeout=5))["user"] == "alice"


def test_health_needs_mtls_but_no_token(mesh: Any) -> None:
    port = mesh.serve("orders", app_policy("inventory"))  # gateway is not even allowed
    gateway = mesh.identity("gateway")
    chain, key, roots = pem_files(mesh, "gateway")
    with_cert = raw_channel(port, "orders.svc.mesh.internal", key=key, chain=chain, roots=roots)
    stub = health_pb2_grpc.HealthStub(with_cert)
    reply = stub.Check(health_pb2.HealthCheckRequest(service=""), timeout=5)
    assert reply.status == health_pb2.HealthCheckResponse.SERVING
    without = raw_channel(port, "orders.svc.mesh.internal", key=None, chain=None, roots=roots)
    code, _ = refusal(lambda: health_pb2_grpc.HealthStub(without).Check(
        health_pb2.HealthCheckRequest(service=""), timeout=5))
    assert code == grpc.StatusCode.UNAVAILABLE
    # the same gateway is refused on a real method: health is the only tokenless door
    assert refusal(lambda: mesh.channel(port, "orders", gateway).unary_unary(UNARY)(
        b"x", timeout=5)) == (grpc.StatusCode.PERMISSION_DENIED, "PEER_NOT_ALLOWED")
    with_cert.close()
    without.close()


def test_edge_port_accepts_user_tokens_only(mesh: Any) -> None:
    port = mesh.serve("gateway", Policy([Rule(methods=("*",), peers=("*",))]), edge=True)
    _, _, roots = pem_files(mesh, "gateway")
    outside = raw_channel(port, "gateway.svc.mesh.internal", key=None, chain=None, roots=roots)
    client = DpopClient()
    token = mesh.bound_user_token(client, sub="alice", aud="gateway")
    md = mesh.edge_metadata("gateway", UNARY, token, client)
    seen = json.loads(outside.unary_unary(UNARY)(b"x", metadata=md, timeout=5))
    assert (seen["user"], seen["peer"], seen["chain"]) == ("alice", None, [])
    # a service token is rejected at an edge port, with or without a proof
    inv = mesh.ca.issue("inventory")
    app = TokenSigner(inv.private_key, inv.chain).app_token(mesh.td.service("gateway"))
    for md in ((("authorization", "Bearer " + app),),
               mesh.edge_metadata("gateway", UNARY, app, client)):
        code, reason = refusal(lambda md=md: outside.unary_unary(UNARY)(b"x", metadata=md,
                                                                       timeout=5))
        assert code == grpc.StatusCode.UNAUTHENTICATED and reason == "TYPE_MISMATCH"
    # a user token for another service is rejected too
    other = mesh.edge_metadata(
        "gateway", UNARY, mesh.bound_user_token(client, sub="alice", aud="orders"), client)
    assert refusal(lambda: outside.unary_unary(UNARY)(b"x", metadata=other, timeout=5)) == (
        grpc.StatusCode.UNAUTHENTICATED, "AUDIENCE_MISMATCH")
    outside.close()
