"""A client that is not meshid's calls a meshid edge port with DPoP (spec 4.7).

The client side of this file uses only ``grpcio``, ``cryptography`` and the standard library:
its key, RFC 7638 thumbprint, proof (header, claims, ES256 r||s signature) and metadata are built
by hand from the spec's text, so the format on the wire is what the spec says, not what meshid's
own helper happens to do. The login is played by meshid's signer (the auth service's role),
binding the token to the thumbprint the client computed.
"""

from __future__ import annotations

import base64
import hashlib
import json
import secrets
import time

import grpc
import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature
from support.minimesh import UNARY, MiniMesh, allow_all


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


class PlainClient:
    """What a client in any language does, per spec 4.7."""

    def __init__(self) -> None:
        self.key = ec.generate_private_key(ec.SECP256R1())
        n = self.key.public_key().public_numbers()
        self.jwk = {"kty": "EC", "crv": "P-256", "x": _b64(n.x.to_bytes(32, "big")),
                    "y": _b64(n.y.to_bytes(32, "big"))}
        # RFC 7638: the required members in lexicographic order, no whitespace
        j = self.jwk
        members = f'{{"crv":"{j["crv"]}","kty":"{j["kty"]}","x":"{j["x"]}","y":"{j["y"]}"}}'
        self.jkt = _b64(hashlib.sha256(members.encode()).digest())

    def proof(self, htu: str, token: str) -> str:
        header = {"typ": "dpop+jwt", "alg": "ES256", "jwk": self.jwk}
        claims = {"jti": secrets.token_urlsafe(16), "htm": "POST", "htu": htu,
                  "iat": int(time.time()),
                  "ath": _b64(hashlib.sha256(token.encode("ascii")).digest())}
        signing_input = ".".join(_b64(json.dumps(part).encode()) for part in (header, claims))
        r, s = decode_dss_signature(self.key.sign(signing_input.encode(),
                                                  ec.ECDSA(hashes.SHA256())))
        return f"{signing_input}.{_b64(r.to_bytes(32, 'big') + s.to_bytes(32, 'big'))}"


def test_a_plain_grpc_client_with_a_hand_made_proof_is_accepted(mesh: MiniMesh) -> None:
    port = mesh.serve("gateway", allow_all(), edge=True)
    client = PlainClient()
    token = mesh.user_token("gateway", jkt=client.jkt)  # the auth service's part
    roots = mesh.ca.roots_path.read_bytes()
    channel = grpc.secure_channel(
        f"127.0.0.1:{port}", grpc.ssl_channel_credentials(root_certificates=roots),
        options=[("grpc.ssl_target_name_override", "gateway.svc.mesh.internal")])
    call = channel.unary_unary(UNARY)
    htu = "https://gateway.svc.mesh.internal" + UNARY

    def metadata(proof: str) -> tuple[tuple[str, str], ...]:
        return (("authorization", f"DPoP {token}"), ("dpop", proof))

    seen = json.loads(call(b"x", metadata=metadata(client.proof(htu, token)), timeout=10))
    assert (seen["user"], seen["peer"], seen["chain"]) == ("alice", None, [])
    assert seen["jkt"] == client.jkt  # the server computed the same RFC 7638 thumbprint
    # a second call needs a second proof; the first one again is a replay
    proof = client.proof(htu, token)
    json.loads(call(b"x", metadata=metadata(proof), timeout=10))
    with pytest.raises(grpc.RpcError) as info:
        call(b"x", metadata=metadata(proof), timeout=10)
    assert info.value.code() == grpc.StatusCode.UNAUTHENTICATED
    assert "already used" in (info.value.details() or "")
    # and a proof whose htu is spelt with the address dialled, not the service's name, is not
    # this call's
    with pytest.raises(grpc.RpcError) as info:
        call(b"x", metadata=metadata(client.proof(f"https://127.0.0.1:{port}{UNARY}", token)),
             timeout=10)
    assert "not for this call" in (info.value.details() or "")
    channel.close()
