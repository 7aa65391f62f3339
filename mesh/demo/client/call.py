"""``mesh demo call``: log in as a demo user and call the running demo's gateway by hand.

Reads where the mesh listens from ``STATE/endpoints.json`` (written by the launcher,
``./scripts/demo --keep-running``, and removed when it stops), after checking that a launcher
still holds the state folder (``STATE/launcher.lock``). The password is ``--password``, else
``$MESH_DEMO_PASSWORD``, else the published demo password of a demo user, else a prompt on the
terminal (or one line of stdin when there is no terminal). ``--wait SECONDS`` waits for a demo
that is still starting.

    mesh demo call --user alice order coffee-beans=2 mug=1
    mesh demo call --user alice list
    mesh demo call --user alice token | mesh token verify - \\
        --bundle demo-state/ca/bundle.spiffe.json --audience spiffe://mesh.internal/svc/gateway

The client makes a DPoP key for the run (spec 4.7): the login binds the user token to it, and
every gateway call carries a fresh proof made with it. ``token --proof METHOD`` prints, after the
token, one proof for METHOD at the gateway (to try ``mesh token verify --dpop``); the key itself
never leaves the process.

Exit 0 on success, 1 when the mesh refused (status, reason and message printed), 2 on bad
input or when no demo is running.
"""

from __future__ import annotations

import argparse
import getpass
import json
import os
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
from google.protobuf.json_format import MessageToDict

from mesh.cliutil import ArgumentParser, UsageError
from mesh.cliutil import run as run_cli
from mesh.demo.client import stubs as client
from mesh.demo.client.cli import configure_call
from mesh.demo.orchestration.stage import ENDPOINTS_FILE, USERS
from mesh.demo.orchestration.statelock import holder
from mesh.demo.v1 import orders_pb2
from mesh.dpop import DpopClient
from mesh.identity.spiffeid import TrustDomain

START_HINT = "start one with ./scripts/demo --keep-running"


@dataclass(frozen=True, slots=True)
class Endpoints:
    trust_domain: TrustDomain
    roots: bytes
    auth: str
    gateway: str


def _password(args: argparse.Namespace) -> str:
    if args.password:
        return str(args.password)
    env = os.environ.get("MESH_DEMO_PASSWORD")
    if env:
        return env
    for user in USERS:
        if user.username == args.user:
            return user.password
    if not _has_terminal():
        # No terminal to prompt on: take one line from stdin (`echo "$PW" | mesh demo call`).
        line = sys.stdin.readline()
        if line:
            return line.rstrip("\r\n")
        raise _no_password(args.user)
    try:
        return getpass.getpass(f"password for {args.user}: ")
    except EOFError:
        raise _no_password(args.user) from None


def _no_password(user: str) -> UsageError:
    return UsageError(f"no password for {user}: give --password or set MESH_DEMO_PASSWORD "
                      "(there is no terminal to ask on, and stdin ended)")


def _has_terminal() -> bool:
    try:
        fd = os.open("/dev/tty", os.O_RDWR | os.O_NOCTTY)
    except OSError:
        return False
    os.close(fd)
    return True


def endpoints(state: Path) -> Endpoints:
    """Where the running demo in ``state`` listens; :class:`UsageError` if none runs there."""
    pid = holder(state)
    if pid is None:
        stale = " (its endpoints.json is left from a launcher that is gone)" if (
            state / ENDPOINTS_FILE).exists() else ""
        raise UsageError(f"no demo is running in {state}{stale}; {START_HINT}")
    path = state / ENDPOINTS_FILE
    try:
        doc = json.loads(path.read_text())
        ends = Endpoints(TrustDomain(doc["trust_domain"]), Path(doc["roots"]).read_bytes(),
                         str(doc["auth"]), str(doc["gateway"]))
    except FileNotFoundError:
        raise UsageError(
            f"the demo in {state} (launcher pid {pid}) is not serving callers: it is still "
            "starting, or was started without --keep-running") from None
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise UsageError(f"{path} is unusable ({err}); {START_HINT}") from None
    return ends


def wait_for_endpoints(state: Path, seconds: float) -> Endpoints:
    """:func:`endpoints`, asked again every 0.1 s for up to ``seconds`` while no demo serves
    callers yet (a launcher just started, or still telling its story)."""
    deadline = time.monotonic() + seconds
    while True:
        try:
            return endpoints(state)
        except UsageError:
            if time.monotonic() >= deadline:
                raise
        time.sleep(0.1)


def _order_json(order: orders_pb2.Order) -> dict[str, Any]:
    return MessageToDict(order, preserving_proto_field_name=True)


def _emit(doc: dict[str, Any]) -> None:
    print(json.dumps(doc))


def run(args: argparse.Namespace) -> int:
    ends = wait_for_endpoints(args.state, args.wait)
    try:
        lines = [client.parse_line(text) for text in getattr(args, "lines", [])]
    except ValueError as err:
        raise UsageError(str(err)) from None
    password = _password(args)
    key = DpopClient()  # this run's DPoP key: in memory only
    try:
        with client.edge_channel(ends.auth, ends.roots, "auth", ends.trust_domain,
                                 key) as channel:
            login = client.login(channel, args.user, password, timeout=args.timeout)
        if args.action == "token":
            proof = (key.proof_for(ends.trust_domain.service("gateway"), args.proof,
                                   token=login.token) if args.proof else None)
            if args.json:
                _emit({"token": login.token, "user": login.subject, "scope": login.scope,
                       "expires_at": login.expires_at, "dpop": proof})
            else:
                print(login.token)
                if proof is not None:
                    print(proof)
            return 0
        if not args.json:
            print(f"logged in as {login.subject} (scope \"{login.scope}\")", file=sys.stderr)
        with client.edge_channel(ends.gateway, ends.roots, "gateway",
                                 ends.trust_domain, key) as channel:
            if args.action == "order":
                order = client.place_order(channel, login.token, lines, timeout=args.timeout)
                if args.json:
                    _emit({"order": _order_json(order)})
                else:
                    print("order " + client.describe_order(order))
            else:
                orders = client.list_orders(channel, login.token, limit=args.limit,
                                            timeout=args.timeout)
                if args.json:
                    _emit({"orders": [_order_json(o) for o in orders]})
                    return 0
                for order in orders:
                    print(client.describe_order(order))
                print(f"{len(orders)} order(s)", file=sys.stderr)
    except grpc.RpcError as err:
        failure = client.failure_of(err)
        if args.json:
            _emit({"refused": {"code": failure.code, "reason": failure.reason,
                               "service": failure.service or None,
                               "message": failure.message}})
        else:
            print(f"refused: {failure.summary()}: {failure.message}", file=sys.stderr)
        return 1
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    p = configure_call(ArgumentParser(
        prog="mesh demo call", description="Log in and call the running demo's gateway."))
    return run_cli(p, argv)


if __name__ == "__main__":
    sys.exit(main())
