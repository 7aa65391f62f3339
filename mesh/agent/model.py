"""The agent's values: an SVID it holds (with its key), the trust state, keys and CSRs.

Everything here is immutable. An SVID returned by the CA is checked before it is held: its
leaf carries the expected SPIFFE ID, the key the agent made, and it chains to the trust anchors
now (client-certificate profile, as a peer will check it).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from datetime import UTC, datetime

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from cryptography.x509.verification import PolicyBuilder, Store, VerificationError

from mesh.agent.errors import CAAnswerInvalid
from mesh.errors import InvalidSpiffeIdError, MeshError
from mesh.identity.certs import format_serial, load_pem_chain, spiffe_id_of

_PEM_CRL_RE = re.compile(
    rb"-----BEGIN X509 CRL-----\r?\n.+?\r?\n-----END X509 CRL-----", re.DOTALL
)
_PEM = serialization.Encoding.PEM
_DER = serialization.Encoding.DER
_PKCS8 = serialization.PrivateFormat.PKCS8
_NOENC = serialization.NoEncryption()


def new_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(_PEM, _PKCS8, _NOENC)


def csr_pem(key: ec.EllipticCurvePrivateKey, common_name: str) -> bytes:
    """A CSR for ``key``. The CA takes only its public key; the name is for humans reading it."""
    csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name[:64])]))
        .sign(key, hashes.SHA256())
    )
    return csr.public_bytes(_PEM)


@dataclass(frozen=True, slots=True)
class HeldSvid:
    """An X.509-SVID this agent holds: its chain (leaf first) and the key the agent made."""

    name: str  #: the service name, or "agent" for the agent's own SVID
    spiffe_id: str
    chain: tuple[x509.Certificate, ...] = field(repr=False)
    key: ec.EllipticCurvePrivateKey = field(repr=False)
    not_before: float
    not_after: float
    serial: str
    #: when the life that renewal timing counts from began: the moment the agent received the
    #: certificate (CAs backdate not_before to absorb clock skew: meshid's by a minute, which
    #: would otherwise make a 20 s SVID renew after 40 s), or not_before if that is later
    issued_at: float = 0.0

    @property
    def chain_pem(self) -> bytes:
        return b"".join(c.public_bytes(_PEM) for c in self.chain)

    @property
    def chain_der(self) -> bytes:
        return b"".join(c.public_bytes(_DER) for c in self.chain)

    @property
    def key_pem(self) -> bytes:
        return key_pem(self.key)

    @property
    def key_der(self) -> bytes:
        return self.key.private_bytes(_DER, _PKCS8, _NOENC)

    @property
    def lifetime(self) -> float:
        """The life renewal timing counts: from ``issued_at`` to ``not_after``."""
        return self.not_after - self.issued_at

    def valid_at(self, now: float) -> bool:
        return self.not_before <= now < self.not_after


def hold(
    name: str,
    chain_pem: bytes,
    key: ec.EllipticCurvePrivateKey,
    expected_id: str,
    roots: tuple[x509.Certificate, ...],
    *,
    now: datetime | None = None,
    received_at: float | None = None,
) -> HeldSvid:
    """Check what the CA returned for ``name`` and make it a :class:`HeldSvid`."""
    try:
        chain = tuple(load_pem_chain(chain_pem))
    except MeshError as err:
        raise CAAnswerInvalid(f"the CA returned no readable certificate for {name}") from err
    leaf = chain[0]
    pub = leaf.public_key()
    if not isinstance(pub, ec.EllipticCurvePublicKey) or (
        pub.public_numbers() != key.public_key().public_numbers()
    ):
        raise CAAnswerInvalid(
            f"the CA returned a certificate for {name} that is not for the key this agent made"
        )
    try:
        sid = spiffe_id_of(leaf)
    except InvalidSpiffeIdError as err:
        raise CAAnswerInvalid(
            f"the CA returned a certificate for {name} without exactly one SPIFFE ID"
        ) from err
    if str(sid) != expected_id:
        raise CAAnswerInvalid(
            f"the CA returned a certificate for {sid} where {expected_id} was expected"
        )
    when = now or datetime.now(UTC)
    try:
        (
            PolicyBuilder().store(Store(list(roots))).time(when).build_client_verifier()
            .verify(leaf, list(chain[1:]))
        )
    except VerificationError as err:
        raise CAAnswerInvalid(
            f"the certificate the CA returned for {name} does not chain to the trust anchors "
            f"({str(err).splitlines()[0][:160]})"
        ) from err
    not_before = leaf.not_valid_before_utc.timestamp()
    return HeldSvid(
        name=name,
        spiffe_id=expected_id,
        chain=chain,
        key=key,
        not_before=not_before,
        not_after=leaf.not_valid_after_utc.timestamp(),
        serial=format_serial(leaf.serial_number),
        issued_at=max(not_before, when.timestamp() if received_at is None else received_at),
    )


@dataclass(frozen=True, slots=True)
class TrustState:
    """What verifiers on this node need: roots, the SPIFFE bundle document and the CRL(s)."""

    roots: tuple[x509.Certificate, ...] = field(repr=False)
    bundle_json: bytes = field(repr=False)
    crl_pem: bytes = field(repr=False)
    sequence: int
    #: the bundle's jwt-svid keys alone, as a JWKS (what FetchJWTBundles serves)
    jwks_json: bytes = field(repr=False, default=b'{"keys": []}')
    #: the ``kid`` of each of those keys (x5t#S256 of its certificate)
    kids: frozenset[str] = field(repr=False, default=frozenset())

    @property
    def roots_pem(self) -> bytes:
        return b"".join(c.public_bytes(_PEM) for c in self.roots)

    @property
    def roots_der(self) -> bytes:
        return b"".join(c.public_bytes(_DER) for c in self.roots)

    def crls_der(self) -> list[bytes]:
        out = []
        for block in _PEM_CRL_RE.findall(self.crl_pem):
            try:
                out.append(x509.load_pem_x509_crl(block).public_bytes(_DER))
            except ValueError:
                continue
        return out


def trust_from(
    roots_pem: bytes, bundle_json: bytes, crl_pem: bytes, sequence: int
) -> TrustState:
    try:
        roots = tuple(load_pem_chain(roots_pem))
    except MeshError as err:
        raise CAAnswerInvalid("the CA's trust state holds no readable root certificate") from err
    jwks, kids = _jwt_keys_only(bundle_json)
    return TrustState(
        roots=roots,
        bundle_json=bundle_json,
        crl_pem=crl_pem,
        sequence=sequence,
        jwks_json=jwks,
        kids=kids,
    )


def _jwt_keys_only(bundle_json: bytes) -> tuple[bytes, frozenset[str]]:
    """The SPIFFE bundle's ``jwt-svid`` entries as a JWKS (the Workload API's JWT bundle must
    not carry keys of other uses, the x509-svid anchors), and their kids."""
    try:
        doc = json.loads(bundle_json)
    except ValueError as err:
        raise CAAnswerInvalid("the CA's trust bundle is not JSON") from err
    if not isinstance(doc, dict) or not isinstance(doc.get("keys"), list):
        raise CAAnswerInvalid("the CA's trust bundle is not a SPIFFE bundle (no 'keys' list)")
    keys = [k for k in doc["keys"] if isinstance(k, dict) and k.get("use") == "jwt-svid"]
    out: dict[str, object] = {"keys": keys}
    for member in ("spiffe_sequence", "spiffe_refresh_hint"):
        if member in doc:
            out[member] = doc[member]
    kids = frozenset(k["kid"] for k in keys if isinstance(k.get("kid"), str))
    return json.dumps(out, separators=(",", ":")).encode(), kids
