"""``mesh-ca`` subcommands of the CA service: serve, join-token, register, unregister, nodes,
evict. Registered by :func:`register` from ``ca/cli.py``; ``serve`` alone loads gRPC.

Exit status as for every ``mesh-ca`` command: 0 done, 2 bad input or an unusable CA folder
(one sentence on stderr, nothing changed).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import threading
from collections.abc import Callable, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from ca import fsio
from ca.authority import CertificateAuthority
from ca.crl import REASONS
from ca.errors import InvalidInput
from ca.parsing import format_duration, format_serial, parse_duration
from ca.service import admin
from ca.service.ids import ca_dns_name

CaDir = Callable[[argparse.Namespace], Path]
AddCaDir = Callable[[argparse.ArgumentParser], None]


def _time(ts: int | None) -> str:
    return "-" if ts is None else datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%d %H:%M:%SZ")


def _address(text: str, what: str) -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    if not sep or not host or not (port.isascii() and port.isdigit()) or int(port) > 65535:
        raise InvalidInput(f"{what} {text!r} is invalid: write HOST:PORT, e.g. 0.0.0.0:8443")
    return host, int(port)


def _table(header: tuple[str, ...], rows: Sequence[tuple[str, ...]]) -> None:
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]
    for row in [header, *rows]:
        print("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip())


def register(sub: Any, *, add_ca_dir: AddCaDir, ca_dir: CaDir) -> None:
    """Add the CA service's subcommands to ``mesh-ca``'s subparsers."""

    def cmd_serve(args: argparse.Namespace) -> int:
        return _serve(args, ca_dir(args))

    def cmd_join_token(args: argparse.Namespace) -> int:
        ttl = parse_duration(args.ttl)
        with CertificateAuthority.open(ca_dir(args)) as ca:
            made = admin.make_join_token(ca, args.node, ttl)
            fingerprint = ca.root_fingerprint
        print(made.token)
        print(
            f"join token for node {made.node}: usable once, until {_time(made.expires_at)}; "
            f"the agent pins the CA root by its SHA-256 fingerprint {fingerprint}",
            file=sys.stderr,
        )
        return 0

    def cmd_register(args: argparse.Namespace) -> int:
        ttl = parse_duration(args.ttl)
        with CertificateAuthority.open(ca_dir(args)) as ca:
            floor = admin.SHORT_SVID_TTL if args.allow_short_ttl else admin.MIN_SVID_TTL
            row = admin.register(ca, args.service, args.node, args.uid, ttl, min_ttl=floor)
            sid = ca.trust_domain.service(row.service)
        print(
            f"registered {row.service} ({sid}) on node {row.node}: run by uid {row.uid}, "
            f"SVIDs valid {format_duration(ttl)}"
        )
        return 0

    def cmd_unregister(args: argparse.Namespace) -> int:
        with CertificateAuthority.open(ca_dir(args)) as ca:
            admin.unregister(ca, args.service, args.node)
        print(
            f"unregistered {args.service} from node {args.node}; SVIDs already issued stay "
            "valid until they expire"
        )
        return 0

    def cmd_nodes(args: argparse.Namespace) -> int:
        folder = ca_dir(args)
        with CertificateAuthority.open(folder) as ca:
            td = str(ca.trust_domain)
        views = admin.node_views(folder)
        if args.json:
            print(json.dumps({"trust_domain": td, "nodes": [_node_json(v) for v in views]}))
            return 0
        if not views:
            print(f"no nodes yet in trust domain {td} (mesh-ca join-token NODE)")
            return 0
        header = ("NODE", "ATTESTED", "AGENT SERIAL", "AGENT NOT AFTER", "EVICTED",
                  "REGISTRATIONS (service:uid:ttl)")
        rows = [
            (
                v.node,
                "yes" if v.attested_at is not None else "no",
                "-" if v.agent_serial is None else format_serial(v.agent_serial),
                _time(v.agent_not_after),
                "-" if v.evicted_at is None else _time(v.evicted_at),
                " ".join(
                    f"{r.service}:{r.uid}:{format_duration(timedelta(seconds=r.ttl))}"
                    for r in v.registrations
                ) or "-",
            )
            for v in views
        ]
        _table(header, rows)
        return 0

    def cmd_evict(args: argparse.Namespace) -> int:
        with CertificateAuthority.open(ca_dir(args)) as ca:
            serials = admin.evict(ca, args.node, args.reason)
        revoked = ", ".join(format_serial(s) for s in serials) or "none"
        print(f"evicted node {args.node}: revoked {len(serials)} certificate(s): {revoked}")
        print("crl.pem and bundle.spiffe.json republished")
        return 0

    p = sub.add_parser("serve", help="run the CA service for node agents (two gRPC ports)")
    add_ca_dir(p)
    p.add_argument("--listen", required=True, metavar="HOST:PORT",
                   help="agent port, mutual TLS; port 0 picks a free one (required, no default)")
    p.add_argument("--attest-listen", metavar="HOST:PORT",
                   help="attestation port, server TLS (default: the agent port's host, port + 1; "
                   "0 when the agent port is 0)")
    p.add_argument("--ready-file", metavar="FILE",
                   help="once serving, write the bound addresses and the root fingerprint here "
                   "as JSON, making its folder if needed (default: no file)")
    p.add_argument("--agent-ttl", default="1h", metavar="DURATION",
                   help="lifetime of agent SVIDs (default: %(default)s)")
    p.add_argument("--server-ttl", default="1h", metavar="DURATION",
                   help="lifetime of the service's own certificate, renewed at half "
                   "(default: %(default)s)")
    p.add_argument("--max-svids", type=int, default=10, metavar="N",
                   help="most valid SVIDs a node may hold per service, and agent SVIDs per node "
                   "(default: %(default)s)")
    p.set_defaults(handler=cmd_serve)

    p = sub.add_parser("join-token", help="print a one-time join token for a node")
    p.add_argument("node", metavar="NODE", help="node name: [a-z0-9-], 1..63")
    add_ca_dir(p)
    p.add_argument("--ttl", default="10m", metavar="DURATION",
                   help="how long the token may be used (default: %(default)s)")
    p.set_defaults(handler=cmd_join_token)

    p = sub.add_parser("register", help="let a node's agent obtain SVIDs for a service")
    p.add_argument("service", metavar="SERVICE")
    p.add_argument("--node", required=True, metavar="NODE",
                   help="the node whose agent may obtain the SVIDs (required, no default)")
    p.add_argument("--uid", required=True, type=int, metavar="UID",
                   help="the Unix user that runs the service on that node (required, no "
                   "default)")
    p.add_argument("--ttl", default="1h", metavar="DURATION",
                   help="lifetime of the service's SVIDs, 1m to 30d (default: %(default)s)")
    p.add_argument("--allow-short-ttl", action="store_true",
                   help="let --ttl go down to 10s, for demos and tests: the agent renews at "
                   "a quarter to a third of the life (default: off)")
    add_ca_dir(p)
    p.set_defaults(handler=cmd_register)

    p = sub.add_parser("unregister", help="stop a node's agent obtaining SVIDs for a service")
    p.add_argument("service", metavar="SERVICE")
    p.add_argument("--node", required=True, metavar="NODE",
                   help="the node to remove the registration from (required, no default)")
    add_ca_dir(p)
    p.set_defaults(handler=cmd_unregister)

    p = sub.add_parser("nodes", help="every node: attested, agent certificate, registrations")
    add_ca_dir(p)
    p.add_argument("--json", action="store_true",
                   help="print one JSON object instead of text (default: text)")
    p.set_defaults(handler=cmd_nodes)

    p = sub.add_parser("evict", help="revoke a node's agent and everything issued through it")
    p.add_argument("node", metavar="NODE")
    p.add_argument("--reason", default=admin.DEFAULT_EVICT_REASON,
                   help="one of: " + ", ".join(REASONS) + " (default: %(default)s)")
    add_ca_dir(p)
    p.set_defaults(handler=cmd_evict)


def _node_json(v: admin.NodeView) -> dict[str, Any]:
    return {
        "node": v.node,
        "attested": v.attested_at is not None,
        "attested_at": None if v.attested_at is None else _time(v.attested_at),
        "agent_serial": None if v.agent_serial is None else format_serial(v.agent_serial),
        "agent_not_after": None if v.agent_not_after is None else _time(v.agent_not_after),
        "evicted": v.evicted_at is not None,
        "evicted_at": None if v.evicted_at is None else _time(v.evicted_at),
        "evict_reason": v.evict_reason,
        "registrations": [
            {"service": r.service, "uid": r.uid, "ttl_seconds": r.ttl} for r in v.registrations
        ],
    }


def _serve(args: argparse.Namespace, folder: Path) -> int:
    host, port = _address(args.listen, "--listen")
    attest = args.attest_listen
    if attest is None:
        attest = f"{host}:{port + 1 if port else 0}"
        if port == 65535:
            raise InvalidInput("--listen uses port 65535; give --attest-listen explicitly")
    _address(attest, "--attest-listen")
    if not 2 <= args.max_svids <= 10_000:
        raise InvalidInput("--max-svids must be between 2 and 10000 (a renewal needs two)")
    agent_ttl = parse_duration(args.agent_ttl)
    server_ttl = parse_duration(args.server_ttl)

    from ca.service.server import CAService  # noqa: PLC0415 - gRPC is loaded only to serve

    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    with CertificateAuthority.open(folder) as ca:
        service = CAService(ca, listen=args.listen, attest_listen=attest, agent_ttl=agent_ttl,
                            server_ttl=server_ttl, max_valid=args.max_svids)
        addresses = service.start()
        try:
            fingerprint = ca.root_fingerprint
            if args.ready_file:
                ready = {
                    "agent_address": addresses.agent,
                    "attest_address": addresses.attestation,
                    "root_fingerprint": fingerprint,
                    "trust_domain": str(ca.trust_domain),
                    "server_name": ca_dns_name(ca.trust_domain),
                    "pid": os.getpid(),
                }
                ready_file = Path(args.ready_file)
                ready_file.parent.mkdir(parents=True, exist_ok=True)
                fsio.atomic_write(ready_file, json.dumps(ready).encode() + b"\n")
            print(f"mesh-ca: serving the CA of trust domain {ca.trust_domain} as "
                  f"{ca_dns_name(ca.trust_domain)}")
            print(f"  agent port (mutual TLS):        {addresses.agent}")
            print(f"  attestation port (server TLS):  {addresses.attestation}")
            print(f"  root fingerprint (SHA-256):     {fingerprint}", flush=True)
            stop.wait()
        finally:
            service.stop()
    print("mesh-ca: stopped", flush=True)
    return 0
