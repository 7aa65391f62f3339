"""DPoP at real edge ports (spec 4.7): every rule broken alone over gRPC, each with its control;
replays; every call kind on sync and aio servers; a user token lifted from a downstream hop; the
per-call cache; bearer migration; a full replay cache."""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Iterator
from typing import Any

import grpc
import pytest
from support.minimesh import (
    BIDI,
    CLIENT_STREAM,
    DROP,
    SERVER_STREAM,
    UNARY,
    MiniMesh,
    ProofForge,
    allow_all,
    decode,
)

from mesh.dpop import DpopClient
from mesh.policy import Policy, Rule
from mesh.tokens.dpop import DpopSettings
from mesh.tokens.verify import ChainVerifier
from mesh.transport.audit import LOGGER_NAME, AuditLog
from mesh.transport.context import current_call
from mesh.transport.guard import CallGuard, Rejected
from mesh.transport.server import MeshServer
from mesh.transport.status import error_info

Metadata = tuple[tuple[str, str], ...]


def _refused(call: Callable[[], Any]) -> tuple[grpc.StatusCode, str, dict[str, str]]:
    with pytest.raises(grpc.RpcError) as exc:
        call()
    info = error_info(exc.value)
    assert info is not None, exc.value
    return exc.value.code(), info.reason, dict(info.metadata)


class Edge:
    """gateway's edge port, alice's key and her bound token, an outside channel."""

    def __init__(self, mesh: MiniMesh, port: int) -> None:
        self.mesh = mesh
        self.port = port
        self.forge = ProofForge("https://gateway.svc.mesh.internal" + UNARY)
        self.token = mesh.user_token("gateway", jkt=self.forge.jkt, scope="orders")
        self.channel = mesh.outside_channel(port, "gateway")

    def metadata(self, proof: str | None, token: str | None = None,
                 scheme: str = "DPoP") -> Metadata:
        md: list[tuple[str, str]] = [("authorization", f"{scheme} {token or self.token}")]
        if proof is not None:
            md.append(("dpop", proof))
        return tuple(md)

    def good(self, **kw: Any) -> Metadata:
        return self.metadata(self.forge.proof(token=self.token, **kw))

    def call(self, metadata: Metadata) -> dict[str, Any]:
        return decode(self.channel.unary_unary(UNARY)(b"x", metadata=metadata, timeout=10))


@pytest.fixture
def edge(mesh: MiniMesh) -> Iterator[Edge]:
    e = Edge(mesh, mesh.serve("gateway", allow_all(), edge=True))
    yield e
    e.channel.close()


def _other_key_proof(e: Edge) -> str:
    thief = ProofForge(e.forge.htu)
    return thief.proof(token=e.token)


CASES: list[tuple[str, Callable[[Edge], Metadata], str]] = [
    ("no proof", lambda e: e.metadata(None), "DPOP_MISSING"),
    ("bound token as a bearer token", lambda e: e.metadata(
        e.forge.proof(token=e.token), scheme="Bearer"), "DPOP_MISSING"),
    ("two proofs", lambda e: (*e.good(), ("dpop", e.forge.proof(token=e.token))),
     "DPOP_MALFORMED"),
    ("proof not a JWS", lambda e: e.metadata("not-a-proof"), "DPOP_MALFORMED"),
    ("typ JWT", lambda e: e.metadata(e.forge.proof(token=e.token, header={"typ": "JWT"})),
     "DPOP_TYPE_INVALID"),
    ("alg none", lambda e: e.metadata(e.forge.proof(token=e.token, header={"alg": "none"},
                                                    signature=b"")), "DPOP_ALG_NOT_ALLOWED"),
    ("jwk with the private key", lambda e: e.metadata(e.forge.proof(
        token=e.token, header={"jwk": {**e.forge.jwk, "d": "AAAA"}})), "DPOP_JWK_PRIVATE"),
    ("jwk not P-256", lambda e: e.metadata(e.forge.proof(
        token=e.token, header={"jwk": {**e.forge.jwk, "crv": "P-521"}})), "DPOP_JWK_INVALID"),
    ("signed by another key", lambda e: e.metadata(e.forge.proof(
        token=e.token, signer=ProofForge("x").key)), "DPOP_SIGNATURE_INVALID"),
    ("no jti", lambda e: e.metadata(e.forge.proof(token=e.token, jti=DROP)),
     "DPOP_CLAIM_INVALID"),
    ("htm GET", lambda e: e.metadata(e.forge.proof(token=e.token, htm="GET")),
     "DPOP_HTM_MISMATCH"),
    ("proof for another method", lambda e: e.metadata(e.forge.proof(
        token=e.token, htu="https://gateway.svc.mesh.internal" + SERVER_STREAM)),
     "DPOP_HTU_MISMATCH"),
    ("proof for another service", lambda e: e.metadata(e.forge.proof(
        token=e.token, htu="https://orders.svc.mesh.internal" + UNARY)), "DPOP_HTU_MISMATCH"),
    ("proof made 2 minutes ago", lambda e: e.metadata(e.forge.proof(
        token=e.token, iat=int(time.time()) - 120)), "DPOP_IAT_INVALID"),
    ("proof for another token", lambda e: e.metadata(e.forge.proof(
        token=e.mesh.user_token("gateway", jkt=e.forge.jkt))), "DPOP_ATH_MISMATCH"),
    ("proof made with another key", lambda e: e.metadata(_other_key_proof(e)),
     "DPOP_KEY_MISMATCH"),
    ("unbound token", lambda e: e.metadata(
        e.forge.proof(token=(t := e.mesh.user_token("gateway"))), token=t),
     "USER_TOKEN_UNBOUND"),
]


@pytest.mark.parametrize(("case", "make", "reason"), CASES, ids=[c[0] for c in CASES])
def test_each_rule_broken_alone_over_grpc(edge: Edge, case: str,
                                          make: Callable[[Edge], Metadata], reason: str) -> None:
    code, got, meta = _refused(lambda: edge.call(make(edge)))
    assert (code, got) == (grpc.StatusCode.UNAUTHENTICATED, reason)
    assert meta["service"] == "spiffe://mesh.internal/svc/gateway" and meta["method"] == UNARY
    assert meta.get("hop") == ("0" if reason == "USER_TOKEN_UNBOUND" else None)
    # control: the same call with the rule intact is accepted
    seen = edge.call(edge.good())
    assert (seen["user"], seen["jkt"], seen["peer"], seen["chain"]) == (
        "alice", edge.forge.jkt, None, [])


def test_a_replayed_proof_is_refused_even_with_a_warm_call_cache(
        edge: Edge, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger=LOGGER_NAME)
    md = edge.good()
    assert edge.call(md)["user"] == "alice"
    # the token is remembered now (the per-call cache); the proof must still be checked
    code, reason, _ = _refused(lambda: edge.call(md))
    assert (code, reason) == (grpc.StatusCode.UNAUTHENTICATED, "DPOP_REPLAYED")
    lines = [json.loads(r.getMessage()) for r in caplog.records if r.name == LOGGER_NAME]
    assert [(x["decision"], x["reason"], x["user"]) for x in lines] == [
        ("allow", "ALLOWED", "alice"), ("deny", "DPOP_REPLAYED", "alice")]
    assert not any(edge.token in r.getMessage() for r in caplog.records)
    # control: a fresh proof for the same token goes through
    assert edge.call(edge.good())["user"] == "alice"


def test_the_call_cache_may_skip_the_token_check_but_never_the_proof(mesh: MiniMesh) -> None:
    """At the guard: the second call with the same token is served by the per-call cache (the
    token verifier is not run again), yet a replayed proof is refused and a fresh one taken."""

    class Counting(ChainVerifier):
        calls = 0

        def verify(self, *args: Any, **kwargs: Any) -> Any:
            Counting.calls += 1
            return super().verify(*args, **kwargs)

    verifier = Counting(mesh.id("gateway"), mesh.trust)
    guard = CallGuard(verifier=verifier, policy=allow_all(), audit=AuditLog(mesh.id("gateway")),
                      edge=True)
    client = DpopClient()
    token = mesh.bound_user_token(client)
    first = client.metadata("gateway.svc.mesh.internal", UNARY, token=token)
    assert guard.check(UNARY, first, {}) is not None
    assert guard.check(UNARY, client.metadata("gateway.svc.mesh.internal", UNARY, token=token),
                       {}) is not None
    assert Counting.calls == 1  # the second call's token came from the cache
    with pytest.raises(Rejected) as info:
        guard.check(UNARY, first, {})
    assert info.value.reason == "DPOP_REPLAYED"
    other = client.metadata("gateway.svc.mesh.internal", BIDI, token=token)
    with pytest.raises(Rejected) as info:  # a proof for another method, same cached token
        guard.check(UNARY, other, {})
    assert info.value.reason == "DPOP_HTU_MISMATCH"
    with pytest.raises(Rejected) as info:  # a thief's key, same cached token
        guard.check(UNARY, DpopClient().metadata("gateway.svc.mesh.internal", UNARY,
                                                 token=token), {})
    assert info.value.reason == "DPOP_KEY_MISMATCH"
    assert Counting.calls == 1


# --- every call kind, sync and aio ---------------------------------------------------------


def _kinds(channel: Any) -> dict[str, Callable[[Metadata], Any]]:
    return {
        UNARY: lambda md: [decode(channel.unary_unary(UNARY)(b"x", metadata=md, timeout=10))],
        SERVER_STREAM: lambda md: [decode(r) for r in channel.unary_stream(SERVER_STREAM)(
            b"x", metadata=md, timeout=10)],
        CLIENT_STREAM: lambda md: [decode(channel.stream_unary(CLIENT_STREAM)(
            iter([b"a", b"b"]), metadata=md, timeout=10))],
        BIDI: lambda md: [decode(r) for r in channel.stream_stream(BIDI)(
            iter([b"a", b"b"]), metadata=md, timeout=10)],
    }


@pytest.mark.parametrize("flavour", ["sync", "aio"])
def test_every_call_kind_needs_its_own_fresh_proof(mesh: MiniMesh, flavour: str) -> None:
    port = (mesh.serve("gateway", allow_all(), edge=True) if flavour == "sync"
            else mesh.serve_aio("gateway", allow_all(), edge=True))
    client = DpopClient()
    token = mesh.bound_user_token(client)
    channel = mesh.outside_channel(port, "gateway")
    for method, call in _kinds(channel).items():
        md = client.metadata("gateway.svc.mesh.internal", method, token=token)
        replies = call(md)
        assert replies and all(r["user"] == "alice" and r["jkt"] == client.jkt for r in replies)
        assert _refused(lambda call=call, md=md: call(md))[1] == "DPOP_REPLAYED", method
        assert _refused(lambda call=call: call(
            (("authorization", f"DPoP {token}"),)))[1] == "DPOP_MISSING", method
        wrong = client.metadata("gateway.svc.mesh.internal", UNARY if method != UNARY else BIDI,
                                token=token)
        assert _refused(lambda call=call, wrong=wrong: call(wrong))[1] == "DPOP_HTU_MISMATCH"
    # the helper's interceptor adds a fresh proof to every call, of every kind
    helped = mesh.dpop_channel(port, "gateway", client, token)
    for _ in range(2):
        for method, call in _kinds(helped).items():
            assert all(r["user"] == "alice" for r in call(())), method
    channel.close()
    helped.close()


def test_the_aio_client_helper(mesh: MiniMesh) -> None:
    port = mesh.serve_aio("gateway", allow_all(), edge=True)
    client = DpopClient()
    token = mesh.bound_user_token(client)
    roots = mesh.ca.roots_path.read_bytes()

    async def run() -> list[Any]:
        channel = grpc.aio.secure_channel(
            f"127.0.0.1:{port}", grpc.ssl_channel_credentials(roots),
            options=[("grpc.ssl_target_name_override", "gateway.svc.mesh.internal")],
            interceptors=client.aio_interceptors(mesh.id("gateway"), token=token))
        try:
            out = [decode(await channel.unary_unary(UNARY)(b"x", timeout=10))]
            out += [decode(r) async for r in channel.unary_stream(SERVER_STREAM)(b"x",
                                                                                 timeout=10)]
            out.append(decode(await channel.stream_unary(CLIENT_STREAM)(iter([b"a"]),
                                                                       timeout=10)))
            out += [decode(r) async for r in channel.stream_stream(BIDI)(iter([b"a"]),
                                                                         timeout=10)]
            return out
        finally:
            await channel.close()

    replies = mesh.aio.run(run())
    assert len(replies) == 6 and all(r["user"] == "alice" for r in replies)


# --- a user token lifted from a downstream hop --------------------------------------------------


def test_a_user_token_lifted_downstream_is_refused_at_the_edge(mesh: MiniMesh) -> None:
    """orders receives alice's call through gateway; the app-asserted token it gets nests her
    user token. Unwrapped and presented at the gateway's edge, with no proof or with a proof
    from a key orders made, it is refused; alice herself is accepted with the same token."""
    captured: list[str] = []

    def orders_handler(request: bytes, context: grpc.ServicerContext) -> bytes:
        call = current_call()
        assert call is not None
        captured.append(call.token)  # what a compromised service holds
        return json.dumps({"jkt": call.user_jkt, "user": call.user}).encode()

    orders_id = mesh.identity("orders")
    orders = MeshServer(orders_id, Policy([Rule(methods=("*",), chains=(("gateway",),))]),
                        mesh.trust, max_workers=4)
    orders.add_generic_rpc_handlers([grpc.method_handlers_generic_handler(
        "test.v1.Echo", {"Unary": grpc.unary_unary_rpc_method_handler(orders_handler)})])
    orders_port = orders.add_port("127.0.0.1:0")
    orders.start()
    try:
        gateway_id = mesh.identity("gateway")
        to_orders = mesh.channel(orders_port, "orders", gateway_id, require_user=True)
        gw_port = mesh.serve("gateway", allow_all(), edge=True, source=gateway_id,
                             forward=lambda r: to_orders.unary_unary(UNARY)(r, timeout=10))
        alice = DpopClient()
        token = mesh.bound_user_token(alice)
        reply = decode(mesh.dpop_channel(gw_port, "gateway", alice, token).unary_unary(UNARY)(
            b"x", timeout=10))
        assert reply["downstream"] == {"jkt": alice.jkt, "user": "alice"}  # seen downstream
        received = captured[-1]
        assert received != token
        payload = json.loads(_b64decode(received.split(".")[1]))
        lifted = payload["upstream"]
        assert lifted == token  # the raw user token, readable by orders
        outside = mesh.outside_channel(gw_port, "gateway")
        call = outside.unary_unary(UNARY)
        for md, reason in (
                ((("authorization", f"Bearer {lifted}"),), "DPOP_MISSING"),
                ((("authorization", f"DPoP {lifted}"),), "DPOP_MISSING"),
                (DpopClient().metadata(mesh.id("gateway"), UNARY, token=lifted),
                 "DPOP_KEY_MISMATCH")):
            assert _refused(lambda md=md: call(b"x", metadata=md, timeout=10))[:2] == (
                grpc.StatusCode.UNAUTHENTICATED, reason)
        # the app-asserted token itself is no better at the edge
        assert _refused(lambda: call(b"x", metadata=DpopClient().metadata(
            mesh.id("gateway"), UNARY, token=received), timeout=10))[1] == "TYPE_MISMATCH"
        # control: alice, with her key, is still accepted with that very token
        assert decode(call(b"x", metadata=alice.metadata(mesh.id("gateway"), UNARY,
                                                         token=lifted), timeout=10))[
            "user"] == "alice"
        outside.close()
    finally:
        orders.stop(None)


def _b64decode(part: str) -> bytes:
    import base64

    return base64.urlsafe_b64decode(part + "=" * (-len(part) % 4))


# --- bearer migration and a full replay cache -----------------------------------------------------


def test_accept_bearer_is_loud_and_narrow(mesh: MiniMesh,
                                          caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING)
    strict = mesh.serve("gateway", allow_all(), edge=True)
    assert not [r for r in caplog.records if "BEARER USER TOKENS ACCEPTED" in r.getMessage()]
    migrating = mesh.serve("gateway", allow_all(), edge=True,
                           dpop=DpopSettings(accept_bearer=True))
    warned = [r for r in caplog.records if "BEARER USER TOKENS ACCEPTED" in r.getMessage()]
    assert len(warned) == 1 and warned[0].levelno == logging.WARNING
    unbound = (("authorization", f"Bearer {mesh.user_token('gateway')}"),)
    client = DpopClient()
    bound = mesh.bound_user_token(client)
    strict_call = mesh.outside_channel(strict, "gateway").unary_unary(UNARY)
    migrating_call = mesh.outside_channel(migrating, "gateway").unary_unary(UNARY)
    assert _refused(lambda: strict_call(b"x", metadata=unbound, timeout=10))[1] == (
        "USER_TOKEN_UNBOUND")
    assert decode(migrating_call(b"x", metadata=unbound, timeout=10))["jkt"] is None
    # a bound token keeps its rule on the migrating port too
    assert _refused(lambda: migrating_call(
        b"x", metadata=(("authorization", f"Bearer {bound}"),), timeout=10))[1] == (
        "DPOP_MISSING")
    assert decode(migrating_call(b"x", metadata=client.metadata(
        mesh.id("gateway"), UNARY, token=bound), timeout=10))["jkt"] == client.jkt


def test_dpop_settings_are_for_edge_ports_only(mesh: MiniMesh) -> None:
    from mesh.transport.errors import ServerConfigError

    with pytest.raises(ServerConfigError, match="edge ports only"):
        MeshServer(mesh.identity("orders"), allow_all(), mesh.trust, dpop=DpopSettings())


def test_a_full_replay_cache_fails_closed_on_a_real_port(mesh: MiniMesh) -> None:
    port = mesh.serve("gateway", allow_all(), edge=True, dpop=DpopSettings(max_proofs=2))
    client = DpopClient()
    token = mesh.bound_user_token(client)
    call = mesh.dpop_channel(port, "gateway", client, token).unary_unary(UNARY)
    for _ in range(2):
        assert decode(call(b"x", timeout=10))["user"] == "alice"
    code, reason, _ = _refused(lambda: call(b"x", timeout=10))
    assert (code, reason) == (grpc.StatusCode.UNAUTHENTICATED, "DPOP_REPLAY_CACHE_FULL")
    # control: the same third call at a port with room for it
    roomy = mesh.serve("gateway", allow_all(), edge=True, dpop=DpopSettings(max_proofs=3))
    roomy_call = mesh.dpop_channel(roomy, "gateway", client, token).unary_unary(UNARY)
    for _ in range(3):
        assert decode(roomy_call(b"x", timeout=10))["user"] == "alice"


def test_a_mutual_tls_port_takes_no_user_token_with_a_proof(mesh: MiniMesh) -> None:
    """DPoP is for edge ports: over mutual TLS a user token as the outermost token is refused
    (TYPE_MISMATCH) whatever proof comes with it; the calling service must wrap it."""
    port = mesh.serve("orders", allow_all())
    mesh.identity("gateway")
    client = DpopClient()
    token = mesh.bound_user_token(client, aud="orders")
    pem = (mesh.folder("gateway") / "svid.pem").read_bytes()
    key = (mesh.folder("gateway") / "svid_key.pem").read_bytes()
    channel = grpc.secure_channel(
        f"127.0.0.1:{port}", grpc.ssl_channel_credentials(mesh.ca.roots_path.read_bytes(), key,
                                                          pem),
        options=[("grpc.ssl_target_name_override", "orders.svc.mesh.internal")])
    proof = client.metadata(mesh.id("orders"), UNARY, token=token)[1]
    for scheme in ("Bearer", "DPoP"):
        md = (("authorization", f"{scheme} {token}"), proof)
        expected = "TYPE_MISMATCH" if scheme == "Bearer" else "TOKEN_MALFORMED"
        assert _refused(lambda md=md: channel.unary_unary(UNARY)(
            b"x", metadata=md, timeout=10))[1] == expected
    channel.close()


# --- authentication, the proof included, before parsing -----------------------------------------


@pytest.mark.parametrize("aio", [False, True], ids=["sync", "aio"])
def test_the_proof_is_checked_before_the_request_is_parsed(mesh: MiniMesh, aio: bool) -> None:
    from grpc_health.v1 import health_pb2

    from mesh.transport.server import AioMeshServer

    parsed: list[bytes] = []

    def parse(raw: bytes) -> Any:
        parsed.append(raw)
        return health_pb2.HealthCheckRequest.FromString(raw)

    if aio:
        async def unary(request: Any, context: Any) -> bytes:
            return request.service.encode()
    else:
        def unary(request: Any, context: Any) -> bytes:
            return request.service.encode()
    handlers = grpc.method_handlers_generic_handler(
        "test.v1.Typed", {"Unary": grpc.unary_unary_rpc_method_handler(unary, parse)})
    method = "/test.v1.Typed/Unary"
    source = mesh.identity("gateway")
    if aio:
        async def start() -> int:
            server = AioMeshServer(source, allow_all(), mesh.trust, edge=True)
            server.add_generic_rpc_handlers([handlers])
            p = server.add_port("127.0.0.1:0")
            await server.start()
            mesh._aio_servers.append(server)
            return p
        port: int = mesh.aio.run(start())
    else:
        server = MeshServer(source, allow_all(), mesh.trust, edge=True)
        server.add_generic_rpc_handlers([handlers])
        port = server.add_port("127.0.0.1:0")
        server.start()
        mesh._servers.append(server)
    client = DpopClient()
    token = mesh.bound_user_token(client)
    call = mesh.outside_channel(port, "gateway").unary_unary(method)
    garbage = b"\xff\xff\xff\xff\x0f not protobuf"
    good = client.metadata(mesh.id("gateway"), method, token=token)
    for md, reason in (((("authorization", f"DPoP {token}"),), "DPOP_MISSING"),
                       (DpopClient().metadata(mesh.id("gateway"), method, token=token),
                        "DPOP_KEY_MISMATCH")):
        assert _refused(lambda md=md: call(garbage, metadata=md, timeout=10))[1] == reason
    assert parsed == []
    # control: the same bytes with a valid proof reach the parser, and are refused there
    assert _refused(lambda: call(garbage, metadata=good, timeout=10))[:2] == (
        grpc.StatusCode.INVALID_ARGUMENT, "REQUEST_INVALID")
    assert parsed == [garbage]
    assert _refused(lambda: call(garbage, metadata=good, timeout=10))[1] == "DPOP_REPLAYED"
    assert parsed == [garbage]
