"""DEBUGGING AID: run a real call chain and print the token the greeter received.

    python -m examples.greeter.hop_token --svids DIR [--ca-dir DIR] [--user alice] > token

The services log nothing secret, so a nested token to study (with ``mesh token verify`` and
``mesh token inspect``) has to come from somewhere on purpose. This script starts the real
greeter and frontend of this example in this process, on loopback ports of their own, with
the SVIDs in ``DIR/greeter`` and ``DIR/frontend``; signs a user token with ``DIR/auth`` (as
user_token.py does); calls the frontend's edge port as the outside client does; and prints on
stdout the token the greeter's handler was called with: frontend's app-asserted token wrapping
the user token (two signatures), valid for about a minute. The bundle and CRL come from the CA
folder (``--ca-dir``, default ``$MESH_CA_DIR``).

The printed token is a live credential until it expires: it is bound to frontend's certificate
(only a peer holding frontend's key can present it), but the user token inside it is a bearer
token for the frontend's edge port. Never add anything like this to a service.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import grpc
from cryptography.hazmat.primitives.asymmetric import ec

import mesh
from examples.greeter import frontend, server, user_token
from examples.greeter.outside_client import DpopKey, edge_channel, refusal, say_hello


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m examples.greeter.hop_token",
                                     description="DEBUGGING AID: print the token the greeter "
                                     "received in a real call chain.")
    parser.add_argument("--svids", required=True, type=Path, metavar="DIR",
                        help="folder holding the SVID folders auth, frontend and greeter "
                        "(required)")
    parser.add_argument("--ca-dir", type=Path, metavar="DIR",
                        help="the CA folder: bundle.spiffe.json and crl.pem "
                        "(default: $MESH_CA_DIR)")
    parser.add_argument("--user", default="alice", help="the end user (default: %(default)s)")
    args = parser.parse_args(argv)
    ca_dir = args.ca_dir or (Path(os.environ["MESH_CA_DIR"]) if "MESH_CA_DIR" in os.environ
                             else None)
    if ca_dir is None:
        print("hop_token: error: give --ca-dir DIR or set MESH_CA_DIR", file=sys.stderr)
        return 2
    bundle, crl = ca_dir / "bundle.spiffe.json", ca_dir / "crl.pem"

    received: list[str] = []
    running: list[server.Served] = []
    try:
        greeter_wl = mesh.Workload.from_folder(args.svids / "greeter", bundle=bundle, crl=crl)
        frontend_wl = mesh.Workload.from_folder(args.svids / "frontend", bundle=bundle, crl=crl)
        greeter = server.serve(greeter_wl, "127.0.0.1:0", on_token=received.append)
        running.append(greeter)
        edge = frontend.serve(frontend_wl, "127.0.0.1:0", f"127.0.0.1:{greeter.port}")
        running.append(edge)
        key = DpopKey(ec.generate_private_key(ec.SECP256R1()))  # this run's user key
        token = user_token.sign(args.svids / "auth", args.user, jkt=key.jkt)
        roots = (args.svids / "frontend" / "svid_bundle.pem").read_bytes()
        with edge_channel(f"127.0.0.1:{edge.port}", roots,
                          frontend_wl.trust_domain.name) as channel:
            reply = say_hello(channel, token, key, args.user, frontend_wl.trust_domain.name)
    except (OSError, mesh.MeshError) as err:
        print(f"hop_token: error: {err}", file=sys.stderr)
        return 2
    except grpc.RpcError as err:
        print(f"hop_token: error: the call chain was refused: {refusal(err)}", file=sys.stderr)
        return 1
    finally:
        for served in reversed(running):  # the frontend (and its channel) first
            served.stop()
    until = time.strftime("%H:%M:%SZ", time.gmtime(time.time() + 60))
    print(f"hop_token: DEBUGGING AID: the token the greeter received from the frontend for "
          f"{reply.user} (app-asserted, wrapping the user token), valid until about {until}; "
          "a live credential: do not log or share it", file=sys.stderr)
    print(received[-1])
    return 0


if __name__ == "__main__":
    sys.exit(main())
