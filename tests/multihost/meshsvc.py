"""A meshid service for the multi-host tests, run as its own process on a host (a namespace).

Its identity comes from the node agent's Workload API (``mesh.Workload.from_workload_api``,
one line); it serves the echo handlers of the mini mesh (``support.minimesh``), optionally
forwarding each call to another service, and optionally calls other services in a loop, as
itself or on behalf of a user whose token it signs as the trust domain's ``auth`` service.

It reports on stdout, one JSON object per line: ``identity`` (at start), ``serving``,
``rotated`` (each new SVID, as the Workload API delivered it), ``call`` (each call it made:
``ok``, and the refusal's ``code`` and ``reason`` when not), and ``final`` (counts, on
SIGTERM); each with ``t``, the Unix time it happened (the hosts share one clock).

    python tests/multihost/meshsvc.py --socket /run/agent.sock --name orders \\
        --listen 10.77.0.3:7003 --allow-chain auth --forward payments=10.77.0.2:7002
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests/, for support.*

import grpc
from support.minimesh import UNARY, sync_handlers

import mesh
from mesh.errors import MeshError
from mesh.policy import Policy, Rule
from mesh.transport.context import enter_call, leave_call
from mesh.transport.status import error_info

_out = threading.Lock()


def emit(**event: Any) -> None:
    with _out:
        print(json.dumps({**event, "t": time.time()}), flush=True)


def _target(text: str) -> tuple[str, str]:
    name, sep, address = text.partition("=")
    if not sep:
        raise SystemExit(f"meshsvc: {text!r} is not NAME=HOST:PORT")
    return name, address


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--socket", required=True)
    ap.add_argument("--name", required=True)
    ap.add_argument("--trust-domain", default="mesh.internal")
    ap.add_argument("--listen", help="serve the echo handlers here")
    policy = ap.add_mutually_exclusive_group()
    policy.add_argument("--allow-chain", action="append", default=[],
                        help="comma-separated chain allowed to call, with a user (repeatable)")
    policy.add_argument("--allow-peer", action="append", default=[],
                        help="peer allowed to call, with or without a user (repeatable)")
    ap.add_argument("--forward", help="NAME=HOST:PORT: each call is passed on to this service")
    ap.add_argument("--call", action="append", default=[], metavar="NAME=HOST:PORT",
                    help="call this service in a loop (repeatable)")
    ap.add_argument("--as-user", action="store_true",
                    help="make the calls for the user alice (this service must be auth)")
    ap.add_argument("--interval", type=float, default=0.2)
    args = ap.parse_args()

    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    workload = mesh.Workload.from_workload_api(
        args.socket, spiffe_id=f"spiffe://{args.trust_domain}/svc/{args.name}")

    def describe(svid: Any) -> dict[str, Any]:
        leaf = svid.leaf
        return {"serial": format(leaf.serial_number, "032x"),
                "not_after": leaf.not_valid_after_utc.timestamp(), "kid": svid.thumbprint}

    workload.svid_source.subscribe(lambda svid: emit(event="rotated", **describe(svid)))
    emit(event="identity", id=str(workload.spiffe_id),
         **describe(workload.svid_source.current()))

    server = None
    if args.listen:
        if args.allow_chain:
            rule = Rule(methods=("*",), chains=tuple(tuple(c.split(",")) for c in args.allow_chain))
        else:
            rule = Rule(methods=("*",), peers=tuple(args.allow_peer), require_user=False)
        forward: Callable[[bytes], bytes] | None = None
        if args.forward:
            name, address = _target(args.forward)
            downstream = workload.channel(name, address)
            call_down = downstream.unary_unary(UNARY)

            def forward(request: bytes) -> bytes:
                return call_down(request, timeout=10)  # type: ignore[no-any-return]

        server = workload.server(Policy([rule], trust_domain=workload.trust_domain))
        server.add_generic_rpc_handlers([sync_handlers(forward)])
        server.add_port(args.listen)
        server.start()
        emit(event="serving", address=args.listen)

    counts = {"ok": 0, "failed": 0}
    verifier = workload.verifier()

    def caller(name: str, address: str) -> None:
        with workload.channel(name, address) as channel:
            call = channel.unary_unary(UNARY)
            while not stop.wait(args.interval):
                handle = None
                try:
                    if args.as_user:
                        # Act as an edge: sign alice's token as auth, verify it as an edge port
                        # would, and call inside that user's call: the channel wraps it onward.
                        token = workload.signer.user_token("alice", [workload.spiffe_id],
                                                           ttl=60)
                        handle = enter_call(verifier.verify(token, None))
                    reply = json.loads(call(b"x", timeout=10))
                    counts["ok"] += 1
                    emit(event="call", target=name, ok=True, reply=reply)
                except grpc.RpcError as err:
                    counts["failed"] += 1
                    info = error_info(err)
                    emit(event="call", target=name, ok=False, code=err.code().name,
                         reason=info.reason if info is not None else None,
                         details=(err.details() or "")[:300])
                except MeshError as err:  # refused before the call left (its own token)
                    counts["failed"] += 1
                    bundle = workload.bundle_source
                    emit(event="call", target=name, ok=False, code="LOCAL",
                         reason=str(err.reason), details=str(err)[:300],
                         signer=workload.signer.current.kid, bundle_kids=sorted(bundle.keys()))
                finally:
                    if handle is not None:
                        leave_call(handle)

    threads = [threading.Thread(target=caller, args=_target(t), daemon=True) for t in args.call]
    for t in threads:
        t.start()
    stop.wait()
    for t in threads:
        t.join(20)
    if server is not None:
        server.stop(None)
    emit(event="final", **counts)
    workload.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
