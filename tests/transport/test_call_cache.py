"""The server's remembered (verified, allowed) calls: a warm cache must refuse what a cold one does.

Every test first makes the honest call (the control, which also warms the cache), then the
attack with the same token, and expects the same refusal a cold server gives.
"""

from __future__ import annotations

import json
import logging
import time
from datetime import timedelta
from typing import Any

import grpc
import pytest
from cryptography.hazmat.primitives.serialization import Encoding
from support.calls import refusal

from mesh.dpop import DpopClient
from mesh.identity.bundle import FileBundleSource
from mesh.policy import Policy, Rule
from mesh.tokens.jose import SignKey
from mesh.tokens.signer import TokenSigner
from mesh.tokens.verify import ChainVerifier
from mesh.transport.audit import LOGGER_NAME, AuditLog
from mesh.transport.guard import CallGuard, Rejected

UNARY = "/test.v1.Echo/Unary"
STREAM = "/test.v1.Echo/ServerStream"


def raw_channel(mesh: Any, port: int, client: str) -> grpc.Channel:
    folder = mesh.folder(client)
    creds = grpc.ssl_channel_credentials((folder / "svid_bundle.pem").read_bytes(),
                                         (folder / "svid_key.pem").read_bytes(),
                                         (folder / "svid.pem").read_bytes())
    return grpc.secure_channel(f"127.0.0.1:{port}", creds,
                               options=[("grpc.ssl_target_name_override",
                                         "orders.svc.mesh.internal")])


def app_token(mesh: Any, name: str) -> str:
    issued = mesh.ca.issue(name)
    issued.write_to(mesh.folder(name))
    return TokenSigner(issued.private_key, issued.chain).app_token(mesh.td.service("orders"))


def test_token_remembered_for_its_peer_is_refused_from_another(mesh: Any) -> None:
    port = mesh.serve("orders", Policy([Rule(methods=("*",), peers=("gateway", "inventory"),
                                            require_user=False)]))
    md = (("authorization", "Bearer " + app_token(mesh, "gateway")),)
    app_token(mesh, "inventory")
    victim, thief = raw_channel(mesh, port, "gateway"), raw_channel(mesh, port, "inventory")
    for _ in range(2):  # control, and the cache is warm
        assert json.loads(victim.unary_unary(UNARY)(b"x", metadata=md, timeout=5))["chain"] == [
            "gateway"]
    assert refusal(lambda: thief.unary_unary(UNARY)(b"x", metadata=md, timeout=5)) == (
        grpc.StatusCode.UNAUTHENTICATED, "PEER_MISMATCH")
    victim.close()
    thief.close()


def test_decision_remembered_for_one_method_does_not_open_another(mesh: Any) -> None:
    port = mesh.serve("orders", Policy([
        Rule(methods=(UNARY,), peers=("gateway",), require_user=False, name="unary"),
        Rule(methods=(STREAM,), peers=("inventory",), require_user=False, name="stream"),
    ]))
    md = (("authorization", "Bearer " + app_token(mesh, "gateway")),)
    channel = raw_channel(mesh, port, "gateway")
    for _ in range(2):
        assert json.loads(channel.unary_unary(UNARY)(b"x", metadata=md, timeout=5))["peer"]
    assert refusal(lambda: list(channel.unary_stream(STREAM)(b"x", metadata=md, timeout=5))) == (
        grpc.StatusCode.PERMISSION_DENIED, "PEER_NOT_ALLOWED")
    channel.close()


@pytest.mark.parametrize(("metadata", "reason"), [
    (lambda t: (("authorization", "Bearer " + t), ("authorization", "Bearer " + t)),
     "TOKEN_MALFORMED"),
    (lambda t: (("authorization", "Basic " + t),), "TOKEN_MALFORMED"),
    (lambda t: (), "TOKEN_MISSING"),
])
def test_warm_cache_still_refuses_bad_metadata(mesh: Any, metadata: Any, reason: str) -> None:
    port = mesh.serve("orders", Policy([Rule(methods=("*",), peers=("gateway",),
                                            require_user=False)]))
    token = app_token(mesh, "gateway")
    channel = raw_channel(mesh, port, "gateway")
    call = channel.unary_unary(UNARY)
    good = (("authorization", "Bearer " + token),)
    assert json.loads(call(b"x", metadata=good, timeout=5))["peer"]  # control, warms the cache
    assert refusal(lambda: call(b"x", metadata=metadata(token), timeout=5)) == (
        grpc.StatusCode.UNAUTHENTICATED, reason)
    channel.close()


def test_remembered_calls_are_audited_too(mesh: Any, caplog: pytest.LogCaptureFixture) -> None:
    port = mesh.serve("orders", Policy([Rule(methods=("*",), peers=("gateway",),
                                            require_user=False, name="apps")]))
    md = (("authorization", "Bearer " + app_token(mesh, "gateway")),)
    channel = raw_channel(mesh, port, "gateway")
    caplog.set_level(logging.INFO, logger=LOGGER_NAME)
    for _ in range(3):
        channel.unary_unary(UNARY)(b"x", metadata=md, timeout=5)
    lines = [json.loads(r.getMessage()) for r in caplog.records if r.name == LOGGER_NAME]
    assert [(x["decision"], x["reason"], x["rule"], x["peer"]) for x in lines] == [
        ("allow", "ALLOWED", "apps", "spiffe://mesh.internal/svc/gateway")] * 3
    assert all(isinstance(x["verify_us"], int) for x in lines)
    channel.close()


class _CountingVerifier(ChainVerifier):
    """A real verifier that counts full checks (to see the call cache answer)."""

    full_checks = 0

    def verify(self, *args: Any, **kwargs: Any) -> Any:
        self.full_checks += 1
        return super().verify(*args, **kwargs)


@pytest.mark.parametrize("edge", [False, True], ids=["mtls-wrapped", "edge"])
def test_remembered_call_ends_when_a_signing_certificate_expires(mesh: Any, edge: bool) -> None:
    """A user token outliving the auth certificate that signed it (forged by hand: our signer
    caps exp at its certificate's notAfter, another issuer may not) is served from the call
    cache only until that certificate expires; then the full check refuses it, CERT_UNTRUSTED.
    Time is a fake clock shared by guard and verifier (the certificates are real)."""
    now = [time.time()]
    clock = lambda: now[0]  # noqa: E731
    auth = mesh.ca.issue("auth", ttl=timedelta(seconds=30))
    auth_expiry = auth.certificate.not_valid_after_utc.timestamp()
    t0 = int(now[0])
    client = DpopClient(clock=clock)
    user = SignKey(auth.private_key, auth.thumbprint).sign({
        "iss": str(mesh.td.service("auth")), "sub": "alice",
        "aud": [str(mesh.td.service("gateway"))], "iat": t0, "exp": t0 + 900, "jti": "j1",
        "cnf": {"jkt": client.jkt},
    }, "user+jwt")
    if edge:
        own, token, ctx = "gateway", user, {}
    else:
        gateway = mesh.ca.issue("gateway")
        wrapped = TokenSigner(gateway.private_key, gateway.chain, clock=clock)
        own = "orders"
        token = wrapped.app_asserted_token(user, mesh.td.service("orders"), ttl=300)
        ctx = {"x509_pem_cert": [gateway.certificate.public_bytes(Encoding.PEM)]}
    policy = Policy([Rule(methods=("*",), peers=("*",), require_user=True)])
    bundle = FileBundleSource(mesh.ca.bundle_path, mesh.ca.crl_path)  # read after the issuing

    def guard(calls: int) -> tuple[CallGuard, _CountingVerifier]:
        verifier = _CountingVerifier(mesh.td.service(own), bundle, clock=clock)
        return CallGuard(verifier=verifier,
                         policy=policy, audit=AuditLog(mesh.td.service(own)), edge=edge,
                         call_cache_size=calls, clock=clock), verifier

    cached, counted = guard(4096)
    uncached, _ = guard(0)

    def metadata() -> Any:  # at an edge port, a fresh proof for every call
        if edge:
            return client.metadata(mesh.td.service("gateway"), UNARY, token=token)
        return [("authorization", "Bearer " + token)]

    for _ in range(3):  # control; the 2nd and 3rd calls come from the call cache
        chain = cached.check(UNARY, metadata(), ctx)
        assert chain is not None and chain.user == "alice"
    assert counted.full_checks == 1
    now[0] = auth_expiry + 1
    assert chain.expires_at > now[0]  # by its own exp the chain would still be good
    with pytest.raises(Rejected) as control:  # what a cold guard says at that moment
        uncached.check(UNARY, metadata(), ctx)
    assert control.value.reason == "CERT_UNTRUSTED"
    with pytest.raises(Rejected) as info:
        cached.check(UNARY, metadata(), ctx)
    assert info.value.reason == "CERT_UNTRUSTED"
    assert counted.full_checks == 2  # the full check answered, not the cache
