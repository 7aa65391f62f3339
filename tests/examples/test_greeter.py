"""The greeter example in-process, with its refusals and their controls (the docs harness runs
examples/README.md itself, as written: tests/docs/test_docs_commands.py).

The outside client is plain grpcio: it imports nothing of meshid, so what it does any gRPC
client can do."""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from cryptography.hazmat.primitives.asymmetric import ec

from examples.greeter import frontend, server, user_token
from examples.greeter.outside_client import DpopKey, edge_channel, refusal, say_hello
from mesh.workload import Workload

ROOT = Path(__file__).resolve().parents[2]


def test_the_outside_client_imports_nothing_of_meshid() -> None:
    tree = ast.parse((ROOT / "examples" / "greeter" / "outside_client.py").read_text())
    modules = {alias.name for node in ast.walk(tree) if isinstance(node, ast.Import)
               for alias in node.names}
    modules |= {node.module or "" for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)}
    assert not {m for m in modules if m.split(".")[0] in ("mesh", "ca")}
    assert {m for m in modules if m.startswith("examples")} == {"examples.greeter.v1"}


@pytest.fixture
def chain(mesh: Any) -> Iterator[dict[str, Any]]:
    """greeter and frontend running on loopback, auth's SVID folder to sign user tokens."""
    for name in ("auth", "greeter", "frontend"):
        mesh.identity(name)

    def workload(name: str) -> Workload:
        return Workload.from_folder(mesh.folder(name), bundle=mesh.ca.bundle_path,
                                    crl=mesh.ca.crl_path)

    received: list[str] = []
    greeter = server.serve(workload("greeter"), "127.0.0.1:0", on_token=received.append)
    edge = frontend.serve(workload("frontend"), "127.0.0.1:0", f"127.0.0.1:{greeter.port}")
    roots = (mesh.folder("frontend") / "svid_bundle.pem").read_bytes()
    yield {"mesh": mesh, "edge": edge.port, "greeter": greeter.port, "roots": roots,
           "received": received}
    edge.stop()
    greeter.stop()


KEY = DpopKey(ec.generate_private_key(ec.SECP256R1()))  # alice's (and bob's) DPoP key


def _sign(folder: Any, user: str, **kw: Any) -> str:
    return user_token.sign(folder, user, jkt=KEY.jkt, **kw)


def _call(chain: dict[str, Any], token: str, *, roots: bytes | None = None,
          key: DpopKey = KEY) -> Any:
    with edge_channel(f"127.0.0.1:{chain['edge']}", roots or chain["roots"],
                      "mesh.internal") as channel:
        return say_hello(channel, token, key, "Bob")


def _refused(chain: dict[str, Any], token: str, **kw: Any) -> str:
    with pytest.raises(grpc.RpcError) as info:
        _call(chain, token, **kw)
    return refusal(info.value)


def test_a_user_with_the_scope_is_greeted_through_the_frontend(chain: dict[str, Any]) -> None:
    token = _sign(chain["mesh"].folder("auth"), "alice")
    reply = _call(chain, token)
    assert (reply.user, list(reply.chain)) == ("alice", ["frontend"])
    assert reply.message == "Hello, Bob! (greeted for alice)"
    # The greeter received the frontend's wrap of alice's token, not the token itself.
    assert len(chain["received"]) == 1 and chain["received"][0] != token


def test_refusals_each_for_its_reason(chain: dict[str, Any]) -> None:
    auth = chain["mesh"].folder("auth")
    assert _refused(chain, _sign(auth, "bob", scope="read")).startswith(
        "PERMISSION_DENIED SCOPE_MISSING: the greeter refused: ")
    assert _refused(chain, _sign(auth, "alice", audience="greeter")).startswith(
        "UNAUTHENTICATED AUDIENCE_MISMATCH: ")
    # A user token signed by another service than auth: not a trusted issuer.
    assert _refused(chain, _sign(chain["mesh"].folder("greeter"), "alice")).startswith(
        "UNAUTHENTICATED ISSUER_UNTRUSTED: ")
    assert _refused(chain, "not-a-token").startswith("UNAUTHENTICATED ")
    assert chain["received"] == []  # none of them reached the greeter's handler
    # A token lifted from alice, presented with another key's proof: refused (spec 4.7).
    thief = DpopKey(ec.generate_private_key(ec.SECP256R1()))
    with pytest.raises(grpc.RpcError) as info:
        _call(chain, _sign(auth, "alice"), key=thief)
    assert refusal(info.value).startswith("UNAUTHENTICATED DPOP_KEY_MISMATCH: ")
    assert _call(chain, _sign(auth, "alice")).user == "alice"  # control


def test_a_client_trusting_other_roots_does_not_connect(
    chain: dict[str, Any], ca_factory: Any
) -> None:
    other = ca_factory()
    token = _sign(chain["mesh"].folder("auth"), "alice")
    with edge_channel(f"127.0.0.1:{chain['edge']}", other.roots_path.read_bytes(),
                      "mesh.internal") as channel, pytest.raises(grpc.RpcError) as info:
        from examples.greeter.v1 import greeter_pb2, greeter_pb2_grpc

        greeter_pb2_grpc.GreeterStub(channel).SayHello(  # type: ignore[no-untyped-call]
            greeter_pb2.HelloRequest(name="x"), metadata=[("authorization", f"DPoP {token}")],
            timeout=5)
    assert info.value.code() == grpc.StatusCode.UNAVAILABLE
    assert _call(chain, token).user == "alice"  # control: the mesh's own roots
