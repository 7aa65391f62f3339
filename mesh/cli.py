"""The ``mesh`` command line: one argparse subcommand group per area.

Each group lives beside the code it drives and registers itself with ``register(commands)``;
adding a group is an import and a call in :func:`build_parser`. A handler returns the exit
code: 0 success, 1 the thing checked was rejected, 2 a usage or configuration error.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from mesh.demo.client import cli as demo_cli
from mesh.tokens import cli as token_cli


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="mesh",
        description="meshid service-side tools: verify and inspect identity tokens.",
    )
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    token_cli.register(commands)
    demo_cli.register(commands)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    code: int = args.handler(args)
    return code


if __name__ == "__main__":
    sys.exit(main())
