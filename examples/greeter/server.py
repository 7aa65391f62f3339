"""The greeter service: greets the end user each call carries, over mutual TLS.

    python -m examples.greeter.server --identity DIR --bundle FILE --crl FILE --listen HOST:PORT

Before ``SayHello`` runs, the mesh server has checked the caller's certificate (mutual TLS,
the trust bundle, the CRL), the token chain it sent, and ``greeter.toml``: only through the
frontend, for a user holding the scope ``greet``. The handler reads who it serves from
``mesh.require_user()`` and ``mesh.current_call()``; it logs nothing secret. Stops on SIGTERM or
Ctrl-C.
"""

from __future__ import annotations

import argparse
import signal
import sys
import threading
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import NamedTuple

import grpc

import mesh
from examples.greeter.v1 import greeter_pb2, greeter_pb2_grpc

POLICY = Path(__file__).with_name("greeter.toml")


class Greeter(greeter_pb2_grpc.GreeterServicer):
    """``on_token`` is for the debugging aid (hop_token.py) alone: a real service never
    hands its inbound token to anything but the mesh channel that wraps it onward."""

    def __init__(self, on_token: Callable[[str], None] | None = None) -> None:
        self._on_token = on_token

    def SayHello(self, request: greeter_pb2.HelloRequest,
                 context: grpc.ServicerContext) -> greeter_pb2.HelloReply:
        user = mesh.require_user()  # the verified end user; none: PERMISSION_DENIED
        call = mesh.current_call()
        assert call is not None  # require_user() passed, so the call was verified
        if self._on_token is not None:
            self._on_token(call.token)
        return greeter_pb2.HelloReply(
            message=f"Hello, {request.name}! (greeted for {user.id})",
            user=user.id,
            chain=[sid.service_name or str(sid) for sid in call.chain],
        )


class Served(NamedTuple):
    """A started service: its port, and how to stop it (server, then its channels)."""

    port: int
    stop: Callable[[], None]


def serve(workload: mesh.Workload, listen: str, *,
          on_token: Callable[[str], None] | None = None) -> Served:
    """Start the greeter on ``listen``."""
    server = workload.server(POLICY)  # mutual TLS; every call verified against greeter.toml
    greeter_pb2_grpc.add_GreeterServicer_to_server(  # type: ignore[no-untyped-call]
        Greeter(on_token), server)
    port = server.add_port(listen)
    server.start()

    def stop() -> None:
        server.stop(2).wait()

    return Served(port, stop)


def identity_arguments(parser: argparse.ArgumentParser) -> None:
    """The options every example service takes to build its ``mesh.Workload``."""
    parser.add_argument("--identity", required=True, type=Path, metavar="DIR",
                        help="the service's SVID folder: svid.pem, svid_key.pem, "
                        "svid_bundle.pem (required)")
    parser.add_argument("--bundle", required=True, type=Path, metavar="FILE",
                        help="the trust domain's bundle.spiffe.json (required)")
    parser.add_argument("--crl", required=True, type=Path, metavar="FILE",
                        help="the CA's crl.pem (required)")


def run_until_stopped(served: Served, banner: str) -> None:
    """Print ``banner``, then serve until SIGTERM or Ctrl-C."""
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    print(banner, flush=True)
    stop.wait()
    served.stop()


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m examples.greeter.server",
                                     description="The example's greeter service.")
    identity_arguments(parser)
    parser.add_argument("--listen", required=True, metavar="HOST:PORT",
                        help="mutual-TLS address (required)")
    args = parser.parse_args(argv)
    try:
        workload = mesh.Workload.from_folder(args.identity, bundle=args.bundle, crl=args.crl)
        served = serve(workload, args.listen)
    except mesh.MeshError as err:
        print(f"greeter: error: {err}", file=sys.stderr)
        return 2
    run_until_stopped(served, f"greeter: {workload.spiffe_id} serving on port {served.port}")
    workload.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
