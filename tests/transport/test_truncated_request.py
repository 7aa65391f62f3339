"""A unary request whose message is cut short (the gRPC length prefix promises more bytes than
arrive before END_STREAM), sent with a raw HTTP/2 client over mutual TLS.

No byte of such a request reaches meshid's handler wrapper: gRPC core holds the message until
it is complete. The sync server answers at once (UNIMPLEMENTED, "requires exactly one request
message"); the aio server waits for the rest until the call's deadline (DEADLINE_EXCEEDED) or,
without one, until the client goes away. That wait is gRPC's own doing (docs/grpc.md,
"Limits"); these tests pin it so a change in gRPC is noticed.
"""

from __future__ import annotations

import socket
import ssl
import time
from pathlib import Path
from typing import Any

import h2.config
import h2.connection
import h2.events
import pytest
from support.minimesh import UNARY, allow_all


def _send_truncated(mesh: Any, port: int, tmp: Path, *, deadline: str | None,
                    wait: float) -> tuple[str | None, float]:
    svid = mesh.identity("gateway").current()
    for name, data in (("c.pem", svid.chain_pem), ("k.pem", svid.key_pem),
                       ("r.pem", svid.roots_pem)):
        (tmp / name).write_bytes(data)
    ctx = ssl.create_default_context(cafile=str(tmp / "r.pem"))
    ctx.load_cert_chain(str(tmp / "c.pem"), str(tmp / "k.pem"))
    ctx.set_alpn_protocols(["h2"])
    dns = mesh.td.service_dns_name("orders")
    with socket.create_connection(("127.0.0.1", port)) as raw, \
            ctx.wrap_socket(raw, server_hostname=dns) as sock:
        conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
        conn.initiate_connection()
        token = mesh.signers["gateway"].app_token(mesh.id("orders"))
        headers = [(":method", "POST"), (":scheme", "https"), (":path", UNARY),
                   (":authority", dns), ("content-type", "application/grpc"), ("te", "trailers"),
                   ("authorization", "Bearer " + token)]
        if deadline:
            headers.append(("grpc-timeout", deadline))
        stream = conn.get_next_available_stream_id()
        conn.send_headers(stream, headers)
        conn.send_data(stream, b"\x00" + (100).to_bytes(4, "big") + b"only ten b",
                       end_stream=True)
        sock.sendall(conn.data_to_send())
        sock.settimeout(wait)
        start = time.monotonic()
        try:
            while True:
                data = sock.recv(65535)
                if not data:
                    return None, time.monotonic() - start
                for event in conn.receive_data(data):
                    if isinstance(event, h2.events.TrailersReceived | h2.events.ResponseReceived):
                        status = dict(event.headers).get(b"grpc-status")
                        if status is not None:
                            return status.decode(), time.monotonic() - start
                sock.sendall(conn.data_to_send())
        except TimeoutError:
            return None, time.monotonic() - start


def test_the_sync_server_answers_a_truncated_request_at_once(mesh: Any, tmp_path: Path) -> None:
    port = mesh.serve("orders", allow_all(require_user=False))
    status, _ = _send_truncated(mesh, port, tmp_path, deadline=None, wait=10)
    assert status == "12"  # UNIMPLEMENTED, from gRPC core; the handler never ran


def test_the_aio_server_answers_it_at_the_deadline(mesh: Any, tmp_path: Path) -> None:
    port = mesh.serve_aio("orders", allow_all(require_user=False))
    status, _ = _send_truncated(mesh, port, tmp_path, deadline="1S", wait=10)
    assert status == "4"  # DEADLINE_EXCEEDED


@pytest.mark.slow
def test_without_a_deadline_the_aio_server_waits(mesh: Any, tmp_path: Path) -> None:
    port = mesh.serve_aio("orders", allow_all(require_user=False))
    status, waited = _send_truncated(mesh, port, tmp_path, deadline=None, wait=2)
    assert status is None and waited >= 1.9
