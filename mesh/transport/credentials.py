"""gRPC credentials built from an :class:`~mesh.identity.svid.SvidSource`.

Server side, ``grpc.dynamic_ssl_server_credentials`` asks our fetcher once per new connection;
the fetcher answers with a new configuration only when the SVID or the trust anchors changed,
so a rotated certificate (or a new root) is served to new connections without a restart.
Clients have no such hook (grpc/grpc#41779): :mod:`mesh.transport.channel` builds a new
channel instead.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import cast

import grpc

from mesh.identity.svid import Svid, SvidSource


def _server_config(svid: Svid) -> grpc.ServerCertificateConfiguration:
    return grpc.ssl_server_certificate_configuration(
        [(svid.key_pem, svid.chain_pem)], root_certificates=svid.roots_pem
    )


class _Fetcher:
    """Hands gRPC a new configuration only when the snapshot changed."""

    def __init__(self, source: SvidSource) -> None:
        self._source = source
        self._lock = threading.Lock()
        self._served = source.current().generation

    def initial(self) -> grpc.ServerCertificateConfiguration:
        return _server_config(self._source.current())

    def __call__(self) -> grpc.ServerCertificateConfiguration | None:
        svid = self._source.current()
        with self._lock:
            if svid.generation == self._served:
                return None
            self._served = svid.generation
        return _server_config(svid)


def server_credentials(source: SvidSource, *, require_client_auth: bool = True
                       ) -> grpc.ServerCredentials:
    """TLS server credentials that follow ``source``; mutual TLS unless told otherwise.

    ``require_client_auth=False`` is for edge ports only (see
    :class:`mesh.transport.server.MeshServer`).
    """
    fetcher = _Fetcher(source)
    # The stubs say the fetcher must return a configuration; gRPC documents None as "unchanged".
    fetch = cast(Callable[[], grpc.ServerCertificateConfiguration], fetcher)
    return grpc.dynamic_ssl_server_credentials(
        fetcher.initial(), fetch, require_client_authentication=require_client_auth
    )


def channel_credentials(svid: Svid) -> grpc.ChannelCredentials:
    """Client credentials presenting ``svid`` and trusting its anchors (one snapshot)."""
    return grpc.ssl_channel_credentials(
        root_certificates=svid.roots_pem,
        private_key=svid.key_pem,
        certificate_chain=svid.chain_pem,
    )
