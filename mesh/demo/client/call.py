"""``mesh demo call``: log in as a demo user and call the running demo's gateway by hand.

Reads where the mesh listens from ``STATE/endpoints.json`` (written by
``python -m mesh.demo.orchestration.launcher --keep-running``). The password is ``--password``, else
``$MESH_DEMO_PASSWORD``, else the published demo password of a demo user, else a prompt.

    mesh demo call --user alice order coffee-beans=2 mug=1
    mesh demo call --user alice list
    mesh demo call --user alice token | mesh token verify - \\
        --bundle demo-state/ca/bundle.spiffe.json --audience spiffe://mesh.internal/svc/gateway

The client makes a DPoP key for the run (spec 4.7): the login binds the user token to it, and
every gateway call carries a fresh proof made with it. ``token --proof METHOD`` prints, after the
token, one proof for METHOD at the gateway (to try ``mesh token verify --dpop``); the key itself
never leaves the process.

Exit 0 on success, 1 when the mesh refused (status, reason and message printed), 2 on bad
input or when the demo is not running.
"""

from __future__ import annotations

import argparse
import getpass
import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path

import grpc

from mesh.demo.client import stubs as client
from mesh.demo.client.cli import configure_call
from mesh.demo.orchestration.stage import USERS
from mesh.dpop import DpopClient
from mesh.identity.spiffeid import TrustDomain


def _password(args: argparse.Namespace) -> str:
    if args.password:
        return str(args.password)
    env = os.environ.get("MESH_DEMO_PASSWORD")
    if env:
        return env
    for user in USERS:
        if user.username == args.user:
            return user.password
    return getpass.getpass(f"password for {args.user}: ")


def run(args: argparse.Namespace) -> int:
    endpoints_path: Path = args.state / "endpoints.json"
    try:
        doc = json.loads(endpoints_path.read_text())
        roots = Path(doc["roots"]).read_bytes()
        td = TrustDomain(doc["trust_domain"])
        auth_addr, gateway_addr = doc["auth"], doc["gateway"]
    except (OSError, ValueError, KeyError, TypeError) as err:
        print(f"mesh demo call: no running demo in {args.state} ({err}); start one with "
              "'python -m mesh.demo.orchestration.launcher --keep-running'", file=sys.stderr)
        return 2
    try:
        lines = [client.parse_line(text) for text in getattr(args, "lines", [])]
    except ValueError as err:
        print(f"mesh demo call: {err}", file=sys.stderr)
        return 2
    key = DpopClient()  # this run's DPoP key: in memory only
    try:
        with client.edge_channel(auth_addr, roots, "auth", td, key) as channel:
            login = client.login(channel, args.user, _password(args), timeout=args.timeout)
        if args.action == "token":
            print(login.token)
            if args.proof:
                print(key.proof_for(td.service("gateway"), args.proof, token=login.token))
            return 0
        print(f"logged in as {login.subject} (scope \"{login.scope}\")", file=sys.stderr)
        with client.edge_channel(gateway_addr, roots, "gateway", td, key) as channel:
            if args.action == "order":
                order = client.place_order(channel, login.token, lines, timeout=args.timeout)
                print("order " + client.describe_order(order))
            else:
                orders = client.list_orders(channel, login.token, limit=args.limit,
                                            timeout=args.timeout)
                for order in orders:
                    print(client.describe_order(order))
                print(f"{len(orders)} order(s)", file=sys.stderr)
    except grpc.RpcError as err:
        failure = client.failure_of(err)
        print(f"refused: {failure.summary()}: {failure.message}", file=sys.stderr)
        return 1
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    p = configure_call(argparse.ArgumentParser(
        prog="mesh demo call", description="Log in and call the running demo's gateway."))
    return run(p.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
