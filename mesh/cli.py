"""The ``mesh`` command line: one argparse subcommand group per area.

Each group lives beside the code it drives and registers itself with ``register(commands)``.
Only the group being run is imported (``mesh token ...`` loads no demo or agent code); ``mesh
--help`` imports them all to list them. A handler returns the exit code: 0 success, 1 the
thing checked was rejected, 2 a usage or configuration error (one sentence on stderr, as for
``mesh-ca``: see :mod:`mesh.cliutil`), 130 Ctrl-C, 141 the reader of the output went away.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

from mesh.cliutil import ArgumentParser, run
from mesh.errors import MeshError

#: command group -> the module whose ``register(commands)`` adds it
GROUPS: dict[str, str] = {
    "token": "mesh.tokens.cli",
    "demo": "mesh.demo.client.cli",
    "agent": "mesh.agent.cli",
}


def build_parser(only: str | None = None) -> argparse.ArgumentParser:
    parser = ArgumentParser(
        prog="mesh",
        description="meshid service-side tools: verify and inspect identity tokens, run the "
        "node agent, call the demo.",
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
    return run(build_parser(_group_of(args_in)), args_in, user_errors=(MeshError,))


if __name__ == "__main__":
    sys.exit(main())
