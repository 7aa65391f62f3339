"""The one mini mesh every test area builds on: a real CA of ours, real SVIDs, real servers.

:class:`MiniMesh` gives, for any service name, its SVID (issued on first use by a fresh CA, with
or without an intermediate), identity folder, signer and verifier; an attacker's toolkit that
builds arbitrary JWS (any header, payload, key or bytes); and real mesh servers on
127.0.0.1:0 (sync and aio) running echo handlers that report what the handler saw through
``mesh.current_call()``. One settable :class:`Clock` is shared by its signers and verifiers;
it starts at the real time, since certificate chains are validated against the real time.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import hmac
import itertools
import json
import secrets
import threading
from collections.abc import AsyncIterator, Callable, Iterator
from concurrent.futures import Future
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import grpc
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature

from ca.authority import CertificateAuthority
from ca.svid import IssuedSVID
from mesh.dpop import DpopClient
from mesh.identity.bundle import FileBundleSource
from mesh.identity.spiffeid import SpiffeId, TrustDomain
from mesh.identity.svid import X509SvidFolder
from mesh.policy import Policy, Rule
from mesh.tokens import ChainVerifier, TokenSigner, VerifyLimits
from mesh.tokens.cache import VerifiedTokenCache
from mesh.transport.channel import AioMeshChannel, MeshChannel
from mesh.transport.context import current_call, enter_call, leave_call
from mesh.transport.server import AioMeshServer, MeshServer
from mesh.workload import Workload

# --- JWS building blocks (the attacker's toolkit) --------------------------------------------


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def es256(key: ec.EllipticCurvePrivateKey, signing_input: bytes) -> bytes:
    r, s = decode_dss_signature(key.sign(signing_input, ec.ECDSA(hashes.SHA256())))
    return r.to_bytes(32, "big") + s.to_bytes(32, "big")


def encode_part(part: dict[str, Any] | bytes | str) -> str:
    if isinstance(part, dict):
        return b64(json.dumps(part, separators=(",", ":")).encode())
    if isinstance(part, bytes):
        return b64(part)
    return part  # already encoded (or deliberately garbled)


#: pass as a claim override to remove that claim
DROP = object()


class ProofForge:
    """A client's DPoP key and a proof builder that can break any one thing (spec 4.7):
    header members (``header``, DROP removes one), claims (keywords), the signing key
    (``signer``) or the signature bytes. ``token`` sets ``ath`` (None: no ath)."""

    def __init__(self, htu: str, *, clock: Callable[[], float] | None = None) -> None:
        self.key = ec.generate_private_key(ec.SECP256R1())
        numbers = self.key.public_key().public_numbers()
        self.jwk = {"kty": "EC", "crv": "P-256", "x": b64(numbers.x.to_bytes(32, "big")),
                    "y": b64(numbers.y.to_bytes(32, "big"))}
        canonical = json.dumps({m: self.jwk[m] for m in ("crv", "kty", "x", "y")},
                               separators=(",", ":"))
        self.jkt = b64(hashlib.sha256(canonical.encode()).digest())
        self.htu = htu
        self.clock = clock

    def proof(self, *, header: dict[str, Any] | None = None, token: str | None = None,
              signer: ec.EllipticCurvePrivateKey | None = None,
              signature: bytes | Callable[[bytes], bytes] | None = None, **claims: Any) -> str:
        head = {"typ": "dpop+jwt", "alg": "ES256", "jwk": self.jwk, **(header or {})}
        now = self.clock() if self.clock is not None else datetime.now(UTC).timestamp()
        body: dict[str, Any] = {"jti": secrets.token_urlsafe(12), "htm": "POST",
                                "htu": self.htu, "iat": int(now)}
        if token is not None:
            body["ath"] = b64(hashlib.sha256(token.encode("ascii")).digest())
        body.update(claims)
        h64 = encode_part({k: v for k, v in head.items() if v is not DROP})
        p64 = encode_part({k: v for k, v in body.items() if v is not DROP})
        signing_input = f"{h64}.{p64}".encode()
        if signature is None:
            sig = es256(signer or self.key, signing_input)
        elif callable(signature):
            sig = signature(signing_input)
        else:
            sig = signature
        return f"{h64}.{p64}.{b64(sig)}"


@dataclass
class Clock:
    """A settable clock shared by the signers and verifiers of one mesh."""

    now: float

    def __call__(self) -> float:
        return self.now


# --- echo services ---------------------------------------------------------------------------

SERVICE = "test.v1.Echo"
UNARY = f"/{SERVICE}/Unary"
SERVER_STREAM = f"/{SERVICE}/ServerStream"
CLIENT_STREAM = f"/{SERVICE}/ClientStream"
BIDI = f"/{SERVICE}/Bidi"
METHODS = (UNARY, SERVER_STREAM, CLIENT_STREAM, BIDI)


def seen() -> dict[str, Any]:
    """What the handler sees of its caller (JSON-able)."""
    call = current_call()
    if call is None:
        return {"call": None}
    return {
        "peer": str(call.peer) if call.peer else None,
        "kind": call.kind,
        "user": call.user,
        "chain": [s.service_name for s in call.chain],
        "scope": call.user_claims.get("scope"),
        "jkt": call.user_jkt,
    }


def encode(value: Any) -> bytes:
    return json.dumps(value).encode()


def decode(data: bytes) -> Any:
    return json.loads(data)


Forward = Callable[[bytes], bytes] | None


def sync_handlers(forward: Forward = None) -> grpc.GenericRpcHandler:
    """Echo handlers; ``forward(request)`` (if given) is called from inside the unary handler."""

    def unary(request: bytes, context: grpc.ServicerContext) -> bytes:
        out = seen()
        if forward is not None:
            out["downstream"] = decode(forward(request))
        return encode(out)

    def server_stream(request: bytes, context: grpc.ServicerContext) -> Iterator[bytes]:
        for i in range(3):
            yield encode({**seen(), "i": i})

    def client_stream(requests: Iterator[bytes], context: grpc.ServicerContext) -> bytes:
        return encode({**seen(), "n": sum(1 for _ in requests)})

    def bidi(requests: Iterator[bytes], context: grpc.ServicerContext) -> Iterator[bytes]:
        for r in requests:
            yield encode({**seen(), "echo": r.decode()})

    return grpc.method_handlers_generic_handler(SERVICE, {
        "Unary": grpc.unary_unary_rpc_method_handler(unary),
        "ServerStream": grpc.unary_stream_rpc_method_handler(server_stream),
        "ClientStream": grpc.stream_unary_rpc_method_handler(client_stream),
        "Bidi": grpc.stream_stream_rpc_method_handler(bidi),
    })


def aio_handlers() -> grpc.GenericRpcHandler:
    async def unary(request: bytes, context: Any) -> bytes:
        return encode(seen())

    async def server_stream(request: bytes, context: Any) -> AsyncIterator[bytes]:
        for i in range(3):
            yield encode({**seen(), "i": i})

    async def client_stream(requests: AsyncIterator[bytes], context: Any) -> bytes:
        n = 0
        async for _ in requests:
            n += 1
        return encode({**seen(), "n": n})

    async def bidi(requests: AsyncIterator[bytes], context: Any) -> AsyncIterator[bytes]:
        async for r in requests:
            yield encode({**seen(), "echo": r.decode()})

    return grpc.method_handlers_generic_handler(SERVICE, {
        "Unary": grpc.unary_unary_rpc_method_handler(unary),
        "ServerStream": grpc.unary_stream_rpc_method_handler(server_stream),
        "ClientStream": grpc.stream_unary_rpc_method_handler(client_stream),
        "Bidi": grpc.stream_stream_rpc_method_handler(bidi),
    })


def allow_all(peers: tuple[str, ...] = ("*",), **kw: Any) -> Policy:
    return Policy([Rule(methods=("*",), peers=peers, **kw)])


class AioLoop:
    """One event loop in a background thread, so sync tests can drive aio servers/clients."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self._thread.start()

    def run(self, coro: Any, timeout: float = 20) -> Any:
        fut: Future[Any] = asyncio.run_coroutine_threadsafe(coro, self.loop)
        return fut.result(timeout)

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(5)


# --- the mesh --------------------------------------------------------------------------------


class _Issued(dict[str, IssuedSVID]):
    def __init__(self, mesh: MiniMesh) -> None:
        super().__init__()
        self._mesh = mesh

    def __missing__(self, name: str) -> IssuedSVID:
        issued = self._mesh.ca.issue(name, **self._mesh.issue_kw.get(name, {}))
        self[name] = issued
        return issued


class _Signers(dict[str, TokenSigner]):
    def __init__(self, mesh: MiniMesh) -> None:
        super().__init__()
        self._mesh = mesh

    def __missing__(self, name: str) -> TokenSigner:
        svid = self._mesh.svids[name]
        signer = TokenSigner(svid.private_key, svid.chain, clock=self._mesh.clock)
        self[name] = signer
        return signer


#: issued when a mesh is made (any other name is issued on first use)
SERVICES = ("auth", "gateway", "orders", "payments", "inventory")


class MiniMesh:
    """Services of one CA, identity folders under ``root``, and servers it cleans up."""

    def __init__(self, ca: CertificateAuthority, root: Path, *,
                 issue_kw: dict[str, dict[str, Any]] | None = None) -> None:
        self.ca = ca
        self.root = root
        self.issue_kw = issue_kw or {}
        self.clock = Clock(float(int(datetime.now(UTC).timestamp())))
        self.svids: dict[str, IssuedSVID] = _Issued(self)
        self.signers: dict[str, TokenSigner] = _Signers(self)
        self._trust: FileBundleSource | None = None
        self._servers: list[MeshServer] = []
        self._channels: list[MeshChannel] = []
        self._workloads: list[Workload] = []
        self._aio: AioLoop | None = None
        self._aio_servers: list[AioMeshServer] = []
        for name in SERVICES:
            self.svids[name]

    # --- who is who -----------------------------------------------------------------------------

    @property
    def td(self) -> TrustDomain:
        return self.ca.trust_domain

    def id(self, name: str) -> SpiffeId:
        return self.td.service(name)

    def key(self, name: str) -> ec.EllipticCurvePrivateKey:
        key = self.svids[name].private_key
        assert key is not None
        return key

    def cert(self, name: str) -> x509.Certificate:
        return self.svids[name].certificate

    def kid(self, name: str) -> str:
        return self.svids[name].thumbprint

    # --- trust ----------------------------------------------------------------------------------

    def bundle(self, crl: Any = "default", **kw: Any) -> FileBundleSource:
        """A new bundle source on the CA's published files (``crl=None``: no CRL)."""
        return FileBundleSource(self.ca.bundle_path,
                                self.ca.crl_path if crl == "default" else crl, **kw)

    @property
    def trust(self) -> FileBundleSource:
        """One bundle source shared by this mesh's servers, quick to notice file changes."""
        if self._trust is None:
            self._trust = self.bundle(check_interval=0.05, unknown_kid_interval=0.05)
        return self._trust

    def verifier(self, name: str, *, bundle: FileBundleSource | None = None, cache: Any = None,
                 **limits: Any) -> ChainVerifier:
        return ChainVerifier(self.id(name), bundle or self.bundle(), limits=VerifyLimits(**limits),
                             cache=cache, clock=self.clock)

    def cached_verifier(self, name: str, **kw: Any) -> ChainVerifier:
        return self.verifier(name, cache=VerifiedTokenCache(clock=self.clock), **kw)

    def root_crl(self, revoked_serials: list[int], number: int = 1) -> bytes:
        """A CRL signed by the ROOT key (the only key that can revoke an intermediate)."""
        now = datetime.now(UTC)
        builder = (
            x509.CertificateRevocationListBuilder()
            .issuer_name(self.ca.root_cert.subject)
            .last_update(now - timedelta(minutes=1))
            .next_update(now + timedelta(days=1))
            .add_extension(x509.CRLNumber(number), critical=False)
        )
        for serial in revoked_serials:
            builder = builder.add_revoked_certificate(
                x509.RevokedCertificateBuilder().serial_number(serial)
                .revocation_date(now - timedelta(minutes=1)).build()
            )
        crl = builder.sign(self.ca._root_key, hashes.SHA256())
        return crl.public_bytes(serialization.Encoding.PEM)

    # --- legitimate tokens ----------------------------------------------------------------------

    def user_token(self, aud: str = "gateway", sub: str = "alice", **kw: Any) -> str:
        return self.signers["auth"].user_token(sub, [self.id(aud)], **kw)

    def wrap(self, upstream: str, by: str, to: str, ttl: int = 60) -> str:
        return self.signers[by].app_asserted_token(upstream, self.id(to), ttl=ttl)

    def chain(self, *hops: str) -> str:
        """A user token for hops[0], wrapped by each service in turn: chain("gateway",
        "orders", "payments") is the token orders sends to payments."""
        token = self.user_token(hops[0])
        for by, to in itertools.pairwise(hops):
            token = self.wrap(token, by, to)
        return token

    # --- the attacker's toolkit -----------------------------------------------------------------

    def claims(self, typ: str, by: str, to: str | list[str], **over: Any) -> dict[str, Any]:
        base: dict[str, Any] = {
            "iss": str(self.id(by)),
            "sub": "alice" if typ != "app+jwt" else str(self.id(by)),
            "aud": to if isinstance(to, list) else str(self.id(to)),
            "iat": int(self.clock.now),
            "exp": int(self.clock.now) + 60,
            "jti": "jti-" + hashlib.sha256(repr(over).encode()).hexdigest()[:16],
        }
        if typ != "user+jwt":
            base["cnf"] = {"x5t#S256": self.kid(by)}
        base.update(over)
        return {k: v for k, v in base.items() if v is not DROP}

    def user_claims(self, **over: Any) -> dict[str, Any]:
        now = int(self.clock.now)
        claims: dict[str, Any] = {
            "iss": str(self.id("auth")), "sub": "alice", "aud": [str(self.id("gateway"))],
            "iat": now, "exp": now + 300, "jti": secrets.token_hex(8),
        }
        claims.update(over)
        return claims

    def forge(self, header: dict[str, Any] | bytes | str, payload: dict[str, Any] | bytes | str,
              key: ec.EllipticCurvePrivateKey | None = None, *,
              signature: bytes | None = None) -> str:
        """A compact JWS with exactly these parts, ES256-signed by ``key`` (or ``signature``)."""
        signing_input = f"{encode_part(header)}.{encode_part(payload)}"
        if signature is None:
            assert key is not None
            signature = es256(key, signing_input.encode())
        return f"{signing_input}.{b64(signature)}"

    def forge_signed(self, typ: str, by: str, to: str | list[str], **over: Any) -> str:
        """A token of kind ``typ`` with claim overrides, validly signed with ``by``'s own key."""
        header = {"alg": "ES256", "kid": self.kid(by), "typ": typ}
        return self.forge(header, self.claims(typ, by, to, **over), self.key(by))

    def forge_user(self, payload: dict[str, Any] | bytes, by: str = "auth") -> str:
        """A user token with exactly this payload, validly signed by ``by``'s SVID key."""
        header = {"alg": "ES256", "typ": "user+jwt", "kid": self.kid(by)}
        raw = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
        return self.forge(header, raw, self.key(by))

    @staticmethod
    def hs256(header: dict[str, Any], payload: dict[str, Any], secret: bytes) -> str:
        signing_input = f"{encode_part(header)}.{encode_part(payload)}"
        mac = hmac.new(secret, signing_input.encode(), hashlib.sha256).digest()
        return f"{signing_input}.{b64(mac)}"

    # --- identity folders -----------------------------------------------------------------------

    def folder(self, name: str) -> Path:
        return self.root / "ids" / name

    def identity(self, name: str, poll: float = 0.05) -> X509SvidFolder:
        """A fresh SVID for ``name`` written to its folder, read by a folder source."""
        issued = self.ca.issue(name, **self.issue_kw.get(name, {}))
        self._replace(name, issued)
        issued.write_to(self.folder(name))
        return X509SvidFolder(self.folder(name), poll_interval=poll)

    def rotate(self, name: str) -> None:
        renewed = self.ca.renew(name)
        self._replace(name, renewed)
        renewed.write_to(self.folder(name))

    def _replace(self, name: str, issued: IssuedSVID) -> None:
        self.svids[name] = issued
        self.signers.pop(name, None)

    def workload(self, name: str, **kw: Any) -> Workload:
        """``mesh.Workload`` for ``name``, its folder also holding the bundle and CRL."""
        self.identity(name)
        folder = self.folder(name)
        workload = Workload.from_folder(folder, bundle=self.ca.bundle_path, crl=self.ca.crl_path,
                                        poll_interval=0.05, **kw)
        self._workloads.append(workload)
        return workload

    # --- servers and channels -------------------------------------------------------------------

    def serve(self, name: str, policy: Policy, *, forward: Forward = None,
              source: X509SvidFolder | None = None, edge: bool = False,
              bundle: FileBundleSource | None = None, **kw: Any) -> int:
        source = source or self.identity(name)
        server = MeshServer(source, policy, bundle or self.trust, edge=edge, max_workers=8,
                            **kw)
        server.add_generic_rpc_handlers([sync_handlers(forward)])
        port = server.add_port("127.0.0.1:0")
        server.start()
        self._servers.append(server)
        return port

    def channel(self, port: int, callee: str, source: X509SvidFolder, **kw: Any) -> MeshChannel:
        channel = MeshChannel(f"127.0.0.1:{port}", callee, source, **kw)
        self._channels.append(channel)
        return channel

    @property
    def aio(self) -> AioLoop:
        if self._aio is None:
            self._aio = AioLoop()
        return self._aio

    def serve_aio(self, name: str, policy: Policy, **kw: Any) -> int:
        source = self.identity(name)

        async def start() -> int:
            server = AioMeshServer(source, policy, self.trust, **kw)
            server.add_generic_rpc_handlers([aio_handlers()])
            port = server.add_port("127.0.0.1:0")
            await server.start()
            self._aio_servers.append(server)
            return port

        port: int = self.aio.run(start())
        return port

    def aio_channel(self, port: int, callee: str, source: X509SvidFolder, **kw: Any
                    ) -> AioMeshChannel:
        async def make() -> AioMeshChannel:
            return AioMeshChannel(f"127.0.0.1:{port}", callee, source, **kw)

        channel: AioMeshChannel = self.aio.run(make())
        return channel

    def outside_channel(self, port: int, callee: str) -> grpc.Channel:
        """A plain gRPC client outside the mesh: server TLS only (the CA's roots, the callee's
        pinned name), no client certificate; what calls an edge port."""
        return grpc.secure_channel(
            f"127.0.0.1:{port}", grpc.ssl_channel_credentials(self.ca.roots_path.read_bytes()),
            options=[("grpc.ssl_target_name_override", self.td.service_dns_name(callee))])

    def dns(self, service: str) -> str:
        """The DNS name a client pins for ``service`` (and a DPoP proof's htu names)."""
        return self.td.service_dns_name(service)

    def bound_user_token(self, client: DpopClient, aud: str = "gateway", sub: str = "alice",
                         **kw: Any) -> str:
        """A user token from auth bound to ``client``'s DPoP key (``cnf.jkt``)."""
        return self.user_token(aud, sub, jkt=client.jkt, **kw)

    def dpop_channel(self, port: int, callee: str, client: DpopClient, token: str | None = None
                     ) -> grpc.Channel:
        """An outside client (server TLS) that adds ``authorization: DPoP <token>`` and a fresh
        proof made with ``client``'s key to every call: what a user's app sends an edge port."""
        return client.intercept(self.outside_channel(port, callee), self.dns(callee),
                                token=token)

    def edge_metadata(self, callee: str, method: str, token: str,
                      client: DpopClient | None = None) -> tuple[tuple[str, str], ...]:
        """``authorization: DPoP <token>`` and a fresh proof for one call (a new key's proof if
        no client is given: the token must then be bound to nothing, or it is refused)."""
        return (client or DpopClient()).metadata(self.dns(callee), method, token=token)

    @contextlib.contextmanager
    def as_user_call(self, service: str, token: str) -> Iterator[None]:
        """Act as edge service ``service`` handling a user call: the token is verified as an
        edge port would and put in the context, so channels opened inside wrap it onward."""
        chain = ChainVerifier(self.id(service), self.trust).verify(token, None)
        handle = enter_call(chain)
        try:
            yield
        finally:
            leave_call(handle)

    def close(self) -> None:
        for channel in self._channels:
            channel.close()
        for server in self._servers:
            server.stop(None)
        for workload in self._workloads:
            workload.close()
        if self._aio is not None:
            for aio_server in self._aio_servers:
                self._aio.run(aio_server.stop(None))
            self._aio.close()
