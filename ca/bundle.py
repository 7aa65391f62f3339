"""The SPIFFE trust bundle (SPIFFE Trust Domain and Bundle format, spec 2.2).

A JWKS: each root as a ``use: x509-svid`` key with ``x5c``; each valid, unrevoked service
certificate as a ``use: jwt-svid`` key whose ``kid`` is the certificate's ``x5t#S256`` and whose
``x5c`` is the leaf followed by the intermediates (never the root).
"""

from __future__ import annotations

import base64
import json
from collections.abc import Sequence
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from ca.registry import BundleKeyRow
from mesh.identity.certs import b64url

REFRESH_HINT_SECONDS = 300


def b64der(der: bytes) -> str:
    """``x5c`` members are standard base64 with padding (RFC 7517 4.7), not base64url."""
    return base64.b64encode(der).decode("ascii")


def der_of(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.DER)


def ec_coordinates(key: ec.EllipticCurvePublicKey) -> tuple[str, str]:
    """JWK ``x`` and ``y`` of a P-256 key (RFC 7518 6.2.1: fixed 32-byte big-endian)."""
    numbers = key.public_numbers()
    return b64url(numbers.x.to_bytes(32, "big")), b64url(numbers.y.to_bytes(32, "big"))


def _ec_jwk(x: str, y: str) -> dict[str, Any]:
    return {"kty": "EC", "crv": "P-256", "x": x, "y": y}


def _entry(rec: BundleKeyRow, tail: list[str]) -> str:
    """One ``jwt-svid`` key as the bundle writes it (one line of JSON)."""
    return json.dumps(
        {
            "use": "jwt-svid",
            "kid": rec.thumbprint,
            **_ec_jwk(rec.jwk_x, rec.jwk_y),
            "x5c": [b64der(rec.der), *tail],
        }
    )


class BundleRenderer:
    """:func:`render_bundle`, keeping each ``jwt-svid`` entry's JSON between publications.

    Every publication renders one entry per valid service certificate, and a CA publishes on
    every change, so rendering all of them anew made each commit cost more the bigger the trust
    domain (at 1,600 keys, 29 ms of a 45 ms publication). The cache: key the certificate's
    thumbprint (SHA-256 of its DER, unique in the registry: an entry is a function of those
    bytes and of the intermediates); an entry ends at the first render whose active keys no
    longer include it (revoked, expired), and all end when the intermediates change (their
    ``x5c`` tail is in every entry); bound: the keys of the last bundle rendered, about 1.3 KB
    each (the bundle file's own size). Not thread-safe: its owner renders under its lock.
    """

    def __init__(self) -> None:
        self._tail: list[str] | None = None
        self._entries: dict[str, str] = {}

    def render(
        self,
        roots: Sequence[x509.Certificate],
        intermediates: Sequence[x509.Certificate],
        active: Sequence[BundleKeyRow],
        *,
        sequence: int,
        refresh_hint: int = REFRESH_HINT_SECONDS,
    ) -> bytes:
        tail = [b64der(der_of(c)) for c in intermediates]
        if tail != self._tail:
            self._tail, self._entries = tail, {}
        known = self._entries
        entries: dict[str, str] = {}
        for rec in active:
            entry = known.get(rec.thumbprint)
            entries[rec.thumbprint] = entry if entry is not None else _entry(rec, tail)
        self._entries = entries
        lines = []
        for root in roots:
            pub = root.public_key()
            assert isinstance(pub, ec.EllipticCurvePublicKey)  # the CA only makes P-256 roots
            lines.append(json.dumps(
                {"use": "x509-svid", **_ec_jwk(*ec_coordinates(pub)),
                 "x5c": [b64der(der_of(root))]}
            ))
        lines.extend(entries[rec.thumbprint] for rec in active)
        # One key per line: readable and diffable, while json's C encoder does the work
        # (``indent=`` would switch to the pure-Python encoder, slow on big bundles).
        body = ",\n    ".join(lines)
        text = (
            f'{{\n  "keys": [\n    {body}\n  ],\n'
            f'  "spiffe_sequence": {int(sequence)},\n'
            f'  "spiffe_refresh_hint": {int(refresh_hint)}\n}}\n'
        )
        return text.encode("ascii")


def render_bundle(
    roots: Sequence[x509.Certificate],
    intermediates: Sequence[x509.Certificate],
    active: Sequence[BundleKeyRow],
    *,
    sequence: int,
    refresh_hint: int = REFRESH_HINT_SECONDS,
) -> bytes:
    """The bundle document (every entry rendered now; :class:`BundleRenderer` keeps them)."""
    return BundleRenderer().render(roots, intermediates, active, sequence=sequence,
                                   refresh_hint=refresh_hint)
