"""The frontend: a mesh service that serves users at an edge port and calls the greeter.

    python -m examples.greeter.frontend --identity DIR --bundle FILE --crl FILE \\
        --listen HOST:PORT --greeter HOST:PORT

Its edge port (server TLS: users have no certificate) accepts a user token signed by auth for
the frontend (``authorization: Bearer ...``) and ``frontend.toml``. It forwards each call with
``workload.channel("greeter", ...)``: mutual TLS, pinning ``greeter.svc.<trust domain>``, and
the user carried onward with no code of its own (the channel wraps the verified inbound token
into an app-asserted token for the greeter, spec 3.4).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import NoReturn

import grpc
from grpc_status import rpc_status  # type: ignore[import-untyped]

import mesh
from examples.greeter.server import Served, identity_arguments, run_until_stopped
from examples.greeter.v1 import greeter_pb2, greeter_pb2_grpc

POLICY = Path(__file__).with_name("frontend.toml")
CALL_TIMEOUT = 10.0


class Frontend(greeter_pb2_grpc.GreeterServicer):
    def __init__(self, greeter: greeter_pb2_grpc.GreeterStub,
                 on_token: Callable[[str], None] | None = None) -> None:
        self._greeter = greeter
        self._on_token = on_token  # the debugging aid's alone, as in server.Greeter

    def SayHello(self, request: greeter_pb2.HelloRequest,
                 context: grpc.ServicerContext) -> greeter_pb2.HelloReply:
        mesh.require_user()
        call = mesh.current_call()
        if self._on_token is not None and call is not None:
            self._on_token(call.token)
        try:
            reply: greeter_pb2.HelloReply = self._greeter.SayHello(
                request, timeout=CALL_TIMEOUT, wait_for_ready=True)
        except grpc.RpcError as err:
            _pass_on(err, context)
        return reply


def _pass_on(err: grpc.RpcError, context: grpc.ServicerContext) -> NoReturn:
    """End the call with the greeter's status, its ErrorInfo (the reason) included."""
    try:
        status = rpc_status.from_call(err) if isinstance(err, grpc.Call) else None
    except ValueError:
        status = None
    if status is None:
        code = err.code() if isinstance(err, grpc.Call) else grpc.StatusCode.UNKNOWN
        details = err.details() if isinstance(err, grpc.Call) else str(err)
        context.abort(code, f"the greeter refused: {details}")
    status.message = f"the greeter refused: {status.message}"
    context.abort_with_status(rpc_status.to_status(status))
    raise AssertionError("abort_with_status returns only by raising")


def serve(workload: mesh.Workload, listen: str, greeter_address: str, *,
          on_token: Callable[[str], None] | None = None) -> Served:
    """Start the frontend's edge port on ``listen``, calling the greeter at
    ``greeter_address``."""
    channel = workload.channel("greeter", greeter_address, require_user=True)
    greeter = greeter_pb2_grpc.GreeterStub(channel)  # type: ignore[no-untyped-call]
    server = workload.server(POLICY, edge=True)  # server TLS; user tokens only
    greeter_pb2_grpc.add_GreeterServicer_to_server(  # type: ignore[no-untyped-call]
        Frontend(greeter, on_token), server)
    port = server.add_port(listen)
    server.start()

    def stop() -> None:
        server.stop(2).wait()
        channel.close()

    return Served(port, stop)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m examples.greeter.frontend",
                                     description="The example's frontend service.")
    identity_arguments(parser)
    parser.add_argument("--listen", required=True, metavar="HOST:PORT",
                        help="edge address, server TLS, for users (required)")
    parser.add_argument("--greeter", required=True, metavar="HOST:PORT",
                        help="where the greeter listens (required)")
    args = parser.parse_args(argv)
    try:
        workload = mesh.Workload.from_folder(args.identity, bundle=args.bundle, crl=args.crl)
        served = serve(workload, args.listen, args.greeter)
    except mesh.MeshError as err:
        print(f"frontend: error: {err}", file=sys.stderr)
        return 2
    run_until_stopped(served,
                      f"frontend: {workload.spiffe_id} serving users on port {served.port}")
    workload.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
