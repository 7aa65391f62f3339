"""``mesh token verify`` and ``mesh token inspect``.

``verify`` runs exactly the service-side verification (spec 4): with ``--peer-cert`` as if
the token came over mutual TLS from that certificate's owner (whose chain is checked against the
bundle's anchors and the CRL), without it as an edge port would. At an edge port, ``--method``
adds the DPoP rule (spec 4.7) for a call to that method: the token must be bound (``cnf.jkt``)
and ``--dpop`` must be a valid proof for it; without ``--method`` only the token rules are
checked, and the output says so. It prints the chain as a tree from the user to the peer, or
which rule failed at which hop (``--json``: one JSON object).
``--at`` verifies at a given Unix time instead of now, for the bundle's certificate checks as
for the token's claims: that is how a conformance vector (``spec/vectors``, spec 10) is replayed.
Without ``--bundle`` the bundle and CRL come from the CA folder, ``--ca-dir`` or
``$MESH_CA_DIR``. ``inspect`` decodes without verifying anything and says so; it shows a user
token's DPoP binding, decodes a DPoP proof given in place of a token, and with ``--dpop``
decodes a proof beside the token and compares the two (unverified). Neither ever prints a
signature or key material (a proof's key is shown by its thumbprint). ``-`` reads stdin: the
token (both commands) or, for ``verify``, the peer's certificate chain, one of the two.

Exit codes: 0 verified (or decoded), 1 rejected (or undecodable), 2 usage or configuration error
(one sentence on stderr).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TextIO

from cryptography import x509

from mesh.cliutil import UsageError, non_negative_int, read_input, stdin_at_most_once
from mesh.errors import CallRefused, InvalidSpiffeIdError, MeshError
from mesh.identity.bundle import FileBundleSource
from mesh.identity.certs import load_pem_chain
from mesh.identity.spiffeid import SpiffeId
from mesh.tokens import dpop, jose
from mesh.tokens.errors import BundleError
from mesh.tokens.result import Hop, VerifiedChain
from mesh.tokens.verify import ChainVerifier, MaxLifetime, VerifyLimits

EXIT_OK = 0
EXIT_REJECTED = 1
EXIT_USAGE = 2
_INSPECT_MAX_LAYERS = 16
CA_DIR_ENV = "MESH_CA_DIR"
BUNDLE_FILE = "bundle.spiffe.json"
CRL_FILE = "crl.pem"
#: --max-lifetime KIND=SECONDS: the kind names, as in the vectors' limits.max_lifetime
LIFETIME_KINDS = {"user": "user", "app": "app", "app-asserted": "app_asserted"}
_SHOWN_HEADER = ("alg", "typ", "kid")
CA_DIR_HELP = (f"the CA folder whose {BUNDLE_FILE} and {CRL_FILE} verify uses, before or after "
               f"the action (default: ${CA_DIR_ENV}; unused with --bundle)")
BANNER = (
    "UNVERIFIED: decoded WITHOUT checking any signature, key, certificate, audience or time.\n"
    "UNVERIFIED: anyone can forge what follows; decide nothing on it (use 'mesh token verify')."
)


def register(commands: Any) -> None:
    """Add the ``token`` group to the ``mesh`` command's subparsers."""
    token = commands.add_parser(
        "token", help="verify or inspect meshid tokens",
        description="Verify or inspect meshid JWS tokens (docs/spec.md sections 3 and 4).",
    )
    # --ca-dir before or after the action, as for mesh-ca: on the action the default is
    # SUPPRESS, so `mesh token --ca-dir X verify ...` keeps X.
    token.add_argument("--ca-dir", metavar="DIR", help=CA_DIR_HELP)
    sub = token.add_subparsers(dest="token_command", metavar="ACTION", required=True)

    verify = sub.add_parser(
        "verify", help="verify a token chain as a service would",
        description="Verify a token chain exactly as the service --audience would. With "
        "--peer-cert, as if it arrived over mutual TLS from that certificate's owner; without, "
        "as an edge port (user tokens only). Without --bundle, the bundle and CRL are read from "
        f"the CA folder (--ca-dir or ${CA_DIR_ENV}). Exit 0 verified, 1 rejected, 2 usage "
        "error.",
    )
    verify.add_argument("token", metavar="TOKEN",
                        help="the token ('Bearer ' allowed), or - to read it from stdin")
    verify.add_argument("--ca-dir", metavar="DIR", default=argparse.SUPPRESS, help=CA_DIR_HELP)
    verify.add_argument("--bundle", type=Path, metavar="FILE",
                        help=f"the trust domain's {BUNDLE_FILE} (default: "
                        f"CA_DIR/{BUNDLE_FILE}, with CA_DIR/{CRL_FILE})")
    verify.add_argument("--audience", required=True, metavar="SPIFFE_ID",
                        help="the SPIFFE ID of the service receiving the token (required)")
    verify.add_argument("--peer-cert", metavar="PEM",
                        help="the caller's certificate chain (leaf first), - for stdin "
                        "(default: none, verify as an edge port)")
    verify.add_argument("--crl", type=Path, metavar="FILE",
                        help=f"the CA's {CRL_FILE} (default: CA_DIR/{CRL_FILE} without --bundle; "
                        "none with it: revocation is then not checked)")
    verify.add_argument("--trusted-issuer", action="append", default=[], metavar="SPIFFE_ID",
                        help="a trusted user-token issuer, repeatable (default: "
                        "spiffe://<trust domain>/svc/auth)")
    verify.add_argument("--at", type=_unix_seconds, metavar="UNIX_SECONDS",
                        help="verify at this time (certificates, CRL and token times) "
                        "(default: now)")
    verify.add_argument("--max-size", type=_positive, metavar="BYTES",
                        help="the token size limit (default: 8192)")
    verify.add_argument("--max-depth", type=non_negative_int, metavar="WRAPS",
                        help="the most app-asserted wraps around the user token (default: 4)")
    verify.add_argument("--leeway", type=non_negative_int, metavar="SECONDS",
                        help="allowed clock skew for exp, iat and nbf (default: 30)")
    verify.add_argument("--max-lifetime", action="append", default=[], type=_kind_seconds,
                        metavar="KIND=SECONDS",
                        help="the longest exp - iat accepted for KIND, repeatable (default: "
                        "user=3600, app=600, app-asserted=600)")
    verify.add_argument("--method", type=_method, metavar="/PKG.SERVICE/METHOD",
                        help="edge port only: check the call to this method in full, DPoP "
                        "included (spec 4.7): the token must be bound (cnf.jkt) and --dpop a "
                        "valid proof for it (default: none, only the token rules are checked)")
    verify.add_argument("--dpop", metavar="PROOF",
                        help="the call's DPoP proof (the 'dpop' metadata value); needs --method "
                        "(default: none)")
    verify.add_argument("--dpop-window", type=_positive, metavar="SECONDS",
                        help=f"how far a proof's iat may lie from now (default: "
                        f"{dpop.DEFAULT_WINDOW})")
    verify.add_argument("--json", action="store_true",
                        help="print one JSON object (result, reason or user and chain)")
    verify.set_defaults(handler=_verify, parser=verify)

    inspect = sub.add_parser(
        "inspect", help="decode a token WITHOUT verifying it",
        description="Decode a token and every token it wraps, WITHOUT verifying anything. "
        "Signatures and keys are never printed. Exit 0 decoded, 1 not decodable.",
    )
    inspect.add_argument("token", metavar="TOKEN",
                         help="the token ('Bearer ' or 'DPoP ' allowed) or a DPoP proof, "
                         "or - to read it from stdin")
    inspect.add_argument("--dpop", metavar="PROOF",
                         help="also decode this DPoP proof and compare it with the token "
                         "(key binding, ath), without verifying either (default: none)")
    inspect.add_argument("--json", action="store_true",
                         help="print one JSON object: every layer's header and claims, "
                         "\"verified\": false")
    inspect.set_defaults(handler=_inspect, parser=inspect)


# --- helpers -----------------------------------------------------------------------------------


def _usage(args: argparse.Namespace, message: str) -> int:
    parser: argparse.ArgumentParser = args.parser
    print(f"{parser.prog}: error: {message}", file=sys.stderr)
    return EXIT_USAGE


def _unix_seconds(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number of seconds") from None
    if not 0 <= value < 2**53:
        raise argparse.ArgumentTypeError(f"{text} is not a Unix time in seconds")
    return value


def _positive(text: str) -> int:
    value = non_negative_int(text)
    if value == 0:
        raise argparse.ArgumentTypeError("0 is not a positive number")
    return value


def _method(text: str) -> str:
    service, sep, method = text.lstrip("/").partition("/")
    if not text.startswith("/") or not sep or not service or not method or "/" in method:
        raise argparse.ArgumentTypeError(f"{text!r} is not a full method name "
                                         "'/pkg.Service/Method'")
    return text


def _kind_seconds(text: str) -> tuple[str, int]:
    kind, sep, seconds = text.partition("=")
    if not sep or kind not in LIFETIME_KINDS:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not KIND=SECONDS with KIND one of {', '.join(LIFETIME_KINDS)}")
    return LIFETIME_KINDS[kind], _positive(seconds)


def _read_presented(value: str) -> tuple[str, str | None]:
    """The token without a ``Bearer `` or ``DPoP `` prefix, and that scheme (None if bare)."""
    text = read_input("-", "token").decode("utf-8", "replace") if value == "-" else value
    text = text.strip()
    for prefix in ("bearer ", "dpop "):
        if text[:len(prefix)].lower() == prefix:
            return text[len(prefix):].strip(), text[:len(prefix) - 1]
    return text, None


def _read_token(value: str) -> str:
    return _read_presented(value)[0]


def _when(ts: int, now: float) -> str:
    stamp = datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    delta = int(ts - now)
    rel = f"in {_span(delta)}" if delta >= 0 else f"{_span(-delta)} ago"
    return f"{stamp} ({rel})"


def _span(seconds: int) -> str:
    if seconds < 120:
        return f"{seconds} s"
    if seconds < 7200:
        return f"{seconds // 60} min"
    return f"{seconds // 3600} h"


def _safe(text: object, limit: int = 120) -> str:
    """Claim text for a terminal: control characters escaped, long values cut."""
    s = str(text)
    s = s if s.isprintable() else repr(s)
    return s if len(s) <= limit else s[:limit] + f"... ({len(s)} chars)"


# --- verify --------------------------------------------------------------------------------------


def _bundle_files(args: argparse.Namespace) -> tuple[Path, Path | None] | str:
    """The bundle and CRL paths: the flags, else ``$MESH_CA_DIR``'s files; or why not."""
    if args.bundle is not None:
        # An explicit bundle never mixes with a CA folder from the environment: that CA's CRL
        # would be checked against another trust domain's anchors.
        return args.bundle, args.crl
    ca_dir = args.ca_dir or os.environ.get(CA_DIR_ENV)
    given = f"--ca-dir {ca_dir}" if args.ca_dir else f"{CA_DIR_ENV}={ca_dir}"
    if not ca_dir:
        return f"give --bundle FILE or --ca-dir DIR, or set {CA_DIR_ENV} to the CA folder"
    folder = Path(ca_dir)
    if args.crl is not None:
        return folder / BUNDLE_FILE, args.crl
    crl = folder / CRL_FILE
    if not crl.is_file():
        return f"{crl} is missing ({given}); pass --bundle and --crl to name the files"
    return folder / BUNDLE_FILE, crl


def _limits(args: argparse.Namespace, trusted: tuple[SpiffeId, ...] | None) -> VerifyLimits:
    defaults = VerifyLimits()
    return VerifyLimits(
        max_size=defaults.max_size if args.max_size is None else args.max_size,
        max_depth=defaults.max_depth if args.max_depth is None else args.max_depth,
        leeway=defaults.leeway if args.leeway is None else args.leeway,
        trusted_user_issuers=trusted,
        max_lifetime=MaxLifetime(**dict(args.max_lifetime)),
    )


def _verify(args: argparse.Namespace) -> int:
    out = sys.stdout
    try:
        audience = SpiffeId.parse(args.audience)
        trusted = tuple(SpiffeId.parse(i) for i in args.trusted_issuer) or None
    except InvalidSpiffeIdError as err:
        return _usage(args, f"not a SPIFFE ID: {err}")
    if args.dpop is not None and args.method is None:
        return _usage(args, "--dpop needs --method: a proof is checked for one call")
    if args.method is not None and args.peer_cert is not None:
        return _usage(args, "--method checks an edge call (DPoP, spec 4.7); drop --peer-cert")
    try:
        stdin_at_most_once([("TOKEN", args.token), ("--peer-cert", args.peer_cert)])
    except UsageError as err:
        return _usage(args, str(err))
    proofs: dpop.ProofVerifier | None = None
    files = _bundle_files(args)
    if isinstance(files, str):
        return _usage(args, files)
    bundle_path, crl_path = files
    at: int | None = args.at
    clock: Callable[[], float] = time.time if at is None else (lambda: float(at))
    try:
        bundle = FileBundleSource(bundle_path, crl_path, clock=clock)
    except BundleError as err:
        return _usage(args, str(err))
    peer_chain: tuple[x509.Certificate, ...] = ()
    if args.peer_cert is not None:
        shown = "stdin" if args.peer_cert == "-" else args.peer_cert
        try:
            peer_chain = tuple(load_pem_chain(read_input(args.peer_cert, "peer certificate")))
        except UsageError as err:
            return _usage(args, str(err))
        except MeshError as err:
            return _usage(args, f"{shown}: {err}")
    if args.method is not None:
        if audience.service_name is None:
            return _usage(args, f"{audience} is not a service: an edge port is a service's")
        window = dpop.DEFAULT_WINDOW if args.dpop_window is None else args.dpop_window
        proofs = dpop.ProofVerifier(audience, dpop.DpopSettings(window=window), clock=clock)
    token, scheme = _read_presented(args.token)
    verifier = ChainVerifier(
        audience, bundle, limits=_limits(args, trusted), cache=None, clock=clock
    )
    mtls = peer_chain != ()
    proof: dpop.VerifiedProof | None = None
    try:
        result = verifier.verify(
            token, peer_chain[0] if peer_chain else None, peer_intermediates=peer_chain[1:]
        )
        if proofs is not None:
            # A token given bare is taken as sent with the DPoP scheme; "Bearer <token>" is
            # checked as a bearer presentation (refused for a bound token, spec 4.7).
            proof = proofs.check_call(result, scheme or dpop.SCHEME, args.dpop, args.method)
    except CallRefused as err:
        if args.json:
            _print_json(out, _rejection_json(err, audience, mtls))
        else:
            _print_rejection(out, err, audience, mtls)
        return EXIT_REJECTED
    if args.json:
        doc = _chain_json(result, audience, crl_path is not None)
        if not mtls:
            doc["dpop"] = None if proof is None else {
                "jkt": proof.jkt, "htu": proof.htu, "iat": proof.iat}
            doc["dpop_checked"] = proofs is not None
        _print_json(out, doc)
        return EXIT_OK
    _print_chain(out, result, audience, clock())
    if proof is not None:
        print(f"  DPoP: proof for {proof.htu} made {_when(proof.iat, clock())} with the key "
              f"the token is bound to (jkt {proof.jkt})", file=out)
    elif not mtls and proofs is None:
        print("  note: no --method given, so only the token rules were checked; an edge port "
              "also requires a DPoP proof made with the key the token is bound to (spec 4.7)",
              file=out)
    if crl_path is None:
        print("  note: no --crl given, so revocation was not checked", file=out)
    return EXIT_OK


def _print_json(out: TextIO, value: Mapping[str, Any]) -> None:
    print(json.dumps(value, ensure_ascii=True, separators=(",", ":")), file=out)


def _rejection_json(err: CallRefused, audience: SpiffeId, mtls: bool) -> dict[str, Any]:
    return {
        "result": "reject",
        "reason": str(err.reason),
        "status": err.status.name,
        "hop": err.hop,
        "message": str(err),
        "audience": str(audience),
        "port": "mtls" if mtls else "edge",
    }


def _chain_json(result: VerifiedChain, audience: SpiffeId, crl: bool) -> dict[str, Any]:
    return {
        "result": "accept",
        "audience": str(audience),
        "port": "mtls" if result.peer is not None else "edge",
        "peer": str(result.peer) if result.peer is not None else None,
        "kind": result.kind,
        "user": result.user,
        "chain": [str(s) for s in result.chain],
        "expires_at": result.expires_at,
        "revocation_checked": crl,
        "hops": [
            {"hop": i, "typ": h.typ, "iss": str(h.iss), "sub": h.sub, "aud": list(h.aud),
             "iat": h.iat, "exp": h.exp, "kid": h.kid}
            for i, h in enumerate(result.hops)
        ],
    }


def _print_rejection(out: TextIO, err: CallRefused, audience: SpiffeId, mtls: bool) -> None:
    if err.reason.startswith("DPOP_"):
        where = "the DPoP proof (spec 4.7)"
    elif err.hop is None:
        where = "the peer's certificate (rule 4.1)" if err.reason.startswith("CERT_") and mtls \
            else "the token as a whole"
    elif err.hop == 0:
        where = "hop 0, the outermost token" + (" (signed by the peer)" if mtls else "")
    else:
        where = f"hop {err.hop}, the token wrapped {err.hop} level(s) deep"
    print(f"REJECTED at {where}: {err.reason} ({err.status.name})", file=out)
    print(f"  {err}", file=out)
    print(f"  verified as {audience}, {'over mutual TLS' if mtls else 'at an edge port'}",
          file=out)


def _print_chain(out: TextIO, result: VerifiedChain, audience: SpiffeId, now: float) -> None:
    how = f"over mutual TLS from {result.peer}" if result.peer else "at an edge port"
    print(f"VERIFIED for {audience}, {how}", file=out)
    if result.kind == "user" and result.peer is None:
        print(f"  user {_safe(result.user)}, directly from the user token; expires "
              f"{_when(result.expires_at, now)}", file=out)
    elif result.kind == "user":
        path = " -> ".join(str(s) for s in result.chain)
        print(f"  user {_safe(result.user)} through {path}; chain expires "
              f"{_when(result.expires_at, now)}", file=out)
    else:
        print(f"  service call by {result.peer} as itself; expires "
              f"{_when(result.expires_at, now)}", file=out)
    hops = list(enumerate(result.hops))
    for depth, (index, hop) in enumerate(reversed(hops)):
        lead = "  " + "   " * depth + "└─ "
        print(lead + _hop_line(index, hop, now), file=out)


def _hop_line(index: int, hop: Hop, now: float) -> str:
    aud = ", ".join(_safe(a) for a in hop.aud)
    return (f"hop {index} {hop.typ}: iss {hop.iss}  aud {aud}  sub {_safe(hop.sub)}  "
            f"exp {_when(hop.exp, now)}  kid {hop.kid}")


# --- inspect -------------------------------------------------------------------------------------


def _inspect(args: argparse.Namespace) -> int:
    token = _read_token(args.token)
    if _is_proof(token) and not args.json:
        print(BANNER, file=sys.stdout)
        code = _inspect_proof(sys.stdout, token, time.time(), None)
        print(BANNER.splitlines()[0], file=sys.stdout)
        return code
    layers: list[jose.UnverifiedPart] = []
    failure: CallRefused | None = None
    current: str | None = token
    while current is not None and len(layers) < _INSPECT_MAX_LAYERS:
        try:
            part = jose.decode_unverified(current)
        except CallRefused as err:
            failure = err
            break
        layers.append(part)
        upstream = part.claims.get("upstream") if part.claims is not None else None
        current = upstream if isinstance(upstream, str) else None
    truncated = failure is None and current is not None
    if args.json:
        _print_json(sys.stdout, _inspect_json(layers, failure, truncated))
        return EXIT_REJECTED if failure is not None else EXIT_OK
    _print_layers(sys.stdout, layers, failure, truncated)
    code = EXIT_REJECTED if failure is not None else EXIT_OK
    if args.dpop is not None and failure is None:
        code = _inspect_proof(sys.stdout, _read_token(args.dpop), time.time(), token)
        print(BANNER.splitlines()[0], file=sys.stdout)
    return code


def _print_layers(out: TextIO, layers: list[jose.UnverifiedPart], failure: CallRefused | None,
                  truncated: bool) -> None:
    now = time.time()
    print(BANNER, file=out)
    for index, part in enumerate(layers):
        print(f"hop {index}{' (outermost)' if index == 0 else ''}:", file=out)
        print("  header: " + _header_text(part.header), file=out)
        if part.claims is None:
            print("  claims: (not decodable)", file=out)
        else:
            for line in _claim_lines(part.claims, now):
                print("  " + line, file=out)
        size = f"{part.signature_length} bytes" if part.signature_length >= 0 else "undecodable"
        print(f"  signature: {size} (not shown, not checked)", file=out)
        for problem in part.problems:
            print(f"  problem: {problem}", file=out)
        if index == 0 and part.claims is not None:
            binding = _binding(part.claims)
            if binding:
                print(f"  binding: {binding}", file=out)
    if failure is not None:
        print(f"hop {len(layers)}: cannot decode: {failure.reason}: {failure}", file=out)
        return
    if truncated:
        print(f"(more than {_INSPECT_MAX_LAYERS} layers; stopped)", file=out)
    print(BANNER.splitlines()[0], file=out)


def _inspect_json(layers: list[jose.UnverifiedPart], failure: CallRefused | None,
                  truncated: bool) -> dict[str, Any]:
    hops = []
    for index, part in enumerate(layers):
        claims = None if part.claims is None else {
            name: ({"wrapped_token_bytes": len(value)} if name == "upstream"
                   and isinstance(value, str) else value)
            for name, value in part.claims.items()
        }
        hops.append({
            "hop": index,
            # jwk, x5c, jku, ... may carry keys or certificates: named, never shown
            "header": {name: value if name in _SHOWN_HEADER else "<present, not shown>"
                       for name, value in part.header.items()},
            "claims": claims,
            "signature_bytes": part.signature_length if part.signature_length >= 0 else None,
            "problems": list(part.problems),
        })
    return {
        "verified": False,
        "warning": BANNER.splitlines()[0].removeprefix("UNVERIFIED: "),
        "hops": hops,
        "undecodable": None if failure is None else {
            "hop": len(layers), "reason": str(failure.reason), "message": str(failure)},
        "truncated": truncated,
    }


def _binding(claims: Mapping[str, Any]) -> str:
    """What the outermost token says about its binding, in words."""
    cnf = claims.get("cnf")
    if not isinstance(cnf, dict):
        return "none (a bearer token)" if claims.get("upstream") is None else ""
    if "jkt" in cnf:
        return (f"DPoP key jkt={_safe(cnf['jkt'], 60)}: an edge port accepts it only with a "
                "fresh proof made with that key (spec 4.7)")
    if "x5t#S256" in cnf:
        return f"certificate x5t#S256={_safe(cnf['x5t#S256'], 60)} (spec 3.3)"
    return ""


def _is_proof(text: str) -> bool:
    try:
        header = jose.json_object(jose.b64url_decode(text.partition(".")[0], "header"), "header")
    except CallRefused:
        return False
    return header.get("typ") == dpop.DPOP_TYP


def _inspect_proof(out: TextIO, proof: str, now: float, token: str | None) -> int:
    """Decode a DPoP proof for display; compare it with ``token`` (unverified)."""
    try:
        parts = proof.split(".")
        header = jose.json_object(jose.b64url_decode(parts[0], "header"), "header")
        claims = jose.json_object(jose.b64url_decode(parts[1], "payload"), "payload")
    except (CallRefused, IndexError) as err:
        print(f"DPoP proof: cannot decode: {getattr(err, 'reason', 'TOKEN_MALFORMED')}: {err}",
              file=out)
        return EXIT_REJECTED
    print("DPoP proof:", file=out)
    shown = {k: v for k, v in header.items() if k != "jwk"}
    print("  header: " + _header_text(shown) + (" jwk=<public key, see jkt>" if "jwk" in header
                                                 else ""), file=out)
    problem = None
    jkt = None
    try:
        parsed = dpop.parse_proof(proof)
        jkt = parsed.jkt
    except CallRefused as err:
        problem = f"{err.reason}: {err}"
    if jkt is not None:
        print(f"  key: EC P-256, jkt {jkt}", file=out)
    for line in _claim_lines(claims, now):
        print("  " + line, file=out)
    if problem:
        print(f"  problem: {problem}", file=out)
    if token is not None:
        token_claims = jose.decode_unverified(token).claims or {}
        cnf = token_claims.get("cnf")
        bound = cnf.get("jkt") if isinstance(cnf, dict) else None
        key_match = "yes" if jkt is not None and jkt == bound else (
            "no: the token is not bound to a key" if bound is None else "NO: another key")
        ath = claims.get("ath")
        ath_match = "yes" if ath == dpop.ath_of(token) else "NO: made for another token"
        print(f"  key is the token's cnf.jkt: {key_match}", file=out)
        print(f"  ath is the token's hash: {ath_match}", file=out)
    return EXIT_OK


def _header_text(header: Mapping[str, Any]) -> str:
    items = []
    for name, value in header.items():
        if name in _SHOWN_HEADER:
            items.append(f"{_safe(name, 20)}={_safe(value, 60)}")
        else:
            # jwk, x5c, jku, ... may carry keys or certificates: name them, never print them.
            items.append(f"{_safe(name, 20)}=<present, not shown>")
    return " ".join(items) if items else "(empty)"


def _claim_lines(claims: Mapping[str, Any], now: float) -> list[str]:
    lines = []
    for name, value in claims.items():
        if name == "upstream" and isinstance(value, str):
            shown = f"<a wrapped token of {len(value)} bytes, decoded as the next hop>"
        elif name in ("iat", "exp", "nbf") and type(value) is int:
            shown = f"{value} = {_when(value, now)}"
        elif isinstance(value, list):
            shown = ", ".join(_safe(v, 80) for v in value[:8]) + (" ..." if len(value) > 8 else "")
        elif isinstance(value, dict):
            shown = " ".join(f"{_safe(k, 20)}={_safe(v, 60)}" for k, v in list(value.items())[:8])
        else:
            shown = _safe(value)
        lines.append(f"{_safe(name, 30)}: {shown}")
    return lines
