"""The ``mesh`` command line: one argparse subcommand group per area.

Each group lives beside the code it drives and registers itself with ``register(commands)``.
Only the group being run is imported (``mesh token ...`` loads no demo or agent code); ``mesh
--help`` imports them all to list them. A handler returns the exit code: 0 success, 1 the
thing checked was rejected, 2 a usage or configuration error.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

#: command group -> the module whose ``register(commands)`` adds it
GROUPS: dict[str, str] = {
    "token": "mesh.tokens.cli",
    "demo": "mesh.demo.client.cli",
    "agent": "mesh.agent.cli",
}


def build_parser(only: str | None = None) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="mesh",
        description="meshid service-side tools: verify and inspect identity tokens, run the "
        "demo client.",
    )
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name, module in GROUPS.items():
        if only is None or name == only:
            importlib.import_module(module).register(commands)
    return parser


def _group_of(argv: Sequence[str]) -> str | None:
    first = next((a for a in argv if not a.startswith("-")), None)
    return first if first in GROUPS else None


def main(argv: Sequence[str] | None = None) -> int:
    args_in = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser(_group_of(args_in))
    args = parser.parse_args(args_in)
    code: int = args.handler(args)
    return code


if __name__ == "__main__":
    sys.exit(main())
