"""The command line: ``mesh-ca`` (init, issue, renew, revoke, crl, list, inspect, fingerprint)
and ``ca-issue`` (the same as ``mesh-ca issue``).

Exit status: 0 done; 1 ``inspect`` found violations; 2 a usage error, bad input or an unusable
CA folder, in which case one sentence on stderr says why and nothing was changed; 141 the
reader of our output went away (``| head -1``), as for any tool killed by SIGPIPE.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import warnings
from collections.abc import Callable, Iterator, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from cryptography import x509

from ca.authority import DEFAULT_TTL, CertificateAuthority
from ca.crl import REASONS
from ca.describe import load_certificates, render, summary, unreadable_part
from ca.errors import BadCSR, CAError, InvalidCertificate, InvalidInput
from ca.parsing import format_serial, parse_duration, parse_serial
from ca.registry import CertRecord
from ca.service import cli as service_cli
from ca.service.admin import issued_through
from ca.svid import IssuedSVID
from mesh.cliutil import EXIT_SIGPIPE, ArgumentParser
from mesh.identity.spiffeid import DEFAULT_TRUST_DOMAIN

ENV_CA_DIR = "MESH_CA_DIR"

Handler = Callable[[argparse.Namespace], int]


def _time(ts: int) -> str:
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%d %H:%M:%SZ")


def _emit(doc: dict[str, Any]) -> None:
    print(json.dumps(doc))


def _ca_dir(args: argparse.Namespace) -> Path:
    value = getattr(args, "ca_dir", None) or os.environ.get(ENV_CA_DIR)
    if not value:
        raise InvalidInput(f"no CA folder given: pass --ca-dir DIR or set {ENV_CA_DIR}")
    return Path(value)


@contextlib.contextmanager
def _open_ca(args: argparse.Namespace) -> Iterator[CertificateAuthority]:
    """Open the CA (which repairs what a killed command left) and say what was repaired."""
    with CertificateAuthority.open(_ca_dir(args)) as ca:
        try:
            yield ca
        finally:
            for note in ca.repairs:
                print(f"{args.prog}: note: {note}", file=sys.stderr)


def _read_input(path: str, what: str, error: type[CAError]) -> bytes:
    """The bytes of ``path``, or of stdin for ``-``."""
    if path == "-":
        return sys.stdin.buffer.read()
    try:
        return Path(path).read_bytes()
    except OSError as err:
        raise error(f"cannot read the {what} {path}: {err.strerror}") from err


def _issued(verb: str, svid: IssuedSVID, out: Path) -> str:
    return (
        f"{verb} {svid.name}: {svid.spiffe_id}, serial {format_serial(svid.serial)}, "
        f"valid until {svid.not_after:%Y-%m-%d %H:%M:%SZ}, files in {out / svid.name}"
    )


def _issued_json(svid: IssuedSVID, out: Path) -> dict[str, Any]:
    return {
        "name": svid.name,
        "spiffe_id": str(svid.spiffe_id),
        "serial": format_serial(svid.serial),
        "not_before": f"{svid.not_before:%Y-%m-%d %H:%M:%SZ}",
        "not_after": f"{svid.not_after:%Y-%m-%d %H:%M:%SZ}",
        "thumbprint": svid.thumbprint,
        "folder": str(out / svid.name),
        "key_written": svid.private_key is not None,
    }


def _one_name(args: argparse.Namespace) -> str | None:
    name: str | None = args.name_arg if args.name_arg is not None else args.name
    return name


# ---- commands --------------------------------------------------------------------------------


def cmd_init(args: argparse.Namespace) -> int:
    folder = _ca_dir(args)
    with CertificateAuthority.init(folder, args.trust_domain, args.intermediate) as ca:
        if args.json:
            _emit({
                "ca_dir": str(folder),
                "trust_domain": ca.trust_domain.name,
                "root_not_after": f"{ca.root_cert.not_valid_after_utc:%Y-%m-%d %H:%M:%SZ}",
                "intermediate_not_after": (
                    f"{ca.issuer_cert.not_valid_after_utc:%Y-%m-%d %H:%M:%SZ}"
                    if args.intermediate else None
                ),
                "root_fingerprint": ca.root_fingerprint,
                "trust_anchors": str(ca.roots_path),
                "trust_bundle": str(ca.bundle_path),
                "crl": str(ca.crl_path),
            })
            return 0
        kind = "root and intermediate" if args.intermediate else "root"
        print(f"created a CA for trust domain {ca.trust_domain} in {folder} ({kind}, ECDSA P-256)")
        print(f"  root valid until {ca.root_cert.not_valid_after_utc:%Y-%m-%d}")
        if args.intermediate:
            print(f"  intermediate valid until {ca.issuer_cert.not_valid_after_utc:%Y-%m-%d}")
        print(f"  root fingerprint (SHA-256): {ca.root_fingerprint}")
        print(f"  trust anchors: {ca.roots_path}")
        print(f"  trust bundle:  {ca.bundle_path}")
        print(f"  CRL:           {ca.crl_path}")
    return 0


def cmd_issue(args: argparse.Namespace) -> int:
    out = Path(args.out)
    ttl = parse_duration(args.ttl)
    csr = None if args.csr is None else _read_input(args.csr, "CSR file", BadCSR)
    with _open_ca(args) as ca:
        svids = ca.issue_many(
            args.names, dns=args.dns, ips=args.ip, ttl=ttl, csr_pem=csr, out_dir=out
        )
    if args.json:
        _emit({"issued": [_issued_json(s, out) for s in svids]})
    for svid in [] if args.json else svids:
        print(_issued("issued", svid, out))
    return 0


def cmd_renew(args: argparse.Namespace) -> int:
    out = Path(args.out)
    csr = None if args.csr is None else _read_input(args.csr, "CSR file", BadCSR)
    with _open_ca(args) as ca:
        svid = ca.renew(str(_one_name(args)), csr_pem=csr, out_dir=out)
    if args.json:
        _emit({"renewed": _issued_json(svid, out)})
    else:
        print(_issued("renewed", svid, out))
    return 0


def cmd_revoke(args: argparse.Namespace) -> int:
    serial = None if args.serial is None else parse_serial(args.serial)
    name = _one_name(args)
    with _open_ca(args) as ca:
        fresh = ca.revoke(serial=serial, name=name, reason=args.reason)
        named = [ca.record(serial)] if serial is not None else [
            r for r in ca.records() if r.name == name
        ]
        number = _crl_number(ca.crl_path)
    new = [r for r in named if r.serial in fresh]
    old = [r for r in named if r.serial not in fresh and r.status == "revoked"]
    if args.json:
        _emit({
            "revoked": [_revoked_json(r) for r in new],
            "already_revoked": [_revoked_json(r) for r in old],
            "crl_number": number,
        })
        return 0
    for rec in new:
        print(f"revoked {format_serial(rec.serial)} ({rec.name}), reason {rec.reason}")
    if not new:
        if serial is not None:
            rec = named[0]
            print(
                f"certificate {format_serial(rec.serial)} ({rec.name}) was already revoked, "
                f"reason {rec.reason}"
            )
        else:
            print(f"every certificate of {name!r} was already revoked")
    print(f"crl.pem (CRL number {number}) and bundle.spiffe.json republished")
    return 0


def _revoked_json(rec: CertRecord) -> dict[str, Any]:
    return {
        "serial": format_serial(rec.serial),
        "name": rec.name,
        "reason": rec.reason,
        "revoked_at": None if rec.revoked_at is None else _time(rec.revoked_at),
    }


def _crl_number(path: Path) -> int:
    crl = x509.load_pem_x509_crl(path.read_bytes())
    return crl.extensions.get_extension_for_class(x509.CRLNumber).value.crl_number


def cmd_crl(args: argparse.Namespace) -> int:
    with _open_ca(args) as ca:
        ca.publish()
        crl = x509.load_pem_x509_crl(ca.crl_path.read_bytes())
        path = ca.crl_path
    number = crl.extensions.get_extension_for_class(x509.CRLNumber).value.crl_number
    next_update = crl.next_update_utc
    if args.json:
        _emit({
            "crl": str(path),
            "crl_number": number,
            "issuer": crl.issuer.rfc4514_string(),
            "revoked": [format_serial(e.serial_number) for e in crl],
            "this_update": f"{crl.last_update_utc:%Y-%m-%d %H:%M:%SZ}",
            "next_update": None if next_update is None else f"{next_update:%Y-%m-%d %H:%M:%SZ}",
        })
        return 0
    print(f"{path}: CRL number {number}, signed by {crl.issuer.rfc4514_string()}")
    print(f"  revoked certificates: {len(crl)}")
    print(f"  this update: {crl.last_update_utc:%Y-%m-%d %H:%M:%SZ}")
    if next_update is not None:
        print(f"  next update: {next_update:%Y-%m-%d %H:%M:%SZ}")
    return 0


def _record_json(rec: CertRecord, now: int, via: tuple[str | None, str] | None
                 ) -> dict[str, Any]:
    return {
        "serial": format_serial(rec.serial),
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
    with _open_ca(args) as ca:
        records = ca.records()
        td = str(ca.trust_domain)
        via = issued_through(ca.ca_dir)  # the node each SVID was issued through (CA service)
    now = int(datetime.now(UTC).timestamp())
    if args.json:
        _emit({"trust_domain": td,
               "certificates": [_record_json(r, now, via.get(r.serial)) for r in records]})
        return 0
    if not records:
        print(f"no certificates issued yet in trust domain {td}")
        return 0
    header: tuple[str, ...] = ("SERIAL", "NAME", "STATUS", "NOT AFTER", "THUMBPRINT (x5t#S256)")
    rows: list[tuple[str, ...]] = [
        (
            format_serial(r.serial),
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


def cmd_fingerprint(args: argparse.Namespace) -> int:
    with _open_ca(args) as ca:
        fingerprint = ca.root_fingerprint
    if args.json:
        _emit({"root_fingerprint": fingerprint, "algorithm": "sha256"})
    else:
        print(fingerprint)
    return 0


def cmd_inspect(args: argparse.Namespace) -> int:
    # Foreign certificates make cryptography warn (odd name lengths, negative serials);
    # the lint reports what matters, in its own words.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return _inspect(args)


def _inspect(args: argparse.Namespace) -> int:
    shown = "stdin" if args.file == "-" else args.file
    data = _read_input(args.file, "certificate file", InvalidCertificate)
    certs = load_certificates(data)
    if not certs:
        raise InvalidCertificate(f"{shown} holds no readable certificate (PEM or DER)")
    if args.leaf:
        certs = certs[:1]
    for i, cert in enumerate(certs, 1):
        part = unreadable_part(cert)
        if part is not None:
            raise InvalidCertificate(
                f"certificate {i} in {shown} is malformed: its {part} cannot be read"
            )
    now = datetime.now(UTC)
    infos = [summary(c, now) for c in certs]
    ok = all(i["conforms"] for i in infos)
    if args.json:
        _emit({"file": shown, "conforms": ok, "certificates": infos})
    else:
        print("\n\n".join(render(c, i + 1, len(certs), now) for i, c in enumerate(certs)))
    return 0 if ok else 1


# ---- parsers ---------------------------------------------------------------------------------


CA_DIR_HELP = f"the CA folder, before or after the command (default: ${ENV_CA_DIR})"
NAME_HELP = "service name: 1 to 63 of a-z, 0-9 and '-'"
REASON_HELP = (
    "why: " + ", ".join(REASONS) + " (any case, '-' or '_' between words, e.g. key-compromise)"
)
OUT_HELP = "write OUT/NAME/svid.pem, svid_key.pem (0600) and svid_bundle.pem"
CSR_HELP = "sign this PEM CSR's P-256 key instead of making one; '-' reads stdin"
JSON_HELP = "print one JSON object instead of text"


def _add_ca_dir(p: argparse.ArgumentParser, *, sub: bool) -> None:
    # On a subcommand the default is SUPPRESS, so `mesh-ca --ca-dir X list` keeps X.
    p.add_argument(
        "--ca-dir", metavar="DIR", help=CA_DIR_HELP, default=argparse.SUPPRESS if sub else None
    )


def _add_json(p: argparse.ArgumentParser) -> None:
    p.add_argument("--json", action="store_true", help=JSON_HELP)


def _add_issue_args(p: argparse.ArgumentParser, *, sub: bool) -> None:
    p.add_argument("names", nargs="+", metavar="NAME", help=NAME_HELP + " (one or more)")
    _add_ca_dir(p, sub=sub)
    p.add_argument("--out", metavar="DIR", default=".", help=OUT_HELP)
    p.add_argument(
        "--dns", action="append", default=[], metavar="NAME",
        help="an extra DNS SAN, repeatable (default: only NAME.svc.<trust domain>)",
    )
    p.add_argument(
        "--ip", action="append", default=[], metavar="ADDR",
        help="an extra IP SAN, repeatable (default: none)",
    )
    p.add_argument(
        "--ttl", metavar="DURATION", default=f"{int(DEFAULT_TTL.total_seconds()) // 3600}h",
        help="lifetime: 30s, 15m, 24h, 7d or combinations like 1d12h",
    )
    p.add_argument(
        "--csr", metavar="FILE",
        help=CSR_HELP + " (one NAME only; only the key is taken from it) "
        "(default: the CA makes a new key)",
    )
    _add_json(p)
    p.set_defaults(handler=cmd_issue)


def _add_name_choice(p: argparse.ArgumentParser, *, serial: bool) -> None:
    which = p.add_mutually_exclusive_group(required=True)
    which.add_argument("name_arg", nargs="?", metavar="NAME", help=NAME_HELP)
    which.add_argument("--name", metavar="NAME", help="the same as NAME")
    if serial:
        which.add_argument(
            "--serial", metavar="HEX",
            help="one certificate, by serial: hex as list and openssl print it, any case, "
            "leading zeros, 0x and ':' optional",
        )


def build_parser() -> argparse.ArgumentParser:
    parser = ArgumentParser(
        prog="mesh-ca",
        description="meshid's certificate authority: X.509-SVIDs for services. Every command "
        "but inspect works on a CA folder (--ca-dir DIR or $MESH_CA_DIR) and first finishes "
        "any publication a killed command left undone.",
    )
    _add_ca_dir(parser, sub=False)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("init", help="create a CA (refuses to overwrite one)")
    _add_ca_dir(p, sub=True)
    p.add_argument(
        "--trust-domain", default=DEFAULT_TRUST_DOMAIN, metavar="TD", help="the trust domain"
    )
    p.add_argument(
        "--intermediate", action="store_true",
        help="make an intermediate CA (1 year) that signs all leaves (default: the root signs)",
    )
    _add_json(p)
    p.set_defaults(handler=cmd_init)

    _add_issue_args(sub.add_parser("issue", help="issue SVIDs (same as ca-issue)"), sub=True)

    p = sub.add_parser("renew", help="issue a fresh SVID with the SANs and lifetime of the last")
    _add_name_choice(p, serial=False)
    _add_ca_dir(p, sub=True)
    p.add_argument("--out", metavar="DIR", default=".", help=OUT_HELP)
    p.add_argument("--csr", metavar="FILE", help=CSR_HELP + " (default: a new key)")
    _add_json(p)
    p.set_defaults(handler=cmd_renew)

    p = sub.add_parser(
        "revoke", help="revoke every certificate of a service, or one by serial; republish"
    )
    _add_name_choice(p, serial=True)
    p.add_argument("--reason", default="unspecified", metavar="REASON", help=REASON_HELP)
    _add_ca_dir(p, sub=True)
    _add_json(p)
    p.set_defaults(handler=cmd_revoke)

    p = sub.add_parser("crl", help="re-sign crl.pem (fresh next-update) and republish")
    _add_ca_dir(p, sub=True)
    _add_json(p)
    p.set_defaults(handler=cmd_crl)

    p = sub.add_parser("list", help="every certificate in the registry")
    _add_ca_dir(p, sub=True)
    _add_json(p)
    p.set_defaults(handler=cmd_list)

    p = sub.add_parser("fingerprint", help="SHA-256 fingerprint of the root certificate")
    _add_ca_dir(p, sub=True)
    _add_json(p)
    p.set_defaults(handler=cmd_fingerprint)

    p = sub.add_parser("inspect", help="summarise and lint any certificate file")
    p.add_argument(
        "file", metavar="FILE", help="PEM (one or more certificates) or DER; '-' reads stdin"
    )
    p.add_argument(
        "--leaf", action="store_true",
        help="only the first certificate (default: every certificate in FILE)",
    )
    _add_json(p)
    p.set_defaults(handler=cmd_inspect)
    service_cli.register(sub, add_ca_dir=lambda p: _add_ca_dir(p, sub=True), ca_dir=_ca_dir)
    return parser


def build_issue_parser() -> argparse.ArgumentParser:
    parser = ArgumentParser(
        prog="ca-issue",
        description="Issue X.509-SVIDs for one or more services in one transaction "
        "(same as mesh-ca issue).",
    )
    _add_issue_args(parser, sub=False)
    return parser


def _run(parser: argparse.ArgumentParser, argv: Sequence[str] | None) -> int:
    try:
        args = parser.parse_args(argv)
        args.prog = parser.prog
        handler: Handler = args.handler
        code = handler(args)
        sys.stdout.flush()  # a closed pipe shows here, not at interpreter exit
        return code
    except CAError as err:
        print(f"{parser.prog}: error: {err}", file=sys.stderr)
        return 2
    except BrokenPipeError:
        # The reader left (`| head -1`): no traceback, and no second error when Python
        # flushes stdout at exit.
        with contextlib.suppress(OSError):
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, sys.stdout.fileno())
        return EXIT_SIGPIPE
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
