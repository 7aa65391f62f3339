"""The CA service's own TLS identity: ``spiffe://<td>/ca``, DNS ``ca.svc.<td>``, kept current.

At start the service makes a P-256 key in memory (it is never written anywhere) and issues
itself a short-lived certificate through the registry like any other (``mesh-ca list`` shows it
as ``ca``; it is never a token-signing key of the bundle). A thread renews it, with a new key,
at half its life; gRPC asks for the current one at each new connection, so renewal needs no
restart.

The chain served is leaf, intermediates AND the root. An agent that has only the root's SHA-256
fingerprint (``step ca bootstrap`` style) reads the served chain with a plain TLS client before
it trusts anything, finds the certificate with that fingerprint among it, and then uses it as
the gRPC channel's root (docs/agent.md, "Bootstrapping trust").
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import cast

import grpc
from cryptography.hazmat.primitives import serialization

from ca import fsio
from ca.service.issuer import Issued, NodeIssuer
from ca.templates import new_key

_log = logging.getLogger(__name__)
RETRY_SECONDS = 30.0


class ServingIdentity:
    """The current serving key and chain; :meth:`credentials` follow it."""

    def __init__(self, issuer: NodeIssuer) -> None:
        self._issuer = issuer
        self._roots_pem = fsio.cert_pem(issuer.ca.roots)
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._generation = 0
        self._pair: tuple[bytes, bytes] = (b"", b"")
        self.current: Issued | None = None
        self._renew_at = 0.0

    @property
    def roots_pem(self) -> bytes:
        return self._roots_pem

    def renew(self) -> Issued:
        key = new_key()
        issued = self._issuer.issue_server_identity(key)
        key_pem = key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        with self._lock:
            self._pair = (key_pem, issued.chain_pem() + self._roots_pem)
            self._generation += 1
            self.current = issued
            self._renew_at = issued.not_before + (issued.not_after - issued.not_before) / 2
        _log.info("serving certificate %x valid until %d", issued.serial, issued.not_after)
        return issued

    def start(self) -> ServingIdentity:
        if self.current is None:
            self.renew()
        self._thread = threading.Thread(target=self._loop, name="ca-serving-renewal", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()

    def _loop(self) -> None:
        while not self._stop.wait(max(1.0, self._renew_at - time.time())):
            try:
                self.renew()
            except Exception:
                _log.exception("renewing the CA service's certificate failed; retrying")
                self._renew_at = time.time() + RETRY_SECONDS

    def _config(self, client_auth: bool) -> tuple[int, grpc.ServerCertificateConfiguration]:
        with self._lock:
            generation, pair = self._generation, self._pair
        config = grpc.ssl_server_certificate_configuration(
            [pair], root_certificates=self._roots_pem if client_auth else None
        )
        return generation, config

    def credentials(self, *, client_auth: bool) -> grpc.ServerCredentials:
        """TLS credentials serving the current chain; with ``client_auth`` the client must
        present a certificate chaining to this CA's roots (the agent port)."""
        served, initial = self._config(client_auth)
        state = {"served": served}
        lock = threading.Lock()

        def fetch() -> grpc.ServerCertificateConfiguration | None:
            with self._lock:
                if self._generation == state["served"]:
                    return None
            with lock:
                generation, config = self._config(client_auth)
                state["served"] = generation
            return config

        # The stubs say the fetcher must return a configuration; gRPC documents None as
        # "unchanged".
        fetcher = cast(Callable[[], grpc.ServerCertificateConfiguration], fetch)
        return grpc.dynamic_ssl_server_credentials(
            initial, fetcher, require_client_authentication=client_auth
        )
