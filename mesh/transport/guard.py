"""The server-side check of one call, shared by the sync and the aio interceptors.

Order (spec 5.3): the mutual-TLS peer (its certificate, not revoked, one SPIFFE ID of our trust
domain), then the token chain (:class:`mesh.tokens.verify.ChainVerifier`), then, at an edge
port, the user token's DPoP binding and proof (:class:`mesh.tokens.dpop.ProofVerifier`, spec
4.7), then the policy. The first failure becomes a :class:`Rejected` holding the gRPC status
with an ErrorInfo detail. Every decision is written to the audit log, with the time the checks
took.

The per-call cache may spare a repeated call the token verification, never the proof check: a
proof is single-use, so every edge call's proof is checked, and recorded, on every call.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

import grpc

from mesh.errors import CallRefused
from mesh.policy import Decision, Policy
from mesh.tokens.dpop import DpopSettings, ProofVerifier
from mesh.tokens.errors import (
    CertificateError,
    CertificateUntrusted,
    TokenMalformed,
    TokenMissing,
)
from mesh.tokens.verify import ChainVerifier, Peer, VerifiedChain
from mesh.transport.audit import AuditLog
from mesh.transport.errors import ServerConfigError
from mesh.transport.status import rejection

_log = logging.getLogger(__name__)
VERIFIER_FAILED = "VERIFIER_FAILED"
TOKENLESS = "TOKENLESS_METHOD"
TOKENLESS_RULE = "tokenless_methods"
HEALTH_METHODS = frozenset({"/grpc.health.v1.Health/Check", "/grpc.health.v1.Health/Watch"})

Metadata = Iterable[tuple[str, str | bytes]]
#: bound of the per-call cache (distinct token and peer pairs); cleared when full
CALL_CACHE_MAX = 4096
NO_PEER: Mapping[str, Any] = MappingProxyType({})  # what an edge port's wrapper passes


class Rejected(Exception):
    """Carries the status to abort the call with."""

    def __init__(self, status: grpc.Status, reason: str) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason


@dataclass(slots=True)
class _Verified:
    """A verified chain, the bundle generation it was verified under, decisions made for it.

    ``valid_until``: the earliest of the chain's ``exp``, the ``notAfter`` of every certificate
    whose key signed a layer (the peer's on a mutual-TLS port, the bundle keys' for the
    rest): the verifier refuses a layer whose signing certificate has expired, whatever its
    ``exp`` says, so the remembered call must end there too.
    """

    chain: VerifiedChain
    generation: int
    valid_until: float
    decisions: dict[str, Decision] = field(default_factory=dict)


def _authorization(metadata: Metadata, missing: str) -> tuple[str, str]:
    """The scheme and the rest of the one text ``authorization`` entry; raise TokenMissing
    (with ``missing``) or TokenMalformed."""
    found: list[str | bytes] = [v for k, v in metadata if k == "authorization"]
    if not found:
        raise TokenMissing(missing)
    if len(found) > 1:
        raise TokenMalformed("the call carries more than one authorization entry; send one")
    value = found[0]
    if isinstance(value, bytes):
        raise TokenMalformed("the authorization metadata must be text, not binary")
    scheme, _, token = value.partition(" ")
    return scheme, token


def bearer_token(metadata: Metadata) -> str:
    """The token of the one ``authorization: Bearer`` entry; raise TokenMissing/Malformed."""
    scheme, token = _authorization(
        metadata, "the call carries no 'authorization: Bearer <token>' metadata (spec 3.5); "
        "every mesh call needs a token")
    if scheme.lower() != "bearer" or not token:
        raise TokenMalformed("the authorization metadata must read 'Bearer <token>'")
    return token.strip()


def edge_authorization(metadata: Metadata) -> tuple[str, str]:
    """The scheme (``DPoP`` or ``Bearer``, as sent) and token of the one ``authorization``
    entry at an edge port (spec 3.5, 4.7); raise TokenMissing/Malformed."""
    scheme, token = _authorization(
        metadata, "the call carries no 'authorization: DPoP <user token>' metadata "
        "(spec 3.5, 4.7); every call to this edge port needs a user token")
    if scheme.lower() not in ("dpop", "bearer") or not token.strip():
        raise TokenMalformed("the authorization metadata must read 'DPoP <user token>' "
                             "(spec 3.5, 4.7)")
    return scheme, token.strip()


class CallGuard:
    """Checks peer, token chain, DPoP proof (edge ports) and policy for one service;
    thread-safe.

    ``dpop`` (edge ports only): the :class:`DpopSettings`, or a :class:`ProofVerifier` to
    share; default: ``DpopSettings()``, bound user tokens only.
    """

    def __init__(self, *, verifier: ChainVerifier, policy: Policy, audit: AuditLog,
                 edge: bool = False, tokenless_methods: Iterable[str] = HEALTH_METHODS,
                 call_cache_size: int = CALL_CACHE_MAX,
                 clock: Callable[[], float] = time.time,
                 dpop: DpopSettings | ProofVerifier | None = None) -> None:
        self.own_id = verifier.own_id
        if not edge and dpop is not None:
            raise ServerConfigError("DPoP proofs are checked at edge ports only (spec 4.7); a "
                                    "mutual-TLS port binds its callers by their certificates")
        #: the edge port's proof checker (None on a mutual-TLS port)
        self.proofs: ProofVerifier | None = (
            (dpop if isinstance(dpop, ProofVerifier)
             else ProofVerifier(self.own_id, dpop, clock=clock)) if edge else None
        )
        self._clock = clock  # a test's fake clock must be the verifier's too
        self._verifier = verifier
        self._bundle = verifier.bundle
        self._policy = policy
        self._audit = audit
        self._edge = edge
        self._tokenless = frozenset(tokenless_methods)
        # (token, peer PEM) -> (chain, bundle generation). A hit skips the verifier only while
        # nothing it depended on can have changed: same bytes from the same certificate, the
        # same bundle/CRL generation, and before the chain's earliest exp or signing
        # certificate notAfter (no leeway, see _Verified). The policy's decision is remembered
        # per method for that chain (the policy is immutable).
        self._calls: dict[tuple[str, bytes | None], _Verified] | None = (
            {} if call_cache_size > 0 else None
        )
        self._calls_max = call_cache_size
        self._calls_lock = threading.Lock()

    @property
    def edge(self) -> bool:
        return self._edge

    @property
    def max_token_size(self) -> int:
        """The largest token this guard's verifier accepts (gRPC's limits are set above it)."""
        return self._verifier.limits.max_size

    def _reject(self, method: str, code: grpc.StatusCode, message: str, reason: str,
                extra: Mapping[str, str] | None = None) -> Rejected:
        return Rejected(rejection(code, message, reason, service=str(self.own_id),
                                  method=method, extra=extra), reason)

    def refusal(self, method: str, err: CallRefused) -> grpc.Status:
        """The status for a refusal raised while the handler ran (its own rule and reason)."""
        extra = {"hop": str(err.hop)} if err.hop is not None else None
        return rejection(err.status, str(err), err.reason, service=str(self.own_id),
                         method=method, extra=extra)

    def _verify(self, token: str, peer: Peer | None) -> _Verified:
        cache = self._calls
        if cache is None:
            chain = self._verifier.verify(token, peer)
            return _Verified(chain, 0, 0.0)
        key = (token, peer.pem if peer else None)
        generation = self._bundle.generation
        hit = cache.get(key)
        if hit is not None and hit.generation == generation and self._clock() < hit.valid_until:
            return hit
        chain = self._verifier.verify(token, peer)
        entry = _Verified(chain, generation, min(float(chain.expires_at), self._signers_until(
            chain, peer.not_after if peer else math.inf)))
        with self._calls_lock:
            if len(cache) >= self._calls_max:
                cache.clear()
            cache[key] = entry
        return entry

    def _signers_until(self, chain: VerifiedChain, peer_not_after: float) -> float:
        """The earliest ``notAfter`` of the certificates that signed ``chain``'s layers.

        On a mutual-TLS port hop 0 is signed by the peer's own key (``peer_not_after``); every
        other layer, and an edge port's user token, by a bundle key found by its ``kid``. A key
        the bundle no longer holds (it changed since the check) gives -inf: never short-cut.
        """
        until = peer_not_after
        for hop in chain.hops[0 if self._edge else 1:]:
            key = self._bundle.key_for(hop.kid)
            if key is None:
                return -math.inf
            until = min(until, float(key.not_after))
        return until

    def _decide(self, method: str, verified: _Verified) -> Decision:
        # The policy is immutable and decides from (method, chain) alone, so a decision can be
        # remembered with the verified chain it was made for.
        decision = verified.decisions.get(method) if self._calls is not None else None
        if decision is None:
            decision = self._policy.decide(method, verified.chain)
            if self._calls is not None and len(verified.decisions) < 64:
                verified.decisions[method] = decision
        return decision

    def peer(self, auth_context: Mapping[str, Any]) -> Peer:
        """The mutual-TLS peer, checked (rule 4.1: chain to the bundle's anchors, validity now,
        not revoked, one SPIFFE ID of the trust domain) through the verifier's peer table.
        gRPC's TLS checked the chain against ``svid_bundle.pem`` already, but knows no CRL."""
        pems = auth_context.get("x509_pem_cert")
        if not pems:
            raise CertificateUntrusted("the call did not arrive over mutual TLS: the peer "
                                       "presented no certificate (spec 4.1)")
        return self._verifier.peer(pems[0])

    def _remembered(self, method: str, metadata: Metadata, auth_context: Mapping[str, Any],
                    calls: dict[tuple[str, bytes | None], _Verified], start: int
                    ) -> VerifiedChain | None:
        """The chain of a call whose exact token and peer certificate were verified and allowed
        for ``method`` under the current bundle generation, before any expiry; else None.

        The common case on a busy mutual-TLS service, with as few objects touched as
        possible. Anything unusual (no or duplicate authorization, another scheme spelling, no
        certificate, a miss, a denial) returns None and takes the full path, which says why.
        Never used at an edge port: there every call's proof must be checked (spec 4.7).
        """
        value: object = None
        for key, item in metadata:
            if key == "authorization":
                if value is not None:
                    return None
                value = item
        if type(value) is not str or not value.startswith("Bearer "):
            return None
        pems = auth_context.get("x509_pem_cert")
        if not pems:
            return None
        hit = calls.get((value[7:], pems[0]))
        if (hit is None or hit.generation != self._bundle.generation
                or not self._clock() < hit.valid_until):
            return None
        decision = hit.decisions.get(method)
        if decision is None or not decision.allowed:
            return None
        chain = hit.chain
        if self._audit.enabled:
            self._audit.record(method=method, peer=chain.peer, user=chain.user,
                               chain=chain.chain, allowed=True, reason=decision.reason,
                               rule=decision.rule,
                               verify_us=(time.perf_counter_ns() - start) // 1000)
        return chain

    def check(self, method: str, metadata: Metadata,
              auth_context: Mapping[str, Any]) -> VerifiedChain | None:
        """Verify one call; return its chain (None for tokenless methods) or raise Rejected."""
        start = time.perf_counter_ns()
        calls = self._calls
        if calls is not None and not self._edge and method not in self._tokenless:
            chain = self._remembered(method, metadata, auth_context, calls, start)
            if chain is not None:
                return chain
        peer: Peer | None = None
        user: str | None = None  # whose verified token a refused proof came with
        try:
            if not self._edge:
                peer = self.peer(auth_context)
            if method in self._tokenless:
                # Transport checks of the port kind only: the mutual-TLS peer (chain, CRL,
                # validity) here, nothing on an edge port. No token, no policy; said so in
                # the audit line.
                self._audit.record(method=method, peer=peer.spiffe_id if peer else None,
                                   user=None, chain=(), allowed=True, reason=TOKENLESS,
                                   rule=TOKENLESS_RULE,
                                   verify_us=(time.perf_counter_ns() - start) // 1000)
                return None
            if self.proofs is not None:
                # Token rules (4.8) first, possibly remembered; then the proof, always.
                scheme, token = edge_authorization(metadata)
                verified = self._verify(token, None)
                user = verified.chain.user
                self.proofs.check_call(verified.chain, scheme, metadata, method)
            else:
                token = bearer_token(metadata)
                verified = self._verify(token, peer)
        except CallRefused as err:
            self._audit.record(method=method, peer=peer.spiffe_id if peer else None, user=user,
                               chain=(), allowed=False, reason=err.reason, rule=None,
                               verify_us=(time.perf_counter_ns() - start) // 1000,
                               presented=err.presented if peer is None
                               and isinstance(err, CertificateError) else None)
            extra = {"hop": str(err.hop)} if err.hop is not None else None
            raise self._reject(method, err.status, str(err), err.reason,
                               extra) from None
        except Exception:
            # Fail closed, and keep the internals (and anything secret) out of the reply.
            _log.exception("verifying a call to %s failed unexpectedly", method)
            self._audit.record(method=method, peer=peer.spiffe_id if peer else None, user=None,
                               chain=(), allowed=False, reason=VERIFIER_FAILED, rule=None,
                               verify_us=(time.perf_counter_ns() - start) // 1000)
            raise self._reject(method, grpc.StatusCode.INTERNAL,
                               "the call could not be verified because of an internal error "
                               "at the called service; it was refused", VERIFIER_FAILED) from None
        chain = verified.chain
        decision = self._decide(method, verified)
        self._audit.record(method=method, peer=chain.peer, user=chain.user, chain=chain.chain,
                           allowed=decision.allowed, reason=decision.reason, rule=decision.rule,
                           verify_us=(time.perf_counter_ns() - start) // 1000)
        if not decision.allowed:
            raise self._reject(method, grpc.StatusCode.PERMISSION_DENIED, decision.message,
                               decision.reason, {"rule": decision.rule})
        return chain
