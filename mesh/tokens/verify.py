"""The chain verifier: spec section 4, rule by rule, at the called service.

:meth:`ChainVerifier.verify` takes the inbound token and the peer's certificate (from mutual TLS;
``None`` at an edge port) and either returns an immutable :class:`VerifiedChain` or raises the
:class:`~mesh.tokens.errors.TokenError` subclass of the first rule that failed, with ``hop`` set
(0 = the outermost token, the one the peer signed).

The work is split in two passes so that cheap checks come before any signature: pass A splits
and decodes every layer (size, depth, header, kinds, claim shapes: rules 2 and 3), pass B checks
keys, signatures and how the layers relate (rules 4 and 5). The verified-token cache (see
:mod:`mesh.tokens.cache`) skips pass A's decoding and pass B's signature check for exact token
bytes that verified before. A wrapped token that verified together with everything it wraps
carries a :class:`~mesh.tokens.cache.ChainVerdict`; when the first such layer's verdict holds
for this verifier now (same bundle and generation, inside the subchain's time window, trusted
user issuer, within the depth limit), the layers below it are not checked again. The outermost
token, its binding to the peer and the relation between every checked layer and the token it
wraps are checked on every call.
"""

from __future__ import annotations

import enum
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, NamedTuple

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from mesh.identity.bundle import BundleKey, BundleSource
from mesh.identity.certs import format_serial, is_es256_key, not_es256_reason, thumbprint
from mesh.identity.spiffeid import SpiffeId, spiffe_id
from mesh.tokens import jose
from mesh.tokens.cache import ChainVerdict, VerifiedToken, VerifiedTokenCache, token_digest
from mesh.tokens.claims import (
    APP,
    APP_ASSERTED,
    KIND_NAMES,
    KINDS,
    USER,
    Claims,
    parse_claims,
)
from mesh.tokens.errors import (
    AudienceMismatch,
    CertificateRevoked,
    CertificateUntrusted,
    ChainBroken,
    ConfirmationMismatch,
    ExpiryExtended,
    IssuerMismatch,
    IssuerUntrusted,
    KeyUnknown,
    PeerMismatch,
    SubjectMismatch,
    TokenError,
    TokenExpired,
    TokenLifetimeTooLong,
    TokenMalformed,
    TokenNotYetValid,
    TokenTooDeep,
    TokenTooLarge,
    TypeMismatch,
)
from mesh.tokens.result import Hop, VerifiedChain

__all__ = ["ChainVerifier", "Hop", "MaxLifetime", "Peer", "VerifiedChain", "VerifyLimits"]

DEFAULT_MAX_SIZE = 8 * 1024
DEFAULT_MAX_DEPTH = 4
DEFAULT_LEEWAY = 30
AUTH_SERVICE = "auth"
DEFAULT_MAX_USER_LIFETIME = 3600
DEFAULT_MAX_SERVICE_LIFETIME = 600


@dataclass(frozen=True, slots=True)
class MaxLifetime:
    """The longest ``exp - iat`` accepted per token kind, in seconds.

    A stolen token is worth its lifetime; the signer's defaults (15 min, 60 s) sit well below
    these, so only a misconfigured or hostile issuer hits them.
    """

    user: int = DEFAULT_MAX_USER_LIFETIME
    app: int = DEFAULT_MAX_SERVICE_LIFETIME
    app_asserted: int = DEFAULT_MAX_SERVICE_LIFETIME

    def __post_init__(self) -> None:
        for value in (self.user, self.app, self.app_asserted):
            if type(value) is not int or value < 1:
                raise ValueError("maximum token lifetimes must be positive whole seconds")


@dataclass(frozen=True, slots=True)
class VerifyLimits:
    """Limits of spec 4.2 and 4.4/4.5; the defaults are the spec's (4.9).

    ``max_depth`` counts wraps: a user token alone is depth 0, four app-asserted layers around
    it are depth 4 (five signatures). ``trusted_user_issuers`` None means
    ``spiffe://<trust domain>/svc/auth``. ``max_lifetime`` bounds ``exp - iat`` per kind.
    """

    max_size: int = DEFAULT_MAX_SIZE
    max_depth: int = DEFAULT_MAX_DEPTH
    leeway: int = DEFAULT_LEEWAY
    trusted_user_issuers: tuple[SpiffeId, ...] | None = None
    max_lifetime: MaxLifetime = MaxLifetime()

    def __post_init__(self) -> None:
        if self.max_size < 1 or self.max_depth < 0 or self.leeway < 0:
            raise ValueError("limits must be positive (max_depth and leeway may be 0)")


class _Default(enum.Enum):
    CACHE = enum.auto()


@dataclass(frozen=True, slots=True)
class Peer:
    """A mutual-TLS peer's certificate, parsed once and checked (rule 4.1) at ``generation``.

    ``headers`` maps the exact encoded JOSE headers a meshid signer using this certificate
    emits (app and app-asserted tokens) to their ``(typ, kid)``: an outermost token whose
    header is byte-for-byte one of them needs no header parsing (anything else is parsed and
    checked in full).
    """

    certificate: x509.Certificate = field(repr=False)
    pem: bytes = field(repr=False)
    spiffe_id: SpiffeId
    spiffe_text: str
    thumbprint: str
    key: jose.VerifyKey = field(repr=False)
    not_before: int
    not_after: int
    generation: int
    headers: Mapping[str, tuple[str, str]] = field(repr=False)
    #: spiffe_id.reserved_role, computed once: the CA service and node agents sign no tokens
    reserved_role: str | None = None


class _Known(NamedTuple):
    """What a bundle generation vouches for, derived once: the exact encoded headers its
    signing keys' tokens carry (to their ``(typ, kid)``) and the SPIFFE IDs it names (to their
    parsed form). Exact matches of known-good values, not a cache of tokens."""

    generation: int
    headers: Mapping[str, tuple[str, str]]
    ids: Mapping[str, SpiffeId]


class _Key(NamedTuple):
    generation: int
    key: BundleKey
    spiffe_text: str
    verify_key: jose.VerifyKey


@dataclass(slots=True)
class _Layer:
    hop: int
    digest: bytes | None  # None when there is no cache to key
    entry: VerifiedToken
    kid: str
    claims: Claims
    parsed: jose.ParsedJws | None  # None when the cache vouched for the signature
    # the bundle key that signed it, once checked (inner layers and the edge's user token)
    key: BundleKey | None = None
    # True when entry.verdict holds now: this layer and all below it need no re-check
    vouched: bool = False


#: bound of the peer table (distinct peer certificates); cleared when full
PEER_TABLE_MAX = 1024


class ChainVerifier:
    """Verifies inbound token chains for the service ``own_id`` (spec 4)."""

    def __init__(
        self,
        own_id: SpiffeId | str,
        bundle: BundleSource,
        *,
        limits: VerifyLimits = VerifyLimits(),
        cache: VerifiedTokenCache | _Default | None = _Default.CACHE,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.own_id = spiffe_id(own_id, bundle.trust_domain)
        self._own = str(self.own_id)
        self.bundle = bundle
        self.limits = limits
        self._clock = clock
        self.cache: VerifiedTokenCache | None = (
            VerifiedTokenCache(clock=clock) if cache is _Default.CACHE else cache
        )
        named = limits.trusted_user_issuers
        issuers = (
            (bundle.trust_domain.service(AUTH_SERVICE),)
            if named is None
            else tuple(spiffe_id(i, bundle.trust_domain) for i in named)
        )
        self.trusted_user_issuers: frozenset[SpiffeId] = frozenset(issuers)
        self._trusted_ids = {str(i): i for i in issuers}
        # Compared as text on the request path: hashing a SpiffeId dataclass costs ~3 us.
        self._trusted_texts = frozenset(str(i) for i in issuers)
        lifetimes = limits.max_lifetime
        self._max_life = {
            USER: lifetimes.user, APP: lifetimes.app, APP_ASSERTED: lifetimes.app_asserted
        }
        # The peer table: peer certificate PEM -> Peer, re-checked when the bundle generation
        # moves (see docs/tokens.md, "Caches"). Parsing a certificate and building its chain
        # cost far more than a call; a mesh has few peers.
        self._peers: dict[bytes, Peer] = {}
        self._peers_lock = threading.Lock()
        # The entry of the last call's peer object (one certificate object per connection, or
        # the PEM bytes gRPC handed over): a repeat needs neither serialising nor hashing it.
        self._last_peer: tuple[object, Peer] | None = None
        # kid -> the bundle key found and not revoked in a generation, with its python-jose
        # verify key built once: keys and revocations only change with the generation, so this
        # table is exact (see docs/tokens.md, "Caches").
        self._keys: dict[str, _Key] = {}
        self._known = _Known(-1, {}, self._trusted_ids)

    # --- rule 1 --------------------------------------------------------------------------------

    def peer(
        self, peer: x509.Certificate | bytes, intermediates: Sequence[x509.Certificate] = ()
    ) -> Peer:
        """Rule 4.1 alone: the peer's certificate (PEM bytes, as gRPC's auth context gives it,
        or a parsed certificate) chains to the bundle's anchors, is valid now, not revoked, and
        carries one SPIFFE ID of the trust domain and a P-256 key. Raises CertificateError."""
        return self._peer(peer, intermediates, int(self._clock()), self.bundle.generation)

    def check_peer(
        self, peer_cert: x509.Certificate | bytes, intermediates: Sequence[x509.Certificate] = ()
    ) -> SpiffeId:
        """Like :meth:`peer`, returning only the peer's SPIFFE ID."""
        return self.peer(peer_cert, intermediates).spiffe_id

    def _peer(
        self,
        cert: x509.Certificate | bytes,
        intermediates: Sequence[x509.Certificate],
        now: int,
        generation: int,
    ) -> Peer:
        last = self._last_peer
        if last is not None and last[0] is cert and last[1].generation == generation:
            peer = last[1]  # the same object as the last call: no PEM, no hash
        else:
            pem = cert if isinstance(cert, bytes) else cert.public_bytes(
                serialization.Encoding.PEM)
            found = self._peers.get(pem)
            if found is not None and found.generation == generation:
                peer = found
            else:
                # Chain building is costly; a peer's certificate is re-checked only when the
                # bundle or CRL changes (new generation), its validity window on every call.
                peer = self._check_new_peer(pem, cert, intermediates, generation)
                with self._peers_lock:
                    if len(self._peers) >= PEER_TABLE_MAX:
                        self._peers.clear()
                    self._peers[pem] = peer
            self._last_peer = (cert, peer)
        if not peer.not_before <= now < peer.not_after:
            raise CertificateUntrusted(
                f"the peer {peer.spiffe_id}'s certificate is not valid now (spec 4.1)",
                presented=peer.spiffe_id,
            )
        return peer

    def _check_new_peer(
        self,
        pem: bytes,
        cert: x509.Certificate | bytes,
        intermediates: Sequence[x509.Certificate],
        generation: int,
    ) -> Peer:
        if isinstance(cert, bytes):
            try:
                cert = x509.load_pem_x509_certificate(cert)
            except ValueError as err:
                raise CertificateUntrusted(
                    "the peer's certificate is not readable X.509 (spec 4.1)"
                ) from err
        sid = self.bundle.verify_chain([cert, *intermediates])
        public_key = cert.public_key()
        if not is_es256_key(public_key):
            raise CertificateUntrusted(
                f"the peer {sid}'s certificate has {not_es256_reason(public_key)}",
                presented=sid,
            )
        tp = thumbprint(cert)
        return Peer(
            certificate=cert,
            pem=pem,
            spiffe_id=sid,
            spiffe_text=str(sid),
            thumbprint=tp,
            key=jose.VerifyKey(public_key),
            not_before=int(cert.not_valid_before_utc.timestamp()),
            not_after=int(cert.not_valid_after_utc.timestamp()),
            generation=generation,
            headers={jose.encoded_header(typ, tp): (typ, tp) for typ in (APP, APP_ASSERTED)},
            reserved_role=sid.reserved_role,
        )

    # --- rules 2 to 5 --------------------------------------------------------------------------

    def verify(
        self,
        token: str,
        peer_cert: x509.Certificate | bytes | Peer | None,
        *,
        peer_intermediates: Sequence[x509.Certificate] = (),
    ) -> VerifiedChain:
        """Verify ``token`` as received from ``peer_cert`` (None: at an edge port).

        ``peer_cert``: the mutual-TLS peer's certificate, parsed or as PEM bytes, or a
        :class:`Peer` this verifier returned from :meth:`peer` for this call.
        ``peer_intermediates``: the peer's intermediate certificates, if the bundle does not
        already know them. Raises the :class:`~mesh.errors.CallRefused` of the first rule that
        fails.
        """
        now = int(self._clock())
        generation = self.bundle.generation
        # rule 1
        peer: Peer | None
        if peer_cert is None:
            peer = None
        elif isinstance(peer_cert, Peer) and peer_cert.generation == generation:
            peer = peer_cert
            if not peer.not_before <= now < peer.not_after:
                raise CertificateUntrusted(
                    f"the peer {peer.spiffe_id}'s certificate is not valid now (spec 4.1)"
                )
        else:
            cert = peer_cert.pem if isinstance(peer_cert, Peer) else peer_cert
            peer = self._peer(cert, peer_intermediates, now, generation)
        # rule 2 (size); depth is counted while decoding
        if not isinstance(token, str) or not token.isascii():
            raise TokenMalformed("a token must be ASCII text (a JWS compact serialisation)")
        if len(token) > self.limits.max_size:
            raise TokenTooLarge(
                f"the token is {len(token)} bytes, over the limit of {self.limits.max_size} "
                "(spec 4.2); the chain is too long or the token is not meshid's"
            )
        # rules 2 (depth) and 3, no cryptography yet; stops at a layer whose verdict holds
        layers = self._decode(token, peer, now=now, generation=generation)
        # rule 4 (or the edge port's rule), then rule 5 hop by hop
        if peer is None:
            self._check_edge(layers[0], now, generation)
        else:
            self._check_outermost(layers[0], peer, now)
        for i in range(1, len(layers)):
            if layers[i].vouched:
                # Everything about this layer and those below it holds (its verdict); how it
                # relates to the token wrapping it does not follow from its own bytes.
                self._check_relation(layers[i], layers[i - 1])
            else:
                self._check_wrapped(layers[i], layers[i - 1], now, generation)
        if self.cache is not None:
            self._remember(layers, generation)
        return self._result(token, layers, peer)

    def _usable(self, verdict: ChainVerdict | None, hop: int, now: int, generation: int) -> bool:
        """Whether ``verdict``, on the layer at ``hop``, holds for this verifier now.

        Exactly the conditions under which re-checking that layer and those below it would
        pass; if any fails, the layers are checked in full and fail with their own reason.
        """
        leeway = self.limits.leeway
        return (
            verdict is not None
            and verdict.generation == generation
            and verdict.bundle is self.bundle
            and now < verdict.exp + leeway
            and verdict.not_before <= now + leeway
            and verdict.key_not_before <= now < verdict.key_not_after
            and verdict.user_lifetime <= self._max_life[USER]
            and verdict.asserted_lifetime <= self._max_life[APP_ASSERTED]
            and verdict.user_iss in self._trusted_texts
            and hop + verdict.layers - 1 <= self.limits.max_depth
        )

    def _remember(self, layers: list[_Layer], generation: int) -> None:
        """Store what this successful call proved: new entries, links, and chain verdicts.

        A verdict is stamped with the generation read when the call began, and only if the
        bundle did not move on during the call (a key looked up after a reload was checked
        against the new state, not the stamped one).
        """
        assert self.cache is not None
        stamp = self.bundle.generation == generation
        below: VerifiedToken | None = None
        for layer in reversed(layers):
            entry = layer.entry
            if layer.vouched:
                below = entry
                continue
            verdict = entry.verdict
            if layer.hop > 0 and stamp:
                verdict = self._verdict(layer, below, generation)
            if layer.parsed is not None or entry.upstream_entry is not below or (
                verdict is not entry.verdict
            ):
                # (the constructor, not _replace: several times cheaper on the hot path)
                entry = VerifiedToken(entry.kid, entry.claims, entry.hop, entry.upstream_digest,
                                      entry.user_claims, below, verdict)
                if layer.digest is not None:
                    self.cache.put(layer.digest, entry)
            below = entry

    def _verdict(
        self, layer: _Layer, below: VerifiedToken | None, generation: int
    ) -> ChainVerdict:
        """The verdict for a wrapped ``layer`` that was just checked in full."""
        c, key, hop = layer.claims, layer.key, layer.entry.hop
        assert key is not None
        not_before = c.iat if c.nbf is None or c.nbf < c.iat else c.nbf
        if below is None:
            assert c.typ == USER and layer.entry.user_claims is not None
            return ChainVerdict(
                self.bundle, generation, 1, c.exp, not_before, key.not_before, key.not_after,
                c.exp - c.iat, 0, c.iss_text, (hop,), (), c.sub, layer.entry.user_claims,
            )
        v = below.verdict
        assert v is not None and v.generation == generation and v.bundle is self.bundle
        return ChainVerdict(
            self.bundle,
            generation,
            v.layers + 1,
            min(c.exp, v.exp),
            max(not_before, v.not_before),
            max(key.not_before, v.key_not_before),
            min(key.not_after, v.key_not_after),
            v.user_lifetime,
            max(c.exp - c.iat, v.asserted_lifetime),
            v.user_iss,
            (hop, *v.hops),
            (*v.chain, c.iss),
            v.user,
            v.user_claims,
        )

    def _decode(self, token: str, peer: Peer | None, *, now: int, generation: int
                ) -> list[_Layer]:
        edge = peer is None
        layers: list[_Layer] = []
        current = token
        digest = token_digest(token) if self.cache is not None else None
        linked: VerifiedToken | None = None
        hop = 0
        while True:
            if linked is not None:
                layer = _Layer(hop, digest, linked, linked.kid, linked.claims, None)
            else:
                layer = self._decode_one(current, digest, hop, peer if hop == 0 else None,
                                         generation)
            linked = layer.entry.upstream_entry
            layers.append(layer)
            typ = layer.claims.typ
            if hop == 0 and edge and typ != USER:
                raise TypeMismatch(
                    f"an edge port accepts only user tokens, but a {KIND_NAMES[typ]} from "
                    f"{layer.claims.iss} arrived; services must call over mutual TLS "
                    "(spec 4.8)",
                    hop=0,
                )
            if hop == 0 and not edge and typ == USER:
                raise TypeMismatch(
                    "a user token arrived as the outermost token over mutual TLS; the calling "
                    "service must wrap it in an app-asserted token bound to its certificate "
                    "(spec 3.4, 4.4)",
                    hop=0,
                )
            if hop > 0 and typ == APP:
                raise TypeMismatch(
                    f"the token at hop {hop} is an app token from {layer.claims.iss}, which "
                    "cannot be wrapped: an upstream must be a user token or an app-asserted "
                    "token (spec 4.5)",
                    hop=hop,
                )
            if hop > 0 and self._usable(layer.entry.verdict, hop, now, generation):
                layer.vouched = True
                return layers
            upstream = layer.claims.upstream
            if upstream is None:
                return layers
            if hop >= self.limits.max_depth:
                raise TokenTooDeep(
                    f"the token nests more than {self.limits.max_depth} wrapped tokens "
                    "(spec 4.2)",
                    hop=hop,
                )
            current = upstream
            digest = layer.entry.upstream_digest
            hop += 1

    def _decode_one(
        self, token: str, digest: bytes | None, hop: int, peer: Peer | None, generation: int
    ) -> _Layer:
        if digest is not None and self.cache is not None:
            cached = self.cache.get(digest)
            if cached is not None:
                return _Layer(hop, digest, cached, cached.kid, cached.claims, None)
        try:
            # The header encodings and identities the peer and the bundle vouch for spare a
            # token most of its parsing: exact matches of known-good values, not a cache.
            known = self._known_now(generation)
            parsed = jose.parse(token, peer.headers if peer is not None else known.headers)
            if parsed.typ not in KINDS:
                raise TypeMismatch(
                    f"the token type {parsed.typ[:40]!r} is not one of meshid's "
                    f"({', '.join(sorted(KINDS))}) (spec 3.2)"
                )
            ids = known.ids
            if peer is not None and peer.spiffe_text not in ids:
                ids = {**ids, peer.spiffe_text: peer.spiffe_id}
            claims = parse_claims(parsed.typ, parsed.claims, ids)
        except TokenError as err:
            raise err.at_hop(hop) from err.__cause__
        upstream = claims.upstream
        entry = VerifiedToken(
            kid=parsed.kid,
            claims=claims,
            hop=Hop(claims.typ, claims.iss, claims.sub, claims.aud, claims.iat, claims.exp,
                    parsed.kid),
            upstream_digest=(
                token_digest(upstream)
                if upstream is not None and self.cache is not None
                else None
            ),
            user_claims=_freeze(claims.raw) if claims.typ == USER else None,
        )
        return _Layer(hop, digest, entry, parsed.kid, claims, parsed)

    def _known_now(self, generation: int) -> _Known:
        known = self._known
        if known.generation == generation:
            return known
        keys = self.bundle.keys()
        headers = {jose.encoded_header(typ, kid): (typ, kid) for kid in keys for typ in KINDS}
        ids = {**self._trusted_ids, **{str(k.spiffe_id): k.spiffe_id for k in keys.values()}}
        known = _Known(generation, headers, ids)
        self._known = known
        return known

    # rule 4: the outermost token is the peer's own
    def _check_outermost(self, layer: _Layer, peer: Peer, now: int) -> None:
        c = layer.claims
        if peer.reserved_role is not None:
            raise IssuerUntrusted(
                f"the outermost token comes from {peer.spiffe_id}, the identity of "
                f"{peer.reserved_role}, which may not sign tokens (spec 8)",
                hop=0,
            )
        if layer.kid != peer.thumbprint:
            raise PeerMismatch(
                f"the outermost token was not signed with the certificate key of the peer "
                f"{peer.spiffe_id} (its kid names another certificate) (spec 4.4)",
                hop=0,
            )
        if layer.parsed is not None:
            self._verify_sig(peer.key, layer)
        if c.iss_text != peer.spiffe_text:
            raise PeerMismatch(
                f"the outermost token's issuer {c.iss} is not the peer {peer.spiffe_id} "
                "(spec 4.4)",
                hop=0,
            )
        if c.aud[0] != self._own:
            raise AudienceMismatch(
                f"token audience {_short(c.aud[0])} is not this service {self.own_id} "
                f"(spec 4.4); {c.iss} addressed it to another service",
                hop=0,
            )
        if c.cnf != peer.thumbprint:
            raise ConfirmationMismatch(
                f"the outermost token from {c.iss} is bound (cnf.x5t#S256) to another "
                f"certificate than the one the peer {peer.spiffe_id} presented (spec 4.4)",
                hop=0,
            )
        self._check_time(layer, now)

    # the edge port: a user token only, from a trusted issuer, for us
    def _check_edge(self, layer: _Layer, now: int, generation: int) -> None:
        self._check_signed_by_bundle_key(layer, now, generation)
        c = layer.claims
        if self._own not in c.aud:
            raise AudienceMismatch(
                f"token audience {_aud_text(c.aud)} does not include this service "
                f"{self.own_id} (spec 4.8)",
                hop=0,
            )
        self._check_user_issuer(layer)
        self._check_time(layer, now)

    # rule 5: each wrapped token
    def _check_wrapped(self, layer: _Layer, wrapper: _Layer, now: int, generation: int) -> None:
        hop = layer.hop
        self._check_signed_by_bundle_key(layer, now, generation)
        self._check_relation(layer, wrapper)
        c = layer.claims
        if c.cnf is not None and c.cnf != layer.kid:
            # The wrapping service signs with its own SVID key, so cnf must name that key's
            # certificate; anything else is a token bound to someone who did not sign it.
            raise ConfirmationMismatch(
                f"the token at hop {hop} from {c.iss} is bound (cnf.x5t#S256) to another "
                "certificate than the one that signed it (spec 3.3, RFC 8705)",
                hop=hop,
            )
        if c.typ == USER:
            self._check_user_issuer(layer)
        self._check_time(layer, now)

    # rule 5, the part that depends on the wrapper: never vouched for by a cached verdict
    @staticmethod
    def _check_relation(layer: _Layer, wrapper: _Layer) -> None:
        hop = layer.hop
        c, w = layer.claims, wrapper.claims
        if w.iss_text not in c.aud:
            raise ChainBroken(
                f"the token at hop {hop} ({KIND_NAMES[c.typ]} from {c.iss}) is addressed to "
                f"{_aud_text(c.aud)}, not to {w.iss} which wrapped it: the chain was spliced "
                "from different requests (spec 4.5)",
                hop=hop,
            )
        if c.sub != w.sub:
            raise SubjectMismatch(
                f"the token at hop {hop - 1} from {w.iss} names the user {_short(w.sub)} but the "
                f"token it wraps names {_short(c.sub)}: the user must not change along a chain "
                "(spec 4.5)",
                hop=hop - 1,
            )
        if c.exp < w.exp:
            raise ExpiryExtended(
                f"the token at hop {hop - 1} from {w.iss} expires at {w.exp}, after the token "
                f"it wraps (hop {hop}, expires {c.exp}): a wrapper must never outlive its "
                "upstream (spec 3.4, 4.5)",
                hop=hop - 1,
            )

    def _bundle_key(self, layer: _Layer, generation: int) -> _Key:
        kid = layer.kid
        memo = self._keys.get(kid)
        if memo is not None and memo.generation == generation:
            return memo
        key = self.bundle.key_for(kid)
        if key is None:
            why = ""
            reason_of = getattr(self.bundle, "rejection_reason", None)
            if callable(reason_of) and (reason := reason_of(kid)):
                why = f" (the bundle has an entry for it that was rejected: {reason})"
            raise KeyUnknown(
                f"the {KIND_NAMES[layer.claims.typ]} at hop {layer.hop} names a signing key "
                f"that is not in the trust bundle of {self.bundle.trust_domain}{why}; it was "
                "not signed by a current member of this trust domain (spec 4.5)",
                hop=layer.hop,
            )
        if (role := key.spiffe_id.reserved_role) is not None:
            # FileBundleSource never loads such a key; another BundleSource might.
            raise IssuerUntrusted(
                f"the {KIND_NAMES[layer.claims.typ]} at hop {layer.hop} was signed with the key "
                f"of {key.spiffe_id}, the identity of {role}, which may not sign tokens (spec 8)",
                hop=layer.hop,
            )
        # Leaf and intermediates alike: revoking a CA must end every key it certified. Done
        # once per kid and generation (the memo below), so the request path stays a lookup.
        for cert in key.chain or (key.certificate,):
            if self.bundle.is_revoked(cert):
                what = "certificate" if cert == key.certificate else "issuing CA certificate"
                raise CertificateRevoked(
                    f"the {KIND_NAMES[layer.claims.typ]} at hop {layer.hop} was signed with the "
                    f"key of {key.spiffe_id}, whose {what} "
                    f"(serial {format_serial(cert.serial_number)}) is revoked (spec 4.5)",
                    hop=layer.hop,
                )
        if len(self._keys) >= _KEY_MEMO_MAX:
            self._keys.clear()
        # A key_for() that reloaded the bundle moved the generation on: memo under the new one.
        found = _Key(self.bundle.generation, key, str(key.spiffe_id),
                     jose.VerifyKey(key.public_key))
        self._keys[kid] = found
        return found

    def _check_signed_by_bundle_key(self, layer: _Layer, now: int, generation: int) -> None:
        hop, c = layer.hop, layer.claims
        found = self._bundle_key(layer, generation)
        key = found.key
        layer.key = key
        if not key.not_before <= now < key.not_after:
            raise CertificateUntrusted(
                f"the {KIND_NAMES[c.typ]} at hop {hop} was signed with the key of "
                f"{key.spiffe_id}, whose certificate is not valid now (spec 4.5)",
                hop=hop,
            )
        if layer.parsed is not None:
            self._verify_sig(found.verify_key, layer)
        if c.iss_text != found.spiffe_text:
            raise IssuerMismatch(
                f"the {KIND_NAMES[c.typ]} at hop {hop} claims issuer {c.iss} but was signed by "
                f"the key of {key.spiffe_id} (spec 4.5)",
                hop=hop,
            )

    @staticmethod
    def _verify_sig(key: jose.VerifyKey, layer: _Layer) -> None:
        assert layer.parsed is not None
        try:
            key.verify(layer.parsed)
        except TokenError as err:
            raise err.at_hop(layer.hop) from err.__cause__

    def _check_user_issuer(self, layer: _Layer) -> None:
        iss = layer.claims.iss
        if layer.claims.iss_text not in self._trusted_texts:
            trusted = ", ".join(sorted(str(i) for i in self.trusted_user_issuers))
            raise IssuerUntrusted(
                f"the user token at hop {layer.hop} was issued by {iss}, which is not a trusted "
                f"user-token issuer ({trusted}) (spec 4.5)",
                hop=layer.hop,
            )

    def _check_time(self, layer: _Layer, now: int) -> None:
        c, leeway = layer.claims, self.limits.leeway
        if now < c.exp + leeway and c.iat <= now + leeway and (
            c.nbf is None or c.nbf <= now + leeway
        ) and c.exp - c.iat <= self._max_life[c.typ]:
            return
        hop = layer.hop
        what = f"the {KIND_NAMES[c.typ]} at hop {hop} from {c.iss}"
        if now >= c.exp + leeway:
            raise TokenExpired(
                f"{what} expired {now - c.exp} s ago (allowed clock skew {leeway} s) (spec 4.4)",
                hop=hop,
            )
        if c.iat > now + leeway:
            raise TokenNotYetValid(
                f"{what} was issued {c.iat - now} s in the future (allowed clock skew "
                f"{leeway} s); check the issuer's clock (spec 4.4)",
                hop=hop,
            )
        if c.nbf is not None and c.nbf > now + leeway:
            raise TokenNotYetValid(
                f"{what} is not valid for another {c.nbf - now} s (nbf) (spec 4.4)", hop=hop
            )
        limit = self._max_life[c.typ]
        raise TokenLifetimeTooLong(
            f"{what} is valid for {c.exp - c.iat} s (exp - iat), over this service's limit of "
            f"{limit} s for {KIND_NAMES[c.typ]}s (VerifyLimits.max_lifetime); a long-lived "
            "token is worth more to whoever steals it",
            hop=hop,
        )

    def _result(self, token: str, layers: list[_Layer], peer: Peer | None) -> VerifiedChain:
        outer = layers[0].claims
        hops = tuple(layer.entry.hop for layer in layers)
        expires_at = min(hop.exp for hop in hops)
        if outer.typ == APP:
            assert peer is not None
            return VerifiedChain(
                peer=peer.spiffe_id, kind="service", user=None,
                user_claims=_EMPTY, chain=(peer.spiffe_id,),
                expires_at=expires_at, token=token, hops=hops,
            )
        assert outer.typ == APP_ASSERTED or peer is None
        last = layers[-1]
        verdict = last.entry.verdict
        if last.vouched:
            # The layers below the last one checked are summed up by its verdict.
            assert verdict is not None
            checked = hops[:-1]
            return VerifiedChain(
                peer=peer.spiffe_id if peer is not None else None,
                kind="user",
                user=verdict.user,
                user_claims=verdict.user_claims,
                chain=(*verdict.chain, *(hop.iss for hop in reversed(checked))),
                expires_at=min(expires_at, verdict.exp),
                token=token,
                hops=(*checked, *verdict.hops),
            )
        user = last.entry
        assert user.claims.typ == USER and user.user_claims is not None
        return VerifiedChain(
            peer=peer.spiffe_id if peer is not None else None,
            kind="user",
            user=user.claims.sub,
            user_claims=user.user_claims,
            chain=tuple(hop.iss for hop in reversed(hops[:-1])),
            expires_at=expires_at,
            token=token,
            hops=hops,
        )


_EMPTY: Mapping[str, Any] = MappingProxyType({})
_KEY_MEMO_MAX = 4096


def _frozen(v: Any) -> Any:
    if isinstance(v, dict):
        return _freeze(v)
    if isinstance(v, list):
        return tuple(_frozen(x) for x in v)
    return v


def _freeze(value: Mapping[str, Any]) -> Mapping[str, Any]:
    """A read-only deep copy of JSON claims (objects become mappings, arrays tuples)."""
    return MappingProxyType(
        {k: _frozen(v) if type(v) in (dict, list) else v for k, v in value.items()}
    )


def _short(text: str, limit: int = 80) -> str:
    """Claim text fit for a message: truncated, and quoted if it could forge a log line."""
    cut = text if len(text) <= limit else text[:limit] + "..."
    return cut if cut.isprintable() and cut.strip() == cut and cut else repr(cut)


def _aud_text(aud: tuple[str, ...]) -> str:
    shown = ", ".join(_short(a) for a in aud[:4])
    return shown + (f" and {len(aud) - 4} more" if len(aud) > 4 else "")
