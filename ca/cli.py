"""The command line: ``mesh-ca`` (init, issue, renew, revoke, crl, list, inspect) and ``ca-issue``.

Exit status: 0 done; 1 ``inspect`` found violations; 2 bad input or an unusable CA folder, in
which case one sentence on stderr says why and nothing was changed.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import warnings
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from cryptography import x509

from ca.authority import DEFAULT_TTL, CertificateAuthority
from ca.crl import REASONS
from ca.describe import load_certificates, render, summary, unreadable_part
from ca.errors import BadCSR, CAError, InvalidCertificate, InvalidInput
from ca.parsing import parse_duration, parse_serial
from ca.registry import CertRecord
from ca.service import cli as service_cli
from ca.service.admin import issued_through
from ca.svid import IssuedSVID
from mesh.identity.spiffeid import DEFAULT_TRUST_DOMAIN

ENV_CA_DIR = "MESH_CA_DIR"

Handler = Callable[[argparse.Namespace], int]


def _time(ts: int) -> str:
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%d %H:%M:%SZ")


def _ca_dir(args: argparse.Namespace) -> Path:
    value = args.ca_dir or os.environ.get(ENV_CA_DIR)
    if not value:
        raise InvalidInput(f"no CA folder given: pass --ca-dir DIR or set {ENV_CA_DIR}")
    return Path(value)


def _read_csr(path: str | None) -> bytes | None:
    if path is None:
        return None
    try:
        return Path(path).read_bytes()
    except OSError as err:
        raise BadCSR(f"cannot read the CSR file {path}: {err.strerror}") from err


def _issued_line(verb: str, svid: IssuedSVID, out: Path) -> str:
    return (
        f"{verb} {svid.name}: {svid.spiffe_id}, serial {svid.serial:x}, "
        f"valid until {svid.not_after:%Y-%m-%d %H:%M:%SZ}, files in {out / svid.name}"
    )


# ---- commands --------------------------------------------------------------------------------


def cmd_init(args: argparse.Namespace) -> int:
    folder = _ca_dir(args)
    with CertificateAuthority.init(folder, args.trust_domain, args.intermediate) as ca:
        kind = "root and intermediate" if args.intermediate else "root"
        print(f"created a CA for trust domain {ca.trust_domain} in {folder} ({kind}, ECDSA P-256)")
        print(f"  root valid until {ca.root_cert.not_valid_after_utc:%Y-%m-%d}")
        if args.intermediate:
            print(f"  intermediate valid until {ca.issuer_cert.not_valid_after_utc:%Y-%m-%d}")
        print(f"  trust anchors: {ca.roots_path}")
        print(f"  trust bundle:  {ca.bundle_path}")
        print(f"  CRL:           {ca.crl_path}")
    return 0


def cmd_issue(args: argparse.Namespace) -> int:
    out = Path(args.out)
    ttl = parse_duration(args.ttl)
    csr = _read_csr(args.csr)
    with CertificateAuthority.open(_ca_dir(args)) as ca:
        svids = ca.issue_many(
            args.names,
            dns=args.dns,
            ips=args.ip,
            ttl=ttl,
            csr_pem=csr,
            out_dir=out,
        )
    for svid in svids:
        print(_issued_line("issued", svid, out))
    return 0


def cmd_renew(args: argparse.Namespace) -> int:
    out = Path(args.out)
    csr = _read_csr(args.csr)
    with CertificateAuthority.open(_ca_dir(args)) as ca:
        svid = ca.renew(args.name, csr_pem=csr, out_dir=out)
    print(_issued_line("renewed", svid, out))
    return 0


def cmd_revoke(args: argparse.Namespace) -> int:
    serial = None if args.serial is None else parse_serial(args.serial)
    with CertificateAuthority.open(_ca_dir(args)) as ca:
        serials = ca.revoke(serial=serial, name=args.name, reason=args.reason)
        records = [ca.record(s) for s in serials]
    for rec in records:
        print(f"revoked {rec.serial:x} ({rec.name}), reason {rec.reason}")
    print("crl.pem and bundle.spiffe.json republished")
    return 0


def cmd_crl(args: argparse.Namespace) -> int:
    with CertificateAuthority.open(_ca_dir(args)) as ca:
        ca.publish()
        crl = x509.load_pem_x509_crl(ca.crl_path.read_bytes())
    number = crl.extensions.get_extension_for_class(x509.CRLNumber).value.crl_number
    next_update = crl.next_update_utc
    print(f"{ca.crl_path}: CRL number {number}, signed by {crl.issuer.rfc4514_string()}")
    print(f"  revoked certificates: {len(crl)}")
    print(f"  this update: {crl.last_update_utc:%Y-%m-%d %H:%M:%SZ}")
    if next_update is not None:
        print(f"  next update: {next_update:%Y-%m-%d %H:%M:%SZ}")
    return 0


def _record_json(rec: CertRecord, now: int, via: tuple[str | None, str] | None
                 ) -> dict[str, Any]:
    return {
        "serial": format(rec.serial, "x"),
        "name": rec.name,
        "kind": "service" if via is None else via[1],
        "node": None if via is None else via[0],
        "spiffe_id": rec.spiffe_id,
        "status": rec.state(now),
        "not_before": _time(rec.not_before),
        "not_after": _time(rec.not_after),
        "issued_at": _time(rec.issued_at),
        "thumbprint": rec.thumbprint,
        "revoked_at": None if rec.revoked_at is None else _time(rec.revoked_at),
        "reason": rec.reason,
        "dns": list(rec.dns),
        "ips": list(rec.ips),
        "own_key": rec.own_key,
    }


def cmd_list(args: argparse.Namespace) -> int:
    with CertificateAuthority.open(_ca_dir(args)) as ca:
        records = ca.records()
        td = str(ca.trust_domain)
        via = issued_through(ca.ca_dir)  # the node each SVID was issued through (CA service)
    now = int(datetime.now(UTC).timestamp())
    if args.json:
        doc = {"trust_domain": td,
               "certificates": [_record_json(r, now, via.get(r.serial)) for r in records]}
        print(json.dumps(doc))
        return 0
    if not records:
        print(f"no certificates issued yet in trust domain {td}")
        return 0
    header: tuple[str, ...] = ("SERIAL", "NAME", "STATUS", "NOT AFTER", "THUMBPRINT (x5t#S256)")
    rows: list[tuple[str, ...]] = [
        (
            format(r.serial, "x"),
            r.name,
            r.state(now) + (f" ({r.reason})" if r.reason else ""),
            _time(r.not_after),
            r.thumbprint,
        )
        for r in records
    ]
    if via:  # the CA service issued something: which node each certificate went through
        header += ("NODE",)
        rows = [(*row, (via.get(r.serial) or (None, ""))[0] or "-")
                for row, r in zip(rows, records, strict=True)]
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]
    for row in [header, *rows]:
        print("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip())
    return 0


def cmd_inspect(args: argparse.Namespace) -> int:
    # Foreign certificates make cryptography warn (odd name lengths, negative serials);
    # the lint reports what matters, in its own words.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return _inspect(args)


def _inspect(args: argparse.Namespace) -> int:
    path = Path(args.file)
    try:
        data = path.read_bytes()
    except OSError as err:
        raise InvalidCertificate(f"cannot read {path}: {err.strerror}") from err
    certs = load_certificates(data)
    if not certs:
        raise InvalidCertificate(f"{path} holds no readable certificate (PEM or DER)")
    if args.leaf:
        certs = certs[:1]
    for i, cert in enumerate(certs, 1):
        part = unreadable_part(cert)
        if part is not None:
            raise InvalidCertificate(
                f"certificate {i} in {path} is malformed: its {part} cannot be read"
            )
    now = datetime.now(UTC)
    infos = [summary(c, now) for c in certs]
    ok = all(i["conforms"] for i in infos)
    if args.json:
        print(json.dumps({"file": str(path), "conforms": ok, "certificates": infos}))
    else:
        print("\n\n".join(render(c, i + 1, len(certs), now) for i, c in enumerate(certs)))
    return 0 if ok else 1


# ---- parsers ---------------------------------------------------------------------------------


def _add_ca_dir(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--ca-dir",
        metavar="DIR",
        help=f"the CA folder (default: ${ENV_CA_DIR})",
    )


def _add_issue_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("names", nargs="+", metavar="NAME", help="service name(s): [a-z0-9-], 1..63")
    _add_ca_dir(p)
    p.add_argument(
        "--out",
        metavar="DIR",
        default=".",
        help="write OUT/NAME/{svid,svid_key,svid_bundle}.pem (default: current folder)",
    )
    p.add_argument(
        "--dns", action="append", default=[], metavar="NAME", help="an extra DNS SAN (repeat)"
    )
    p.add_argument(
        "--ip", action="append", default=[], metavar="ADDR", help="an extra IP SAN (repeat)"
    )
    p.add_argument(
        "--ttl",
        default=f"{int(DEFAULT_TTL.total_seconds()) // 3600}h",
        metavar="DURATION",
        help="lifetime like 30m, 24h, 7d (default: %(default)s)",
    )
    p.add_argument(
        "--csr",
        metavar="FILE",
        help="sign this PEM CSR's P-256 key instead of making one (one NAME only); "
        "only the key is taken from it",
    )
    p.set_defaults(handler=cmd_issue)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="mesh-ca",
        description="meshid's certificate authority: X.509-SVIDs for services.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("init", help="create a CA (refuses to overwrite one)")
    _add_ca_dir(p)
    p.add_argument("--trust-domain", default=DEFAULT_TRUST_DOMAIN, metavar="TD")
    p.add_argument(
        "--intermediate",
        action="store_true",
        help="make an intermediate CA (1 year) that signs all leaves",
    )
    p.set_defaults(handler=cmd_init)

    _add_issue_args(sub.add_parser("issue", help="issue SVIDs (same as ca-issue)"))

    p = sub.add_parser("renew", help="issue a fresh SVID with the SANs and lifetime of the last")
    p.add_argument("name", metavar="NAME")
    _add_ca_dir(p)
    p.add_argument("--out", metavar="DIR", default=".", help="write OUT/NAME/*.pem")
    p.add_argument("--csr", metavar="FILE", help="sign this CSR's key instead of a new one")
    p.set_defaults(handler=cmd_renew)

    p = sub.add_parser("revoke", help="revoke by serial or every certificate of a service")
    which = p.add_mutually_exclusive_group(required=True)
    which.add_argument("--serial", metavar="HEX", help="serial as printed by list (hex)")
    which.add_argument("--name", metavar="NAME", help="every unrevoked certificate of NAME")
    p.add_argument(
        "--reason", default="unspecified", help="one of: " + ", ".join(REASONS)
    )
    _add_ca_dir(p)
    p.set_defaults(handler=cmd_revoke)

    p = sub.add_parser("crl", help="re-sign crl.pem (fresh next-update) and republish")
    _add_ca_dir(p)
    p.set_defaults(handler=cmd_crl)

    p = sub.add_parser("list", help="every certificate in the registry")
    _add_ca_dir(p)
    p.add_argument("--json", action="store_true", help="one JSON object for scripts")
    p.set_defaults(handler=cmd_list)

    p = sub.add_parser("inspect", help="summarise and lint any certificate file")
    p.add_argument("file", metavar="FILE", help="PEM (one or more certificates) or DER")
    p.add_argument(
        "--leaf", action="store_true", help="only the first certificate (skip the intermediates)"
    )
    p.add_argument("--json", action="store_true", help="one JSON object for scripts")
    p.set_defaults(handler=cmd_inspect)
    service_cli.register(sub, add_ca_dir=_add_ca_dir, ca_dir=_ca_dir)
    return parser


def build_issue_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="ca-issue",
        description="Issue X.509-SVIDs for one or more services in one transaction "
        "(same as mesh-ca issue).",
    )
    _add_issue_args(parser)
    return parser


def _run(parser: argparse.ArgumentParser, argv: Sequence[str] | None) -> int:
    args = parser.parse_args(argv)
    handler: Handler = args.handler
    try:
        return handler(args)
    except CAError as err:
        print(f"{parser.prog}: error: {err}", file=sys.stderr)
        return 2
    except OSError as err:
        where = f" ({err.filename})" if err.filename else ""
        print(f"{parser.prog}: error: {err.strerror or err}{where}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


def main(argv: Sequence[str] | None = None) -> int:
    return _run(build_parser(), argv)


def issue_main(argv: Sequence[str] | None = None) -> int:
    return _run(build_issue_parser(), argv)


if __name__ == "__main__":
    sys.exit(main())
