"""``tokenless_methods``: a method served without a token keeps its port's transport checks.

Each test pairs the tokenless door with a control: a method not named still needs a token, a
certificate the CA revoked is still refused on a mutual-TLS port, a pattern is refused.
"""

from __future__ import annotations

import json
import logging
from typing import Any

import grpc
import pytest
from support.calls import first_refusal

from mesh.dpop import DpopClient
from mesh.policy import Policy
from mesh.transport.audit import LOGGER_NAME
from mesh.transport.errors import ServerConfigError
from mesh.transport.server import MeshServer, build_guard
from mesh.transport.status import error_info

UNARY = "/test.v1.Echo/Unary"
STREAM = "/test.v1.Echo/ServerStream"


def raw_channel(mesh: Any, port: int, callee: str, client: str | None) -> grpc.Channel:
    roots = (mesh.folder(callee) / "svid_bundle.pem").read_bytes()
    key = chain = None
    if client is not None:
        key = (mesh.folder(client) / "svid_key.pem").read_bytes()
        chain = (mesh.folder(client) / "svid.pem").read_bytes()
    return grpc.secure_channel(
        f"127.0.0.1:{port}", grpc.ssl_channel_credentials(roots, key, chain),
        options=[("grpc.ssl_target_name_override", f"{callee}.svc.mesh.internal")])


def refusal(call: Any) -> tuple[grpc.StatusCode, str, dict[str, str]]:
    with pytest.raises(grpc.RpcError) as exc:
        call()
    info = error_info(exc.value)
    return (exc.value.code(), info.reason if info else "",
            dict(info.metadata) if info else {})


def test_edge_login_door_takes_no_token_and_opens_nothing_else(
        mesh: Any, caplog: pytest.LogCaptureFixture) -> None:
    port = mesh.serve("auth", Policy.deny_all(), edge=True, tokenless_methods=[UNARY])
    outside = raw_channel(mesh, port, "auth", None)  # no client certificate, no token
    caplog.set_level(logging.INFO, logger=LOGGER_NAME)
    assert json.loads(outside.unary_unary(UNARY)(b"pw", timeout=5)) == {"call": None}
    lines = [json.loads(r.getMessage()) for r in caplog.records if r.name == LOGGER_NAME]
    assert [(x["method"], x["peer"], x["decision"], x["reason"], x["rule"]) for x in lines] == [
        (UNARY, None, "allow", "TOKENLESS_METHOD", "tokenless_methods")]
    # control: a method not named needs a token, and with one the deny-all policy refuses it
    stream = outside.unary_stream(STREAM)
    assert refusal(lambda: list(stream(b"x", timeout=5)))[:2] == (
        grpc.StatusCode.UNAUTHENTICATED, "TOKEN_MISSING")
    client = DpopClient()
    md = mesh.edge_metadata("auth", STREAM, mesh.bound_user_token(client, sub="alice", aud="auth"),
                            client)
    code, reason, meta = refusal(lambda: list(stream(b"x", metadata=md, timeout=5)))
    assert (code, reason, meta["rule"]) == (grpc.StatusCode.PERMISSION_DENIED, "NO_POLICY_RULE",
                                            "deny_all")
    outside.close()


def test_mtls_tokenless_method_still_checks_the_peer_certificate(mesh: Any) -> None:
    port = mesh.serve("orders", Policy.deny_all(), tokenless_methods=[UNARY])
    mesh.identity("gateway")
    channel = raw_channel(mesh, port, "orders", "gateway")
    call = channel.unary_unary(UNARY)
    assert json.loads(call(b"x", timeout=5)) == {"call": None}
    # no client certificate: the handshake fails, as on any mutual-TLS port
    no_cert = raw_channel(mesh, port, "orders", None)
    assert refusal(lambda: no_cert.unary_unary(UNARY)(b"x", timeout=5))[:2] == (
        grpc.StatusCode.UNAVAILABLE, "")
    # a revoked peer is refused at its next call, token or not
    mesh.ca.revoke(name="gateway")
    assert first_refusal(lambda: call(b"x", timeout=5)) == (
        grpc.StatusCode.UNAUTHENTICATED, "CERT_REVOKED")
    channel.close()
    no_cert.close()


def test_aio_server_serves_a_tokenless_method(mesh: Any) -> None:
    port = mesh.serve_aio("auth", Policy.deny_all(), edge=True, tokenless_methods=[UNARY])
    outside = raw_channel(mesh, port, "auth", None)
    assert json.loads(outside.unary_unary(UNARY)(b"pw", timeout=5)) == {"call": None}
    assert refusal(lambda: list(outside.unary_stream(STREAM)(b"x", timeout=5)))[:2] == (
        grpc.StatusCode.UNAUTHENTICATED, "TOKEN_MISSING")
    outside.close()


@pytest.mark.parametrize("methods", [["*"], ["/test.v1.Echo/*"], ["Unary"], UNARY, [None]])
def test_tokenless_methods_must_be_exact_names(mesh: Any, methods: Any) -> None:
    source = mesh.identity("auth")
    with pytest.raises(ServerConfigError, match="tokenless"):
        build_guard(source, Policy.deny_all(), mesh.trust, tokenless_methods=methods)
    with pytest.raises(ServerConfigError, match="tokenless"):
        MeshServer(source, Policy.deny_all(), mesh.trust, edge=True, tokenless_methods=methods)
    # control: the exact name is accepted
    build_guard(source, Policy.deny_all(), mesh.trust, tokenless_methods=[UNARY])
