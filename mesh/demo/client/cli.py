"""The ``mesh demo`` command group (registered by :mod:`mesh.cli`): ``mesh demo call ...``.

Argument parsing only; the gRPC client is imported when the command runs, so other ``mesh``
commands do not pay for loading it.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from mesh.cliutil import non_negative_int


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"{text} is not a positive number of seconds")
    return value


def _wait_seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds") from None
    if not 0 <= value <= 3600:
        raise argparse.ArgumentTypeError(f"{text} is not 0 to 3600 seconds")
    return value


def configure_call(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
    p.add_argument("--state", type=Path, default=Path("demo-state"),
                   help="the running demo's state folder (default: ./demo-state)")
    p.add_argument("--user", default="alice", help="demo user (default: alice)")
    p.add_argument("--password",
                   help="password (default: $MESH_DEMO_PASSWORD, else the demo user's "
                        "published demo password, else a prompt on the terminal)")
    p.add_argument("--timeout", type=_seconds, default=10.0,
                   help="seconds per call (default: 10)")
    p.add_argument("--wait", type=_wait_seconds, default=0.0, metavar="SECONDS",
                   help="wait up to this long for a demo that is still starting "
                   "(default: 0, do not wait)")
    p.add_argument("--json", action="store_true",
                   help="print one JSON object: the order, the orders, the token, or why the "
                   "mesh refused")
    actions = p.add_subparsers(dest="action", required=True, metavar="ACTION")
    order = actions.add_parser("order", help="place an order: SKU=QUANTITY ...",
                               description="Place an order for the user.")
    order.add_argument("lines", nargs="+", metavar="SKU=QTY",
                       help="an order line; a SKU alone means one")
    listing = actions.add_parser("list", help="list the user's orders (newest first)",
                                 description="List the user's orders, newest first.")
    listing.add_argument("--limit", type=non_negative_int, default=0,
                         help="at most this many orders, 0 for all (default: 0)")
    token = actions.add_parser("token", help="log in and print the user token (to pipe into "
                               "'mesh token verify -')",
                               description="Log in and print the user token.")
    token.add_argument("--proof", metavar="METHOD", type=_method,
                       help="also print a DPoP proof for METHOD (/pkg.Service/Method) at the "
                            "gateway, made with this run's key for that token (default: none)")
    p.set_defaults(handler=_call, parser=p)
    return p


def _method(text: str) -> str:
    service, sep, method = text.lstrip("/").partition("/")
    if not text.startswith("/") or not sep or not service or not method or "/" in method:
        raise argparse.ArgumentTypeError(f"{text!r} is not a full method name "
                                         "'/pkg.Service/Method'")
    return text


def _call(args: argparse.Namespace) -> int:
    from mesh.demo.client.call import run  # noqa: PLC0415 - grpc loads only for this command

    return run(args)


def register(commands: Any) -> None:
    """Add ``demo`` to the ``mesh`` command's subparsers."""
    demo = commands.add_parser("demo", help="the demo mesh: call it by hand",
                               description="The demo mesh (start it with ./scripts/demo "
                                           "--keep-running).")
    sub = demo.add_subparsers(dest="demo_command", metavar="COMMAND", required=True)
    configure_call(sub.add_parser(
        "call", help="log in as a demo user and call the gateway",
        description="Log in at auth's edge port and call the gateway's edge port of the demo "
                    "started with --keep-running. Exit 0 done, 1 the mesh refused, 2 bad input "
                    "or no demo running."))
