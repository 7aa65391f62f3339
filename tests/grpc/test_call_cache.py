"""The server's remembered (verified, allowed) calls: a warm cache must refuse what a cold one does.

Every test first makes the honest call (the control, which also warms the cache), then the
attack with the same token, and expects the same refusal a cold server gives.
"""

from __future__ import annotations

import json
import logging
from typing import Any

import grpc
import pytest

from mesh.audit import LOGGER_NAME
from mesh.policy import Policy, Rule
from mesh.status import error_info
from mesh.tokens.signer import TokenSigner

UNARY = "/test.v1.Echo/Unary"
STREAM = "/test.v1.Echo/ServerStream"


def raw_channel(kit: Any, port: int, client: str) -> grpc.Channel:
    folder = kit.folder(client)
    creds = grpc.ssl_channel_credentials((folder / "svid_bundle.pem").read_bytes(),
                                         (folder / "svid_key.pem").read_bytes(),
                                         (folder / "svid.pem").read_bytes())
    return grpc.secure_channel(f"127.0.0.1:{port}", creds,
                               options=[("grpc.ssl_target_name_override",
                                         "orders.svc.mesh.internal")])


def refusal(call: Any) -> tuple[grpc.StatusCode, str]:
    with pytest.raises(grpc.RpcError) as exc:
        call()
    info = error_info(exc.value)
    return exc.value.code(), info.reason if info else ""


def app_token(kit: Any, name: str) -> str:
    issued = kit.ca.issue(name)
    issued.write_to(kit.folder(name))
    return TokenSigner(issued.private_key, issued.chain).app_token(kit.td.service("orders"))


def test_token_remembered_for_its_peer_is_refused_from_another(kit: Any) -> None:
    port = kit.serve("orders", Policy([Rule(methods=("*",), peers=("gateway", "inventory"),
                                            require_user=False)]))
    md = (("authorization", "Bearer " + app_token(kit, "gateway")),)
    app_token(kit, "inventory")
    victim, thief = raw_channel(kit, port, "gateway"), raw_channel(kit, port, "inventory")
    for _ in range(2):  # control, and the cache is warm
        assert json.loads(victim.unary_unary(UNARY)(b"x", metadata=md, timeout=5))["chain"] == [
            "gateway"]
    assert refusal(lambda: thief.unary_unary(UNARY)(b"x", metadata=md, timeout=5)) == (
        grpc.StatusCode.UNAUTHENTICATED, "PEER_MISMATCH")
    victim.close()
    thief.close()


def test_decision_remembered_for_one_method_does_not_open_another(kit: Any) -> None:
    port = kit.serve("orders", Policy([
        Rule(methods=(UNARY,), peers=("gateway",), require_user=False, name="unary"),
        Rule(methods=(STREAM,), peers=("inventory",), require_user=False, name="stream"),
    ]))
    md = (("authorization", "Bearer " + app_token(kit, "gateway")),)
    channel = raw_channel(kit, port, "gateway")
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
def test_warm_cache_still_refuses_bad_metadata(kit: Any, metadata: Any, reason: str) -> None:
    port = kit.serve("orders", Policy([Rule(methods=("*",), peers=("gateway",),
                                            require_user=False)]))
    token = app_token(kit, "gateway")
    channel = raw_channel(kit, port, "gateway")
    call = channel.unary_unary(UNARY)
    good = (("authorization", "Bearer " + token),)
    assert json.loads(call(b"x", metadata=good, timeout=5))["peer"]  # control, warms the cache
    assert refusal(lambda: call(b"x", metadata=metadata(token), timeout=5)) == (
        grpc.StatusCode.UNAUTHENTICATED, reason)
    channel.close()


def test_remembered_calls_are_audited_too(kit: Any, caplog: pytest.LogCaptureFixture) -> None:
    port = kit.serve("orders", Policy([Rule(methods=("*",), peers=("gateway",),
                                            require_user=False, name="apps")]))
    md = (("authorization", "Bearer " + app_token(kit, "gateway")),)
    channel = raw_channel(kit, port, "gateway")
    caplog.set_level(logging.INFO, logger=LOGGER_NAME)
    for _ in range(3):
        channel.unary_unary(UNARY)(b"x", metadata=md, timeout=5)
    lines = [json.loads(r.getMessage()) for r in caplog.records if r.name == LOGGER_NAME]
    assert [(x["decision"], x["reason"], x["rule"], x["peer"]) for x in lines] == [
        ("allow", "ALLOWED", "apps", "spiffe://mesh.internal/svc/gateway")] * 3
    assert all(isinstance(x["verify_us"], int) for x in lines)
    channel.close()
