"""``mesh agent``: run the node agent, or show what it holds.

```
mesh agent --ca HOST:PORT [--ca-attest HOST:PORT] --ca-fingerprint SHA256 --node NODE
           [--join-token TOKEN | --join-token-file FILE] --state DIR --socket PATH
           [--write SERVICE=DIR ...]
mesh agent status (--socket PATH | --state DIR) [--json]
```

Exit codes: 0 stopped by a signal; 1 the node was evicted (or its own SVID expired while the CA
was unreachable) and everything it held expired; 2 a usage or configuration error, or the CA
refused the attestation (one sentence on stderr).
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import sys
from pathlib import Path
from typing import Any

from mesh.agent.agent import Agent, AgentConfig, AgentExit
from mesh.agent.errors import AgentConfigError
from mesh.agent.state import read_status
from mesh.agent.status import fetch_status, render_status
from mesh.cliutil import UsageError, read_input
from mesh.errors import MeshError

TOKEN_ENV = "MESH_AGENT_JOIN_TOKEN"  # noqa: S105 (a variable name, not a secret)


def register(commands: Any) -> None:
    p = commands.add_parser(
        "agent",
        help="run the node agent (attest, renew, Workload API), or show its status",
        description="Run the meshid node agent: attest this node to the CA service once, keep "
        "its own and its services' SVIDs renewed, serve the SPIFFE Workload API on a Unix "
        "socket and keep spiffe-helper folders current. Subcommand 'status' shows what it "
        "holds.",
    )
    p.add_argument("--ca", metavar="HOST:PORT",
                   help="the CA service's agent port, mutual TLS (required to run)")
    p.add_argument("--ca-attest", metavar="HOST:PORT",
                   help="the CA service's attestation port, server TLS (default: the --ca host, "
                   "port + 1)")
    p.add_argument("--ca-fingerprint", metavar="SHA256",
                   help="SHA-256 of the CA root certificate's DER, hex, pins the CA (required "
                   "to run)")
    p.add_argument("--node", help="this node's name, as registered at the CA (required to run)")
    p.add_argument("--join-token", metavar="TOKEN",
                   help="one-time join token for the first start; a command line is visible to "
                   f"every local user (default: ${TOKEN_ENV}, else --join-token-file)")
    p.add_argument("--join-token-file", metavar="FILE",
                   help="read the join token from FILE, - for stdin (default: none)")
    p.add_argument("--state", metavar="DIR", type=Path,
                   help="state folder (0700): the agent's own SVID, the trust state (required "
                   "to run)")
    p.add_argument("--socket", metavar="PATH", type=Path,
                   help="Unix socket to serve the SPIFFE Workload API on (required to run)")
    p.add_argument("--write", metavar="SERVICE=DIR", action="append", default=[],
                   help="keep a spiffe-helper folder for SERVICE in DIR, repeatable "
                   "(default: none)")
    p.add_argument("--retry-max", metavar="SECONDS", type=float, default=30.0,
                   help="longest wait between retries while the CA is unreachable (default: 30)")
    p.add_argument("--sync-interval", metavar="SECONDS", type=float, default=30.0,
                   help="how often the registration list is fetched from the CA (default: 30)")
    p.add_argument("--key-propagation", metavar="SECONDS", type=float, default=30.0,
                   help="how long a renewed SVID waits, once this node has the bundle with its "
                   "key, before it is served: time for every other node to have it too "
                   "(default: 30; at most a tenth of the SVID's life)")
    p.add_argument("--log-level", default="INFO",
                   choices=["DEBUG", "INFO", "WARNING", "ERROR"],
                   help="DEBUG, INFO, WARNING or ERROR, on stderr")
    p.set_defaults(handler=_run, parser=p)
    sub = p.add_subparsers(dest="agent_command", metavar="{status}")
    st = sub.add_parser("status", help="show each SVID, its expiry and next renewal",
                        description="Show each SVID the agent holds, its expiry and next "
                        "renewal: ask the agent on its socket (root sees all services, another "
                        "user its own) or read its state folder.")
    where = st.add_mutually_exclusive_group(required=True)
    where.add_argument("--socket", dest="status_socket", metavar="PATH", type=Path,
                       help="ask the running agent on its Workload API socket")
    where.add_argument("--state", dest="status_state", metavar="DIR", type=Path,
                       help="read the agent's state folder (the agent need not run)")
    st.add_argument("--json", action="store_true", help="print the status as JSON")
    st.set_defaults(handler=_status, parser=st)


def _error(message: str) -> int:
    print(f"mesh agent: error: {message}", file=sys.stderr)
    return 2


def _parse_writes(values: list[str]) -> dict[str, Path]:
    out: dict[str, Path] = {}
    for v in values:
        name, sep, folder = v.partition("=")
        if not sep or not name or not folder:
            raise AgentConfigError(f"--write {v!r} is not SERVICE=DIR")
        if name in out:
            raise AgentConfigError(f"--write names service {name!r} twice")
        out[name] = Path(folder)
    return out


def _join_token(args: argparse.Namespace) -> str | None:
    if args.join_token_file is not None:
        try:
            data = read_input(args.join_token_file, "join token file")
        except UsageError as err:
            raise AgentConfigError(f"--join-token-file: {err}") from err
        return data.decode("utf-8", "replace").strip() or None
    return args.join_token or os.environ.get(TOKEN_ENV) or None


def _run(args: argparse.Namespace) -> int:
    missing = [f"--{n.replace('_', '-')}" for n in ("ca", "ca_fingerprint", "node", "state",
                                                      "socket") if getattr(args, n) is None]
    if missing:
        return _error(f"{', '.join(missing)} required to run the agent "
                      "(or use 'mesh agent status')")
    if args.retry_max <= 0 or args.sync_interval <= 0:
        return _error("--retry-max and --sync-interval must be positive")
    if args.key_propagation < 0:
        return _error("--key-propagation must be 0 or more")
    logging.basicConfig(
        level=getattr(logging, args.log_level),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    try:
        config = AgentConfig(
            ca=args.ca,
            ca_attest=args.ca_attest,
            ca_fingerprint=args.ca_fingerprint,
            node=args.node,
            join_token=_join_token(args),
            state=args.state,
            socket=args.socket,
            writes=_parse_writes(args.write),
            retry_base=min(1.0, args.retry_max),
            retry_cap=args.retry_max,
            sync_interval=args.sync_interval,
            key_propagation=args.key_propagation,
        )
        agent = Agent(config)
    except MeshError as err:
        return _error(str(err))

    async def main() -> int:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, agent.stop)
        loop.add_signal_handler(signal.SIGHUP, agent.renew_now)
        return await agent.run()

    try:
        return asyncio.run(main())
    except AgentExit as ex:
        print(f"mesh agent: {'error: ' if ex.code == 2 else ''}{ex.message}", file=sys.stderr)
        return ex.code
    except MeshError as err:
        return _error(str(err))


def _status(args: argparse.Namespace) -> int:
    try:
        if args.status_state is not None:
            doc = read_status(args.status_state)
        else:
            doc = fetch_status(args.status_socket)
    except MeshError as err:
        return _error(str(err))
    print(render_status(doc, as_json=args.json))
    return 0
