"""The client side of DPoP (spec 4.7): a user's key, and a fresh proof on every edge call.

A client outside the mesh (a user's app, a CLI) holds a :class:`DpopClient`: a P-256 key made
in memory, never written anywhere. It proves the key at login, the auth service binds the user
token to the key's thumbprint (``cnf.jkt``), and from then on every call to an edge port carries
``authorization: DPoP <user token>`` and a ``dpop`` proof signed with the key for that very
service and method. A token lifted from anywhere else (a downstream service's inbound call, a
log) is useless without the key.

    client = mesh.DpopClient()
    auth = client.intercept(grpc.secure_channel(addr, creds, options), "auth.svc.mesh.internal")
    token = AuthServiceStub(auth).Login(LoginRequest(...)).token      # proof, no token
    gateway = client.intercept(grpc.secure_channel(...), "gateway.svc.mesh.internal",
                               token=token)
    GatewayServiceStub(gateway).PlaceOrder(...)                        # token + fresh proof

:meth:`DpopClient.intercept` wraps a sync channel (all four call kinds);
:meth:`DpopClient.aio_interceptors` gives the same for ``grpc.aio.secure_channel(...,
interceptors=...)``; :meth:`DpopClient.metadata` returns the entries for a call made by hand. A
call given its own ``authorization: DPoP <token>`` entry keeps it, and its proof names that
token. One proof per call (a stream counts as one call); a proof is single-use.
"""

from __future__ import annotations

import json
import secrets
import time
from collections.abc import AsyncIterable, Callable, Iterable, Sequence
from typing import Any, NamedTuple

import grpc
import grpc.aio
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature

from mesh.errors import ConfigError
from mesh.identity.certs import b64url
from mesh.identity.spiffeid import SpiffeId
from mesh.tokens.dpop import (
    ALGORITHM,
    DPOP_TYP,
    HTM,
    METADATA_KEY,
    SCHEME,
    ath_of,
    htu_for,
    jwk_thumbprint,
    public_jwk,
)

__all__ = ["DpopClient"]

Token = str | Callable[[], str] | None
_ECDSA = ec.ECDSA(hashes.SHA256())


class DpopClient:
    """A DPoP key pair (P-256) and the proofs made with it; thread-safe.

    ``key``: an existing P-256 private key (default: a new one). ``clock``: the proofs' ``iat``
    source. ``jkt`` is the key's RFC 7638 thumbprint, what a bound user token's ``cnf.jkt``
    names.
    """

    def __init__(self, key: ec.EllipticCurvePrivateKey | None = None, *,
                 clock: Callable[[], float] = time.time) -> None:
        key = key if key is not None else ec.generate_private_key(ec.SECP256R1())
        if not isinstance(key, ec.EllipticCurvePrivateKey) or not isinstance(
                key.curve, ec.SECP256R1):
            raise ConfigError("a DPoP key is an ECDSA P-256 private key (ES256)")
        self._key = key
        self._clock = clock
        self.jwk = public_jwk(key.public_key())
        self.jkt = jwk_thumbprint(self.jwk)
        header = {"typ": DPOP_TYP, "alg": ALGORITHM, "jwk": self.jwk}
        self._header = b64url(json.dumps(header, separators=(",", ":")).encode("ascii"))

    def __repr__(self) -> str:
        return f"DpopClient(jkt={self.jkt!r})"

    def proof(self, htu: str, *, token: str | None = None) -> str:
        """A new proof for a POST to ``htu``; with ``token``, bound to it (``ath``)."""
        claims: dict[str, Any] = {"jti": secrets.token_urlsafe(16), "htm": HTM, "htu": htu,
                                  "iat": int(self._clock())}
        if token is not None:
            claims["ath"] = ath_of(token)
        payload = b64url(json.dumps(claims, separators=(",", ":")).encode("utf-8"))
        signing_input = f"{self._header}.{payload}"
        r, s = decode_dss_signature(self._key.sign(signing_input.encode("ascii"), _ECDSA))
        return f"{signing_input}.{b64url(r.to_bytes(32, 'big') + s.to_bytes(32, 'big'))}"

    def proof_for(self, service: str | SpiffeId, method: str, *,
                  token: str | None = None) -> str:
        """A proof for ``method`` (``/pkg.Service/Method``) at ``service``: its SPIFFE ID, or the
        DNS name the client pins (``gateway.svc.mesh.internal``)."""
        return self.proof(_htu(service, method), token=token)

    def metadata(self, service: str | SpiffeId, method: str, *,
                 token: str | None = None) -> tuple[tuple[str, str], ...]:
        """The metadata of one call: ``authorization: DPoP <token>`` (if a token) and ``dpop``."""
        proof = ("dpop", self.proof_for(service, method, token=token))
        if token is None:
            return (proof,)
        return (("authorization", f"{SCHEME} {token}"), proof)

    def intercept(self, channel: grpc.Channel, service: str | SpiffeId, *,
                  token: Token = None) -> grpc.Channel:
        """``channel`` with a fresh proof on every call to ``service`` (its SPIFFE ID or
        pinned DNS name). ``token``: the user token (or a function returning the current one)
        to send as ``authorization: DPoP``; without it, a call's own ``DPoP`` authorization
        entry is kept and named by the proof, and a call with none (a login) gets a proof
        alone."""
        return grpc.intercept_channel(channel, _SyncInterceptor(self, _host(service), token))

    def aio_interceptors(self, service: str | SpiffeId, *, token: Token = None
                         ) -> list[grpc.aio.ClientInterceptor]:
        """The same for ``grpc.aio.secure_channel(..., interceptors=...)``."""
        stamp = _Stamp(self, _host(service), token)
        return [_AioUnaryUnary(stamp), _AioUnaryStream(stamp), _AioStreamUnary(stamp),
                _AioStreamStream(stamp)]


def _host(service: str | SpiffeId) -> str:
    return htu_for(service, "") if isinstance(service, SpiffeId) else f"https://{service}"


def _htu(service: str | SpiffeId, method: str) -> str:
    if not method.startswith("/"):
        raise ConfigError(f"method {method!r} must be a full method name '/pkg.Service/Method'")
    return _host(service) + method


class _Stamp:
    """Adds the authorization and proof entries to one call's metadata."""

    def __init__(self, client: DpopClient, prefix: str, token: Token) -> None:
        self._client = client
        self._prefix = prefix
        self._token = token

    def __call__(self, method: str | bytes, metadata: Sequence[tuple[str, Any]] | None
                 ) -> list[tuple[str, Any]]:
        name = method.decode() if isinstance(method, bytes) else method
        kept = [(k, v) for k, v in (metadata or ()) if k != METADATA_KEY]
        token = self._token() if callable(self._token) else self._token
        if token is not None:
            kept = [(k, v) for k, v in kept if k != "authorization"]
            kept.append(("authorization", f"{SCHEME} {token}"))
        else:
            token = _dpop_token(kept)
        kept.append((METADATA_KEY, self._client.proof(self._prefix + name, token=token)))
        return kept


def _dpop_token(metadata: Iterable[tuple[str, Any]]) -> str | None:
    for key, value in metadata:
        if key == "authorization" and isinstance(value, str):
            scheme, _, token = value.partition(" ")
            if scheme.lower() == SCHEME.lower() and token.strip():
                return token.strip()
    return None


class _Details(NamedTuple):
    method: str
    timeout: float | None
    metadata: Any
    credentials: grpc.CallCredentials | None
    wait_for_ready: bool | None
    compression: Any


class _SyncInterceptor(grpc.UnaryUnaryClientInterceptor, grpc.UnaryStreamClientInterceptor,
                       grpc.StreamUnaryClientInterceptor, grpc.StreamStreamClientInterceptor):
    def __init__(self, client: DpopClient, prefix: str, token: Token) -> None:
        self._stamp = _Stamp(client, prefix, token)

    def _details(self, d: grpc.ClientCallDetails) -> grpc.ClientCallDetails:
        metadata = self._stamp(d.method, d.metadata)
        return _ClientCallDetails(d.method, d.timeout, metadata, d.credentials,
                                  getattr(d, "wait_for_ready", None),
                                  getattr(d, "compression", None))

    def intercept_unary_unary(self, continuation: Callable[..., Any],
                              client_call_details: grpc.ClientCallDetails, request: Any) -> Any:
        return continuation(self._details(client_call_details), request)

    def intercept_unary_stream(self, continuation: Callable[..., Any],
                               client_call_details: grpc.ClientCallDetails, request: Any) -> Any:
        return continuation(self._details(client_call_details), request)

    def intercept_stream_unary(self, continuation: Callable[..., Any],
                               client_call_details: grpc.ClientCallDetails,
                               request_iterator: Any) -> Any:
        return continuation(self._details(client_call_details), request_iterator)

    def intercept_stream_stream(self, continuation: Callable[..., Any],
                                client_call_details: grpc.ClientCallDetails,
                                request_iterator: Any) -> Any:
        return continuation(self._details(client_call_details), request_iterator)


class _ClientCallDetails(_Details, grpc.ClientCallDetails):
    """grpc's sync interceptors take any ClientCallDetails with these attributes."""


def _aio_details(stamp: _Stamp, d: grpc.aio.ClientCallDetails) -> grpc.aio.ClientCallDetails:
    metadata = grpc.aio.Metadata(*stamp(d.method, list(d.metadata or ())))
    return grpc.aio.ClientCallDetails(d.method, d.timeout, metadata, d.credentials,
                                      d.wait_for_ready)


class _AioBase:
    def __init__(self, stamp: _Stamp) -> None:
        self.stamp = stamp


class _AioUnaryUnary(_AioBase, grpc.aio.UnaryUnaryClientInterceptor):
    async def intercept_unary_unary(self, continuation: Callable[..., Any],
                                    client_call_details: grpc.aio.ClientCallDetails,
                                    request: Any) -> Any:
        return await continuation(_aio_details(self.stamp, client_call_details), request)


class _AioUnaryStream(_AioBase, grpc.aio.UnaryStreamClientInterceptor):
    async def intercept_unary_stream(self, continuation: Callable[..., Any],
                                     client_call_details: grpc.aio.ClientCallDetails,
                                     request: Any) -> Any:
        return await continuation(_aio_details(self.stamp, client_call_details), request)


class _AioStreamUnary(_AioBase, grpc.aio.StreamUnaryClientInterceptor):
    async def intercept_stream_unary(self, continuation: Callable[..., Any],
                                     client_call_details: grpc.aio.ClientCallDetails,
                                     request_iterator: AsyncIterable[Any] | Iterable[Any]
                                     ) -> Any:
        return await continuation(_aio_details(self.stamp, client_call_details),
                                  request_iterator)


class _AioStreamStream(_AioBase, grpc.aio.StreamStreamClientInterceptor):
    async def intercept_stream_stream(self, continuation: Callable[..., Any],
                                      client_call_details: grpc.aio.ClientCallDetails,
                                      request_iterator: AsyncIterable[Any] | Iterable[Any]
                                      ) -> Any:
        return await continuation(_aio_details(self.stamp, client_call_details),
                                  request_iterator)
