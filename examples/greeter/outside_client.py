"""A client outside the mesh calling the frontend's edge port, with plain grpcio only.

    python -m examples.greeter.outside_client HOST:PORT --roots FILE --token-file FILE
        --key FILE [--name N]
    python -m examples.greeter.outside_client --new-key FILE     # print the key's thumbprint

It has no SVID: the edge port serves TLS without client certificates. It checks the server
against the trust domain's roots (``svid_bundle.pem``) and pins the frontend's DNS name
``frontend.svc.<trust domain>`` whatever address it dials (a Python gRPC client cannot check a
SPIFFE ID, spec 1.5). It holds the user's DPoP key (a P-256 key in a 0600 file; the user token
names its RFC 7638 thumbprint in ``cnf.jkt``) and proves it on every call: ``authorization:
DPoP <user token>`` plus a ``dpop`` proof made for that very call (spec 4.7). It imports nothing
from meshid: keys, thumbprint and proof are built here from the spec's text with
``cryptography`` alone, as any gRPC client in any language would.
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import json
import os
import secrets
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import grpc
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature
from google.rpc import error_details_pb2  # type: ignore[import-untyped]
from grpc_status import rpc_status  # type: ignore[import-untyped]

from examples.greeter.v1 import greeter_pb2, greeter_pb2_grpc

TIMEOUT = 10.0
SAY_HELLO = "/examples.greeter.v1.Greeter/SayHello"


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


class DpopKey:
    """The user's DPoP key: a P-256 key kept in a file only its owner reads."""

    def __init__(self, key: ec.EllipticCurvePrivateKey) -> None:
        self.key = key
        n = key.public_key().public_numbers()
        self.jwk = {"kty": "EC", "crv": "P-256", "x": _b64(n.x.to_bytes(32, "big")),
                    "y": _b64(n.y.to_bytes(32, "big"))}
        # RFC 7638: the required members in lexicographic order, no whitespace
        members = json.dumps({k: self.jwk[k] for k in ("crv", "kty", "x", "y")},
                             separators=(",", ":"))
        self.jkt = _b64(hashlib.sha256(members.encode("ascii")).digest())

    @classmethod
    def create(cls, path: Path) -> DpopKey:
        key = ec.generate_private_key(ec.SECP256R1())
        pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption())
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as fh:
            fh.write(pem)
        return cls(key)

    @classmethod
    def load(cls, path: Path) -> DpopKey:
        key = serialization.load_pem_private_key(path.read_bytes(), password=None)
        if not isinstance(key, ec.EllipticCurvePrivateKey):
            raise ValueError("the DPoP key must be an EC P-256 key")
        return cls(key)

    def proof(self, htu: str, token: str) -> str:
        """A DPoP proof (spec 4.7) for one POST to ``htu``, bound to ``token`` by ``ath``."""
        header = {"typ": "dpop+jwt", "alg": "ES256", "jwk": self.jwk}
        claims = {"jti": secrets.token_urlsafe(16), "htm": "POST", "htu": htu,
                  "iat": int(time.time()),
                  "ath": _b64(hashlib.sha256(token.encode("ascii")).digest())}
        signing_input = ".".join(_b64(json.dumps(part, separators=(",", ":")).encode())
                                 for part in (header, claims))
        r, s = decode_dss_signature(self.key.sign(signing_input.encode(),
                                                  ec.ECDSA(hashes.SHA256())))
        return f"{signing_input}.{_b64(r.to_bytes(32, 'big') + s.to_bytes(32, 'big'))}"


def edge_channel(address: str, roots_pem: bytes, trust_domain: str) -> grpc.Channel:
    """Server TLS to the frontend's edge port, trusting ``roots_pem``, pinning its DNS name."""
    credentials = grpc.ssl_channel_credentials(root_certificates=roots_pem)
    return grpc.secure_channel(address, credentials, options=[
        ("grpc.ssl_target_name_override", f"frontend.svc.{trust_domain}"),
    ])


def say_hello(channel: grpc.Channel, token: str, key: DpopKey, name: str,
              trust_domain: str = "mesh.internal") -> greeter_pb2.HelloReply:
    """One call with the user token and a fresh proof of its key for this very method."""
    htu = f"https://frontend.svc.{trust_domain}{SAY_HELLO}"
    metadata = [("authorization", f"DPoP {token}"), ("dpop", key.proof(htu, token))]
    stub = greeter_pb2_grpc.GreeterStub(channel)  # type: ignore[no-untyped-call]
    # wait_for_ready: a frontend that is still starting is waited for, up to the timeout.
    reply: greeter_pb2.HelloReply = stub.SayHello(
        greeter_pb2.HelloRequest(name=name), metadata=metadata, timeout=TIMEOUT,
        wait_for_ready=True)
    return reply


def refusal(err: grpc.RpcError) -> str:
    """``STATUS REASON: message``: the reason is meshid's ErrorInfo, when the status has one."""
    if not isinstance(err, grpc.Call):
        return str(err)
    reason = ""
    try:
        status = rpc_status.from_call(err)
    except ValueError:  # details that do not match the status: show the status alone
        status = None
    for detail in status.details if status is not None else ():
        if detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
            info = error_details_pb2.ErrorInfo()
            detail.Unpack(info)
            reason = f" {info.reason}"
    return f"{err.code().name}{reason}: {err.details()}"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m examples.greeter.outside_client",
                                     description="Call the frontend's edge port as a user.")
    parser.add_argument("address", metavar="HOST:PORT", nargs="?",
                        help="the frontend's edge port")
    parser.add_argument("--new-key", type=Path, metavar="FILE",
                        help="make a new DPoP key in FILE (0600), print its thumbprint, exit "
                        "(default: none)")
    parser.add_argument("--roots", type=Path, metavar="FILE",
                        help="the trust domain's roots, svid_bundle.pem (required for a call)")
    parser.add_argument("--token-file", type=Path, metavar="FILE",
                        help="the user token (required for a call)")
    parser.add_argument("--key", type=Path, metavar="FILE",
                        help="the user's DPoP key, made with --new-key (required for a call)")
    parser.add_argument("--trust-domain", default="mesh.internal", metavar="TD",
                        help="the trust domain, for the pinned name (default: %(default)s)")
    parser.add_argument("--name", default="world", help="who to greet (default: %(default)s)")
    args = parser.parse_args(argv)
    try:
        if args.new_key is not None:
            print(DpopKey.create(args.new_key).jkt)
            return 0
        if None in (args.address, args.roots, args.token_file, args.key):
            parser.error("a call needs HOST:PORT, --roots, --token-file and --key")
        roots = args.roots.read_bytes()
        token = args.token_file.read_text().strip()
        key = DpopKey.load(args.key)
    except (OSError, ValueError) as err:
        what = f"{err.filename}: {err.strerror}" if isinstance(err, OSError) else str(err)
        print(f"outside_client: error: {what}", file=sys.stderr)
        return 2
    with edge_channel(args.address, roots, args.trust_domain) as channel:
        try:
            reply = say_hello(channel, token, key, args.name, args.trust_domain)
        except grpc.RpcError as err:
            print(f"refused: {refusal(err)}", file=sys.stderr)
            return 1
    print(f"{reply.message} (user {reply.user}, through {' -> '.join(reply.chain)})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
