"""A client outside the mesh calling the frontend's edge port, with plain grpcio only.

    python -m examples.greeter.outside_client HOST:PORT --roots FILE --token-file FILE [--name N]

It has no SVID: the edge port serves TLS without client certificates. It checks the server
against the trust domain's roots (``svid_bundle.pem``) and pins the frontend's DNS name
``frontend.svc.<trust domain>`` whatever address it dials (a Python gRPC client cannot check a
SPIFFE ID, spec 1.5), and proves the user with ``authorization: Bearer <user token>``. It
imports nothing from meshid: any gRPC client in any language does the same.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

import grpc
from google.rpc import error_details_pb2  # type: ignore[import-untyped]
from grpc_status import rpc_status  # type: ignore[import-untyped]

from examples.greeter.v1 import greeter_pb2, greeter_pb2_grpc

TIMEOUT = 10.0


def edge_channel(address: str, roots_pem: bytes, trust_domain: str) -> grpc.Channel:
    """Server TLS to the frontend's edge port, trusting ``roots_pem``, pinning its DNS name."""
    credentials = grpc.ssl_channel_credentials(root_certificates=roots_pem)
    return grpc.secure_channel(address, credentials, options=[
        ("grpc.ssl_target_name_override", f"frontend.svc.{trust_domain}"),
    ])


def say_hello(channel: grpc.Channel, token: str, name: str) -> greeter_pb2.HelloReply:
    """One call with the user token. The edge may come to ask for DPoP (a proof of the key
    the token is bound to): that is one more header, ``("dpop", proof)``, built per call."""
    metadata = [("authorization", f"Bearer {token}")]
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
    parser.add_argument("address", metavar="HOST:PORT", help="the frontend's edge port")
    parser.add_argument("--roots", required=True, type=Path, metavar="FILE",
                        help="the trust domain's roots, svid_bundle.pem (required)")
    parser.add_argument("--token-file", required=True, type=Path, metavar="FILE",
                        help="the user token (required)")
    parser.add_argument("--trust-domain", default="mesh.internal", metavar="TD",
                        help="the trust domain, for the pinned name (default: %(default)s)")
    parser.add_argument("--name", default="world", help="who to greet (default: %(default)s)")
    args = parser.parse_args(argv)
    try:
        roots = args.roots.read_bytes()
        token = args.token_file.read_text().strip()
    except OSError as err:
        print(f"outside_client: error: {err.filename}: {err.strerror}", file=sys.stderr)
        return 2
    with edge_channel(args.address, roots, args.trust_domain) as channel:
        try:
            reply = say_hello(channel, token, args.name)
        except grpc.RpcError as err:
            print(f"refused: {refusal(err)}", file=sys.stderr)
            return 1
    print(f"{reply.message} (user {reply.user}, through {' -> '.join(reply.chain)})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
